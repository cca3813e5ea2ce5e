"""Training and evaluation of one run: ``train_and_evaluate(cfg, workdir) -> metrics``.

No Hydra here (``bayescomp.run`` is the command-line entry), so tests call this directly.

Speed by design (profile: ``benchmarks/train_speed.py``):

* the whole dataset sits in device arrays; each epoch draws one permutation and a jitted
  ``lax.scan`` runs ``chunk_steps`` optimisation steps per call, gathering batches by index
  inside the jit (no per-example Python, one dispatch per chunk);
* the step is a pure function of ``(params, opt_state)``: the model is rebuilt from its
  ``GraphDef`` inside the trace (``nnx.merge``), so nothing retraces across chunks or epochs
  (the KL weight enters as a traced scalar);
* evaluation is a jitted scan over fixed-size test batches.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import resource
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from omegaconf import DictConfig, OmegaConf

from bayescomp import atomic, fusion
from bayescomp import data as data_lib
from bayescomp import models
from bayescomp import nn as bnn
from bayescomp import objectives, provenance, pruning, threshold_selection, xla_options
from bayescomp.checkpointing import Checkpointer, check_same_config, flatten_config
from bayescomp.compression import quantize as quantize_lib
from bayescomp.compression.report import compression_report
from bayescomp.errors import ConfigError, TrainingDivergedError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Building blocks


def build_model(cfg: DictConfig, input_shape, num_classes: int, seed: int) -> nnx.Module:
    """Instantiate ``cfg.model`` with the layers of ``cfg.method``."""
    factory = bnn.from_config(OmegaConf.to_container(cfg.method, resolve=True))
    model_cls = models.get(cfg.model.name)
    widths = cfg.model.get("widths")
    extra = {} if widths is None else {"widths": OmegaConf.to_object(widths)
                                       if OmegaConf.is_config(widths) else widths}
    model = model_cls(factory, rngs=nnx.Rngs(params=seed), input_shape=tuple(input_shape),
                      num_classes=num_classes, **extra)
    factory.check_layer_names(model_cls.layer_names)
    return model


def build_optimizer(cfg: DictConfig, total_steps: int) -> optax.GradientTransformation:
    """Adam with the configured learning-rate schedule (``conf/optimizer``)."""
    opt = cfg.optimizer
    if opt.name != "adam":
        raise ConfigError(f"unknown optimizer {opt.name!r}; known optimizers: adam")
    schedule = objectives.learning_rate_schedule(
        opt.lr, opt.schedule, total_steps, decay_start=opt.get("decay_start", 0.0))
    return optax.adam(schedule, b1=opt.b1, b2=opt.b2)


def _project(graphdef, params):
    """Apply every posterior's ``project()`` (e.g. BC's variance clipping) to ``params``."""
    model = nnx.merge(graphdef, params)
    for _, layer in objectives.variational_layers(model):
        layer.posterior.project()
    return nnx.state(model)


def materialize_posterior_gradients(graphdef, grads, runtime_one: jax.Array):
    """``grads`` unchanged, with the gradients of every posterior that asks for it
    (``Posterior.materialize_gradients``) computed once into memory (:mod:`bayescomp.fusion`).

    The boundary's function multiplies by ``runtime_one``, a 1 that XLA cannot see is 1 (it is
    computed from a traced value): XLA removes a conditional whose branches only pass their
    operands through, and with them the boundary.

    Args:
        graphdef: The training view's graph definition (``grads`` has its parameter structure).
        grads: Gradients, an ``nnx.State`` shaped like the parameters.
        runtime_one: A traced float32 scalar equal to 1.

    Returns:
        The gradients, equal to ``grads``.
    """
    grad_model = nnx.merge(graphdef, grads)
    for _, layer in objectives.variational_layers(grad_model):
        if layer.posterior.materialize_gradients:
            state = nnx.state(layer.posterior, nnx.Param)
            nnx.update(layer.posterior, fusion.materialized(
                lambda tree, one: jax.tree.map(lambda g: g * one, tree), state, runtime_one))
    return nnx.state(grad_model)


def make_train_chunk(graphdef, optimizer, n_train: int, batch_size: int,
                     loop: str = "scan") -> Callable:
    """Return a function running a chunk of optimisation steps.

    The returned ``train_chunk(params, opt_state, x_all, y_all, batch_index, key, kl_weight)``
    runs one step per row of ``batch_index`` (``(steps, batch)`` int32, rows of a permutation)
    and returns ``(params, opt_state, sums)`` where ``sums`` holds the summed loss, NLL, KL and
    number of correct training predictions over the chunk.

    A step differentiates ``mean NLL + β·KL/N`` but does not output its value: the update needs
    ∇KL, not KL, and where the KL's gradient is written out (log-uniform) its value is extra work
    over every weight (a ``log1p`` and a sum), about 7 % of a LeNet-300-100 Sparse VD step on
    the 2-core development CPU (one-process A/B runs). With the value not an output of the jitted
    step, XLA drops its computation. The KL in ``sums`` is therefore the KL of the chunk's final
    parameters, counted once per step (``steps · KL``), and the loss is
    ``Σ NLL + steps · β · KL / N``: NLL and accuracy of every step, the KL sampled once per chunk
    (100 steps by default; in a LeNet-300-100 Sparse VD run it moves by at most ~2 % per chunk,
    during the KL warm-up, and by ~0.3 % later).

    Args:
        graphdef: The training view's graph definition.
        optimizer: The optax transformation.
        n_train: Training-set size N (the KL is divided by it).
        batch_size: Examples per step.
        loop: ``"scan"``: the whole chunk is one jitted ``lax.scan`` (one dispatch per chunk; the
            fastest for dense models). ``"python"``: one jitted step, called in a Python loop.
            On XLA:CPU, convolution gradients inside a loop body run an order of magnitude slower
            than the same step jitted alone (measured 594 vs 54 ms per LeNet-5 step;
            jax-ml/jax#12868), so conv models train with ``"python"`` there; at ~50 ms a step
            the dispatch cost is negligible. :func:`choose_loop` picks.

    Either way the step is compiled with :func:`bayescomp.xla_options.jit_train_step`: on CPU,
    without YNNPACK library fusions, which made a LeNet-5 step ~20 % faster.
    """

    def loss_fn(params, x, y, key, beta):
        model = nnx.merge(graphdef, params)
        logits = model(x, rngs=nnx.Rngs(noise=key))
        nll = objectives.mean_nll(logits, y)
        loss = nll + beta * objectives.total_kl(model) / n_train
        correct = jnp.sum(jnp.argmax(logits, -1) == y)
        return loss, (nll, correct)

    # jax.grad, not value_and_grad: the loss value (and with it the KL's) is not computed.
    grad_fn = jax.grad(loss_fn, has_aux=True)

    def step(carry, inputs, x_all, y_all, beta):
        params, opt_state = carry
        idx, step_key = inputs
        grads, (nll, correct) = grad_fn(params, x_all[idx], y_all[idx], step_key, beta)
        grads = materialize_posterior_gradients(graphdef, grads, 1.0 + 0.0 * beta)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = _project(graphdef, optax.apply_updates(params, updates))
        return (params, opt_state), jnp.stack([nll, correct.astype(jnp.float32)])

    def chunk_sums(params, per_step_sums, steps, beta):
        """[Σ loss, Σ NLL, Σ KL, Σ correct] with the KL of the chunk's final parameters."""
        kl = objectives.total_kl(nnx.merge(graphdef, params))
        nll_sum, correct_sum = per_step_sums[0], per_step_sums[1]
        return jnp.stack([nll_sum + steps * beta * kl / n_train, nll_sum, steps * kl,
                          correct_sum])

    if loop == "scan":
        @xla_options.jit_train_step
        def train_chunk(params, opt_state, x_all, y_all, batch_index, key, beta):
            steps = batch_index.shape[0]
            keys = jax.random.split(key, steps)
            (params, opt_state), per_step = jax.lax.scan(
                lambda carry, inputs: step(carry, inputs, x_all, y_all, beta),
                (params, opt_state), (batch_index, keys))
            return params, opt_state, chunk_sums(params, per_step.sum(0), steps, beta)

        return train_chunk

    if loop != "python":
        raise ConfigError(f"unknown trainer.loop {loop!r}; known: auto, scan, python")
    jitted_step = xla_options.jit_train_step(step)
    split_keys = jax.jit(jax.random.split, static_argnums=1)
    jitted_sums = jax.jit(chunk_sums, static_argnums=2)

    def train_chunk(params, opt_state, x_all, y_all, batch_index, key, beta):
        steps = batch_index.shape[0]
        keys = split_keys(key, steps)
        carry, per_step = (params, opt_state), []
        for i in range(steps):
            carry, stats = jitted_step(carry, (batch_index[i], keys[i]), x_all, y_all, beta)
            per_step.append(stats)
        return (*carry, jitted_sums(carry[0], jnp.stack(per_step).sum(0), steps, beta))

    train_chunk.jitted_step = jitted_step  # exposed for compile-count checks
    return train_chunk


def choose_loop(model: nnx.Module, requested: str) -> str:
    """``trainer.loop``: ``"auto"`` is ``"python"`` for conv models on CPU, else ``"scan"``."""
    if requested != "auto":
        return requested
    has_conv = any(isinstance(m, bnn.VariationalConv) for _, m in nnx.iter_modules(model))
    return "python" if has_conv and jax.default_backend() == "cpu" else "scan"


def make_evaluate(graphdef, batch_size: int) -> Callable:
    """Return a jitted ``count_correct(params, x, y) -> int`` over fixed-size batches.

    ``x`` is padded to a multiple of ``batch_size``; padded rows carry label −1 and never count.
    """

    @jax.jit
    def count_correct(params, x_batches, y_batches):
        model = nnx.merge(graphdef, params)

        def body(total, batch):
            xb, yb = batch
            return total + jnp.sum(jnp.argmax(model(xb), -1) == yb), None

        total, _ = jax.lax.scan(body, jnp.zeros((), jnp.int32), (x_batches, y_batches))
        return total

    def evaluate_error(params, x, y) -> float:
        n = x.shape[0]
        n_batches = math.ceil(n / batch_size)
        pad = n_batches * batch_size - n
        xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
        yp = jnp.concatenate([y, -jnp.ones((pad,), y.dtype)]) if pad else y
        correct = count_correct(params, xp.reshape(n_batches, batch_size, *x.shape[1:]),
                                yp.reshape(n_batches, batch_size))
        return 100.0 * (1.0 - float(correct) / n)

    return evaluate_error


def load_run_dataset(cfg: DictConfig) -> "data_lib.Dataset":
    """The dataset named by a run's ``cfg.data``, found and preprocessed as the run found it."""
    dataset = data_lib.load_dataset(
        cfg.data.name, data_dir=cfg.data.get("dir"), tfds_data_dir=cfg.data.get("tfds_data_dir"),
        download=cfg.data.get("download", True), preprocess=cfg.data.get("preprocess", "reference"),
        seed=int(cfg.seed))
    log.info("dataset %s from %s: %d train / %d test", dataset.name, dataset.source,
             len(dataset.y_train), len(dataset.y_test))
    return dataset


def load_trained_model(run_dir: str | os.PathLike) -> tuple[DictConfig, nnx.Module, dict]:
    """Rebuild a run's model from its resolved config and its latest epoch checkpoint.

    Args:
        run_dir: The output directory of a run (it holds ``.hydra/config.yaml`` and
            ``checkpoints/``; its ``config.yaml``, or Hydra's ``.hydra/config.yaml``).

    Returns:
        ``(cfg, model, meta)``: the run's configuration, the model with the trained parameters,
        and the checkpoint's metadata (``epoch``, ``history``, ``train_seconds``).

    Raises:
        ConfigError: ``run_dir`` is not a run directory or has no checkpoint.
    """
    run_dir = pathlib.Path(run_dir)
    cfg_path = next((p for p in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml")
                     if p.is_file()), None)
    if cfg_path is None:
        raise ConfigError(f"{run_dir} is not a bayescomp run directory (no config.yaml); pass "
                          "the hydra.run.dir of a run of python -m bayescomp.run")
    if not (run_dir / "checkpoints").is_dir():
        raise ConfigError(f"{run_dir} has no checkpoints/ directory; rerun its command to train "
                          "it (checkpoints are written every epoch)")
    cfg = OmegaConf.load(cfg_path)
    if cfg.data.name not in data_lib.REGISTRY:
        raise ConfigError(f"{cfg_path} names an unknown dataset {cfg.data.name!r}")
    spec = data_lib.REGISTRY[cfg.data.name]
    model = build_model(cfg, spec.image_shape, spec.num_classes, int(cfg.seed))
    _, params = nnx.split(nnx.view(model, deterministic=False, pruned=False))
    opt_state = build_optimizer(cfg, total_steps=1).init(params)  # only its structure matters
    # Read-only: a run may be loaded (diagnosed, compressed) while its process still trains.
    checkpointer = Checkpointer(run_dir / "checkpoints", read_only=True)
    step = checkpointer.latest_step()
    if step is None:
        raise ConfigError(f"{run_dir / 'checkpoints'} holds no checkpoint; rerun the run's "
                          "command to train it")
    (params, _, _), meta = checkpointer.restore(
        step, (params, opt_state, jax.random.key_data(jax.random.key(0))))
    checkpointer.close()
    nnx.update(model, params)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        # Thresholds the run chose (prune.select) or was configured with: the run's own masks.
        stored = read_metrics(run_dir).get("prune_thresholds")
        if stored:
            threshold_selection.set_thresholds(model, stored)
    return cfg, model, meta


#: Settings a resumed run may change: where the data is found, logging and evaluation, the run's
#: name, pruning (applied to the trained posterior, so a finished run can be re-evaluated at new
#: thresholds), ``method.pretrained_run`` (compared as a resolved path by the retraining
#: procedures, so ``~/x`` and ``/root/x`` are the same run) and, for the variational procedure,
#: the number of epochs (to train a finished run for longer; a warning says when the
#: learning-rate schedule depends on it). Every other setting shapes the trajectory and must
#: match the checkpoint. A key ending in "." covers its whole subtree.
RESUMABLE_CHANGES = ("experiment_name", "data.dir", "data.tfds_data_dir", "data.download",
                     "trainer.progress_bar", "trainer.tensorboard", "trainer.eval_batch_size",
                     "trainer.pruned_eval_every", "trainer.loop", "trainer.epochs",
                     "method.prune.", "method.pretrained_run")

#: Retraining procedures (Deep Compression, soft weight-sharing) derive each phase's masks and
#: codebooks from the phases before it, which a changed epoch count would retrain differently;
#: their checkpoints are only resumable with the same ``trainer.epochs``.
RESUMABLE_CHANGES_RETRAINING = tuple(k for k in RESUMABLE_CHANGES if k != "trainer.epochs")


def trajectory_config(cfg: DictConfig,
                      resumable: tuple[str, ...] = RESUMABLE_CHANGES) -> dict[str, Any]:
    """The resolved settings that determine the training trajectory, as flat dotted keys.

    Stored in every checkpoint and compared on resume (:func:`check_same_config`), so rerunning
    a run directory with, say, another learning rate is refused instead of silently continuing
    the old run under new settings.

    Args:
        cfg: The run's configuration.
        resumable: Keys (or subtrees, ending in ".") left out of the comparison.
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    return {key: value for key, value in flatten_config(container).items()
            if not any(key == skip or (skip.endswith(".") and key.startswith(skip))
                       for skip in resumable)}


#: What to do after a divergence. Resuming the same directory with another learning rate is
#: refused (it would continue a trajectory under new settings), so the advice is a new one.
_DIVERGED_ADVICE = ("the checkpoint of the last good epoch in {} is kept. Lower optimizer.lr, "
                    "lengthen trainer.kl_warmup, or check the data, then run again in a new "
                    "output directory (hydra.run.dir=...)")


def all_finite(tree) -> bool:
    """Whether every array of ``tree`` is free of NaN and ±inf (one host sync)."""
    flags = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return bool(jnp.all(jnp.stack(flags))) if flags else True


def check_trainer_settings(cfg: DictConfig) -> None:
    """Refuse trainer settings that cannot describe a run (before anything is loaded or written).

    Raises:
        ConfigError: ``trainer.epochs``, ``trainer.batch_size``, ``trainer.eval_batch_size`` or
            ``trainer.chunk_steps`` is not a positive integer.
    """
    for key in ("epochs", "batch_size", "eval_batch_size", "chunk_steps"):
        value = cfg.trainer.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"trainer.{key}={value!r} must be a positive integer")


#: What makes a run directory's run that run: another value for one of these is another run,
#: which must not overwrite it (whichever procedure either one uses; their checkpoints live in
#: different folders, so :func:`resume_checks` alone would not see the clash).
RUN_IDENTITY = ("model.name", "method.name", "data.name", "seed")


def check_run_identity(cfg: DictConfig, workdir) -> None:
    """Refuse to start a run in a directory that holds another run.

    ``workdir/config.yaml`` (:func:`write_config`) records the run that wrote the directory's
    checkpoints and results. If it names another model, method, dataset or seed, writing this
    run there would overwrite that run's ``metrics.json`` and leave a mixture of both runs'
    files, which ``bayescomp.compress`` would then read as one run.

    Raises:
        ConfigError: Naming each differing key as ``key: saved -> current``.
    """
    path = pathlib.Path(workdir) / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = OmegaConf.load(path)
    except Exception as error:  # noqa: BLE001 -- any YAML or OmegaConf parse failure
        raise ConfigError(f"{path} cannot be read ({type(error).__name__}); it records the run "
                          "in that directory: use a new hydra.run.dir") from None
    pairs = {key: (OmegaConf.select(saved, key), OmegaConf.select(cfg, key))
             for key in RUN_IDENTITY}
    differing = [f"{key}: {old!r} -> {new!r}" for key, (old, new) in pairs.items()
                 if old is not None and old != new]
    if differing:
        raise ConfigError(
            f"{workdir} holds another run ({'; '.join(differing)}), whose files this run would "
            "overwrite; run in a new output directory (hydra.run.dir=...)")


def resume_checks(meta: dict, cfg: DictConfig, directory, workdir,
                  resumable: tuple[str, ...] = RESUMABLE_CHANGES) -> None:
    """Raise if ``meta`` (a checkpoint's metadata) was saved under other training settings.

    ``workdir`` is the run directory, whose ``config.yaml`` (:func:`write_config`, rewritten
    only after a checkpoint) holds the checkpoint's settings; Hydra's ``.hydra/config.yaml``
    already holds the new ones by the time this runs.

    Raises:
        ConfigError: A trajectory setting differs (see :func:`trajectory_config`).
    """
    if "config" not in meta:
        log.info("the checkpoint in %s predates stored settings; resuming it unchecked",
                 directory)
    only_one_side = check_same_config(meta.get("config"), trajectory_config(cfg, resumable),
                                      directory, pathlib.Path(workdir) / "config.yaml")
    saved_epochs = meta.get("epochs")
    if (saved_epochs is not None and int(saved_epochs) != int(cfg.trainer.epochs)
            and cfg.optimizer.get("schedule", "constant") != "constant"):
        log.warning("the checkpoint in %s was trained for a %d-epoch run and is resumed for %d "
                    "epochs: the %s learning-rate schedule restarts from a different curve",
                    directory, int(saved_epochs), int(cfg.trainer.epochs),
                    cfg.optimizer.schedule)
    if only_one_side:
        log.warning("settings present in only one of the checkpoint in %s and this bayescomp "
                    "version (not compared): %s", directory, ", ".join(only_one_side))


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far, in MiB (``getrusage`` ``ru_maxrss``).

    On an accelerator this is host memory only; device memory is not included.
    """
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes vs KiB


def _chunk_steps(steps_per_epoch: int, requested: int) -> int:
    """Largest divisor of ``steps_per_epoch`` not above ``requested``: equal chunks, one trace."""
    requested = max(1, min(requested, steps_per_epoch))
    for size in range(requested, 0, -1):
        if steps_per_epoch % size == 0:
            return size
    return 1


# --------------------------------------------------------------------------------------------
# The run


def train_and_evaluate(cfg: DictConfig, workdir: str | os.PathLike) -> dict[str, Any]:
    """Train ``cfg.model`` with ``cfg.method`` on ``cfg.data``, prune, evaluate, write metrics.

    Rerunning with the same ``workdir`` resumes from the last epoch checkpoint.

    Args:
        cfg: The composed configuration (see ``conf/config.yaml``).
        workdir: Output directory: checkpoints, TensorBoard events, ``metrics.json``.

    Returns:
        The metrics dictionary also written to ``workdir/metrics.json``.

    Raises:
        BayescompError: Bad configuration, missing data, or a diverged run.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    check_trainer_settings(cfg)
    check_run_identity(cfg, workdir)
    trainer = cfg.trainer
    seed = int(cfg.seed)
    commit = log_code_version()

    dataset = load_run_dataset(cfg)

    model = build_model(cfg, dataset.x_train.shape[1:], dataset.num_classes, seed)
    batch_size = int(trainer.batch_size)
    n_train = int(dataset.x_train.shape[0])
    steps_per_epoch = n_train // batch_size  # the remainder of each permutation is dropped
    if steps_per_epoch < 1:
        raise ConfigError(f"trainer.batch_size={batch_size} exceeds the {n_train} training examples")
    epochs = int(trainer.epochs)
    chunk = _chunk_steps(steps_per_epoch, int(trainer.chunk_steps))
    optimizer = build_optimizer(cfg, epochs * steps_per_epoch)

    train_graphdef, params = nnx.split(nnx.view(model, deterministic=False, pruned=False))
    mean_graphdef, _ = nnx.split(nnx.view(model, deterministic=True, pruned=False))
    pruned_graphdef, _ = nnx.split(nnx.view(model, deterministic=True, pruned=True))
    opt_state = optimizer.init(params)
    key = jax.random.key(seed)

    loop = choose_loop(model, str(trainer.get("loop", "auto")))
    train_chunk = make_train_chunk(train_graphdef, optimizer, n_train, batch_size, loop)
    eval_batch = int(trainer.eval_batch_size)
    error_mean = make_evaluate(mean_graphdef, eval_batch)
    error_pruned = make_evaluate(pruned_graphdef, eval_batch)

    x_train = jnp.asarray(dataset.x_train)
    y_train = jnp.asarray(dataset.y_train)
    x_test = jnp.asarray(dataset.x_test)
    y_test = jnp.asarray(dataset.y_test)

    # Resume.
    checkpointer = Checkpointer(workdir / "checkpoints")
    history: list[dict] = []
    start_epoch = 0
    train_seconds = 0.0
    latest = checkpointer.latest_step()
    if latest is not None:
        try:  # settings first: a changed setting is named rather than a shape mismatch
            resume_checks(checkpointer.metadata(latest), cfg, checkpointer.directory, workdir)
            (params, opt_state, key_data), meta = checkpointer.restore(
                latest, (params, opt_state, jax.random.key_data(key)))
        except ConfigError:
            checkpointer.close()
            raise
        key = jax.random.wrap_key_data(jnp.asarray(key_data))
        history = meta["history"]
        start_epoch = int(meta["epoch"]) + 1
        train_seconds = float(meta["train_seconds"])
        log.info("resuming from %s at epoch %d", checkpointer.directory, start_epoch)

    writer = _summary_writer(workdir, trainer)
    progress = _progress_bar(trainer, epochs, start_epoch, steps_per_epoch)
    kl_start, kl_end = trainer.kl_warmup.start_epoch, trainer.kl_warmup.end_epoch

    for epoch in range(start_epoch, epochs):
        beta = objectives.kl_weight(epoch, kl_start, kl_end)
        key, perm_key, epoch_key = jax.random.split(key, 3)
        perm = jax.random.permutation(perm_key, n_train)[: steps_per_epoch * batch_size]
        batch_index = perm.reshape(steps_per_epoch, batch_size)
        sums = np.zeros(4)
        epoch_start = time.perf_counter()
        for c, chunk_key in enumerate(jax.random.split(epoch_key, steps_per_epoch // chunk)):
            params, opt_state, chunk_sums = train_chunk(
                params, opt_state, x_train, y_train, batch_index[c * chunk:(c + 1) * chunk],
                chunk_key, jnp.float32(beta))
            chunk_sums = np.asarray(chunk_sums)  # blocks: timing and NaN checks are per chunk
            if not np.all(np.isfinite(chunk_sums)):
                checkpointer.wait()
                raise TrainingDivergedError(
                    f"the loss became {chunk_sums[0]} in epoch {epoch} (steps {c * chunk}-"
                    f"{(c + 1) * chunk - 1}); {_DIVERGED_ADVICE.format(checkpointer.directory)}")
            sums += chunk_sums
            done = (c + 1) * chunk
            if progress is not None:
                progress.update(chunk)
                progress.set_postfix(epoch=epoch, loss=f"{sums[0] / done:.4f}",
                                     kl=f"{sums[2] / done:.4g}",
                                     acc=f"{sums[3] / (done * batch_size):.4f}")
        epoch_seconds = time.perf_counter() - epoch_start
        train_seconds += epoch_seconds
        # A finite loss does not prove finite parameters: the last update of the epoch comes
        # after its loss. Never checkpoint a non-finite state as the "last good" one.
        if not all_finite(params):
            checkpointer.wait()
            raise TrainingDivergedError(
                f"the parameters became non-finite at the end of epoch {epoch}; "
                f"{_DIVERGED_ADVICE.format(checkpointer.directory)}")

        test_error = error_mean(params, x_test, y_test)
        record = dict(epoch=epoch, loss=sums[0] / steps_per_epoch, nll=sums[1] / steps_per_epoch,
                      kl=sums[2] / steps_per_epoch, kl_weight=beta,
                      train_accuracy=sums[3] / (steps_per_epoch * batch_size),
                      test_error=test_error, seconds=epoch_seconds)
        if (epoch + 1) % int(trainer.pruned_eval_every) == 0 or epoch + 1 == epochs:
            record["pruned_test_error"] = error_pruned(params, x_test, y_test)
        history.append({**{k: float(v) for k, v in record.items()}, "git_commit": commit,
                        # this process compiled the step during its first epoch
                        "includes_compilation": float(epoch == start_epoch),
                        # the run length this epoch was trained for (a resumed run may change
                        # it, which changes a decaying learning-rate schedule)
                        "planned_epochs": float(epochs)})
        _log_epoch(writer, model, params, record)
        checkpointer.save(epoch, (params, opt_state, jax.random.key_data(key)),
                          dict(epoch=epoch, history=history, train_seconds=train_seconds,
                               epochs=epochs, config=trajectory_config(cfg)))
        write_config(workdir, cfg)
    if progress is not None:
        progress.close()
    checkpointer.wait()
    checkpointer.close()

    # Final evaluation of the posterior-mean and the pruned network.
    nnx.update(model, params)
    metrics = _final_metrics(cfg, model, params, dataset, error_mean, x_test, y_test, history,
                             train_seconds, steps_per_epoch, batch_size, workdir)
    if writer is not None:
        writer.close()
    write_config(workdir, cfg)
    write_metrics(workdir, metrics)
    return metrics


def compression_snapshot(cfg: DictConfig, model: nnx.Module, dataset,
                         workdir: pathlib.Path) -> dict[str, Any]:
    """Prune, quantize and score ``model`` as it stands: what the run reports at its end.

    Thresholds come from threshold selection on training data when ``cfg.method.prune.select``
    is set (the chosen ones are set on ``model``), else from the layers' own thresholds. Then
    the masks are propagated across layers, the log α histograms saved in ``workdir/plots``, the
    kept posterior means rounded to their posterior-derived bits and evaluated on the test set.

    Returns:
        ``prune_thresholds``, ``threshold_selection`` (its trace, or None),
        ``pruned_test_error``, ``quantized_test_error`` (%) and :func:`compression_metrics`.
    """
    model_cls = models.get(cfg.model.name)
    eval_batch = int(cfg.trainer.eval_batch_size)
    x_test, y_test = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
    selection = (cfg.method.get("prune") or {}).get("select")
    selection_trace = None
    if selection:
        # Thresholds chosen on training data within an error tolerance (threshold_selection).
        subset = threshold_selection.selection_subset(
            dataset.x_train, dataset.y_train, int(selection.get("examples", 10000)),
            int(cfg.seed))
        error_of = _point_network_error(model_cls, model, dataset, subset, eval_batch)
        _, selection_trace = threshold_selection.select_thresholds(
            model, error_of, tolerance=float(selection.tolerance))
    pruned_graphdef, params = nnx.split(nnx.view(model, deterministic=True, pruned=True))
    pruned_error = make_evaluate(pruned_graphdef, eval_batch)(params, x_test, y_test)
    prune_thresholds = {name: layer.prune_threshold
                        for name, layer in objectives.variational_layers(model)}
    masks = pruning.propagated_masks(model)

    # The compressed network: kept posterior means rounded to the posterior-derived bits.
    quantized = quantize_lib.quantize(model, masks)
    quantized_model = quantize_lib.point_model(
        model_cls, quantized.kernels, quantized.biases, input_shape=dataset.x_train.shape[1:],
        num_classes=dataset.num_classes)
    q_graphdef, q_params = nnx.split(nnx.view(quantized_model, deterministic=True))
    quantized_error = make_evaluate(q_graphdef, eval_batch)(q_params, x_test, y_test)
    report = compression_report(quantized.masks, quantized.precision.bits_per_layer,
                                quantized.precision.exponent_bits, weights=quantized.kernels)
    # Last, once everything above has succeeded: a re-evaluation that fails (say, thresholds
    # that remove every weight) leaves the plots describing the metrics that are still there.
    pruning.save_log_alpha_histograms(model, workdir / "plots")
    return {
        "pruned_test_error": pruned_error,
        "prune_thresholds": prune_thresholds,
        "threshold_selection": selection_trace,
        **compression_metrics(masks, report.to_dict()),
        "quantized_test_error": quantized_error,
    }


def median_epoch_seconds(history: list[dict]) -> float:
    """Median training time of one epoch, leaving out epochs that include compilation.

    Those are the first epoch of every process (a resumed run compiles again), flagged
    ``includes_compilation``; in histories written before the flag existed, the first epoch.
    With no other epoch, the median of all of them.
    """
    compiled = [h.get("includes_compilation", float(i == 0)) for i, h in enumerate(history)]
    epoch_times = [h["seconds"] for h, c in zip(history, compiled) if not c]
    return float(np.median(epoch_times or [h["seconds"] for h in history]))


def _final_metrics(cfg, model, params, dataset, error_mean, x_test, y_test, history,
                   train_seconds, steps_per_epoch, batch_size,
                   workdir: pathlib.Path) -> dict[str, Any]:
    snapshot = compression_snapshot(cfg, model, dataset, workdir)
    seconds_per_epoch = median_epoch_seconds(history)
    planned = [int(h["planned_epochs"]) for h in history if "planned_epochs" in h]
    return {
        **run_identity(cfg, dataset),
        "epochs": len(history),
        # The run lengths its epochs were trained for, in order, each listed once: more than
        # one value means the run was resumed with another trainer.epochs (tables.recipe).
        "planned_epochs": list(dict.fromkeys(planned)),
        "test_error": error_mean(params, x_test, y_test),
        **snapshot,
        # Median over epochs of the training time of one epoch (excluding each process's
        # first, which includes compilation); evaluation and checkpointing are not included.
        "seconds_per_epoch": seconds_per_epoch,
        "images_per_second": steps_per_epoch * batch_size / seconds_per_epoch,
        "peak_memory_mib": peak_memory_mib(),
        "train_seconds": train_seconds,
        **code_metrics(history),
        **provenance.runtime(),
        "history": history,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def log_code_version() -> str:
    """Read (once per process, see :mod:`bayescomp.provenance`) and log the code's commit."""
    commit = provenance.git_commit()
    dirty = provenance.dirty_files()
    log.info("code: commit %s%s", commit, f" (changed: {', '.join(dirty)})" if dirty else "")
    return commit


def code_metrics(history) -> dict[str, Any]:
    """The provenance keys of ``metrics.json``: this process's commit, its local changes, and
    which commit trained which epochs (a resumed run may span several)."""
    return {
        "git_commit": provenance.git_commit(),
        "git_dirty_files": provenance.dirty_files(),
        "code_history": provenance.code_history(history),
    }


def run_identity(cfg: DictConfig, dataset) -> dict[str, Any]:
    """The keys of ``metrics.json`` that say which run it is (shared by every procedure)."""
    return {
        "experiment": cfg.get("experiment_name") or "custom",
        "model": cfg.model.name,
        "method": cfg.method.name,
        "dataset": dataset.name,
        "data_source": dataset.source,
        "seed": int(cfg.seed),
    }


def compression_metrics(masks: dict[str, np.ndarray], report: dict[str, Any]) -> dict[str, Any]:
    """The ``metrics.json`` keys of what was kept and how well it compresses.

    Args:
        masks: Keep masks by layer path, in layer order.
        report: ``CompressionReport.to_dict()`` of the compressed network.
    """
    weights_total, weights_kept, total_per_layer, kept_per_layer = \
        pruning.kept_weight_counts(masks)
    return {
        "weights_total": weights_total,
        "weights_kept": weights_kept,
        "percent_kept": 100.0 * weights_kept / weights_total,
        "compression_sparsity": weights_total / max(weights_kept, 1),
        "layers": list(masks),
        "total_per_layer": total_per_layer,
        "kept_per_layer": kept_per_layer,
        "architecture": report["architecture"],
        "architecture_string": report["architecture_string"],
        "bits_per_layer": report["bits_per_layer"],
        "exponent_bits": report["exponent_bits"],
        "compression": report["compression"],
        "compression_details": {k: v for k, v in report.items() if k not in (
            "compression", "architecture", "bits_per_layer", "exponent_bits")},
    }


def _point_network_error(model_cls, model, dataset, subset, batch_size: int):
    """``error_of(kernels, biases)`` on ``subset`` for point copies of ``model`` (one compile)."""
    kernels, biases = threshold_selection.masked_mean_params(model, pruning.own_masks(model))
    point = quantize_lib.point_model(model_cls, kernels, biases,
                                     input_shape=dataset.x_train.shape[1:],
                                     num_classes=dataset.num_classes)
    graphdef, _ = nnx.split(nnx.view(point, deterministic=True))
    evaluate = make_evaluate(graphdef, batch_size)
    x_subset, y_subset = subset

    def error_of(kernels, biases) -> float:
        for (_, layer), kernel, bias in zip(objectives.variational_layers(point), kernels, biases):
            layer.posterior.weight[...] = jnp.asarray(kernel)
            layer.bias[...] = jnp.asarray(bias)
        _, params = nnx.split(nnx.view(point, deterministic=True))
        return evaluate(params, x_subset, y_subset)

    return error_of


def write_config(workdir: pathlib.Path, cfg: DictConfig) -> None:
    """Write the resolved ``config.yaml`` of the run that wrote the latest checkpoint.

    It lets the run be rebuilt without Hydra (:func:`load_trained_model`,
    ``python -m bayescomp.compress``). Written after a checkpoint, never before: a run that fails
    (bad input, a NaN loss) leaves the previous one in place.
    """
    atomic.write_text(pathlib.Path(workdir) / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


def read_metrics(workdir: pathlib.Path) -> dict:
    """A run's ``metrics.json``.

    Raises:
        ConfigError: it cannot be read or is not a JSON object (nothing is written first, so
            a caller that reads it before writing anything loses nothing).
    """
    path = pathlib.Path(workdir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path} cannot be read as JSON ({error}); rerun the run's command in "
                          "its directory to rewrite it") from None
    if not isinstance(metrics, dict):
        raise ConfigError(f"{path} holds a JSON {type(metrics).__name__}, not an object; rerun "
                          "the run's command in its directory to rewrite it")
    return metrics


def write_metrics(workdir: pathlib.Path, metrics: dict) -> None:
    """Write ``metrics.json`` atomically (a crash never leaves a half-written file)."""
    atomic.write_text(pathlib.Path(workdir) / "metrics.json",
                      json.dumps(metrics, indent=2, sort_keys=False) + "\n")


# --------------------------------------------------------------------------------------------
# Logging


def _summary_writer(workdir: pathlib.Path, trainer):
    if not trainer.get("tensorboard", True):
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(workdir / "tensorboard"))


def _progress_bar(trainer, epochs, start_epoch, steps_per_epoch):
    if not trainer.get("progress_bar", True):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=(epochs - start_epoch) * steps_per_epoch, unit="step",
                dynamic_ncols=True, mininterval=1.0)


def _log_epoch(writer, model, params, record: dict) -> None:
    log.info("epoch %d: %s", record["epoch"], ", ".join(
        f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
    if writer is None:
        return
    epoch = int(record["epoch"])
    for k, v in record.items():
        if k != "epoch":
            writer.add_scalar(f"epoch/{k}", float(v), epoch)
    nnx.update(model, params)
    for name, layer in objectives.variational_layers(model):
        log_alpha = layer.log_alpha()
        if log_alpha is not None:
            writer.add_histogram(f"log_alpha/{name}", np.asarray(log_alpha).ravel(), epoch)
    writer.flush()
