"""Data parallelism: a batch split over two (forced host) devices trains as on one device.

XLA's device count is fixed when JAX starts, so the two-device runs happen in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``. The network has a BatchNorm, so equality
also shows that batch statistics are those of the whole batch (synchronised), not per device.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from bayescomp import sharding
from bayescomp.errors import ConfigError

TESTS = pathlib.Path(__file__).resolve().parent

SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, {tests!r})
    import jax, numpy as np
    from flax import nnx
    from conftest import _compose, TWO_STEPS
    from test_batch_norm import SmallBatchNormNet
    from bayescomp import loop, runs
    from bayescomp.nn import LayerFactory

    SGD = {{"name": "sgd", "lr": 0.05, "momentum": 0.9, "schedule": "constant"}}

    def trained(devices, workdir, epochs):
        cfg = _compose(["+experiment=lenet300_dense", *TWO_STEPS, "trainer.tensorboard=false",
                        "data.augment=true", f"trainer.devices={{devices}}"])
        model = SmallBatchNormNet(LayerFactory(), rngs=nnx.Rngs(params=0))
        run = loop.TrainingRun(cfg, workdir, runs.load_run_dataset(cfg))
        run.fit(model, loop.Phase("p", epochs, SGD, key=jax.random.key(0)))
        return model, run

    tmp = sys.argv[1]
    one, _ = trained(1, tmp + "/one", 2)
    two, run = trained(2, tmp + "/two", 2)
    # Half the epochs on two devices, resumed on one: the checkpoint carries no device layout.
    trained(2, tmp + "/mixed", 1)
    mixed, _ = trained(1, tmp + "/mixed", 2)
    leaves = lambda m: [np.asarray(x).tolist() for x in jax.tree.leaves(nnx.state(m))]
    print(json.dumps({{
        "devices": jax.device_count(),
        "two_devices_hold_weights": len(two.fc.posterior.weight[...].sharding.device_set),
        "data_devices": len(run.x_train.sharding.device_set),
        "one": leaves(one), "two": leaves(two), "mixed": leaves(mixed),
        "bn_mean_moved": bool(np.any(np.asarray(two.bn.mean[...]) != 0.0)),
    }}))
""")


@pytest.fixture(scope="module")
def runs_on_two_devices(tmp_path_factory):
    # BAYESCOMP_CPU_CONV=auto: a test run that insists on oneDNN (=onednn) would refuse two
    # devices, where the oneDNN call has no sharding rule and XLA's convolution is used.
    # the test run's XLA_FLAGS (its optimisation level, conftest) kept, two devices added
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    env = {**os.environ, "XLA_FLAGS": flags,
           "JAX_PLATFORMS": "cpu", "BAYESCOMP_CPU_CONV": "auto"}
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(TESTS)),
                          str(tmp_path_factory.mktemp("sharding"))],
                         check=False, capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_two_devices_hold_the_data_and_the_state(runs_on_two_devices):
    result = runs_on_two_devices
    assert result["devices"] == 2
    assert result["two_devices_hold_weights"] == 2 and result["data_devices"] == 2
    assert result["bn_mean_moved"]


@pytest.mark.parametrize("other", ["two", "mixed"])
def test_two_devices_train_as_one(runs_on_two_devices, other):
    import numpy as np

    # Four SGD steps; a split batch only reorders float32 sums (≈1e-7 relative per sum), which
    # the steps amplify by at most a few orders: 1e-4 relative, 1e-5 absolute for values near 0.
    for want, got in zip(runs_on_two_devices["one"], runs_on_two_devices[other]):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("devices,message", [
    ("some", "trainer.devices must be"), (0, "trainer.devices must be"),
    (True, "trainer.devices must be"), (64, "only 1"),
])
def test_bad_device_counts_are_one_line(devices, message):
    with pytest.raises(ConfigError, match=message):
        sharding.from_config(devices, 128)


def test_one_device_means_no_mesh():
    assert sharding.from_config("all", 7) is None and sharding.from_config(1, 7) is None
