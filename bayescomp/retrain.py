r"""Retraining a finished dense network: what Deep Compression and soft weight-sharing share.

Both methods compress a network that was first trained dense, by retraining it (Han, Mao & Dally,
"Deep Compression", ICLR 2016; Ullrich, Meeds & Welling, "Soft Weight-Sharing for Neural Network
Compression", ICLR 2017). This module holds the parts that are not specific to either:

* :func:`load_pretrained`: the dense network of ``cfg.method.pretrained_run``, checked to be a
  finished dense run of the same model on the same data;
* :class:`Retrainer`: a jitted training loop for point-weight models. It minimises

  .. math:: \mathcal L(\theta) = \frac1B \sum_{n \in \text{batch}} -\log p(y_n \mid x_n,
            W(\theta)) + R(\theta)

  where ``θ`` is any pytree of trainable arrays, ``W(θ)`` the model's kernels and biases built
  from it (the identity for plain retraining; a codebook gather for weight sharing) and ``R`` an
  optional user-supplied loss term (soft weight-sharing's ``−τ log p(w) / N``). Optional fixed
  masks zero both the gradient and the parameter of removed entries, so they stay exactly
  ``+0.0``. Each parameter group has its own Adam learning rate (``optax.multi_transform``). The
  data sit on the device; each epoch's batches are rows of a permutation drawn inside ``jit``;
  steps run in a jitted ``lax.scan`` (dense models) or a Python loop of jitted steps (conv models
  on CPU, :func:`bayescomp.train.choose_loop`, jax-ml/jax#12868). A retraining is a sequence of
  named :class:`Phase` s (e.g. prune round 1, 2, 3, centroid fine-tuning); each phase checkpoints
  every epoch in ``checkpoints/<phase>/``, so rerunning the command in the same directory skips
  finished phases and resumes the unfinished one;
* :func:`write_results`: the final ``metrics.json`` of a retrained, quantized point network with
  the keys the variational runs write (:func:`bayescomp.train.train_and_evaluate`), and the
  network itself as ``quantized_network.npz``, which ``python -m bayescomp.compress`` encodes.

Model parameters are handled as Flax's *pure dicts* (``nnx.to_pure_dict``): for the LeNets
``{"fc1": {"bias": b, "posterior": {"weight": W}}, ...}``; ``nnx.merge(graphdef, pure)`` rebuilds
the model inside a traced function. :func:`kernels_of`, :func:`biases_of` and
:func:`model_params` read and build them by layer name.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import time
import zlib
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from bayescomp import data as data_lib
from bayescomp import objectives, provenance, train, xla_options
from bayescomp.checkpointing import Checkpointer
from bayescomp.compression import quantize as quantize_lib
from bayescomp.compression.report import compression_report
from bayescomp.errors import ConfigError, TrainingDivergedError

log = logging.getLogger(__name__)

Pytree = Any

#: Where a pure dict keeps a layer's kernel and bias (``VariationalLayer`` with a ``Delta``
#: posterior: ``layer.posterior.weight`` and ``layer.bias``).
KERNEL_PATH = ("posterior", "weight")
BIAS_PATH = ("bias",)


# --------------------------------------------------------------------------------------------
# The pretrained network


def load_pretrained(cfg: DictConfig) -> tuple[nnx.Module, dict]:
    """The dense network a retraining starts from, and the metrics of its run.

    Args:
        cfg: This run's configuration; ``cfg.method.pretrained_run`` is the output directory
            (``hydra.run.dir``) of a finished dense run (``<model>_dense``) of ``cfg.model`` on
            ``cfg.data``.

    Returns:
        ``(model, pretrained_metrics)``: the model with the trained point weights (built by
        :func:`bayescomp.train.load_trained_model` from the run's last checkpoint) and that
        run's ``metrics.json``.

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
    try:
        pretrained_cfg, model, _ = train.load_trained_model(run_dir)
    except ConfigError as error:
        raise ConfigError(f"method.pretrained_run={run_dir}: {error}; or {hint}") from None
    found = (str(pretrained_cfg.model.name), str(pretrained_cfg.data.name),
             str(pretrained_cfg.method.get("posterior", "delta")))
    if found[0] != model_name or found[1] != data_name:
        raise ConfigError(f"method.pretrained_run={run_dir} is a {found[0]} run on {found[1]}, "
                          f"this run retrains {model_name} on {data_name}; {hint}")
    if found[2] != "delta":
        raise ConfigError(f"method.pretrained_run={run_dir} is a {pretrained_cfg.method.name} "
                          f"run (variational weights), not a dense run; {hint}")
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
    return model, train.read_metrics(run_dir)


# --------------------------------------------------------------------------------------------
# Parameters of point-weight models as pure dicts


def point_params(model: nnx.Module) -> dict:
    """The model's variables as a pure dict of arrays (``nnx.to_pure_dict``)."""
    return nnx.to_pure_dict(nnx.state(model))


def layer_names(model: nnx.Module) -> list[str]:
    """The model's weight layers, in definition order (dotted paths)."""
    return [name for name, _ in objectives.variational_layers(model)]


def _node(params: Mapping, name: str) -> Mapping:
    node = params
    for part in name.split("."):
        node = node[int(part)] if part not in node and part.isdigit() else node[part]
    return node


def _get(node: Mapping, path: tuple[str, ...]):
    for part in path:
        node = node[part]
    return node


def kernels_of(params: Mapping, names) -> dict[str, Any]:
    """``{layer: kernel}`` of a pure dict."""
    return {name: _get(_node(params, name), KERNEL_PATH) for name in names}


def biases_of(params: Mapping, names) -> dict[str, Any]:
    """``{layer: bias}`` of a pure dict."""
    return {name: _get(_node(params, name), BIAS_PATH) for name in names}


def model_params(kernels: Mapping[str, Any], biases: Mapping[str, Any]) -> dict:
    """The pure dict of a point-weight model with these kernels and biases, by layer name.

    Layer paths with dots (``"features.0"``) become nested dicts. Works on traced arrays, so it
    can be the ``to_model`` of a :class:`Retrainer` phase.
    """
    params: dict = {}
    for name, kernel in kernels.items():
        node = params
        for part in name.split("."):
            node = node.setdefault(part, {})
        node["bias"] = biases[name]
        node["posterior"] = {"weight": kernel}
    return params


def point_error(retrainer: "Retrainer", quantized: quantize_lib.QuantizedNetwork) -> float:
    """Test error (%) of the point network whose kernels and biases are ``quantized``'s."""
    return retrainer.error(model_params(dict(zip(quantized.names, quantized.kernels)),
                                        dict(zip(quantized.names, quantized.biases))))


# --------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass
class DeviceData:
    """A dataset with its splits as device arrays."""

    dataset: data_lib.Dataset
    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array


def load_data(cfg: DictConfig) -> DeviceData:
    """``cfg.data`` loaded as :func:`bayescomp.train.train_and_evaluate` loads it, on device."""
    dataset = train.load_run_dataset(cfg)
    return DeviceData(dataset, jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train),
                      jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test))


