"""``python -m bayescomp.tables`` writes into the tree it scans, never over the repository's
tables by default, and a ``metrics.json`` that is not a run's is one line naming it."""

from __future__ import annotations

import hashlib

import pytest
from table_runs import write_lenet_run  # tests/ is on sys.path (pytest rootdir)

from bayescomp import tables


def _run(root, seed=0, **changes):
    return write_lenet_run(root, seed, **changes)


def _repository_tables() -> str | None:
    path = tables.REPO_ROOT / "results" / tables.TABLES_FILE
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def test_the_tables_of_a_directory_go_into_it_not_into_the_repository(tmp_path, capsys):
    before = _repository_tables()
    _run(tmp_path / "elsewhere")
    assert tables.main([str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "lenet.md").is_file()
    assert f"wrote {tmp_path / 'elsewhere' / 'lenet.md'}" in capsys.readouterr().out
    assert _repository_tables() == before


def test_a_metrics_file_s_tables_go_beside_it(tmp_path):
    run_dir = _run(tmp_path)
    assert tables.main([str(run_dir / "metrics.json")]) == 0
    assert (run_dir / "lenet.md").is_file()


def test_the_default_results_directory_keeps_its_tables_file():
    assert tables.default_out(["results"]) == tables.pathlib.Path("results") / "lenet.md"


def test_several_trees_need_out(tmp_path, capsys):
    before = _repository_tables()
    _run(tmp_path / "a")
    _run(tmp_path / "b", seed=1)
    assert tables.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: 2 paths given") and "--out" in err
    assert not list(tmp_path.rglob("lenet.md"))
    assert _repository_tables() == before
    assert tables.main([str(tmp_path / "a"), str(tmp_path / "b"),
                        "--out", str(tmp_path / "both.md")]) == 0


@pytest.mark.parametrize("metrics, says", [
    ({"dataset": None}, "lacks dataset, so it is not the metrics of a finished run"),
    ({"model": None, "method": None}, "lacks model, method"),
])
def test_a_metrics_file_without_the_run_s_identity_is_one_line(tmp_path, capsys, metrics, says):
    run_dir = _run(tmp_path, **metrics)
    assert tables.main([str(tmp_path), "--out", str(tmp_path / "t.md")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and str(run_dir / "metrics.json") in err
    assert not (tmp_path / "t.md").exists()


@pytest.mark.parametrize("content, says", [
    (b"[1, 2]", "holds a JSON list, not a run's metrics"),
    (b"\xff\xfe\x00", "is not valid JSON"),
])
def test_a_metrics_file_that_is_no_object_is_one_line(tmp_path, capsys, content, says):
    (tmp_path / "metrics.json").write_bytes(content)
    assert tables.main([str(tmp_path), "--out", str(tmp_path / "t.md")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


def test_an_out_that_is_a_directory_is_one_line(tmp_path, capsys):
    _run(tmp_path)
    (tmp_path / "adir").mkdir()
    assert tables.main([str(tmp_path), "--out", str(tmp_path / "adir")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: cannot write {tmp_path / 'adir'}")
