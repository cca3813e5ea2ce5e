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


class DiskFullError(BayescompError):
    """A write failed for lack of space (a full disk or an exhausted quota).

    Raised where the write failed, once its partial file is removed, so the message can say
    which directory is full and that what was written before is intact. A command that can be
    resumed replaces the general advice with its own (:meth:`with_advice`).

    Args:
        directory: The directory that was being written.
        what: What was being written (``"metrics.json"``, ``"the checkpoint of epoch 3"``).
        reason: The system's words for it (``"No space left on device"``).
        kept: What is intact, e.g. the last complete checkpoint.
        advice: What to do.
    """

    GENERAL_ADVICE = "free space there and run the command again"

    def __init__(self, directory, what: str, reason: str, *,
                 kept: str = "nothing written before is lost", advice: str = GENERAL_ADVICE):
        self.directory, self.what, self.reason, self.kept = directory, what, reason, kept
        self.advice = advice
        super().__init__(f"cannot write {what} in {directory}: {reason} (the disk holding it is "
                         f"full or over quota); {kept}. To go on, {advice}")

    def __reduce__(self):
        # Pickling rebuilds an exception from ``args`` (the message alone) by default, which this
        # constructor does not take; a launcher (joblib, submitit) pickles a job's exception back
        # to the sweep's process, so it must survive the round trip.
        return (self.__class__, (self.directory, self.what, self.reason),
                {"kept": self.kept, "advice": self.advice})

    def __setstate__(self, state):
        self.__dict__.update(state)
        Exception.__init__(self, f"cannot write {self.what} in {self.directory}: {self.reason} "
                                 f"(the disk holding it is full or over quota); {self.kept}. To "
                                 f"go on, {self.advice}")

    def with_advice(self, advice: str) -> "DiskFullError":
        """The same error with other advice (e.g. the command that resumes a run)."""
        return DiskFullError(self.directory, self.what, self.reason, kept=self.kept,
                             advice=advice)


class RunDirectoryBusyError(BayescompError):
    """Another live process holds the run directory's lock (it is training there)."""


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
