"""The finished dense run a procedure starts from (``method.pretrained_run``, ``start_from``).

Deep Compression (Han, Mao & Dally, ICLR 2016) and soft weight-sharing (Ullrich, Meeds &
Welling, ICLR 2017) compress a network that was first trained dense. :func:`load_pretrained`
finds that run, checks that it is a finished dense run of the same model on the same data and
preprocessing, and rebuilds its network: from its last checkpoint, or, where the run directory
holds no checkpoints (a published run: ``config.yaml``, ``metrics.json`` and ``model.bcz``), from
its ``model.bcz`` (written by ``python -m bayescomp.compress``, which publishing a run runs). A
dense run's file keeps every weight, rounded to a multiple of 2^-23 (point weights have zero
variance, so they get the full 23 significand bits: at most 6e-8 from the trained value), its
biases and BatchNorms as float32, so it decodes to the network the run tested up to that
rounding; the procedures measure its test error again before they start
(``pretrained_test_error``, checked against the run's own by :func:`check_loaded`).
:func:`start_from` loads such a run into a network with other posteriors or channel modules
(``method.start_from``: variational CNN pruning, and Bayesian Compression's VGG-like runs, which
start from a pretrained network).
"""

from __future__ import annotations

import copy
import pathlib

import numpy as np
from flax import nnx
from omegaconf import DictConfig, open_dict
from omegaconf.errors import MissingMandatoryValue

from bayescomp import data as data_lib
from bayescomp import metrics, runs
from bayescomp.errors import CompressedFileError, ConfigError
from bayescomp.nn import fold


def load_pretrained(cfg: DictConfig) -> tuple[nnx.Module, dict]:
    """The dense network a retraining starts from, and the metrics of its run.

    Args:
        cfg: This run's configuration; ``cfg.method.pretrained_run`` is the output directory
            (``hydra.run.dir``) of a finished dense run (``<model>_dense``) of ``cfg.model`` on
            ``cfg.data``.

    Returns:
        ``(model, pretrained_metrics)``: the model with the trained point weights (built by
        :func:`bayescomp.runs.load_trained_model` from the run's last checkpoint, or by
        :func:`load_compressed` from its ``model.bcz`` where it has no checkpoints) and that
        run's ``metrics.json``, with ``loaded_from`` added: ``"checkpoint"`` or the path of
        the ``.bcz`` file.

    Raises:
        ConfigError: No run given, a path that is not a finished run, or a run of another model,
            dataset, preprocessing or method. The message says what to pass.
    """
    model_name, data_name = str(cfg.model.name), str(cfg.data.name)
    expected = f"{model_name}_dense"
    hint = (f"set method.pretrained_run=DIR of a finished {expected} run on {data_name} (train "
            f"one with: python -m bayescomp.run +experiment={expected} data={data_name} "
            "hydra.run.dir=DIR)")
    try:
        run = cfg.method.get("pretrained_run")
    except MissingMandatoryValue:
        run = None
    if run is None or not str(run).strip():
        raise ConfigError(f"method {cfg.method.name} retrains a finished dense network, but "
                          f"method.pretrained_run is not set; {hint}")
    run_dir = pathlib.Path(str(run)).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(f"method.pretrained_run={run_dir} is not a directory; {hint}")
    compressed = run_dir / COMPRESSED_FILE
    checkpoints = run_dir / "checkpoints" / runs.TRAIN_PHASE
    from_file = compressed.is_file() and not (checkpoints.is_dir() and any(checkpoints.iterdir()))
    try:
        if from_file:
            pretrained_cfg, model = load_compressed(run_dir, compressed)
        elif not checkpoints.is_dir() and any(
                (run_dir / name).is_file() for name in ("config.yaml", ".hydra/config.yaml")):
            raise ConfigError(f"it has neither {checkpoints.relative_to(run_dir)} nor "
                              f"{COMPRESSED_FILE}: rerun its command to train it, or copy the "
                              f"run's {COMPRESSED_FILE} into it")
        else:
            pretrained_cfg, model, _ = runs.load_trained_model(run_dir)
    except ConfigError as error:
        raise ConfigError(f"method.pretrained_run={run_dir}: {error}; or {hint}") from None
    found = (str(pretrained_cfg.model.name), str(pretrained_cfg.data.name),
             str(pretrained_cfg.method.get("posterior", "delta")))
    if found[0] != model_name or found[1] != data_name:
        raise ConfigError(f"method.pretrained_run={run_dir} is a {found[0]} run on {found[1]}, "
                          f"this run retrains {model_name} on {data_name}; {hint}")
    if found[2] != "delta" or str(pretrained_cfg.method.name) != "dense":
        raise ConfigError(f"method.pretrained_run={run_dir} is a {pretrained_cfg.method.name} "
                          f"run, not a dense run; {hint}")
    preprocess = (pretrained_cfg.data.get("preprocess", "reference"),
                  cfg.data.get("preprocess", "reference"))
    if preprocess[0] != preprocess[1]:
        raise ConfigError(f"method.pretrained_run={run_dir} was trained on data.preprocess="
                          f"{preprocess[0]}, this run uses {preprocess[1]}; use the same "
                          "preprocessing")
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise ConfigError(f"method.pretrained_run={run_dir} has not finished (no metrics.json); "
                          f"rerun its command to finish it, or {hint}")
    pretrained_metrics = dict(metrics.read_metrics(run_dir))
    if from_file and pretrained_metrics.get("compressed_bytes") not in (
            None, compressed.stat().st_size):
        raise ConfigError(f"method.pretrained_run={run_dir}: its {COMPRESSED_FILE} has "
                          f"{compressed.stat().st_size} bytes, its metrics.json records "
                          f"{pretrained_metrics['compressed_bytes']}, so the file is not the "
                          f"one the run wrote; restore the run's own file, or {hint}")
    pretrained_metrics["loaded_from"] = str(compressed.resolve()) if from_file else "checkpoint"
    return model, pretrained_metrics


