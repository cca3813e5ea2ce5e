"""Every experiment composes and trains two steps; configs and registries agree.

Experiments are found on disk, so a new ``conf/experiment/*.yaml`` is covered without editing
this file (lightning-hydra-template ``test_configs.py``).
"""

import json
import math
import pathlib

import pytest
from omegaconf import OmegaConf

from bayescomp import data, models, posteriors, priors, procedures

CONF_DIR = pathlib.Path(__file__).resolve().parent.parent / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))

REQUIRED_KEYS = {
    "experiment", "model", "method", "dataset", "seed", "epochs", "test_error",
    "pruned_test_error", "weights_total", "weights_kept", "kept_per_layer", "seconds_per_epoch",
    "train_seconds", "git_commit",
}

# Kernel weights (no biases) of each model on 28x28x1 inputs with 10 classes.
WEIGHTS_TOTAL = {"lenet300": 784 * 300 + 300 * 100 + 100 * 10,  # 266,200
                 "lenet5": 5 * 5 * 20 + 5 * 5 * 20 * 50 + 800 * 500 + 500 * 10}  # 430,500

# The CIFAR models train their two steps on 32x32x3 synthetic data at narrow widths: the test
# is of the experiment's wiring (optimizer, schedule, augmentation, BatchNorm, metrics), and
# full-width VGGs and ResNet-56 would add minutes of compilation and steps to the suite.
NARROW_WIDTHS = {"vgg16": [8] * 14, "vgg_like": [8] * 14, "vgg19": [8] * 16,
                 "resnet8": [4, 8, 8], "resnet20": [4, 8, 8], "resnet56": [4, 8, 8],
                 "resnet110": [4, 8, 8], "resnet164": [4, 8, 8, 8]}
# and ResNet-20 one block per stage: ResNet-8 is the same class and code (1 block per stage
# instead of 3), with the same channel groups and shortcut couplings, so the wiring under test is
# the same with 8 weight layers to compile instead of 20 (ResNet-20's two-step VCNN fine-tuning
# run took 45-64 s). ResNet-20 itself trains in the model, export, sharding and procedure tests;
# the slow set's ResNet-56 and ResNet-110 runs keep their depths.
SHALLOW = {"resnet20": "resnet8"}


def _cifar_weights(model_name: str, widths) -> int:
    """Kernel weights of ``model_name`` at ``widths`` on 32x32x3 inputs, from its layers."""
    from flax import nnx

    from bayescomp.models.graph import weight_layers
    from bayescomp.nn import LayerFactory

    model = nnx.eval_shape(lambda: models.get(model_name)(
        LayerFactory(), rngs=nnx.Rngs(params=0), input_shape=(32, 32, 3), num_classes=10,
        widths=widths))
    return sum(math.prod(layer.posterior.weight.shape) for _, layer in weight_layers(model))


def test_experiments_exist():
    assert EXPERIMENTS, f"no experiments in {CONF_DIR / 'experiment'}"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(experiment, compose):
    cfg = compose([f"+experiment={experiment}"])
    # Experiments name their runs after their file, and pick registered components.
    assert cfg.experiment_name == experiment
    assert cfg.model.name in models.REGISTRY
    assert cfg.method.posterior in posteriors.REGISTRY
    assert cfg.method.prior.name in priors.REGISTRY
    assert cfg.data.name in data.REGISTRY
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # no dangling ${...}


