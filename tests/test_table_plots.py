"""The figures of ``python -m bayescomp.tables``: written beside the Markdown, linked, stable."""

from __future__ import annotations

import json
import pathlib
import struct
import zlib

from bayescomp import table_plots, tables

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(root: pathlib.Path, experiment: str, method: str, seed: int, architecture, bits,
         error: float, measured: float | None = None, model: str = "lenet300") -> None:
    run_dir = root / "fashion_mnist" / experiment / f"seed{seed}"
    run_dir.mkdir(parents=True)
    compression = {"pruning": 4.0, "fast_prediction": 14.0, "max_compression": 25.0 + seed}
    if measured is not None:
        compression["max_compression_measured"] = measured
    metrics = {
        "experiment": experiment, "model": model, "method": method, "dataset": "fashion_mnist",
        "seed": seed, "epochs": 200, "test_error": error - 0.3, "pruned_test_error": error,
        "quantized_test_error": error, "percent_kept": 20.0, "architecture": architecture,
        "bits_per_layer": bits, "exponent_bits": 3, "compression": compression,
        "layers": ["fc1", "fc2", "fc3"], "seconds_per_epoch": 2.0, "git_commit": "abc",
        "config": {"seed": seed, "model": {"name": model, "widths": [300, 100]}},
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def _results(root: pathlib.Path) -> pathlib.Path:
    """A dense run and two seeds of two methods, like results/ (LeNet-300-100 only)."""
    _run(root, "lenet300_dense", "dense", 0, [784, 300, 100], [23, 23, 23], 9.9, measured=1.3)
    _run(root, "lenet300_gnj", "bc_gnj", 0, [447, 130, 19], [6, 3, 9], 10.4, measured=26.0)
    _run(root, "lenet300_gnj", "bc_gnj", 1, [450, 128, 19], [6, 4, 9], 10.6, measured=27.0)
    _run(root, "lenet300_svd", "svd", 0, [759, 70, 55], [3, 7, 9], 10.5, measured=95.0)
    _run(root, "lenet300_svd", "svd", 1, [758, 79, 57], [3, 7, 9], 10.6, measured=94.0)
    return root


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk, each CRC checked: a valid PNG file, read by hand."""
    assert data.startswith(PNG_SIGNATURE)
    chunks, offset = [], len(PNG_SIGNATURE)
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind = data[offset + 4:offset + 8]
        payload = data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert zlib.crc32(kind + payload) == crc, kind
        chunks.append((kind, payload))
        offset += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    return chunks


def test_tables_write_the_figures_beside_the_markdown_and_link_them(tmp_path):
    runs_root = _results(tmp_path / "runs")
    out = tmp_path / "report" / "lenet.md"
    assert tables.main([str(runs_root), "--out", str(out)]) == 0
    text = out.read_text()
    for kind in ("frontier", "bits", "widths"):
        png = out.parent / f"lenet_{kind}.png"
        chunks = _png_chunks(png.read_bytes())
        width, height = struct.unpack(">II", chunks[0][1][:8])
        # One panel (one dataset, one model) at the fixed size and resolution, legend included.
        assert (width, height) == (round(table_plots.PANEL_SIZE[0] * table_plots.DPI),
                                   round(table_plots.PANEL_SIZE[1] * table_plots.DPI))
        # No text chunks (matplotlib's version, a date): the bytes depend on the picture only.
        assert not {kind for kind, _ in chunks} & {b"tEXt", b"iTXt", b"zTXt", b"tIME"}
        # Linked by a path relative to the Markdown file, which resolves to the file.
        link = f"]({png.name})"
        assert link in text
        assert (out.parent / png.name).resolve() == png.resolve()
    # The figures come before the tables, where a reader starts.
    assert text.index("## Figures") < text.index("## Fashion-MNIST: ours")
    assert text.count("## Figures") == 1


def test_regenerating_the_figures_gives_the_same_bytes(tmp_path):
    runs = tables.find_runs([_results(tmp_path / "runs")])
    first = table_plots.draw(runs, tmp_path / "a" / "lenet.md")
    second = table_plots.draw(runs, tmp_path / "b" / "lenet.md")
    assert first == second
    for kind in table_plots.FIGURES:
        name = f"lenet_{kind}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_rows_are_the_tables_rows():
    runs = [
        {"dataset": "fashion_mnist", "model": "lenet5", "method": "bc_gnj", "seed": 0,
         "config": {"seed": 0, "method": {"prior": {"tau0": 1e-3}}}, "_path": "c"},
        {"dataset": "fashion_mnist", "model": "lenet300", "method": "svd", "seed": 0,
         "config": {"seed": 0}, "_path": "a"},
        {"dataset": "fashion_mnist", "model": "lenet5", "method": "bc_gnj", "seed": 0,
         "config": {"seed": 0, "method": {"prior": {"tau0": 1e-5}}}, "_path": "b"},
        {"dataset": "fashion_mnist", "model": "lenet300", "method": "dense", "seed": 1,
         "config": {"seed": 1}, "_path": "d"},
    ]
    got = [(row.model, row.label, [r["_path"] for r in row.runs])
           for row in table_plots.rows(runs)]
    # Models in order, methods in the tables' order, recipes labelled and by value as there.
    assert got == [("lenet300", "Original (dense)", ["d"]), ("lenet300", "Sparse VD", ["a"]),
                   ("lenet5", "BC-GNJ (method.prior.tau0=1e-05)", ["b"]),
                   ("lenet5", "BC-GNJ (method.prior.tau0=0.001)", ["c"])]


def test_the_frontier_keeps_the_means_no_other_beats():
    # (compression, error): (30, 9.0) is beaten by (40, 8.9); (40, 8.9) and (40, 9.5) tie on
    # compression, the less accurate one is beaten.
    points = [(1.3, 8.1), (30.0, 9.0), (40.0, 8.9), (40.0, 9.5), (120.0, 8.8), (90.0, 10.4)]
    assert table_plots._frontier_indices(points) == [0, 4]
    assert table_plots._frontier_indices([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]


def test_estimates_are_not_mixed_with_measured_files_and_no_dense_run_draws_widths(tmp_path):
    # One run without a measured .bcz file: the panel uses the estimate for every run.
    _run(tmp_path, "lenet300_gnj", "bc_gnj", 0, [447, 130, 19], [6, 3, 9], 10.4, measured=26.0)
    _run(tmp_path, "lenet300_gnj", "bc_gnj", 1, [450, 128, 19], [6, 4, 9], 10.6)
    all_rows = table_plots.rows(tables.find_runs([tmp_path]))
    assert table_plots._compression_key(all_rows)[0] == "max_compression"
    assert table_plots._full_architecture(all_rows) is None
    # Without a dense run the widths are drawn in units, and the section still links all three.
    lines = table_plots.draw(tables.find_runs([tmp_path]), tmp_path / "out" / "x.md")
    assert [line for line in lines if line.startswith("![")] == [
        f"![{alt}](x_{kind}.png)" for kind, alt in table_plots.FIGURES.items()]
    assert all((tmp_path / "out" / f"x_{kind}.png").exists() for kind in table_plots.FIGURES)


def test_figures_go_at_the_end_of_a_text_without_sections(tmp_path):
    runs = tables.find_runs([_results(tmp_path / "runs")])
    text = table_plots.add_figures("# Title\n\nno sections\n", runs, tmp_path / "t.md")
    assert text.startswith("# Title\n\nno sections\n\n## Figures\n")
    assert text.rstrip().endswith("(t_widths.png)")