def check_loaded(pretrained_metrics: dict, error: float) -> float:
    """``error``, the test error of the network :func:`load_pretrained` returned, measured by
    the procedure, after checking that a network loaded from a ``.bcz`` file is the run's own.

    The file records no seed, and the files of a model's seeds have the same size, so another
    seed's file in the directory would pass every check of :func:`load_compressed`; its error
    would not be the one the run measured on its file (``compressed_test_error``). Up to 0.05
    points (five CIFAR-10 test images) is allowed, as :func:`check_start` allows: the same
    network on other hardware may flip a near tie.

    Raises:
        ConfigError: It differs by more than 0.05 points.
    """
    recorded = pretrained_metrics.get("compressed_test_error",
                                      pretrained_metrics.get("test_error"))
    if pretrained_metrics.get("loaded_from", "checkpoint") == "checkpoint" or recorded is None:
        return error
    if abs(float(recorded) - error) > 0.05:
        raise ConfigError(f"{pretrained_metrics['loaded_from']} scores {error:.2f} % test error "
                          f"here but {float(recorded):.2f} % in its own run, so it is not that "
                          "run's network (or not this data: data.dir, data.preprocess); restore "
                          "the run's own file")
    return error


#: The compressed network ``python -m bayescomp.compress`` writes into a run's directory.
COMPRESSED_FILE = "model.bcz"