# Copies of a model and recipe another experiment already trains here: ResNet-56 is ResNet-20's
# code with 9 blocks per stage instead of 3, VGG-19 VGG-16's with three more convs and the same
# recipe, resnet20_dense_cpu resnet20_dense with a cosine schedule (tests/test_optim.py tests
# the schedule). Their compilation alone takes 10-60 s on 2 cores, so their two-step runs are in
# the slow set (pytest -m slow); they still compose above.
DEEPER_COPIES = {"resnet56_dense", "vgg19_dense", "resnet20_dense_cpu", "resnet20_dense_cpu100"}
# Experiments whose procedure is run end to end on the same model family by its own test file in
# the default run (tests/test_dirichlet_procedure.py, test_deep_compression.py,
# test_vcnn_procedure.py, test_slimming_procedure.py): their two-step runs (25-50 s each on a
# loaded 2-core CPU) are in the slow set, which keeps the default run under 10 minutes; they still
# compose above.
# lenet5_vcnn and lenet5_slimming (narrowed) train end to end in test_vcnn_procedure.py and
# test_slimming_procedure.py; lenet300_ghs in tests/test_pruning_guard.py and
# test_threshold_selection.py, lenet300_sws in test_soft_weight_sharing.py (through the CLI),
# lenet300_dense in every CLI test, lenet5_dense as the pretrained run of the Dirichlet tests
# (conftest.pretrained_dense_run), and resnet20_dense's recipe (SGD, step decay, BatchNorm,
# augmentation) in vgg16_dense's two-step run below and ResNet-20 itself in the model, export and
# procedure tests; lenet300_svd is quick_look's model and method (quick_look's two-step run
# stays), lenet300_gnj trains in test_diagnose.py's and test_bad_input.py's runs; vgg_like_gnj is
# vgg_like_dense's model and data with lenet5_gnj's method and Adam (decay_start 0, a schedule
# setting tests/test_optim.py covers), both of whose two-step runs stay, and its posterior loads a
# dense VGG-like start in test_start_from.py (~40 s saved); resnet20_vcnn_finetune40_cpu is
# resnet20_vcnn_finetune_cpu (two-step run kept) with two numbers changed,
# resnet20_dirichlet_point_cpu100 resnet20_dirichlet_point_cpu with three,
# resnet20_dirichlet_point_retrain40_cpu the same with three, lenet5_dirichlet_8_25_200
# lenet5_dirichlet with two; lenet5_ghs_published (~24 s) is lenet5_ghs's model and method with
# lenet300_ghs_published's settings (both kept).
COVERED_END_TO_END = {"vgg_like_gnj", "lenet5_ghs_published",
                      "lenet5_dirichlet", "lenet5_dc", "lenet300_dc",
                      "resnet20_vcnn_cpu", "resnet20_slimming_cpu", "resnet20_dirichlet_cpu",
                      "lenet300_ghs", "lenet300_sws", "lenet300_dense", "lenet5_dense",
                      "resnet20_dense", "lenet300_svd", "lenet300_gnj", "lenet5_vcnn",
                      "lenet5_slimming", "resnet20_vcnn_finetune40_cpu",
                      "resnet20_dirichlet_point_cpu100", "lenet5_dirichlet_8_25_200",
                      "resnet20_dirichlet_point_retrain40_cpu"}

# The full-recipe channel experiments for a GPU (VGG-16 and ResNet-56 with VCNN, Dirichlet and
# slimming; VGG-19 and ResNet-164 with slimming): each is its dense recipe plus a method whose
# procedure runs end to end on ResNet-20 above and in its own test file. vgg16_vcnn and
# vgg16_slimming keep their two-step runs in the default set (~8 s each on a loaded 2-core CPU),
# the channel methods trained on a VGG there; the others (17-45 s each) run with -m slow.
GPU_CHANNEL_RECIPES = {"resnet56_vcnn", "resnet56_dirichlet", "resnet56_slimming",
                       "vgg16_dirichlet", "vgg19_slimming", "resnet164_dense",
                       "resnet164_slimming"}


@pytest.mark.parametrize("experiment", [
    pytest.param(e, marks=pytest.mark.slow)
    if e in DEEPER_COPIES | COVERED_END_TO_END | GPU_CHANNEL_RECIPES else e
    for e in EXPERIMENTS])
