"""The trainer: one readable set-up and loop, from an experiment config to checkpoints and metrics.

    trainer = Trainer(config, workdir)     # logging, mesh, input, model & optimizer, shard, step
    result = trainer.run()                 # evals + loop; resumes from <workdir>/checkpoints

The quantized ANN (or an STBP baseline, by `config.model.neuron_kind`) trains with softmax cross-
entropy on the input pipeline's `target` (one-hot, possibly smoothed or mixed). The update step is one
`jax.jit` with donated state and explicit in/out shardings; it is traced once. Per-step randomness is
`fold_in(rng, step)`, so a resumed run draws exactly what an uninterrupted one would.

Trainer keys of the config (see `configs.common.base_config` for defaults): `seed`, `total_steps` or
`total_epochs`, `batch_size`, `optax.*` (optimizer, weight decay and its exclusion regexes,
clipping, accumulation, EMA), `schedule.*`, `mesh`, `sharding_rules`, `log_every_steps`, `ckpt.*`,
`evals.*`, `nan_policy` / `nan_max_skips` (what a NaN/Inf loss or gradient does; see
docs/reliability.md); optional, only where a recipe sets it: `init_whiten` (patch-whitening init of
the stem from that many training images, `whiten_kernel`; 0 or absent: off). The model is built
by `model.build(config.model)`, the input by
`data.build_iterator(config, ...)`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ge2ms_jax import checkpoint as ckpt_lib
from ge2ms_jax import config_utils
from ge2ms_jax import metrics as metrics_lib
from ge2ms_jax import optim
from ge2ms_jax import sharding as sharding_lib
from ge2ms_jax import distill as distill_lib
from ge2ms_jax import evaluation
from ge2ms_jax import loading
from ge2ms_jax import sparsity as sparsity_lib
from ge2ms_jax import state as state_lib
from ge2ms_jax import workdir_lock
from ge2ms_jax.configs import common as configs_common

_log = logging.getLogger(__name__)

# The trainer's part of an experiment config, with defaults.
base_config = configs_common.base_config


# The train state lives in ge2ms_jax/state.py; these names stay importable from here.
TrainState = state_lib.TrainState
make_init_fn = state_lib.make_init_fn


class NonFiniteError(FloatingPointError):
  """A training metric became NaN/Inf; names the step, the metric and the last good checkpoint."""

  def __init__(self, message: str, step: int, metric: str, checkpoint: str | None):
    super().__init__(message)
    self.step, self.metric, self.checkpoint = step, metric, checkpoint


@dataclasses.dataclass
class TrainResult:
  """What `Trainer.run` returns."""
  status: str                       # "done" or "preempted".
  step: int
  state: TrainState
  history: list[dict[str, float]]   # The logged training metrics, one dict per logged step.
  evals: list[dict[str, float]]
  train_seconds: float = 0.0        # Wall time of this invocation's loop less evaluations and saves.
  eval_images: int = 0              # Images the evaluations of this invocation ran forward passes on.


def _require_teacher(distilling: bool, teacher: Any) -> None:
  if distilling and teacher is None:
    raise ValueError("update: config.distill.teacher is set, so the step needs the teacher's "
                     "variables as its third argument.")


def make_loss_fn(net, config: ml_collections.ConfigDict, ann_macs: float | None = None) -> Callable:
  """The training loss `(params, model_state, batch, rng[, teacher]) -> (loss, (logits, model_state, extra))`.

  Cross-entropy of `net` in training mode on `batch` (`"image"` f32 [B, H, W, C], `"target"`
  f32 [B, K]) against the soft targets; with distillation (`config.distill.teacher`) mixed with the
  KL term to `teacher`'s logits (its variables, run in eval mode); with spike-aware training
  (`config.sparsity`, needs `ann_macs`, the network's MACs per image) plus the SOPs/MAC penalty.
  `logits`: f32 [B, K]; `model_state`: the updated collections of `model_state` (the SOP
  statistics are read and dropped); `extra`: `distill_loss`, `sop_per_mac`, `sparsity_loss` as
  they apply (scalars).
  """
  spike_aware = sparsity_lib.enabled(config)
  sparsity = sparsity_lib.check(config)
  if spike_aware and not ann_macs:
    raise ValueError("make_update_fn: spike-aware training (config.sparsity) needs ann_macs, the "
                     "network's MACs per image (model.count(config.model)['macs']).")
  distill = distill_lib.check(config)
  distilling = bool(distill.teacher)

  def loss_fn(params, model_state, batch, rng, teacher=None):
    _require_teacher(distilling, teacher)
    mutable = list(model_state) + (["stats"] if spike_aware else [])
    variables = {"params": params, **model_state}
    if mutable:
      logits, new_model_state = net.apply(variables, batch["image"], train=True, mutable=mutable,
                                          rngs={"dropout": rng})
    else:
      logits = net.apply(variables, batch["image"], train=True, rngs={"dropout": rng})
      new_model_state = {}
    new_model_state = dict(new_model_state)
    logits = logits.astype(jnp.float32)  # The loss in float32 also under bf16 compute.
    loss = jnp.mean(optax.softmax_cross_entropy(logits, batch["target"]))
    extra = {}
    if distilling:
      teacher_logits = net.apply(teacher, batch["image"], train=False).astype(jnp.float32)
      extra["distill_loss"] = distill_lib.kl_term(logits, teacher_logits, distill.temperature)
      loss = (1.0 - distill.weight) * loss + distill.weight * extra["distill_loss"]
    if spike_aware:
      sops = sparsity_lib.total_sops(new_model_state.pop("stats")) / logits.shape[0]
      extra["sop_per_mac"] = sops / ann_macs
      extra["sparsity_loss"] = sparsity_lib.penalty(extra["sop_per_mac"], sparsity.weight, sparsity.target)
      loss = loss + extra["sparsity_loss"]
    return loss, (logits, new_model_state, extra)

  return loss_fn


def make_update_fn(net, tx: optax.GradientTransformation, schedule: optax.Schedule,
                   config: ml_collections.ConfigDict, ann_macs: float | None = None) -> Callable:
  """The pure update step `(state, batch[, teacher]) -> (state, metrics)`.

  `batch`: `"image"` f32 [B, H, W, C], `"label"` i32 [B], `"target"` f32 [B, K].
  `teacher`: with distillation (`config.distill.teacher`), the teacher's variables
  `{"params", "batch_stats", ...}` for `net` (run in eval mode, no gradient); else omitted.
  `metrics`: scalars `loss`, `accuracy`, `grad_norm`, `lr`; with spike-aware training
  (`config.sparsity`, needs `ann_macs`: the network's MACs per image) also `sop_per_mac` (the
  converted network's synaptic operations per image over `ann_macs`, on this batch) and
  `sparsity_loss` (its term of `loss`); with distillation `distill_loss` (the KL term, before its
  weight). The loss is `make_loss_fn`'s.
  """
  ema_decay = float(config.optax.ema_decay)
  accum = int(config.optax.grad_accum_steps)
  skip_non_finite = nan_policy(config) == "skip"
  loss_fn = make_loss_fn(net, config, ann_macs)
  distilling = bool(distill_lib.check(config).teacher)

  def update(state: TrainState, batch: Mapping[str, jax.Array], teacher: Any = None):
    _require_teacher(distilling, teacher)  # before the state is read, so the message names the cause
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    (loss, (logits, new_model_state, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.model_state, batch, rng, teacher)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema_decay:
      ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
    new_state = state.replace(step=state.step + 1, params=params,
                              model_state=dict(new_model_state), opt_state=opt_state,
                              ema_params=ema)
    grad_norm = optax.tree.norm(grads)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)),
        "grad_norm": grad_norm,
        "lr": schedule(state.step // accum),
        **extra,
    }
    if skip_non_finite:
      # Keep everything but the step counter: the bad batch leaves no trace in the state.
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      kept = state.replace(step=state.step + 1)
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, kept)
      metrics["skipped"] = 1.0 - finite.astype(jnp.float32)
    return new_state, metrics

  return update


NAN_POLICIES = ("stop", "skip")


def nan_policy(config: ml_collections.ConfigDict) -> str:
  """`config.nan_policy` checked ("stop" when the config predates it)."""
  policy = config.get("nan_policy", "stop")
  if policy not in NAN_POLICIES:
    raise ValueError(f"config.nan_policy={policy!r}; use one of {NAN_POLICIES}.")
  max_skips = config.get("nan_max_skips", 10)
  if not isinstance(max_skips, int) or max_skips < 0:
    raise ValueError(f"config.nan_max_skips={max_skips!r}; use an int >= 0.")
  return policy


def make_eval_fn(net, tta: str = "") -> Callable:
  """The pure eval step `(params, model_state, batch) -> sums` over the real (mask=1) examples.

  `batch`: `"image"`, `"label"`, `"target"`, and `"mask"` f32 [B] (0 for padding). With `tta`
  ("flip") the logits are the mean over the views of `evaluation.tta_views`.
  Returns `{"correct", "count", "loss_sum"}` float32 scalars.
  """
  evaluation.tta_views(jnp.zeros((1, 1, 1, 1)), tta)  # a bad mode fails here, not at the first evaluation

  def evaluate(params, model_state, batch):
    views = evaluation.tta_views(batch["image"], tta)
    logits = sum(net.apply({"params": params, **model_state}, v, train=False).astype(jnp.float32)
                 for v in views) / len(views)
    mask = batch["mask"] if "mask" in batch else jnp.ones(batch["label"].shape, jnp.float32)
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    xent = optax.softmax_cross_entropy(logits, batch["target"])
    return {"correct": jnp.sum(correct * mask), "count": jnp.sum(mask),
            "loss_sum": jnp.sum(xent * mask)}
  return evaluate


def jit_update_step(net, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    config: ml_collections.ConfigDict, state_shardings: Any, batch_sharding: Any,
                    replicated: Any, *, teacher_shardings: Any = None,
                    wrap_update: Callable | None = None) -> Callable:
  """The trainer's update step, jitted: `make_update_fn` with the state donated and every sharding
  fixed (`state_shardings`, a `TrainState` of shardings; `batch_sharding` for every batch leaf;
  metrics `replicated`). With `teacher_shardings` (distillation) it takes the teacher's variables
  as a third argument. `benchmarks/scale.py` lowers and compiles this same function ahead of time.
  """
  ann_macs = None
  if sparsity_lib.enabled(config):
    from ge2ms_jax import model as models  # pylint: disable=g-import-not-at-top
    ann_macs = float(models.count(config.model)["macs"])
  update = make_update_fn(net, tx, schedule, config, ann_macs)
  if wrap_update is not None:
    update = wrap_update(update)
  in_shardings = (state_shardings, batch_sharding)
  if teacher_shardings is not None:
    in_shardings += (teacher_shardings,)
  return jax.jit(update, donate_argnums=(0,), in_shardings=in_shardings,
                 out_shardings=(state_shardings, replicated))


# ---------------------------------------------------------------------------------------------
# Run length
# ---------------------------------------------------------------------------------------------
def num_examples(info: Any, split: str) -> int:
  """The number of examples of `split` from `data.dataset_info(config)` (its `splits` dict)."""
  counts = info.splits
  if split not in counts:
    raise ValueError(f"dataset has no split {split!r}; it has {sorted(counts)}.")
  return int(counts[split])


def run_length(config: ml_collections.ConfigDict, info: Any, train_split: str = "train"
               ) -> tuple[int, float]:
  """Returns (total steps, steps per epoch) from `total_steps` or `total_epochs`."""
  steps_per_epoch = num_examples(info, train_split) / config.batch_size if info else float("nan")
  if config.total_steps and config.total_steps > 0:
    return int(config.total_steps), steps_per_epoch
  if not info or not math.isfinite(steps_per_epoch):
    raise ValueError("config.total_steps is 0, so total_epochs needs the dataset size, which "
                     "data.dataset_info did not give; set config.total_steps.")
  total = int(math.ceil(config.total_epochs * steps_per_epoch))
  if total < 1:
    raise ValueError(f"config.total_epochs={config.total_epochs} gives {total} steps.")
  return total, steps_per_epoch


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------
def whiten_kernel(images: np.ndarray, kernel_shape: tuple[int, ...], eps: float = 5e-4) -> np.ndarray:
  """A first-layer kernel that whitens image patches (the fast-training recipes' "patch whitening").

  The covariance of the `k x k x C` patches of `images [N, H, W, C]` has eigenvectors `v_i` and
  eigenvalues `l_i`; the kernel's channels are `v_i / sqrt(l_i + eps)` and their negatives, for the
  `Cout // 2` largest eigenvalues (an odd last channel takes the next eigenvector), so that
  non-negative neurons see both signs of each whitened component.

  Returns:
    float32 `[k, k, C, Cout]`, as `kernel_shape`.
  """
  k, _, cin, cout = kernel_shape
  n, h, w, c = images.shape
  if c != cin or k * k * cin < (cout + 1) // 2:
    raise ValueError(f"whiten_kernel: images with {c} channels and kernel {kernel_shape} do not fit "
                     f"(need Cin = {cin} and at most {2 * k * k * cin} output channels).")
  x = images.astype(np.float64)
  patches = np.stack([x[:, i:i + h - k + 1, j:j + w - k + 1, :] for i in range(k) for j in range(k)], axis=-2)
  patches = patches.reshape(-1, k * k * cin)
  cov = np.cov(patches, rowvar=False)
  values, vectors = np.linalg.eigh(cov)
  order = np.argsort(values)[::-1]
  half = (cout + 1) // 2
  filters = vectors[:, order[:half]] / np.sqrt(values[order[:half]] + eps)
  kernel = np.concatenate([filters, -filters], axis=1)[:, :cout]
  return kernel.reshape(k, k, cin, cout).astype(np.float32)


def _default_data_module():
  from ge2ms_jax import data  # pylint: disable=g-import-not-at-top
  return data


def _default_net(config):
  from ge2ms_jax import model as models  # pylint: disable=g-import-not-at-top
  return models.build(config.model)


def train_split(config) -> str:
  """The split trained on: `config.data.train_split` ("train" by default)."""
  return config.get("data", {}).get("train_split", "train") or "train"


def eval_split(config) -> str:
  """The split evaluated: `config.evals.split`, else `config.data.eval_split` ("test")."""
  return config.evals.get("split") or config.get("data", {}).get("eval_split", "test") or "test"


def _close(iterator) -> None:
  close = getattr(iterator, "close", None)
  if close is not None:
    close()


# ---------------------------------------------------------------------------------------------
# Set-up: one small function per part, put together by `setup_run`
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class InputSetup:
  """The training input.

  Attributes:
    data: the input module (`dataset_info`, `build_iterator`).
    iterator: the training iterator, at the run's first batch (`get_state`/`set_state` resume it).
    batch_spec: the batches' `jax.ShapeDtypeStruct`s, e.g. `image` f32 [B, H, W, C].
    total_steps, steps_per_epoch: the run's length (`run_length`).
  """
  data: Any
  iterator: Any
  batch_spec: Mapping[str, jax.ShapeDtypeStruct]
  total_steps: int
  steps_per_epoch: float


@dataclasses.dataclass(frozen=True)
class RunSetup:
  """Everything a `Trainer` runs with, made once by `setup_run`.

  Attributes:
    mesh, batch_sharding, replicated: the device mesh, and how batches and metrics lie on it.
    input: the training input (`InputSetup`).
    schedule: the learning-rate schedule over optimizer updates.
    state: the network, optimizer and abstract train state (`state.StateSetup`).
    teacher: the distillation teacher's variables on the mesh, or None.
    update_fn: `(state, batch) -> (state, metrics)`, jitted, state donated.
    eval_fn: `(params, model_state, batch) -> sums`, jitted (`make_eval_fn`).
    checkpointer: the workdir's checkpoints.
  """
  mesh: jax.sharding.Mesh
  batch_sharding: Any
  replicated: Any
  input: InputSetup
  schedule: optax.Schedule
  state: state_lib.StateSetup
  teacher: Any
  update_fn: Callable
  eval_fn: Callable
  checkpointer: ckpt_lib.Checkpointer


def setup_mesh(config: ml_collections.ConfigDict, devices=None) -> jax.sharding.Mesh:
  """The ("data", "fsdp") mesh of `config.mesh`, with both batch sizes checked against it."""
  mesh = sharding_lib.make_mesh(config.mesh, devices)
  sharding_lib.check_batch_size(config.batch_size, mesh, "batch_size")
  sharding_lib.check_batch_size(config.evals.batch_size, mesh, "evals.batch_size")
  _log.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count())
  return mesh


def setup_input(config: ml_collections.ConfigDict, data_module, mesh: jax.sharding.Mesh) -> InputSetup:
  """The training iterator and the run's length; the first batch, peeked and rewound, gives the shapes."""
  data = data_module if data_module is not None else _default_data_module()
  total_steps, steps_per_epoch = run_length(config, data.dataset_info(config), train_split(config))
  iterator = data.build_iterator(config, split=train_split(config), global_batch_size=config.batch_size,
                                 sharding=sharding_lib.batch_sharding(mesh), seed=config.seed, train=True,
                                 num_epochs=None)
  start = iterator.get_state()
  first = next(iterator)
  iterator.set_state(start)  # The peeked batch is trained on in order.
  batch_spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in first.items()}
  _log.info("input: %s, %d steps (%.2f epochs at %.1f steps/epoch)",
            {k: (v.shape, str(v.dtype)) for k, v in batch_spec.items()}, total_steps,
            total_steps / steps_per_epoch if steps_per_epoch else float("nan"), steps_per_epoch)
  return InputSetup(data, iterator, batch_spec, total_steps, steps_per_epoch)


def setup_schedule(config: ml_collections.ConfigDict, inputs: InputSetup) -> optax.Schedule:
  """The learning-rate schedule over the run's optimizer updates (steps / accumulation)."""
  accum = max(1, config.optax.grad_accum_steps)
  per_epoch = inputs.steps_per_epoch / accum if math.isfinite(inputs.steps_per_epoch) else 0.0
  return optim.make_schedule(config, max(1, inputs.total_steps // accum), per_epoch)


def setup_state(config: ml_collections.ConfigDict, net, inputs: InputSetup, mesh: jax.sharding.Mesh,
                schedule: optax.Schedule, workdir: str) -> state_lib.StateSetup:
  """The network, optimizer and abstract train state; fails early when the workdir lacks
  `config.ckpt.min_free_mb` or room for two checkpoints of the state (one written beside the newest)."""
  image = inputs.batch_spec["image"]  # Initialized with one example: shapes are all it needs.
  setup = state_lib.make_setup(config, mesh, schedule, net=net if net is not None else _default_net(config),
                               images=jax.ShapeDtypeStruct((1, *image.shape[1:]), image.dtype))
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(setup.shapes.params))
  _log.info("model %s: %s parameters", type(setup.net).__name__, f"{num_params:,}")
  for line in sharding_lib.describe(setup.shapes.params, setup.shardings.params):
    _log.debug("param %s", line)
  min_free = int(config.ckpt.get("min_free_mb", 0) * 2**20)
  if min_free:  # 0 turns the space check off
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(setup.shapes))
    workdir_lock.require_free_space(workdir, max(min_free, 2 * state_bytes))
  return setup


def setup_teacher(config: ml_collections.ConfigDict, setup: state_lib.StateSetup) -> Any:
  """The distillation teacher's variables, laid out like the student's own; None without distillation.

  The teacher is an argument of the update step, not a constant folded into its program."""
  if not distill_lib.enabled(config):
    return None
  shardings = {"params": setup.shardings.params, **setup.shardings.model_state}
  teacher = loading.load(config, config.distill.teacher, adopt=False, what="config.distill.teacher")
  _log.info("distilling from %s (weight %g, temperature %g)", config.distill.teacher,
            config.distill.weight, config.distill.temperature)
  return jax.device_put(teacher.variables, shardings)


def setup_steps(config: ml_collections.ConfigDict, setup: state_lib.StateSetup, schedule: optax.Schedule,
                teacher: Any, wrap_update: Callable | None) -> tuple[Callable, Callable]:
  """The jitted `(state, batch) -> (state, metrics)` update and `(params, model_state, batch) -> sums`
  evaluation, with every sharding fixed."""
  batch_sharding, replicated = sharding_lib.batch_sharding(setup.mesh), sharding_lib.replicated(setup.mesh)
  teacher_shardings = None if teacher is None else jax.tree.map(lambda x: x.sharding, teacher)
  step = jit_update_step(setup.net, setup.tx, schedule, config, setup.shardings, batch_sharding, replicated,
                         teacher_shardings=teacher_shardings, wrap_update=wrap_update)
  update_fn = step if teacher is None else (lambda state, batch: step(state, batch, teacher))
  eval_fn = jax.jit(make_eval_fn(setup.net, config.evals.get("tta", "")),
                    in_shardings=(setup.shardings.params, setup.shardings.model_state, batch_sharding),
                    out_shardings=replicated)
  return update_fn, eval_fn


def setup_run(config: ml_collections.ConfigDict, workdir: str, *, net=None, data_module=None,
              devices=None, wrap_update: Callable | None = None) -> RunSetup:
  """Mesh, input, schedule, state, teacher, steps and checkpointer of a run, in that order."""
  mesh = setup_mesh(config, devices)
  inputs = setup_input(config, data_module, mesh)
  schedule = setup_schedule(config, inputs)
  state = setup_state(config, net, inputs, mesh, schedule, workdir)
  teacher = setup_teacher(config, state)
  update_fn, eval_fn = setup_steps(config, state, schedule, teacher, wrap_update)
  c = config.ckpt
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=c.keep or None,
                                       keep_period=c.keep_period or None, async_save=c.async_save)
  return RunSetup(mesh=mesh, batch_sharding=sharding_lib.batch_sharding(mesh),
                  replicated=sharding_lib.replicated(mesh), input=inputs, schedule=schedule, state=state,
                  teacher=teacher, update_fn=update_fn, eval_fn=eval_fn, checkpointer=checkpointer)


def restore_or_init(config: ml_collections.ConfigDict, run: RunSetup) -> TrainState:
  """The newest readable checkpoint in the workdir (and the input's position with it); else a fresh
  state, started from `config.init_from` or a patch-whitened stem (`config.init_whiten`) if set."""
  if run.checkpointer.latest_step() is not None:
    restored = run.checkpointer.restore(run.state.abstract)
    if restored.data_state is not None:
      run.input.iterator.set_state(restored.data_state)
    _log.info("resumed from step %d of %s", restored.step, run.checkpointer.directory)
    return restored.state
  state = run.state.init_on_mesh()
  if config.get("init_from"):
    return initialize_from(config, run.state, state, config.init_from)
  if config.get("init_whiten", 0):
    return whiten_stem(config, run, state, int(config.init_whiten))
  return state


def _with_params(config: ml_collections.ConfigDict, state: TrainState, params: Any, **fields) -> TrainState:
  """`state` with new `params` (and other `fields`); the EMA, when kept, restarts from them."""
  ema = jax.tree.map(jnp.copy, params) if config.optax.ema_decay else state.ema_params
  return state.replace(params=params, ema_params=ema, **fields)


def whiten_stem(config: ml_collections.ConfigDict, run: RunSetup, state: TrainState, count: int) -> TrainState:
  """`state` with the stem's kernel from patch-whitening statistics of about `count` training images
  (`whiten_kernel`); the training iterator is rewound, so the run sees the same batches."""
  iterator = run.input.iterator
  start = iterator.get_state()
  images = []
  while sum(len(x) for x in images) < count:
    images.append(np.asarray(jax.device_get(next(iterator)["image"]), np.float32))
  iterator.set_state(start)
  stem = state.params["stem_conv"]
  kernel = stem["syn"]["kernel"]
  whitened = whiten_kernel(np.concatenate(images)[:count], tuple(kernel.shape))
  whitened = jax.device_put(jnp.asarray(whitened, kernel.dtype), kernel.sharding)
  params = {**state.params, "stem_conv": {**stem, "syn": {**stem["syn"], "kernel": whitened}}}
  _log.info("stem kernel initialized from the patch-whitening statistics of %d training images", count)
  return _with_params(config, state, params)


def initialize_from(config: ml_collections.ConfigDict, setup: state_lib.StateSetup, state: TrainState,
                    path: str) -> TrainState:
  """`state` with its parameters and BatchNorm statistics from a trained model (fine-tuning: the
  optimizer, step and EMA start anew)."""
  variables = loading.load(config, path, adopt=False, what="config.init_from").variables
  params, model_state = state_lib.split_variables(variables)
  params = jax.device_put(params, setup.shardings.params)
  model_state = jax.device_put(dict(model_state), setup.shardings.model_state)
  _log.info("initialized from %s (fresh optimizer)", path)
  opt_state = jax.jit(setup.tx.init, out_shardings=setup.shardings.opt_state)(params)
  return _with_params(config, state, params, model_state=model_state, opt_state=opt_state)


class _DeferredMetrics:
  """Step metrics read one step late, so that the device computes the next step meanwhile: each step's
  are checked for NaN/Inf (`check(step, metrics)`) once the next step is queued, and logged steps'
  (`log(step, metrics) -> dict`, kept in `history`) once checked."""

  def __init__(self, check: Callable, log: Callable):
    self._check, self._log = check, log
    self._unchecked, self._pending = [], []
    self.history: list[dict[str, float]] = []

  def add(self, step: int, metrics: Mapping[str, jax.Array], log: bool) -> None:
    """Queues a step's metrics; checks and logs every earlier step's."""
    self._unchecked.append((step, metrics))
    self._check_first(len(self._unchecked) - 1)
    self._log_pending()
    if log:
      self._pending.append((step, metrics))

  def check_all(self) -> None:
    """Checks every queued step (before a checkpoint: only a state known to be finite is saved)."""
    self._check_first(len(self._unchecked))

  def flush(self) -> None:
    """Checks and logs everything queued."""
    self.check_all()
    self._log_pending()

  def _check_first(self, n: int) -> None:
    for step, metrics in self._unchecked[:n]:
      self._check(step, metrics)
    del self._unchecked[:n]

  def _log_pending(self) -> None:
    while self._pending:
      self.history.append(self._log(*self._pending.pop()))


class _AsideClock:
  """Wall time of a loop, less the time spent in calls made through `aside` (evaluations, saves)."""

  def __init__(self):
    self._start, self._aside = time.perf_counter(), 0.0

  def aside(self, fn: Callable, *args) -> Any:
    start = time.perf_counter()
    try:
      return fn(*args)
    finally:
      self._aside += time.perf_counter() - start

  def seconds(self) -> float:
    return time.perf_counter() - self._start - self._aside


class Trainer:
  """Sets up a training run; `run()` trains (resuming from `<workdir>/checkpoints` if present).

  The Trainer holds its workdir (`workdir_lock`, which first checks that the directory can be
  written and has `config.ckpt.min_free_mb` free) from construction until `close()`.

  Args:
    config: the experiment config.
    workdir: where checkpoints, metrics and the config go.
    net: the Flax module (default: `model.build(config.model)`).
    data_module: provides `dataset_info(config)` and `build_iterator(config, ...)` (default:
      `ge2ms_jax.data`).
    devices: the devices of the mesh (default: all).
    wrap_update: applied to the pure update function before `jax.jit` (tests pass
      `chex.assert_max_traces(n=1)`).
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, net=None,
               data_module=None, devices=None, wrap_update: Callable | None = None):
    self.config = config
    self.workdir = os.fspath(workdir)
    self.is_primary = jax.process_index() == 0
    self._consecutive_skips = 0
    # Before anything is written into it: a second launch on a held workdir stops here.
    workdir_lock.acquire(self.workdir, config, min_free_bytes=int(config.ckpt.get("min_free_mb", 0) * 2**20))
    try:
      self._save_config()
      self.writer = metrics_lib.MetricWriter(self.workdir, enabled=self.is_primary)
      self.setup = setup_run(config, self.workdir, net=net, data_module=data_module, devices=devices,
                             wrap_update=wrap_update)
      self.state = restore_or_init(config, self.setup)
    except BaseException:
      workdir_lock.release(self.workdir)
      raise
    self.step = int(jax.device_get(self.state.step))

  # The parts of the set-up the loop and callers use.
  mesh = property(lambda self: self.setup.mesh)
  net = property(lambda self: self.setup.state.net)
  data = property(lambda self: self.setup.input.data)
  teacher = property(lambda self: self.setup.teacher)
  checkpointer = property(lambda self: self.setup.checkpointer)
  train_iter = property(lambda self: self.setup.input.iterator)
  total_steps = property(lambda self: self.setup.input.total_steps)
  steps_per_epoch = property(lambda self: self.setup.input.steps_per_epoch)

  # ------------------------------------------------------------------------------------------
  def _save_config(self) -> None:
    path = os.path.join(self.workdir, "config.json")
    text = config_utils.to_json(self.config)
    if os.path.exists(path):
      with open(path) as f:
        try:
          old = json.load(f)
        except json.JSONDecodeError:
          old = None
      if old is not None:
        changed = config_utils.diff(config_utils.flatten(old),
                                    config_utils.flatten(json.loads(text)))
        for key, (before, after) in changed.items():
          _log.warning("config differs from the one saved in the workdir: %s: %r -> %r",
                       key, before, after)
    if self.is_primary:
      tmp = path + ".tmp"
      with open(tmp, "w") as f:
        f.write(text)
      os.replace(tmp, path)

  # ------------------------------------------------------------------------------------------
  # Evals
  # ------------------------------------------------------------------------------------------
  def evaluate(self, state: TrainState | None = None) -> dict[str, float]:
    """QANN top-1 (and loss) on `config.evals.split`, masked; with EMA weights too if enabled."""
    state = self.state if state is None else state
    return evaluate_params(self.setup.eval_fn, self.data, self.config, self.setup.batch_sharding, state)

  # ------------------------------------------------------------------------------------------
  # Loop
  # ------------------------------------------------------------------------------------------
  def run(self, callback: Callable[[int, "Trainer"], None] | None = None) -> TrainResult:
    """Trains to `total_steps`, logging, evaluating and checkpointing on the way.

    Args:
      callback: called as `callback(step, trainer)` after every step (tests use it to interrupt).

    Returns:
      A `TrainResult`; its status is "preempted" when a SIGTERM / preemption notice stopped the run
      after saving a checkpoint (run the same command again to resume).
    """
    config = self.config
    log_every, ckpt_every, eval_every = max(1, config.log_every_steps), config.ckpt.every_steps, config.evals.every_steps
    progress = metrics_lib.Progress(self.total_steps, self.step, config.batch_size)
    watcher = ckpt_lib.PreemptionWatcher()
    deferred = _DeferredMetrics(self._check_finite, lambda step, m: self._log_metrics(step, m, progress))
    clock = _AsideClock()
    evals, status = [], "done"
    try:
      with jax.set_mesh(self.mesh):
        while self.step < self.total_steps:
          self.state, step_metrics = self.setup.update_fn(self.state, next(self.train_iter))
          self.step += 1
          deferred.add(self.step, step_metrics, log=self.step % log_every == 0 or self.step == self.total_steps)
          if eval_every and self.step % eval_every == 0 and self.step != self.total_steps:
            deferred.flush()
            evals.append(clock.aside(self._log_eval, progress))
          preempted = watcher.reached(self.step)
          if preempted or self.step == self.total_steps or (ckpt_every and self.step % ckpt_every == 0):
            deferred.check_all()
            clock.aside(self.checkpointer.save, self.step, self.state, self.train_iter.get_state())
          if callback is not None:
            callback(self.step, self)
          if preempted:
            status = "preempted"
            progress.message(f"stopped at step {self.step} on a preemption notice; checkpoint "
                             "saved. Run the same command again to resume.")
            break
        deferred.flush()
        jax.block_until_ready(self.state)
        train_seconds = clock.seconds()
        if status == "done":
          evals.append(clock.aside(self._log_eval, progress))
    finally:
      watcher.close()
      self.checkpointer.wait()
      self.writer.flush()
    return TrainResult(status=status, step=self.step, state=self.state, history=deferred.history,
                       evals=evals, train_seconds=train_seconds,
                       eval_images=int(sum(e.get("num_examples", 0) * (2 if "top1_ema" in e else 1)
                                           for e in evals)))

  def _last_good_checkpoint(self) -> str | None:
    self.checkpointer.wait()  # A save in flight is of a state that passed its check.
    latest = self.checkpointer.latest_step()
    return None if latest is None else self.checkpointer.step_path(latest)

  def _check_finite(self, step: int, step_metrics: Mapping[str, jax.Array]) -> None:
    """Applies `config.nan_policy` to one step's metrics (fetched from the device here)."""
    values = jax.device_get({k: step_metrics[k] for k in ("loss", "grad_norm")})
    bad = [k for k in ("loss", "grad_norm") if not math.isfinite(float(values[k]))]
    if not bad:
      self._consecutive_skips = 0
      return
    metric = bad[0]
    what = "training " + ", ".join(f"{k} is {float(values[k])}" for k in bad) + f" at step {step}"
    policy = nan_policy(self.config)
    max_skips = self.config.get("nan_max_skips", 10)
    if policy == "skip":
      self._consecutive_skips += 1
      if self._consecutive_skips <= max_skips:
        _log.warning("%s; skipped that step's update (%d consecutive, at most %d).", what,
                     self._consecutive_skips, max_skips)
        return
      what += f", the {self._consecutive_skips}th step in a row (config.nan_max_skips={max_skips})"
    checkpoint = self._last_good_checkpoint()
    where = (f"The last good checkpoint is {checkpoint}; running the same command again resumes "
             "from it" if checkpoint else
             "No checkpoint was saved yet; running again starts from initialization")
    raise NonFiniteError(
        f"{what}; stopped. {where}. Lower optax.lr, enable optax.clip_norm, check the input, or "
        "set config.nan_policy='skip' to step over rare bad batches.", step, metric, checkpoint)

  def _log_metrics(self, step: int, step_metrics: Mapping[str, jax.Array],
                   progress: metrics_lib.Progress) -> dict[str, float]:
    values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    values["epoch"] = step / self.steps_per_epoch if self.steps_per_epoch else float("nan")
    rates = progress.update(step, {k: values[k] for k in ("loss", "lr", "sop_per_mac") if k in values},
                            force=True)
    values.update({k: v for k, v in rates.items() if k != "eta_sec"})
    self.writer.write(step, {f"train/{k}": v for k, v in values.items()})
    return {"step": step, **values}

  def _log_eval(self, progress: metrics_lib.Progress) -> dict[str, float]:
    result = self.evaluate()
    self.writer.write(self.step, {f"eval/{k}": v for k, v in result.items()})
    self.writer.flush()
    progress.message(f"eval at step {self.step}: " +
                     " ".join(f"{k}={v:.4f}" for k, v in result.items()))
    return {"step": self.step, **result}

  def close(self) -> None:
    """Waits for checkpoint writes, stops the input iterator, closes files and frees the workdir."""
    try:
      self.checkpointer.close()
      self.writer.close()
      _close(self.train_iter)
    finally:
      workdir_lock.release(self.workdir)


def evaluate_params(eval_fn: Callable, data_module, config: ml_collections.ConfigDict,
                    batch_sharding, state: TrainState) -> dict[str, float]:
  """Runs `eval_fn` over one pass of the eval split; returns top-1 (and EMA top-1) and loss."""
  variants = {"": state.params}
  if config.optax.ema_decay and state.ema_params:
    variants["_ema"] = state.ema_params
  out = {}
  split = eval_split(config)
  for suffix, params in variants.items():
    it = data_module.build_iterator(config, split=split, global_batch_size=config.evals.batch_size,
                                    sharding=batch_sharding, seed=config.seed, train=False,
                                    num_epochs=1)
    totals = None
    try:
      for batch in it:
        # Summed on the host in float64: no extra compilations, no float32 round-off over many batches.
        sums = {k: float(v) for k, v in jax.device_get(eval_fn(params, state.model_state, batch)).items()}
        totals = sums if totals is None else {k: totals[k] + sums[k] for k in totals}
    finally:
      _close(it)
    if totals is None:
      raise ValueError(f"the eval split {split!r} gave no batches.")
    count = totals["count"]
    out[f"top1{suffix}"] = float(totals["correct"]) / max(count, 1.0)
    out[f"loss{suffix}"] = float(totals["loss_sum"]) / max(count, 1.0)
    out["num_examples"] = count
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, **kwargs) -> TrainResult:
  """Builds a `Trainer` and runs it to the end (or to a preemption notice).

  Writes `<workdir>/result.json` (while the Trainer still holds the workdir): status, step, wall time
  (`seconds`: of the whole run, over the invocations a preempted run was resumed in;
  `seconds_this_invocation`), the time in training steps (`train_seconds`, evaluations and
  checkpoint saves left out) and the images evaluated during training (`eval_images`), both over the
  whole run (`cost.training_cost` reads them), and the last logged training metrics and evaluation
  (`train_loss`, `eval_top1`, ...), which sweeps collect.
  """
  path = os.path.join(workdir, "result.json")
  # Totals of the invocations this one resumes, so that the run's totals cover all of them.
  earlier = dict(seconds=0.0, train_seconds=0.0, eval_images=0)
  try:
    with open(path) as f:
      previous = json.load(f)
    if previous.get("status") == "preempted":
      earlier = {k: type(v)(previous.get(k, v)) for k, v in earlier.items()}
  except (OSError, ValueError, TypeError, AttributeError):
    pass
  trainer = Trainer(config, workdir, **kwargs)
  start = time.time()
  try:
    result = trainer.run()
    if jax.process_index() == 0:
      _write_result(path, result, earlier, time.time() - start)
  finally:
    trainer.close()
  return result


def _write_result(path: str, result: TrainResult, earlier: Mapping[str, Any], elapsed: float) -> None:
  summary = {"status": result.status, "step": result.step, "seconds": earlier["seconds"] + elapsed,
             "seconds_this_invocation": elapsed,
             "train_seconds": earlier["train_seconds"] + result.train_seconds,
             "eval_images": earlier["eval_images"] + result.eval_images,
             **({f"train_{k}": v for k, v in result.history[-1].items() if k != "step"}
                if result.history else {}),
             **({f"eval_{k}": v for k, v in result.evals[-1].items() if k != "step"}
                if result.evals else {})}
  with open(path + ".tmp", "w") as f:  # Replaced whole: a kill never leaves half a file.
    json.dump(summary, f, indent=2)
  os.replace(path + ".tmp", path)
