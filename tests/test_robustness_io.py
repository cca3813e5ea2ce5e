"""Writes that fail and files that rot: a full disk is one line and leaves no partial file, a
damaged checkpoint is refused, a run directory has one writer, TensorBoard shows a redone epoch
once, a run's config that is not one is named.

The full disk is simulated (the writer raises ``OSError(ENOSPC)``, or TensorStore's
``RESOURCE_EXHAUSTED`` text), so no real file system has to fill up.
"""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import shutil
import struct
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from bayescomp import atomic, runs
from bayescomp.checkpointing import CHECKSUM_ITEM, Checkpointer
from bayescomp.errors import ConfigError, DiskFullError, RunDirectoryBusyError

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
#: How TensorStore (Orbax's array writer) reports a full disk.
TENSORSTORE_FULL = ValueError(
    'RESOURCE_EXHAUSTED: Error writing "leaf_00000/0" in OCDBT database at local file "/x/": '
    "Failed to write 59467 bytes to file 7: No space left on device [os_error_code='28']")


def _tree(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"kernel": rng.normal(size=(64, 32)).astype(np.float32),
            "bias": rng.normal(size=32).astype(np.float32),
            "key": np.arange(2, dtype=np.uint32)}


# ---------------------------------------------------------------------------------------------
# Item 3: a full disk


def test_disk_full_is_recognised_in_every_writer_s_words():
    assert atomic.disk_full_reason(ENOSPC) == os.strerror(errno.ENOSPC)
    assert atomic.disk_full_reason(OSError(errno.EDQUOT, "quota")) == os.strerror(errno.EDQUOT)
    assert atomic.disk_full_reason(TENSORSTORE_FULL) == os.strerror(errno.ENOSPC)
    try:  # wrapped by a library
        try:
            raise ENOSPC
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as outer:
        assert atomic.disk_full_reason(outer) == os.strerror(errno.ENOSPC)
    # An out-of-memory error is RESOURCE_EXHAUSTED too, but no full disk.
    assert atomic.disk_full_reason(ValueError("RESOURCE_EXHAUSTED: Out of memory")) is None
    assert atomic.disk_full_reason(OSError(errno.EACCES, "Permission denied")) is None