def test_experiment_trains_two_steps(experiment, smoke_cfg, tmp_path, pretrained_dense_run):
    cfg = smoke_cfg(experiment)
    experiment_model = cfg.model.name
    narrow = NARROW_WIDTHS.get(experiment_model)
    overrides = ()
    if narrow is not None:
        # 8 steps of 64, so that step-decay milestones at 50 % and 75 % fall inside the run.
        overrides = ("data=synthetic_cifar", f"model.widths=[{','.join(map(str, narrow))}]",
                     "trainer.batch_size=64", "trainer.chunk_steps=8")
        if experiment_model in SHALLOW:
            overrides = (f"model={SHALLOW[experiment_model]}", *overrides)
        cfg = smoke_cfg(experiment, *overrides)
        if (cfg.method.get("prune") or {}).get("select") is not None:
            # A VGG-like Bayesian Compression run: its wiring (BatchNorm after group-scaled
            # convs, fixed-threshold pruning, compression) is what this run adds; choosing
            # thresholds and bits on training data (most of the run's time over 15 layers) is
            # tested on the LeNets (test_threshold_selection.py, test_bit_selection.py).
            overrides += ("method.prune.select=null", "method.bits=null")
            cfg = smoke_cfg(experiment, *overrides)
    procedure = str(cfg.method.get("procedure", "variational"))
    method_overrides = ()
    if narrow is not None and cfg.method.get("widths") is not None:
        # kept widths given for the full-width network (vgg16_dirichlet: the paper's): half of
        # each narrowed group's instead
        assert len(cfg.method.widths) == len(narrow), "one width per group, as the model's"
        method_overrides = (f"method.widths=[{','.join(str(max(1, w // 2)) for w in narrow)}]",)
        cfg = smoke_cfg(experiment, *overrides, *method_overrides)
    if "pretrained_run" in cfg.method:  # retraining methods start from a finished dense run
        pretrained = pretrained_dense_run(experiment_model, *overrides)
        cfg = smoke_cfg(experiment, *overrides, *method_overrides,
                        f"method.pretrained_run={pretrained}")
    dataset = "synthetic" if narrow is None else "synthetic_cifar"
    assert cfg.data.name == dataset and cfg.trainer.epochs == 1
    metrics = procedures.get(procedure)(cfg, tmp_path)

    written = json.loads((tmp_path / "metrics.json").read_text())
    assert REQUIRED_KEYS <= set(written), REQUIRED_KEYS - set(written)
    assert set(written) == set(metrics)  # the file is what was returned
    assert written["test_error"] == metrics["test_error"]

    assert written["experiment"] == experiment
    assert written["model"] == cfg.model.name
    assert written["method"] == cfg.method.name
    assert written["dataset"] == dataset
    assert written["seed"] == 0
    if procedure == "variational":
        assert written["epochs"] == 1
        assert len(written["history"]) == 1
    else:  # trainer.epochs = 1 epoch per retraining phase (e.g. each pruning round)
        assert written["epochs"] == len(written["history"]) >= 1
    for key in ("test_error", "pruned_test_error"):
        assert 0.0 <= written[key] <= 100.0
    assert written["weights_total"] == (WEIGHTS_TOTAL[cfg.model.name] if narrow is None
                                        else _cifar_weights(cfg.model.name, narrow))
    assert written["weights_total"] == sum(written["total_per_layer"])
    assert 0 <= written["weights_kept"] <= written["weights_total"]
    assert written["weights_kept"] == sum(written["kept_per_layer"])
    assert len(written["kept_per_layer"]) == len(models.get(cfg.model.name).layer_names)
    if cfg.method.prune.threshold is None and procedure == "variational":
        # a variational method that never prunes keeps everything
        assert written["weights_kept"] == written["weights_total"]
    assert math.isfinite(written["seconds_per_epoch"]) and written["seconds_per_epoch"] > 0
    assert written["train_seconds"] >= written["seconds_per_epoch"]
    # JAX alone keeps well over 50 MiB resident; 24 GB is this machine's whole memory.
    assert 50 < written["peak_memory_mib"] < 24 * 1024
    assert isinstance(written["git_commit"], str) and written["git_commit"]
    # Every epoch was trained by this process, so one segment covers them all.
    assert written["code_history"] == [
        {"epochs": [0, len(written["history"]) - 1], "git_commit": written["git_commit"]}]
    assert math.isfinite(written["history"][0]["loss"])
    if procedure == "variational":  # 2 steps: the checkpoint of the only epoch exists.
        assert (tmp_path / "checkpoints" / "train" / "0").is_dir()
    else:  # one checkpoint directory per retraining phase
        assert any((tmp_path / "checkpoints").iterdir())


@pytest.mark.parametrize(
    "group, registry",
    [("model", models.REGISTRY), ("data", data.REGISTRY)],
    ids=["model", "data"],
)
def test_group_names_are_registry_keys(group, registry):
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        cfg = OmegaConf.load(path)
        assert cfg.name in registry, f"{path}: name {cfg.name!r} is not in {sorted(registry)}"
        assert cfg.name == path.stem, f"{path}: name {cfg.name!r} differs from the file name"


def test_method_components_are_registry_keys():
    methods = sorted((CONF_DIR / "method").glob("*.yaml"))
    assert methods
    for path in methods:
        cfg = OmegaConf.load(path)
        assert cfg.name == path.stem, path
        assert cfg.prior.name in priors.REGISTRY, (path, cfg.prior.name, priors.names())
        assert cfg.posterior in posteriors.REGISTRY, (path, cfg.posterior)


def test_every_registered_model_and_dataset_has_a_config():
    # The reverse direction: no registry entry without its option file (no orphans).
    assert set(models.REGISTRY) == {p.stem for p in (CONF_DIR / "model").glob("*.yaml")}
    assert set(data.REGISTRY) == {p.stem for p in (CONF_DIR / "data").glob("*.yaml")}


def test_every_prior_used_by_a_method_builds_its_layers():
    # A method's prior and posterior must have a registered KL: build one tiny layer each.
    from flax import nnx

    from bayescomp.nn import from_config

    for path in sorted((CONF_DIR / "method").glob("*.yaml")):
        factory = from_config(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
        layer = factory.dense("fc1", 3, 2, rngs=nnx.Rngs(params=0))
        assert float(layer.kl()) == float(layer.kl())  # finite and computable
