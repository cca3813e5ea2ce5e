"""The allocator settings (:mod:`bayescomp.allocator`): the environment they re-execute with,
the re-execution itself, and the premise, that with them a freed large block is reused instead
of being faulted in afresh."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from bayescomp import allocator

GLIBC_LINUX = allocator._is_glibc_linux()
needs_glibc = pytest.mark.skipif(not GLIBC_LINUX, reason="glibc tunables exist on Linux/glibc only")


def _clean_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in (allocator.SWITCH, allocator.MARK, "GLIBC_TUNABLES")}
    return {**env, **extra}


def test_tuned_environment_adds_the_tunables_once_and_keeps_the_users_last(monkeypatch):
    monkeypatch.setattr(allocator, "_is_glibc_linux", lambda: True)
    env = allocator.tuned_environment({"PATH": "/bin"})
    assert env["GLIBC_TUNABLES"] == ":".join(allocator.TUNABLES)
    assert env[allocator.MARK] == "1" and env["PATH"] == "/bin"
    # Already re-executed, or switched off: nothing to do.
    assert allocator.tuned_environment(env) is None
    assert allocator.tuned_environment({allocator.SWITCH: "system"}) is None
    assert allocator.tuned_environment({allocator.SWITCH: " System "}) is None
    # A user's own tunables come last, so a value they set for the same tunable wins.
    own = allocator.tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert own["GLIBC_TUNABLES"].endswith(":glibc.malloc.hugetlb=0")
    assert own["GLIBC_TUNABLES"].startswith(allocator.TUNABLES[0])
    with pytest.raises(ValueError, match="BAYESCOMP_ALLOCATOR='fast'.*system"):
        allocator.tuned_environment({allocator.SWITCH: "fast"})
    # A GPU JAX may pick: left alone (measured for CPU training only).
    assert allocator.tuned_environment({"JAX_PLATFORMS": "cuda,cpu"}) is None
    assert allocator.tuned_environment({"JAX_PLATFORMS": "cpu"}) is not None
    monkeypatch.setattr(allocator, "_is_glibc_linux", lambda: False)
    assert allocator.tuned_environment({}) is None


def test_the_description_reads_the_tunables_in_force(monkeypatch):
    monkeypatch.setattr(allocator, "_is_glibc_linux", lambda: True)
    tuned = ":".join(allocator.TUNABLES)
    assert allocator.description({"GLIBC_TUNABLES": tuned}) == "glibc tuned"
    # The last setting of a name is the one glibc keeps: a user's override makes it not ours.
    assert allocator.description({"GLIBC_TUNABLES": tuned + ":glibc.malloc.hugetlb=0"}) == \
        "default"
    assert allocator.description({allocator.MARK: "1"}) == "default"  # the mark alone is not it
    assert allocator.description({}) == "default"


@needs_glibc
def test_reexec_replaces_the_process_once_with_the_tunables():
    code = ("import os, sys; from bayescomp import allocator; print('start', os.getpid(), "
            "flush=True); allocator.reexec_with_tuned_allocator(); "
            "print(os.environ['GLIBC_TUNABLES'], allocator.description(), sys.argv[1:])")
    result = subprocess.run([sys.executable, "-c", code, "x", "y"], env=_clean_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # One start before the re-execution and one after it, in the same process (execve).
    assert len(lines) == 3 and lines[0] == lines[1], lines
    assert lines[2] == f"{':'.join(allocator.TUNABLES)} glibc tuned ['x', 'y']"
    # Switched off: no re-execution.
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_clean_env(**{allocator.SWITCH: "system"}), timeout=120)
    assert off.returncode != 0 and "KeyError" in off.stderr  # no GLIBC_TUNABLES was set
    assert len(off.stdout.splitlines()) == 1


def test_an_imported_ipython_is_not_a_notebook_but_a_running_shell_is(monkeypatch):
    """flax imports treescope, which imports IPython where it is installed: a benchmark that
    imports flax before re-executing must still re-execute (it did not, and ran untuned)."""
    import types

    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "bench.py"], raising=False)
    monkeypatch.setattr(sys, "gettrace", lambda: None)  # under a coverage tracer too
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    shell = types.SimpleNamespace(get_ipython=lambda: None)
    monkeypatch.setitem(sys.modules, "IPython", shell)
    assert allocator._replayable()
    shell.get_ipython = lambda: object()  # a running IPython shell or Jupyter kernel
    assert not allocator._replayable()


@needs_glibc
def test_a_command_that_imports_flax_first_still_reexecutes():
    code = ("import sys, flax.nnx; from bayescomp import allocator; "
            "print('IPython' in sys.modules, flush=True); "
            "allocator.reexec_with_tuned_allocator(); print(allocator.description())")
    result = subprocess.run([sys.executable, "-c", code], env=_clean_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    if lines[0] != "True":  # (printed before and after the re-execution)
        pytest.skip("IPython is not installed here: flax imports no IPython to mistake")
    assert lines == ["True", "True", "glibc tuned"]


def test_a_bad_switch_ends_the_command_with_one_line_and_status_2():
    result = subprocess.run([sys.executable, "-m", "bayescomp.run", "+experiment=lenet5_dense"],
                            env=_clean_env(**{allocator.SWITCH: "fast"}), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: BAYESCOMP_ALLOCATOR='fast' is not one of tuned, system; unset it or set "
        "BAYESCOMP_ALLOCATOR=system to keep glibc's defaults"]


#: Allocates, fills and frees a 64 MiB block ten times and prints the minor page faults of the
#: last five rounds: glibc's default serves each block from fresh mmap pages (16,384 faults of
#: 4 KiB per round), the tuned heap reuses the first round's pages.
_FAULTS = """
import ctypes, resource
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
size = 64 << 20
for i in range(10):
    if i == 5:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(ctypes.c_void_p(p))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@needs_glibc
def test_with_the_tunables_a_freed_large_block_is_reused_without_page_faults():
    def faults(env):
        result = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True,
                                text=True, timeout=120, check=True)
        return int(result.stdout)

    default = faults(_clean_env())
    tuned = faults(allocator.tuned_environment(_clean_env()))
    # Five rounds of 16,384 pages of 4 KiB by default, or of 32 huge pages where the kernel puts
    # every mapping on them (transparent_hugepage "always"); a few stray faults of the
    # interpreter's own allocations at most with the tunables.
    thp = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")
    always = thp.exists() and "[always]" in thp.read_text()
    assert default >= (5 * 32 if always else 5 * 16384 // 2), default
    assert tuned < min(200, default // 4), (tuned, default)
