"""Command-line entry: ``python -m bayescomp.run +experiment=NAME [overrides]``.

Hydra composes ``conf/config.yaml`` with the experiment's delta and the overrides, then
the method's procedure (:mod:`bayescomp.procedures`; for variational methods
:func:`bayescomp.procedures.variational.run`) does the work in Hydra's output directory
(``hydra.run.dir=DIR`` picks it; rerunning in the same directory resumes). ``--multirun``
sweeps, e.g. ``python -m bayescomp.run --multirun +experiment=lenet300_svd seed=0,1,2``.

Before Hydra runs anything, :func:`entry_check` composes the command line itself, so a
composition error (an unknown experiment, model, method or dataset option, an override typo,
bad override syntax) or an output directory that cannot be written ends the command with one
line and exit status 2, instead of Hydra's multi-line report and exit status 1.

The run directory is logged first. Its lock is taken next (:func:`bayescomp.runs.
lock_run_directory`: a second process in the same directory is refused, naming the first, and
writes nothing there, not even to ``run.log``, whose lines are held back until the lock), then
Hydra's record of the command, ``.hydra/``, is written (by this module, not by Hydra:
``hydra.output_subdir`` is null in ``conf/config.yaml``), so that a command refused before it
writes anything of the run puts the previous record back. User errors
(:class:`bayescomp.errors.BayescompError`) end the command with their one-line message on stderr
(once; ``run.log`` keeps it too) and exit status 2; nothing already written is touched. A full
disk says which directory is full and the command that resumes the run. Ctrl-C ends it with one
line naming the run directory and the command that resumes it (exit status 130).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import logging.handlers
import os
import pathlib
import shlex
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bayescomp import atomic
from bayescomp.errors import (BayescompError, DiskFullError, RunDirectoryBusyError,
                              unknown_name_error)

log = logging.getLogger("bayescomp")

CONF_DIR = pathlib.Path(__file__).resolve().parent.parent / "conf"

#: Hydra's record of a command, written into ``RUN_DIR/.hydra/`` (:func:`_hydra_record`).
RECORD_DIR = ".hydra"

#: Files whose change shows that a command has written to its run (``config.yaml`` is rewritten
#: after every checkpoint, the others when a run finishes).
RUN_FILES = ("config.yaml", "metrics.json", "quantized_network.npz")


def resume_command(workdir: str) -> str:
    """The command that resumes this run: its overrides and its run directory."""
    overrides = [o for o in HydraConfig.get().overrides.task
                 if not o.startswith("hydra.run.dir=")]
    return " ".join(["python -m bayescomp.run", *map(shlex.quote, overrides),
                     shlex.quote(f"hydra.run.dir={workdir}")])


def _to_log_files(level: int, message: str) -> None:
    """Write ``message`` to the run's log files only (the terminal gets it once, from main)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


class _LogFilesUntilLocked:
    """Holds back the lines for the run's log files until the run directory's lock is taken.

    Hydra opens ``RUN_DIR/run.log`` before any code of ours runs. A second process started in
    a directory that a live run holds is refused at the lock; its lines (the run directory, the
    refusal) must not be appended to the live run's ``run.log``. So from the start of the job
    until :meth:`release`, records meant for log files are kept in memory instead.
    """

    def __init__(self):
        root = logging.getLogger()
        self.file_handlers = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
        # Never flushes by itself: only the few records before the lock are held.
        self.held = logging.handlers.BufferingHandler(capacity=1 << 20)
        for handler in self.file_handlers:
            root.removeHandler(handler)
        root.addHandler(self.held)

    def release(self, write_held: bool = True) -> None:
        """Give the log files back to logging, first writing the held records (if asked)."""
        root = logging.getLogger()
        if self.held not in root.handlers:
            return
        root.removeHandler(self.held)
        for handler in self.file_handlers:
            if write_held:
                for record in self.held.buffer:
                    if record.levelno >= handler.level:
                        handler.handle(record)
            root.addHandler(handler)
        self.held.buffer.clear()