# --------------------------------------------------------------------------------------------
# The training loop


@dataclasses.dataclass(frozen=True)
class Phase:
    """One stretch of retraining with fixed masks, one objective and one optimiser.

    Attributes:
        name: Names the checkpoint directory ``checkpoints/<name>/`` and the history records;
            unique within a run.
        epochs: Epochs to train (0: nothing, the parameters pass through).
        learning_rates: Adam learning rate per parameter group (a group with rate 0 is frozen).
        labels: The group of every parameter: a pytree of group names with the structure of the
            parameters, or a function ``params -> labels`` (as ``optax.multi_transform`` takes);
            ``None`` puts every parameter in the single group of ``learning_rates``.
        schedule: ``"constant"`` or ``"linear_decay"`` (to 0 at the end of the phase, from
            ``decay_start``, a fraction of the phase), :func:`bayescomp.objectives.
            learning_rate_schedule`.
        decay_start: See ``schedule``.
    """

    name: str
    epochs: int
    learning_rates: Mapping[str, float]
    labels: Any = None
    schedule: str = "constant"
    decay_start: float = 0.0


def apply_masks(tree: Pytree, masks: Pytree | None) -> Pytree:
    """Zero the masked-out entries of ``tree``.

    Args:
        tree: Parameters or gradients.
        masks: ``None`` (nothing masked) or a pytree with ``tree``'s structure whose leaves are
            boolean keep masks (broadcastable to the leaf) or ``None`` (leaf not masked).

    Returns:
        ``tree`` with ``where(mask, x, 0)`` applied: a removed entry is ``+0.0`` exactly, never
        ``-0.0`` (a product with the mask would keep the sign of a negative zero).
    """
    if masks is None:
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    mask_leaves = treedef.flatten_up_to(masks)
    return treedef.unflatten([
        leaf if mask is None else jnp.where(mask, leaf, jnp.zeros_like(leaf))
        for leaf, mask in zip(leaves, mask_leaves)])