def load_compressed(run_dir: pathlib.Path, path: pathlib.Path) -> tuple[DictConfig, nnx.Module]:
    """A finished dense run's network rebuilt from its ``.bcz`` file and its ``config.yaml``.

    The decoded point network (:func:`bayescomp.compression.codec.load`) is loaded into the
    model the run's config builds (:func:`bayescomp.nn.fold.load_plain`), so the model has the
    run's own layers and BatchNorm settings, as :func:`bayescomp.runs.load_trained_model`'s.

    Raises:
        ConfigError: The file cannot be decoded, is another model's, dataset's or
            preprocessing's, removes weights (a pruned network is no dense starting point) or
            holds weights rounded to fewer than 23 bits or shared values (a quantized network).
            The file's size is checked against ``metrics.json`` by :func:`load_pretrained`,
            its test error by :func:`check_loaded`.
    """
    from bayescomp.bit_precision import MAX_SIGNIFICAND_BITS
    from bayescomp.compression import codec, container  # late: codec pulls in the model stack

    cfg = runs.read_run_config(run_dir)
    restore = (f"restore the run's own {path.name} (a published run's is in git), or write it "
               "again with python -m bayescomp.compress on the run's training directory")
    try:
        decoded, network = codec.load(path)
    except CompressedFileError as error:
        what = str(error).removesuffix(f"; {container.HINT}")
        raise ConfigError(f"it has no checkpoints and its {path.name} cannot be read ({what}); "
                          f"{restore}") from None
    recorded = {"model": (network.model_name, str(cfg.model.name)),
                "dataset": (network.dataset, str(cfg.data.name)),
                "preprocess": (network.preprocess, str(cfg.data.get("preprocess", "reference")))}
    for field, (in_file, in_config) in recorded.items():
        if in_file is not None and in_file != in_config:
            raise ConfigError(f"its {path.name} holds a network of {field} {in_file}, its "
                              f"config.yaml says {in_config}, so the file is not this run's; "
                              f"{restore}")
    if not all(bool(np.all(mask)) for mask in network.masks):
        raise ConfigError(f"its {path.name} removes weights, so it is not the dense network "
                          f"the run trained; {restore}")
    bits = network.precision.bits_per_layer
    if network.codebooks is not None or min(bits) < MAX_SIGNIFICAND_BITS:
        # A dense run's point weights have zero variance: every layer gets 23 bits.
        how = "shared values" if network.codebooks is not None else f"{bits} bits"
        raise ConfigError(f"its {path.name} holds quantized weights ({how}), not the dense "
                          f"network the run trained; {restore}")
    spec = data_lib.REGISTRY[cfg.data.name]
    model = runs.build_model(cfg, spec.image_shape, spec.num_classes, int(cfg.seed))
    try:
        fold.load_plain(model, decoded)
    except ValueError as error:
        raise ConfigError(f"its {path.name} does not fit the model its config.yaml builds "
                          f"({error})") from None
    return cfg, model


def start_from(cfg: DictConfig, model: nnx.Module) -> dict | None:
    """Load ``cfg.method.start_from`` (a finished dense run) into ``model`` in place.

    Its weights become the posterior means (:meth:`~bayescomp.posteriors.base.Posterior.
    load_mean`: the variances keep their initialisation), its biases the mean network's biases
    (divided by E[z] where a group scale multiplies them), its BatchNorms are copied, and
    channel modules keep their identity initialisation (:func:`bayescomp.nn.fold.
    load_plain`), so the posterior-mean network of ``model`` is the dense network.

    Args:
        cfg: This run's configuration.
        model: The freshly built model of this run.

    Returns:
        ``None`` without ``method.start_from``; else ``{"run": path, "test_error": the dense
        run's test error, "loaded_from": as in load_pretrained}``.

    Raises:
        ConfigError: As :func:`load_pretrained` (with ``method.start_from`` named), or a dense
            run of other widths.
    """
    start = cfg.method.get("start_from")
    if start is None or not str(start).strip():
        return None
    as_pretrained = copy.deepcopy(cfg)
    with open_dict(as_pretrained):
        as_pretrained.method.pretrained_run = str(start)
    try:
        dense, dense_metrics = load_pretrained(as_pretrained)
    except ConfigError as error:
        raise ConfigError(str(error).replace("method.pretrained_run", "method.start_from")) \
            from None
    try:
        fold.load_plain(model, dense)
    except ValueError as error:
        raise ConfigError(f"method.start_from={start} does not fit this model ({error}); "
                          "start from a dense run with the same model.widths") from None
    return {"run": str(pathlib.Path(str(start)).expanduser().resolve()),
            "test_error": dense_metrics.get("test_error"),
            "loaded_from": dense_metrics["loaded_from"]}


def check_start(started: dict, error: float) -> float:
    """``error``, the test error of the network loaded from ``method.start_from`` before any
    training, after checking that it is the dense run's own (the posterior-mean network of the
    loaded model *is* that network, so the two agree up to float rounding of the evaluation:
    identical on the machine that trained it; on other hardware a near tie may flip, and more
    than 0.05 points, five CIFAR-10 test images, means another network or other data).

    Raises:
        ConfigError: They differ by more than 0.05 points (another dataset under the same name,
            or a network that did not load as it was trained).
    """
    recorded = started.get("test_error")
    if recorded is not None and abs(float(recorded) - error) > 0.05:
        raise ConfigError(f"method.start_from={started['run']} scores {error:.2f} % test error "
                          f"loaded here but {float(recorded):.2f} % in its own run; start from a "
                          "dense run trained on this data (data.dir, data.preprocess)")
    return error
