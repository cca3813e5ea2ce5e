"""Code provenance: the commit is read once per process; resumed runs list each commit's epochs."""

from __future__ import annotations

import subprocess

import pytest

from bayescomp import provenance


def test_code_history_groups_consecutive_epochs_by_commit():
    history = [{"epoch": 0}, {"epoch": 1},  # a checkpoint written before commits were recorded
               {"epoch": 2, "git_commit": "a"}, {"epoch": 3, "git_commit": "a"},
               {"epoch": 4, "git_commit": "b-dirty"}, {"epoch": 5, "git_commit": "a"}]
    assert provenance.code_history(history) == [
        {"epochs": [0, 1], "git_commit": provenance.UNRECORDED},
        {"epochs": [2, 3], "git_commit": "a"},
        {"epochs": [4, 4], "git_commit": "b-dirty"},
        {"epochs": [5, 5], "git_commit": "a"},  # back to a: a new segment, not merged with 2-3
    ]
    assert provenance.code_history([]) == []


def _git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A throwaway repository laid out like bayescomp, with provenance pointed at it."""
    for args in (["init", "-q"], ["config", "user.email", "t@t"], ["config", "user.name", "t"]):
        _git(tmp_path, *args)
    (tmp_path / "bayescomp").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "bayescomp" / "train.py").write_text("x = 1\n")
    (tmp_path / "results" / "metrics.json").write_text("{}\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "init")
    monkeypatch.setattr(provenance, "_ROOT", tmp_path)
    provenance._snapshot.cache_clear()
    yield tmp_path
    provenance._snapshot.cache_clear()


def test_results_changes_are_not_dirty_code_changes_are(repo):
    head = _git(repo, "rev-parse", "HEAD")
    (repo / "results" / "metrics.json").write_text('{"published": 1}\n')
    assert provenance.git_commit() == head and provenance.dirty_files() == []
    provenance._snapshot.cache_clear()
    (repo / "bayescomp" / "train.py").write_text("x = 2\n")
    assert provenance.git_commit() == head + "-dirty"
    assert provenance.dirty_files() == ["bayescomp/train.py"]


def test_the_commit_is_read_once_per_process(repo):
    first = provenance.git_commit()
    (repo / "bayescomp" / "train.py").write_text("x = 3\n")
    _git(repo, "commit", "-q", "-am", "later")
    # The process still runs the code it loaded: a later checkout does not change its commit.
    assert provenance.git_commit() == first != _git(repo, "rev-parse", "HEAD")


def test_outside_a_checkout_the_commit_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "_ROOT", tmp_path)
    monkeypatch.delenv(provenance.COMMIT_ENV, raising=False)
    provenance._snapshot.cache_clear()
    try:
        assert provenance.git_commit() == "unknown" and provenance.dirty_files() == []
    finally:
        provenance._snapshot.cache_clear()


def test_a_copied_tree_reports_the_vouched_commit_marked_as_a_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "_ROOT", tmp_path)
    monkeypatch.setenv(provenance.COMMIT_ENV, "abc123")
    provenance._snapshot.cache_clear()
    try:
        assert provenance.git_commit() == "abc123-copy"
    finally:
        provenance._snapshot.cache_clear()


def test_a_real_checkout_ignores_the_vouched_commit(repo, monkeypatch):
    monkeypatch.setenv(provenance.COMMIT_ENV, "abc123")
    assert provenance.git_commit() == _git(repo, "rev-parse", "HEAD").strip()


def test_runtime_names_the_backend_and_versions():
    import jax

    info = provenance.runtime()
    assert info["jax_backend"] == jax.default_backend()
    assert info["jax_version"] == jax.__version__
    assert info["device_count"] == len(jax.devices()) >= 1
    assert isinstance(info["device_kind"], str) and info["device_kind"]
    assert info["cpu_conv_kernel"] in (("onednn", "xla") if jax.default_backend() == "cpu"
                                       else (None,))
    # BatchNorm goes to oneDNN only with oneDNN's convolutions (one library, one choice).
    assert info["cpu_batch_norm"] in ((info["cpu_conv_kernel"], "xla")
                                      if jax.default_backend() == "cpu" else (None,))