def _identity_model(params, constants):
    del constants
    return params


def make_step(graphdef, optimizer: optax.GradientTransformation, *,
              to_model: Callable | None = None, penalty: Callable | None = None,
              project: Callable | None = None) -> Callable:
    """One optimisation step of a point-weight model, a pure function (jit it).

    ``step((params, opt_state), batch_index, constants, masks, x_all, y_all)`` returns
    ``((params, opt_state), stats)`` with ``stats = [loss, nll, penalty, correct]`` where the
    loss is ``mean NLL + penalty``.

    Args:
        graphdef: The point model's graph definition.
        optimizer: The optax transformation.
        to_model: ``(params, constants) -> pure dict`` of the model's variables
            (:func:`model_params`); default: ``params`` are that pure dict.
        penalty: ``(params, constants) -> scalar`` added to the mean NLL; default none.
        project: ``(params, constants) -> params`` applied after each update (e.g. clipping);
            masks are applied after it.
    """
    to_model = to_model or _identity_model

    def loss_fn(params, constants, x, y):
        logits = nnx.merge(graphdef, to_model(params, constants))(x)
        nll = objectives.mean_nll(logits, y)
        extra = penalty(params, constants) if penalty is not None else jnp.zeros((), nll.dtype)
        correct = jnp.sum(jnp.argmax(logits, -1) == y)
        return nll + extra, (nll, extra, correct)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(carry, batch_index, constants, masks, x_all, y_all):
        params, opt_state = carry
        (loss, (nll, extra, correct)), grads = grad_fn(
            params, constants, x_all[batch_index], y_all[batch_index])
        # A removed entry gets no gradient (so Adam's moments stay 0 and its update is 0) and is
        # reset to 0 after the update as well, so it stays exactly 0 whatever the optimiser does.
        grads = apply_masks(grads, masks)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if project is not None:
            params = project(params, constants)
        params = apply_masks(params, masks)
        return (params, opt_state), jnp.stack([loss, nll, extra, correct.astype(jnp.float32)])

    return step


def make_chunk(step: Callable, loop: str) -> Callable:
    """``chunk(params, opt_state, constants, masks, x_all, y_all, batch_index)``: the steps of
    the rows of ``batch_index``, returning ``(params, opt_state, summed stats)``.

    ``loop="scan"`` jits the whole chunk as one ``lax.scan``; ``"python"`` jits one step and
    loops in Python (conv models on CPU; see :func:`bayescomp.train.make_train_chunk`).
    """
    if loop == "scan":
        @xla_options.jit_train_step
        def chunk(params, opt_state, constants, masks, x_all, y_all, batch_index):
            carry, stats = jax.lax.scan(
                lambda c, idx: step(c, idx, constants, masks, x_all, y_all),
                (params, opt_state), batch_index)
            return (*carry, stats.sum(0))

        return chunk
    if loop != "python":
        raise ConfigError(f"unknown trainer.loop {loop!r}; known: auto, scan, python")
    jitted = xla_options.jit_train_step(step)

    def chunk(params, opt_state, constants, masks, x_all, y_all, batch_index):
        carry, stats = (params, opt_state), []
        for i in range(batch_index.shape[0]):
            carry, s = jitted(carry, batch_index[i], constants, masks, x_all, y_all)
            stats.append(s)
        return (*carry, jnp.stack(stats).sum(0))

    chunk.jitted_step = jitted
    return chunk