def _skip_full_disk(original, record: logging.LogRecord) -> None:
    """``Handler.handleError`` of a log file: a full disk loses the line in the file only.

    Logging prints a traceback for every record a handler fails to write; on a full disk that
    is one per log line, burying the error that says what to do. The terminal has the line.
    """
    error = sys.exc_info()[1]
    if error is not None and atomic.disk_full_reason(error) is not None:
        return
    original(record)


def _quiet_full_log_files() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and not isinstance(
                handler.handleError, functools.partial):
            handler.handleError = functools.partial(_skip_full_disk, handler.handleError)


def _run_files_state(workdir: pathlib.Path) -> tuple:
    """Identity of the run's files (:data:`RUN_FILES`); atomic writes change the inode."""
    state = []
    for name in RUN_FILES:
        try:
            stat = os.stat(workdir / name)
            state.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
        except OSError:
            state.append(None)
    return tuple(state)


@contextlib.contextmanager
def _hydra_record(workdir: pathlib.Path, cfg: DictConfig):
    """Write this command's ``.hydra/`` record; put the previous one back if the command fails
    before it writes anything of the run.

    A rerun that is refused (another run's directory, other training settings, a bad value)
    must leave the directory as it was, including the record of the command that made it.
    A command that trained an epoch or finished has written the run, and keeps its record.
    """
    record_dir = workdir / RECORD_DIR
    hydra_cfg = HydraConfig.instance().cfg
    new = {"config.yaml": OmegaConf.to_yaml(cfg),
           "hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
           "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task)}
    existed = record_dir.is_dir()
    previous = {name: (record_dir / name).read_bytes() if (record_dir / name).is_file() else None
                for name in new}
    before = _run_files_state(workdir)
    try:
        for name, text in new.items():
            atomic.write_text(record_dir / name, text)
        yield
    except BaseException:
        if _run_files_state(workdir) == before:
            # Best effort: on a full disk even the old bytes may not fit; the error at hand says
            # what to do, and a failure here must not replace it.
            with contextlib.suppress(OSError, BayescompError):
                for name, data in previous.items():
                    if data is None:
                        (record_dir / name).unlink(missing_ok=True)
                    else:
                        atomic.write_bytes(record_dir / name, data)
                if not existed:
                    record_dir.rmdir()
        raise


# An absolute path: a relative one is resolved against the package when this module is imported
# rather than run (python -c "from bayescomp import run; run.main()"), where there is no conf/.
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _run_job(cfg: DictConfig) -> float | None:
    """Train, prune and evaluate one configuration; return the pruned test error (for sweepers)."""
    from bayescomp import procedures, runs  # after Hydra parsed the command line

    # Orbax logs every checkpoint save at INFO through absl, and JAX every backend it does not
    # find (a TPU); keep run.log and the terminal readable.
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    _quiet_full_log_files()
    log_files = _LogFilesUntilLocked()
    workdir = HydraConfig.get().runtime.output_dir
    log.info("run directory: %s", workdir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        with runs.lock_run_directory(workdir):
            log_files.release()
            with _hydra_record(pathlib.Path(workdir), cfg):
                run_procedure = procedures.get(str(cfg.method.get("procedure", "variational")))
                metrics = run_procedure(cfg, workdir)
    except BayescompError as err:
        # The run.log of a directory another process holds is that process's.
        busy = isinstance(err, RunDirectoryBusyError)
        log_files.release(write_held=not busy)
        if isinstance(err, DiskFullError):
            # Orbax's writer tasks that met the full disk may be collected at exit, and asyncio
            # then logs each one's traceback ("Task exception was never retrieved"): the line
            # below already says what happened and what to do.
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
            err = err.with_advice("free space there, then run again (it resumes from the last "
                                  f"complete checkpoint): {resume_command(workdir)}")
        if not busy:
            _to_log_files(logging.ERROR, str(err))
        print(f"error: {err}", file=sys.stderr)
        if multirun:
            # An exception (unlike SystemExit) lets Hydra's sweeper run the remaining jobs of
            # the sweep and then report this one's failure with a non-zero exit status.
            raise err
        sys.exit(2)
    except KeyboardInterrupt:
        log_files.release()
        if multirun:
            raise
        line = (f"interrupted: {workdir} keeps the checkpoint of the last finished epoch; "
                f"resume with: {resume_command(workdir)}")
        _to_log_files(logging.WARNING, line)
        print(line, file=sys.stderr)
        sys.exit(130)
    finally:
        log_files.release()  # a no-op where already released
    log.info("test error %.2f %% (pruned %.2f %%), %d of %d weights kept (%.2f %%), "
             "metrics in %s/metrics.json", metrics["test_error"], metrics["pruned_test_error"],
             metrics["weights_kept"], metrics["weights_total"], metrics["percent_kept"], workdir)
    return metrics["pruned_test_error"]


# --------------------------------------------------------------------------------------------
# The entry check: Hydra's composition errors as one line, before Hydra runs anything.


#: What an option of a config group is called in messages, where not the group's name.
GROUP_KINDS = {"data": "dataset"}


def _first_line(error: BaseException) -> str:
    return " ".join(line.strip() for line in str(error).strip().splitlines() if line.strip())


def _group_of(override) -> str | None:
    """The config group an override selects an option of (``experiment``), or None."""
    group = override.key_or_group
    return group if (CONF_DIR / group).is_dir() else None


def _composition_problem(error: Exception, overrides: list[str]) -> str:
    """One line for a failed composition: what is wrong and what to write instead."""
    from hydra.errors import MissingConfigException

    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, name = str(error.missing_cfg_file).rpartition("/")
        if group:
            known = error.options or sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
            return str(unknown_name_error(GROUP_KINDS.get(group, group), name, known))
    key = getattr(error.__cause__, "full_key", None)
    if key and "not in struct" in str(error.__cause__):
        # Hydra's hint here is "+KEY=VALUE", which adds a key that nothing reads.
        return _unknown_key_problem(key, overrides)
    return f"{_first_line(error)} (see python -m bayescomp.run --help)"


def _unknown_key_problem(key: str, overrides: list[str], cfg: DictConfig | None = None) -> str:
    """``KEY is not a setting``, with the nearest setting under the same parent."""
    parent, _, leaf = key.rpartition(".")
    if cfg is None:
        cfg = _compose([o for o in overrides if _override_key(o) != key])
    node = OmegaConf.select(cfg, parent) if parent else cfg
    siblings = sorted(k for k in node if k != leaf) if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    hint = (f"did you mean {parent + '.' if parent else ''}{close[0]}?" if close else
            f"the settings under {parent or 'the top level'} are: {', '.join(siblings)}")
    return f"{key} is not a setting ({hint}); see python -m bayescomp.run --help"


def _override_key(text: str) -> str:
    return text.split("=", 1)[0].lstrip("+~")


def _compose(overrides: list[str], hydra_config: bool = False) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra_config)


def _variants(parsed, multirun: bool) -> list[list[str]]:
    """The override lists to compose: the command's own, or for a sweep one per job shape.

    A sweep's values of a plain key share one composition (the first value; their values are
    checked when each job starts); each option of a swept config group is composed, since an
    unknown option is only found by loading it.
    """
    texts = [o.input_line for o in parsed]
    if not multirun:
        return [texts]
    first = list(texts)
    swept_groups = []
    for i, override in enumerate(parsed):
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
            first[i] = f"{override.get_key_element()}={values[0]}"
            if _group_of(override):
                swept_groups.append((i, override, values[1:]))
    variants = [first]
    for i, override, values in swept_groups:
        for value in values:
            variant = list(first)
            variant[i] = f"{override.get_key_element()}={value}"
            variants.append(variant)
    return variants


def _appended_typo(parsed, cfg: DictConfig) -> str | None:
    """A ``+KEY=VALUE`` that adds a key next to a setting of nearly that name.

    ``+`` adds a key, which nothing reads unless bayescomp declares it; ``+trainer.epoch=3``
    (Hydra's own suggestion for the typo ``trainer.epoch=3``) would train for the configured
    number of epochs without a word.
    """
    for override in parsed:
        text = override.input_line
        if not text.startswith("+") or text.startswith("++") or _group_of(override):
            continue
        key = override.key_or_group
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not isinstance(node, DictConfig):
            continue
        siblings = [k for k in node if k != leaf]
        if difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.8):
            return _unknown_key_problem(key, [], cfg=cfg).replace(
                " is not a setting (", " is not a setting, and '+' would add it unread (", 1)
    return None