def test_an_atomic_write_on_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(
        tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    path.write_text("old")

    def full_fdopen(handle, mode):
        os.close(handle)
        raise ENOSPC

    monkeypatch.setattr(atomic.os, "fdopen", full_fdopen)
    with pytest.raises(DiskFullError) as caught:
        atomic.write_text(path, "new")
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path) in message and "metrics.json" in message
    assert os.strerror(errno.ENOSPC) in message
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_figure_on_a_full_disk_leaves_the_previous_image(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = tmp_path / "plot.png"
    figure, _ = plt.subplots()
    atomic.save_figure(figure, path, dpi=20)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")
    monkeypatch.setattr(atomic.os, "replace", lambda *args: (_ for _ in ()).throw(ENOSPC))
    with pytest.raises(DiskFullError):
        atomic.save_figure(figure, path, dpi=40)
    plt.close(figure)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


@pytest.mark.parametrize("error", [ENOSPC, TENSORSTORE_FULL], ids=["oserror", "tensorstore"])
def test_a_checkpoint_save_on_a_full_disk_is_one_line_and_keeps_the_last_complete_one(
        tmp_path, monkeypatch, capsys, error):
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(0, _tree(), {"phase_epoch": 0})
    original = ocp.JsonCheckpointHandler._save_fn

    async def full(self, x, directory):
        if x.get("phase_epoch") == 1:
            (directory / "metadata").write_text("{\"half")  # a partial file, then no space
            raise error
        return await original(self, x, directory)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", full)
    with pytest.raises(DiskFullError) as caught:
        checkpointer.save(1, _tree(1), {"phase_epoch": 1})
    message = str(caught.value)
    assert "\n" not in message
    assert f"cannot write the checkpoint of epoch 1 in {tmp_path / 'ckpt'}" in message
    assert "the checkpoint of epoch 0, the last complete one, is kept" in message
    assert "run the same command again" in message
    # No partial step is left, and Orbax's threads printed none of their tracebacks.
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["0"]
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    # The kept step restores (and a save that fits works again).
    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", original)
    restored, _ = checkpointer.restore(0, _tree())
    np.testing.assert_array_equal(restored["kernel"], _tree()["kernel"])
    checkpointer.save(1, _tree(1), {"phase_epoch": 1})
    checkpointer.close()


def test_a_save_that_fails_otherwise_keeps_its_error(tmp_path, monkeypatch):
    checkpointer = Checkpointer(tmp_path / "ckpt")

    async def broken(self, x, directory):
        raise TypeError("not JSON serialisable")

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", broken)
    with pytest.raises(TypeError, match="not JSON serialisable"):
        checkpointer.save(0, _tree(), {"phase_epoch": 0})
    assert not any((tmp_path / "ckpt").iterdir())
    checkpointer.close()


def _events(path: pathlib.Path) -> list:
    """The events of a TFRecord event file, every length and data CRC checked."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    data, offset, events = path.read_bytes(), 0, []
    while offset < len(data):
        header = data[offset:offset + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[offset + 8:offset + 12])[0] == masked_crc32c(header)
        payload = data[offset + 12:offset + 12 + length]
        crc = data[offset + 12 + length:offset + 16 + length]
        assert len(crc) == 4 and struct.unpack("<I", crc)[0] == masked_crc32c(payload)
        events.append(Event.FromString(payload))
        offset += 16 + length
    return events


def test_tensorboard_events_on_a_full_disk_end_with_a_whole_record(tmp_path, monkeypatch):
    log = runs.TensorBoardLog(tmp_path / "tensorboard")
    log.add_scalar("epoch/loss", 1.0, 0)
    log.flush()

    class FullFile:
        """Takes 5 bytes of the next write, then reports a full disk (a short write)."""

        def __init__(self, file):
            self._file, self._taken = file, False

        def write(self, data):
            if self._taken:
                raise ENOSPC
            self._taken = True
            return self._file.write(bytes(data[:5]))

        def __getattr__(self, name):
            return getattr(self._file, name)

    log._file = FullFile(log._file)
    with pytest.raises(DiskFullError) as caught:
        log.add_histogram("log_alpha/fc1", np.linspace(-5, 5, 1000), 1)
    assert "TensorBoard events" in str(caught.value) and str(tmp_path) in str(caught.value)
    log.add_scalar("epoch/loss", 0.5, 1)  # after the error: nothing more, no second error
    log.close()
    (event_file,) = (tmp_path / "tensorboard").iterdir()
    events = _events(event_file)  # the partial record was cut off again
    assert [e.summary.value[0].tag for e in events if e.HasField("summary")] == ["epoch/loss"]


def test_a_resumed_run_s_tensorboard_events_replace_the_redone_epochs(tmp_path):
    from tensorboardX.proto.event_pb2 import SessionLog

    first = runs.TensorBoardLog(tmp_path)
    for epoch in range(3):  # killed after logging epoch 2, before its checkpoint
        first.add_scalar("epoch/loss", 1.0 / (epoch + 1), epoch)
    first.flush()
    first.close()
    second = runs.TensorBoardLog(tmp_path)  # resumes from the checkpoint of epoch 1
    second.add_scalar("epoch/loss", 0.3, 2)
    second.close()
    files = sorted(tmp_path.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert len(files) == 2  # the earlier process's file is not truncated
    events = _events(files[1])
    starts = [e.step for e in events if e.HasField("session_log")
              and e.session_log.status == SessionLog.START]
    # TensorBoard drops earlier events at steps >= a START's step: epoch 2 appears once.
    assert starts == [2]
    assert events[0].file_version == "brain.Event:2"
    # A process that logs nothing leaves no file.
    runs.TensorBoardLog(tmp_path / "none").close()
    assert not (tmp_path / "none").exists()


# ---------------------------------------------------------------------------------------------
# Item 4: damaged checkpoint contents


def _saved(tmp_path) -> Checkpointer:
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(0, _tree(0), {"phase_epoch": 0, "history": [{"loss": 0.5}]})
    checkpointer.save(1, _tree(1), {"phase_epoch": 1, "history": [{"loss": 0.25}]})
    return checkpointer


def _assert_refused_as_unreadable(error: ConfigError, step_dir: pathlib.Path) -> None:
    message = str(error)
    assert "\n" not in message
    # The line a truncated step already gets: which step, and what to do.
    assert message.startswith(f"the checkpoint {step_dir} cannot be read (")
    assert "delete that step directory to resume from the previous epoch's checkpoint" in message
    assert "hydra.run.dir" in message


def test_flipped_bytes_in_a_checkpoint_s_data_are_refused(tmp_path):
    checkpointer = _saved(tmp_path)
    checkpointer.close()
    step_dir = tmp_path / "ckpt" / "1"
    data_files = [p for p in (step_dir / "state").rglob("*") if p.is_file()
                  and p.parent.name == "d"]
    largest = max(data_files, key=lambda p: p.stat().st_size)
    damaged = bytearray(largest.read_bytes())
    for offset in (len(damaged) // 2, len(damaged) // 2 + 1):
        damaged[offset] ^= 0xFF
    largest.write_bytes(bytes(damaged))

    reader = Checkpointer(tmp_path / "ckpt", read_only=True)
    with pytest.raises(ConfigError) as caught:
        reader.restore(1, _tree())
    _assert_refused_as_unreadable(caught.value, step_dir)
    # The step before it is intact and restores.
    restored, meta = reader.restore(0, _tree())
    np.testing.assert_array_equal(restored["kernel"], _tree(0)["kernel"])
    assert meta["history"] == [{"loss": 0.5}]
    reader.close()


def test_edited_checkpoint_metadata_that_still_parses_is_refused(tmp_path):
    _saved(tmp_path).close()
    meta_file = tmp_path / "ckpt" / "1" / "meta" / "metadata"
    meta_file.write_text(meta_file.read_text().replace("0.25", "0.75"))
    reader = Checkpointer(tmp_path / "ckpt", read_only=True)
    with pytest.raises(ConfigError) as caught:
        reader.metadata(1)
    _assert_refused_as_unreadable(caught.value, tmp_path / "ckpt" / "1")
    reader.close()


def test_a_checkpoint_saved_before_checksums_restores_with_a_warning(tmp_path, caplog):
    _saved(tmp_path).close()
    shutil.rmtree(tmp_path / "ckpt" / "1" / CHECKSUM_ITEM)  # as an older bayescomp saved it
    reader = Checkpointer(tmp_path / "ckpt", read_only=True)
    with caplog.at_level(logging.WARNING, logger="bayescomp.checkpointing"):
        assert reader.metadata(1)["phase_epoch"] == 1
        restored, _ = reader.restore(1, _tree())
    reader.close()
    np.testing.assert_array_equal(restored["kernel"], _tree(1)["kernel"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "without a checksum" in warnings[0], warnings


# ---------------------------------------------------------------------------------------------
# Item 9: one writer per run directory


def test_a_second_writer_of_a_run_directory_is_refused_naming_the_first(tmp_path):
    with runs.lock_run_directory(tmp_path) as lock:
        assert lock.read_text().split()[0] == str(os.getpid())
        with pytest.raises(RunDirectoryBusyError) as caught:
            with runs.lock_run_directory(tmp_path):
                pass  # pragma: no cover
        message = str(caught.value)
        assert "\n" not in message
        assert str(tmp_path) in message and f"process {os.getpid()}" in message
        assert "hydra.run.dir" in message
    assert not lock.exists()  # released and removed
    with runs.lock_run_directory(tmp_path):  # free again
        pass


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path):
    # A process that held the lock and was killed: its file stays, its flock is gone.
    holder = subprocess.run(
        [sys.executable, "-c",
         "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, f'{os.getpid()} host'.encode()); "
         "os._exit(9)", str(tmp_path / runs.LOCK_FILE)], check=False)
    assert holder.returncode == 9 and (tmp_path / runs.LOCK_FILE).exists()
    with runs.lock_run_directory(tmp_path) as lock:
        assert lock.read_text().split()[0] == str(os.getpid())


def test_a_lock_held_by_another_process_names_that_process(tmp_path):
    code = ("import sys, time; from bayescomp import runs\n"
            "with runs.lock_run_directory(sys.argv[1]):\n"
            "    print('locked', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, JAX_PLATFORMS="cpu"))
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryBusyError, match=f"process {holder.pid}\\)"):
            with runs.lock_run_directory(tmp_path):
                pass  # pragma: no cover
    finally:
        holder.kill()
        holder.wait()
    with runs.lock_run_directory(tmp_path):  # the kernel released the killed holder's lock
        pass


# ---------------------------------------------------------------------------------------------
# Item 10: a run's config that is not one


@pytest.mark.parametrize("text, says", [
    ("model: [unclosed\n", "cannot be read as a run's config"),
    ("- a\n- b\n", "holds a YAML ListConfig"),
    ("seed: 0\n", "lacks model.name"),
    ("\xff\xfe binary", "cannot be read as a run's config"),
])
def test_a_garbage_run_config_is_one_line_naming_the_file(tmp_path, text, says):
    (tmp_path / "config.yaml").write_bytes(text.encode("latin-1"))
    for read in (runs.read_run_config, runs.load_trained_model):
        with pytest.raises(ConfigError) as caught:
            read(tmp_path)
        message = str(caught.value)
        assert "\n" not in message and says in message, message
        assert str(tmp_path / "config.yaml") in message
