"""Settings checked up front: every bad value ends in one line naming its key, before any data is
loaded or anything written."""

import pytest

from bayescomp import runs
from bayescomp.errors import ConfigError


@pytest.mark.parametrize("override, message", [
    ("seed=abc", "seed='abc' must be an integer"),
    ("seed=-1", "seed=-1 must be an integer in [0, 4.29497e+09]"),
    ("seed=1180591620717411303424", "seed=1180591620717411303424 must be an integer in"),
    ("trainer.epochs=0", "trainer.epochs=0 must be a positive integer"),
    ("trainer.batch_size=2.5", "trainer.batch_size=2.5 must be a positive integer"),
    ("trainer.kl_warmup.start_epoch=abc", "trainer.kl_warmup.start_epoch='abc' must be a number"),
    ("trainer.kl_warmup.start_epoch=7", "trainer.kl_warmup ends (end_epoch=0) before it starts"),
    ("trainer.loop=fast", "trainer.loop='fast' must be one of auto, scan, python"),
    ("trainer.batch_norm.momentum=0.9001e1", "trainer.batch_norm.momentum=9.001 must be a number"),
    ("method.prune.threshold=abc", "method.prune.threshold='abc' must be a number"),
    ("method.prune.threshold=nan", "method.prune.threshold=nan must be a finite number"),
    ("+method.prune.per_layer.fc1=abc", "method.prune.per_layer.fc1='abc' must be a number"),
    ("optimizer.lr=abc", "optimizer.lr='abc' is not a finite number"),
    ("optimizer.lr=-1", "optimizer.lr=-1 is negative"),
    ("optimizer.lr=0", "optimizer.lr=0 trains nothing"),
    ("optimizer.b1=2", "optimizer.b1=2.0 is outside [0, 1)"),
    ("optimizer.name=lbfgs", "optimizer.name: unknown optimizer 'lbfgs'"),
    ("method.prune_rounds=abc", "method.prune_rounds='abc' must be a positive integer"),
    ("method.retrain.lr=-1", "method.retrain.lr=-1 must be a number in [0, inf]"),
    ("method.keep.fc1=abc", "method.keep.fc1='abc' must be a number"),
    ("method.keep.fc1=1.5", "method.keep.fc1=1.5 must be a number in (0, 1]"),
    ("optimizer.schedule=cosine_restarts", "unknown learning-rate schedule 'cosine_restarts'"),
])
def test_a_bad_setting_is_one_line_naming_its_key(smoke_cfg, override, message):
    experiment = "lenet300_dc" if override.startswith(("method.prune_rounds", "method.retrain",
                                                       "method.keep")) else "lenet300_svd"
    cfg = smoke_cfg(experiment, override)
    with pytest.raises(ConfigError) as info:
        runs.check_settings(cfg)
    text = str(info.value)
    assert message in text and "\n" not in text, text


@pytest.mark.parametrize("experiment", ["lenet300_svd", "lenet5_gnj", "lenet300_dc",
                                        "lenet5_sws"])
def test_the_shipped_recipes_pass(smoke_cfg, compose, experiment):
    runs.check_settings(smoke_cfg(experiment))
    runs.check_settings(compose([f"+experiment={experiment}"]))  # the full recipe
    runs.check_settings(compose([f"+experiment={experiment}", "optimizer=sgd"]))