def build_optimizer(phase: Phase, cfg: DictConfig, total_steps: int,
                    params: Pytree) -> optax.GradientTransformation:
    """Adam (``cfg.optimizer``'s betas) per parameter group at ``phase.learning_rates``."""
    if cfg.optimizer.name != "adam":
        raise ConfigError(f"unknown optimizer {cfg.optimizer.name!r}; known optimizers: adam")
    rates = dict(phase.learning_rates)
    if not rates:
        raise ConfigError(f"phase {phase.name} has no learning rate")

    def adam(rate: float) -> optax.GradientTransformation:
        if float(rate) < 0:
            raise ConfigError(f"phase {phase.name}: learning rate {rate} < 0")
        if float(rate) == 0:
            return optax.set_to_zero()
        schedule = objectives.learning_rate_schedule(float(rate), phase.schedule, total_steps,
                                                     decay_start=phase.decay_start)
        return optax.adam(schedule, b1=cfg.optimizer.b1, b2=cfg.optimizer.b2)

    labels = phase.labels
    if labels is None:
        if len(rates) != 1:
            raise ConfigError(f"phase {phase.name}: {len(rates)} learning rates but no labels")
        (group,) = rates
        labels = jax.tree.map(lambda _: group, params)
    used = set(jax.tree.leaves(labels(params) if callable(labels) else labels))
    if used - set(rates):
        raise ConfigError(f"phase {phase.name}: no learning rate for the groups "
                          f"{sorted(used - set(rates))}")
    return optax.multi_transform({g: adam(r) for g, r in rates.items() if g in used}, labels)


