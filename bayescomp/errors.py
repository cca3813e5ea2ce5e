"""Errors that end a bayescomp command with one clear message.

Every error a user can cause (an unknown experiment, prior or dataset, a wrong path, a corrupt
compressed file, a diverged run) is raised as a subclass of :class:`BayescompError`. Its message
says what went wrong *and what to do*. ``bayescomp.run`` and the other command-line entry points
catch this base class and print the message alone, without a traceback; anything else is a bug
and keeps its traceback.
"""


class BayescompError(Exception):
    """Base class of all user-facing errors; the message is shown as is."""


class ConfigError(BayescompError):
    """A configuration names something that does not exist or holds an invalid value."""


class DataError(BayescompError):
    """A dataset cannot be found, read or parsed."""


class TrainingDivergedError(BayescompError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class CompressedFileError(BayescompError):
    """A compressed model file is truncated, corrupt, of another version or not a bcz file."""


def unknown_name_error(kind: str, name: str, known) -> ConfigError:
    """Build the error for a registry lookup that failed.

    Args:
        kind: What was looked up, e.g. ``"prior"`` or ``"dataset"``.
        name: The name that was asked for.
        known: The names that exist.

    Returns:
        A :class:`ConfigError` whose message lists the known names.
    """
    names = ", ".join(sorted(known))
    return ConfigError(f"unknown {kind} {name!r}; known {kind}s: {names}")