def output_dir_problem(path: str | os.PathLike, key: str) -> str | None:
    """Why Hydra could not make or write the output directory ``path``, or None.

    Args:
        path: ``hydra.run.dir`` (or ``hydra.sweep.dir``) as composed.
        key: The setting's name, for the message.
    """
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        return (f"{key}={path} is a file, not a directory; name a directory (a new one starts a "
                "run, the directory of an existing run resumes it)")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{key}={path} lies under the file {existing}; name a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return (f"{existing} is not writable, so {key}={path} cannot be written; make it "
                f"writable, or choose another {key}")
    return None


def entry_check(argv: list[str]) -> str | None:
    """Compose the command line as Hydra will, and say in one line what stops it.

    Covers what Hydra would report in many lines before any bayescomp code runs: bad override
    syntax, unknown config group options (``+experiment=``, ``model=``, ``method=``,
    ``data=``), unknown keys, ``+KEY`` typos, and an output directory that is a file or cannot
    be written. Commands that do not run a job (``--help``, ``--cfg``, ``--info``), other config
    sources (``--config-dir`` and the like) and anything this check cannot follow are left to
    Hydra.

    Args:
        argv: The command line's arguments (``sys.argv[1:]``).

    Returns:
        The problem, or None when Hydra may go ahead.
    """
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:
        return None  # argparse's own usage error: Hydra's parser gives it again
    if (args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
            or args.config_path or args.config_name or args.config_dir
            or args.experimental_rerun):
        return None
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except OverrideParseException as error:
        return (f"cannot parse the override {error.override!r} ({_first_line(error)}); write "
                "KEY=VALUE, quoting a value with spaces, commas or brackets")
    if any(override.get_key_element().startswith("hydra.mode") for override in parsed):
        return None  # hydra.mode=MULTIRUN is a sweep without --multirun: Hydra decides
    try:
        variants = _variants(parsed, args.multirun)
    except (HydraException, OmegaConfBaseException, ValueError):
        return None  # a sweep this check cannot expand (glob, interval): Hydra's to judge
    cfg = None
    for overrides in variants:
        try:
            composed = _compose(overrides, hydra_config=True)
        except (HydraException, OmegaConfBaseException) as error:
            try:
                return _composition_problem(error, overrides)
            except (HydraException, OmegaConfBaseException):
                return f"{_first_line(error)} (see python -m bayescomp.run --help)"
        cfg = cfg if cfg is not None else composed
    problem = _appended_typo(parsed, cfg)
    if problem:
        return problem
    key = "hydra.sweep.dir" if args.multirun else "hydra.run.dir"
    try:
        directory = OmegaConf.select(cfg, key)
    except (HydraException, OmegaConfBaseException):
        return None  # an interpolation only Hydra's job can resolve
    return None if directory is None else output_dir_problem(directory, key)


def main() -> None:
    """``python -m bayescomp.run``: the allocator's settings (:mod:`bayescomp.allocator`: the
    process re-executes itself once with them), the entry check, then Hydra's run of the
    job(s)."""
    from bayescomp import allocator

    allocator.reexec_with_tuned_allocator()
    problem = entry_check(sys.argv[1:])
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    _run_job()


if __name__ == "__main__":
    main()