class Retrainer:
    """Retrains a point-weight model in named phases, with checkpoints, logs and history.

    Args:
        cfg: The run's configuration (``trainer``: batch sizes, chunking, loop, progress bar,
            TensorBoard; ``optimizer``: Adam's betas; ``seed``).
        workdir: The run directory (``checkpoints/<phase>/``, ``tensorboard/``).
        model: The point-weight model (its graph is used; its values are not).
        data: The data on device (:func:`load_data`).
        pretrained_run: Recorded in every checkpoint; resuming from checkpoints written for
            another pretrained run is refused.
    """

    def __init__(self, cfg: DictConfig, workdir: str | os.PathLike, model: nnx.Module,
                 data: DeviceData, pretrained_run: str = ""):
        self.cfg = cfg
        self.workdir = pathlib.Path(workdir)
        train.check_trainer_settings(cfg)
        train.check_run_identity(cfg, self.workdir)
        self.data = data
        # Resolved, so `~/runs/x` and `/root/runs/x` are recognised as the same run on resume.
        self.pretrained_run = str(pathlib.Path(str(pretrained_run)).expanduser().resolve())
        trainer = cfg.trainer
        self.batch_size = int(trainer.batch_size)
        self.n_train = int(data.x_train.shape[0])
        self.steps_per_epoch = self.n_train // self.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(f"trainer.batch_size={self.batch_size} exceeds the {self.n_train} "
                              "training examples")
        self.chunk = train._chunk_steps(self.steps_per_epoch, int(trainer.chunk_steps))
        self.graphdef, _ = nnx.split(nnx.view(model, deterministic=True))
        self.loop = train.choose_loop(model, str(trainer.get("loop", "auto")))
        self._evaluate = train.make_evaluate(self.graphdef, int(trainer.eval_batch_size))
        self.history: list[dict] = []
        self.train_seconds = 0.0
        self.git_commit = train.log_code_version()
        self.writer = train._summary_writer(self.workdir, trainer)
        steps, batch = self.steps_per_epoch, self.batch_size

        @jax.jit
        def batches(key):
            # The remainder of each permutation is dropped, as in train.py.
            return jax.random.permutation(key, self.n_train)[: steps * batch].reshape(steps, batch)

        self._batches = batches
        self._compiled: dict = {}

    def error(self, params: Mapping) -> float:
        """Test error (%) of the model whose variables are the pure dict ``params``."""
        return self._evaluate(params, self.data.x_test, self.data.y_test)

    def run(self, phase: Phase, params: Pytree, *, to_model: Callable | None = None,
            penalty: Callable | None = None, project: Callable | None = None,
            masks: Pytree | None = None, constants: Pytree | None = None,
            record: Callable[[Pytree], Mapping[str, float]] | None = None) -> Pytree:
        """Train ``params`` for ``phase.epochs`` epochs, or resume / skip from its checkpoints.

        Args:
            phase: The :class:`Phase`.
            params: Trainable parameters (any pytree of float arrays).
            to_model, penalty, project: See :func:`make_step`; they receive ``constants``.
            masks: Keep masks for ``params`` (see :func:`apply_masks`); passed to the jitted
                step as arguments, so phases that differ only in their masks trace alike.
            constants: Non-trainable arrays the functions need (e.g. codebook assignments),
                passed as jit arguments rather than baked into the compiled step; or a function
                ``phase_epoch -> constants`` for values that follow a schedule over the phase
                (e.g. an annealed penalty weight; the structure must not change, so one compiled
                step serves every epoch).
            record: ``params -> {name: float}`` added to each epoch's history record.

        Returns:
            The trained parameters (host or device arrays).

        Raises:
            TrainingDivergedError: The loss became NaN or infinite (the last good epoch's
                checkpoint is kept).
            ConfigError: The phase's checkpoints were written for another pretrained run or
                configuration.
        """
        epochs = int(phase.epochs)
        if epochs <= 0:
            return params
        masks = None if masks is None else jax.tree.map(
            lambda m: None if m is None else jnp.asarray(m), masks, is_leaf=lambda x: x is None)
        params = apply_masks(params, masks)
        # Phases that differ only in name and masks (the pruning rounds) share one optimiser and
        # one compiled step: masks and constants are arguments, not part of the trace.
        labels = phase.labels
        labels_key = labels if callable(labels) or labels is None else (
            jax.tree.structure(labels), tuple(jax.tree.leaves(labels)))
        cache_key = (epochs, tuple(sorted(phase.learning_rates.items())), phase.schedule,
                     float(phase.decay_start), labels_key, jax.tree.structure(params),
                     to_model, penalty, project)
        if cache_key not in self._compiled:
            optimizer = build_optimizer(phase, self.cfg, epochs * self.steps_per_epoch, params)
            self._compiled[cache_key] = (optimizer, make_chunk(make_step(
                self.graphdef, optimizer, to_model=to_model, penalty=penalty, project=project),
                self.loop))
        optimizer, chunk = self._compiled[cache_key]
        opt_state = optimizer.init(params)
        key = jax.random.fold_in(jax.random.key(int(self.cfg.seed)),
                                 zlib.crc32(phase.name.encode()))
        checkpointer = Checkpointer(self.workdir / "checkpoints" / phase.name)
        start = 0
        latest = checkpointer.latest_step()
        if latest is not None:
            try:  # settings first: a changed setting is named rather than a shape mismatch
                meta = checkpointer.metadata(latest)
                if meta.get("pretrained_run", self.pretrained_run) != self.pretrained_run:
                    raise ConfigError(
                        f"the checkpoints in {checkpointer.directory} were retrained from "
                        f"{meta['pretrained_run']}, not {self.pretrained_run}; run in a new "
                        "output directory (hydra.run.dir=...) or delete those checkpoints to "
                        "start over")
                train.resume_checks(meta, self.cfg, checkpointer.directory, self.workdir,
                                    train.RESUMABLE_CHANGES_RETRAINING)
                (params, opt_state, key_data), meta = checkpointer.restore(
                    latest, (params, opt_state, jax.random.key_data(key)))
            except ConfigError:
                checkpointer.close()
                raise
            key = jax.random.wrap_key_data(jnp.asarray(key_data))
            self.history = list(meta["history"])
            self.train_seconds = float(meta["train_seconds"])
            start = int(meta["phase_epoch"]) + 1
            if start < epochs:
                log.info("resuming phase %s from %s at epoch %d", phase.name,
                         checkpointer.directory, start)
        if start >= epochs:
            checkpointer.close()
            return params

        to_model = to_model or _identity_model
        progress = train._progress_bar(self.cfg.trainer, epochs, start, self.steps_per_epoch)
        if progress is not None:
            progress.set_description(phase.name)
        x_train, y_train = self.data.x_train, self.data.y_train
        n_chunks = self.steps_per_epoch // self.chunk
        constants_at = constants if callable(constants) else (lambda _epoch: constants)
        for phase_epoch in range(start, epochs):
            constants = constants_at(phase_epoch)
            key, perm_key = jax.random.split(key)
            batch_index = self._batches(perm_key)
            sums = np.zeros(4)
            epoch_start = time.perf_counter()
            for c in range(n_chunks):
                params, opt_state, chunk_sums = chunk(
                    params, opt_state, constants, masks, x_train, y_train,
                    batch_index[c * self.chunk:(c + 1) * self.chunk])
                chunk_sums = np.asarray(chunk_sums)  # blocks: timing and NaN checks per chunk
                if not np.all(np.isfinite(chunk_sums)):
                    checkpointer.wait()
                    checkpointer.close()
                    raise TrainingDivergedError(
                        f"the loss became {chunk_sums[0]} in phase {phase.name}, epoch "
                        f"{phase_epoch} (steps {c * self.chunk}-{(c + 1) * self.chunk - 1}); the "
                        f"checkpoint of the last good epoch in {checkpointer.directory} is kept. "
                        "Lower the phase's learning rates, then run again in a new output "
                        "directory (hydra.run.dir=...)")
                sums += chunk_sums
                if progress is not None:
                    done = (c + 1) * self.chunk
                    progress.update(self.chunk)
                    progress.set_postfix(epoch=phase_epoch, loss=f"{sums[0] / done:.4f}",
                                         acc=f"{sums[3] / (done * self.batch_size):.4f}")
            seconds = time.perf_counter() - epoch_start
            self.train_seconds += seconds
            if not train.all_finite(params):  # the epoch's last update follows its last loss
                checkpointer.wait()
                checkpointer.close()
                raise TrainingDivergedError(
                    f"the parameters became non-finite at the end of phase {phase.name}, epoch "
                    f"{phase_epoch}; the checkpoint of the last good epoch in "
                    f"{checkpointer.directory} is kept. Lower the phase's learning rates, then "
                    "run again in a new output directory (hydra.run.dir=...)")
            steps = self.steps_per_epoch
            record_ = {"epoch": len(self.history), "phase": phase.name,
                       "phase_epoch": phase_epoch, "loss": sums[0] / steps,
                       "nll": sums[1] / steps, "penalty": sums[2] / steps,
                       "train_accuracy": sums[3] / (steps * self.batch_size),
                       "test_error": self.error(to_model(params, constants)),
                       "seconds": seconds}
            if record is not None:
                record_.update(record(params))
            record_ = {k: v if isinstance(v, str) else float(v) for k, v in record_.items()}
            record_["git_commit"] = self.git_commit
            self.history.append(record_)
            self._log(record_)
            checkpointer.save(phase_epoch, (params, opt_state, jax.random.key_data(key)),
                              dict(phase=phase.name, phase_epoch=phase_epoch,
                                   history=self.history, train_seconds=self.train_seconds,
                                   pretrained_run=self.pretrained_run,
                                   config=train.trajectory_config(
                                       self.cfg, train.RESUMABLE_CHANGES_RETRAINING)))
            train.write_config(self.workdir, self.cfg)
        if progress is not None:
            progress.close()
        checkpointer.wait()
        checkpointer.close()
        return params

    def _log(self, record: dict) -> None:
        scalars = {k: v for k, v in record.items()
                   if k not in ("epoch", "phase", "phase_epoch") and not isinstance(v, str)}
        log.info("%s epoch %d (%d): %s", record["phase"], int(record["phase_epoch"]),
                 int(record["epoch"]), ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
        if self.writer is None:
            return
        for k, v in scalars.items():
            self.writer.add_scalar(f"epoch/{k}", float(v), int(record["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# --------------------------------------------------------------------------------------------
# Results


def codebook_precision(codebooks, kernels, masks) -> "quantize_lib.BitPrecision":
    """The :class:`~bayescomp.bit_precision.BitPrecision` of a weight-shared network.

    A codebook layer stores for each kept weight an index into ``K`` shared values, so its
    "bits per layer" (Table 2's bit precision) is the width of a fixed-length index,
    ``ceil(log2 K)`` (Han et al. 2016, §3: ``log2(k)`` bits per weight for ``k`` clusters; 0 for
    ``K = 1``). The index is the whole code (the shared value carries sign and magnitude), so
    there are no sign or exponent bits: ``exponent_bits = 0`` and ``bits_per_weight`` equals
    the index width. ``max_abs_weight`` is the largest kept magnitude.
    """
    from bayescomp.bit_precision import BitPrecision

    bits = [(int(np.size(c)) - 1).bit_length() if c is not None else 0 for c in codebooks]
    kept = [np.abs(np.asarray(k))[np.asarray(m, bool)] for k, m in zip(kernels, masks)]
    max_abs = max((float(k.max()) for k in kept if k.size), default=0.0)
    return BitPrecision(bits_per_layer=bits, exponent_bits=0, bits_per_weight=list(bits),
                        max_abs_weight=max_abs)


def write_results(cfg: DictConfig, workdir: str | os.PathLike, *,
                  quantized: quantize_lib.QuantizedNetwork, dataset: data_lib.Dataset,
                  test_error: float, pruned_test_error: float, quantized_test_error: float,
                  retrainer: Retrainer, pruning_accounting: str = "unstructured",
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``metrics.json``, ``quantized_network.npz`` and ``config.yaml`` of a retrained run.

    ``metrics.json`` has every key a variational run writes (``train._final_metrics``), so tables
    and ``python -m bayescomp.compress`` treat both alike. What they mean here:

    * ``test_error``: the network before compression (the pretrained dense network);
    * ``pruned_test_error``: the pruned network after retraining, before weight sharing;
    * ``quantized_test_error``: ``quantized`` (pruned and quantized), the network the compression
      columns describe and that ``python -m bayescomp.compress`` writes to a file;
    * ``compression.pruning``: by ``pruning_accounting``, the unstructured ratio
      ``|W| / (2|W≠0|)`` (default: magnitude pruning removes single weights, so the sparse
      format stores an index per kept weight; the starred entries of methods.md §3.4) or the
      structured one;
    * ``bits_per_layer``, ``exponent_bits``: ``quantized.precision`` (for codebook networks the
      index widths and 0, :func:`codebook_precision`); the Fast Prediction and Maximum
      Compression estimates of :func:`bayescomp.compression.report.compression_report` then use
      ``sign_bits = 0`` for codebook networks (the index is the whole code). The estimate does not
      count the codebooks' float32 entries; the measured file (``bayescomp.compress``) does;
    * ``seconds_per_epoch``: median over all retraining epochs; ``epochs``: all of them, over
      every phase (``history`` names each record's phase).

    Args:
        cfg: The run's configuration.
        workdir: The run directory.
        quantized: The final network (kernels with removed weights ``+0.0``).
        dataset: The dataset (name, source).
        test_error, pruned_test_error, quantized_test_error: See above, in %.
        retrainer: Its history, training time and batch geometry are recorded.
        pruning_accounting: ``"unstructured"`` or ``"structured"``.
        extra: Method-specific entries added to the metrics (e.g. per-round errors).

    Returns:
        The metrics written.
    """
    workdir = pathlib.Path(workdir)
    masks = dict(zip(quantized.names, quantized.masks))
    codebook_network = quantized.codebooks is not None
    report = compression_report(
        quantized.masks, quantized.precision.bits_per_layer, quantized.precision.exponent_bits,
        sign_bits=0 if codebook_network else 1, weights=quantized.kernels,
        pruning_accounting=pruning_accounting)
    report_dict = report.to_dict()
    history = retrainer.history
    epoch_times = [h["seconds"] for h in history]
    seconds_per_epoch = float(np.median(epoch_times)) if epoch_times else float("nan")
    metrics = {
        **train.run_identity(cfg, dataset),
        "epochs": len(history),
        # A retraining's length cannot change on resume (RESUMABLE_CHANGES_RETRAINING).
        "planned_epochs": [len(history)],
        "test_error": float(test_error),
        "pruned_test_error": float(pruned_test_error),
        # The variational runs' log-alpha thresholds (train._final_metrics); a retrained point
        # network has none (train.load_trained_model ignores a null here).
        "prune_thresholds": None,
        "threshold_selection": None,
        **train.compression_metrics(masks, report_dict),
        "quantized_test_error": float(quantized_test_error),
        "codebook_sizes": None if not codebook_network else [
            None if c is None else int(np.size(c)) for c in quantized.codebooks],
        "seconds_per_epoch": seconds_per_epoch,
        "images_per_second": retrainer.steps_per_epoch * retrainer.batch_size / seconds_per_epoch,
        "peak_memory_mib": train.peak_memory_mib(),
        "train_seconds": retrainer.train_seconds,
        **train.code_metrics(history),
        **provenance.runtime(),
        **dict(extra or {}),
        "history": history,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    quantize_lib.save_quantized(workdir / quantize_lib.QUANTIZED_FILE, quantized)
    train.write_config(workdir, cfg)
    train.write_metrics(workdir, metrics)
    return metrics
