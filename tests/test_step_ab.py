"""``benchmarks/step_ab.py``: the import rewriting of the base package, the leaf comparison and
the command-line refusals (no step is built or timed here)."""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def step_ab():
    sys.path.insert(0, str(BENCHMARKS))  # step_ab imports train_speed as a sibling
    try:
        spec = importlib.util.spec_from_file_location("step_ab", BENCHMARKS / "step_ab.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_rewrites_self_imports_and_module_strings(step_ab, tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text(
        "import bayescomp\n"
        "import bayescomp.nn as bnn\n"
        "from bayescomp import data as data_lib\n"
        "from bayescomp.errors import ConfigError\n"
        "def f():\n"
        "    from bayescomp.nn.conv import VariationalConv\n"
        "REGISTRY = {'v': \"bayescomp.train:train_and_evaluate\", 'w': 'bayescomp.x'}\n"
        "DOC = 'a bayescomp compressed model'\n"
        "import bayescomp_other\n")
    (package / "sub" / "b.py").write_text("x = 1\n")
    assert step_ab.rewrite_package(package) == 1
    text = (package / "a.py").read_text()
    assert text == (
        "import bayescomp_base\n"
        "import bayescomp_base.nn as bnn\n"
        "from bayescomp_base import data as data_lib\n"
        "from bayescomp_base.errors import ConfigError\n"
        "def f():\n"
        "    from bayescomp_base.nn.conv import VariationalConv\n"
        "REGISTRY = {'v': \"bayescomp_base.train:train_and_evaluate\", 'w': 'bayescomp_base.x'}\n"
        "DOC = 'a bayescomp compressed model'\n"
        "import bayescomp_other\n")


def test_compare_leaves_bit_identical_and_ulps(step_ab):
    a = np.array([1.0, -2.0, 0.0], np.float32)
    same = step_ab.compare_leaves([a, np.arange(3)], [a.copy(), np.arange(3)])
    assert same["bit_identical"] and same["elements"] == 6
    b = a.copy()
    b[0] = np.nextafter(np.float32(1.0), np.float32(2.0))
    b[2] = -0.0  # a sign of zero is a difference too
    moved = step_ab.compare_leaves([a], [b])
    assert not moved["bit_identical"]
    assert moved["elements_different"] == 2 and moved["max_ulp"] == 1
    assert 0 < moved["max_diff_relative_to_leaf_max"] < 1e-6


def test_unknown_experiment_and_commit_exit_2(step_ab, capsys):
    assert step_ab.main(["no_such_experiment"]) == 2
    assert "unknown experiment 'no_such_experiment'" in capsys.readouterr().err
    assert step_ab.main(["lenet300_svd", "--base", "no-such-commit-xyz"]) == 2
    assert "git cannot resolve 'no-such-commit-xyz'" in capsys.readouterr().err


def test_compare_hlo_sees_a_changed_op_and_ignores_names(step_ab):
    import jax
    import jax.numpy as jnp

    x = jnp.ones((4, 4), jnp.float32)

    def text(fn):
        return jax.jit(fn).lower(x).compile().as_text()

    def tanh_sum(x):
        return jnp.tanh(x @ x).sum()

    def tanh_sum_renamed(y):
        return jnp.tanh(y @ y).sum()

    same = step_ab.compare_hlo(text(tanh_sum), text(tanh_sum_renamed))
    assert same["op_count_differences"] == {} and same["same_typed_op_sequence"]
    assert same["instructions"][0] > 0
    changed = step_ab.compare_hlo(text(tanh_sum), text(lambda x: jnp.exp(x @ x).sum()))
    assert changed["op_count_differences"] == {"exponential": (0, 1), "tanh": (1, 0)}
    assert not changed["same_typed_op_sequence"]
    assert "tanh 1->0" in step_ab.describe_hlo(changed)
