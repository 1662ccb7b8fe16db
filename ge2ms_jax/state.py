"""The train state: what a checkpoint holds, how it starts, and its abstract (shape-only, sharded) form.

    setup = state.make_setup(config, mesh, schedule)    # net, optimizer, init, shapes, shardings
    train_state = setup.init_on_mesh()                  # a TrainState laid out on the mesh
    restored = checkpointer.restore(setup.abstract)     # the same layout, from disk

    inference = state.inference_abstract(config, mesh, with_ema=True)  # no optimizer: what evaluation
    variables = state.qann_variables(checkpointer.restore(inference, partial=True).state)  # reads

The one place the network, the optimizer, the init function, `jax.eval_shape` and the sharding rules
are put together: the trainer, loading and the benchmarks build their state here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ge2ms_jax import optim
from ge2ms_jax import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds besides the input position.

  Attributes:
    step: int32 [] number of update steps taken.
    params: the model's trainable parameters (float32).
    model_state: the model's other variable collections, e.g. `{"batch_stats": ...}`.
    opt_state: the optax state.
    ema_params: exponential moving average of `params`, or `{}` when disabled.
    rng: uint32 key data of the run's base PRNG key; step `s` uses `fold_in(key, s)`.
  """
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  ema_params: Any
  rng: jax.Array


# The fields of a TrainState that inference reads (`inference_abstract`).
INFERENCE_FIELDS = ("step", "params", "model_state", "ema_params")


def split_variables(variables: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
  """`{"params": p, **rest}` -> `(p, rest)`: a Flax variables dict as parameters and model state."""
  variables = dict(variables)
  return variables.pop("params"), variables


def qann_variables(state: Any, use_ema: bool = True) -> dict:
  """The QANN variables `{"params", "batch_stats", ...}` of a `TrainState` or of the mapping a partial
  restore gives (`INFERENCE_FIELDS`): the EMA parameters when `use_ema` and the state has them."""
  get = state.get if isinstance(state, Mapping) else lambda name, default=None: getattr(state, name, default)
  ema = get("ema_params", None)
  params = ema if use_ema and ema else get("params")
  return {"params": params, **dict(get("model_state", {}) or {})}


def image_spec(model: ml_collections.ConfigDict, batch: int = 1) -> jax.ShapeDtypeStruct:
  """float32 `[batch, S, S, C]` images of `config.model` (its `image_size`, `in_channels`)."""
  return jax.ShapeDtypeStruct((batch, model.image_size, model.image_size, model.in_channels), jnp.float32)


def make_init_fn(net, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
                 images: jax.ShapeDtypeStruct) -> Callable:
  """`init(rng_data) -> TrainState` for images shaped like `images` ([B, H, W, C]); the EMA
  parameters start as a copy of the parameters when `config.optax.ema_decay` is set."""
  def init(rng_data):
    rng = jax.random.wrap_key_data(rng_data)
    params_rng, dropout_rng = jax.random.split(rng)
    image = jnp.zeros(images.shape, images.dtype)
    variables = net.init({"params": params_rng, "dropout": dropout_rng}, image, train=False)
    params, model_state = split_variables(variables)
    ema = jax.tree.map(jnp.copy, params) if config.optax.ema_decay else {}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=tx.init(params), ema_params=ema, rng=rng_data)
  return init


@dataclasses.dataclass(frozen=True)
class StateSetup:
  """A run's network and optimizer, and its train state as shapes and shardings (nothing allocated).

  Attributes:
    net: the Flax module.
    tx: the optimizer.
    init: `init(rng_data) -> TrainState` (`make_init_fn`).
    rng_data: the key data `init` starts from (`config.seed`).
    shapes: the TrainState's `jax.ShapeDtypeStruct`s.
    shardings: a TrainState of shardings from `config.sharding_rules` (None without a mesh).
    abstract: `shapes` carrying `shardings`: what a checkpoint restores onto.
    mesh: the mesh, or None.
  """
  net: Any
  tx: optax.GradientTransformation
  init: Callable
  rng_data: jax.Array
  shapes: TrainState
  shardings: TrainState | None
  abstract: TrainState
  mesh: jax.sharding.Mesh | None

  def init_on_mesh(self) -> TrainState:
    """A fresh TrainState, computed where it lives (each leaf on its sharding)."""
    if self.mesh is None:
      return jax.jit(self.init)(self.rng_data)
    return jax.jit(self.init, in_shardings=sharding_lib.replicated(self.mesh),
                   out_shardings=self.shardings)(self.rng_data)


def make_setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None,
               schedule: optax.Schedule | None = None, *, net=None,
               images: jax.ShapeDtypeStruct | None = None) -> StateSetup:
  """The network, optimizer and abstract train state of `config`.

  Args:
    config: the experiment config (`model`, `optax`, `seed`, `sharding_rules`).
    mesh: the mesh the state is laid out on; None: no shardings (one device).
    schedule: the learning-rate schedule; None: constant `config.optax.lr` (only the optimizer
      state's structure matters then).
    net: the Flax module (default `model.build(config.model)`).
    images: the images `init` traces with (default: one image of `config.model`'s shape).
  """
  if net is None:
    from ge2ms_jax import model as models  # pylint: disable=g-import-not-at-top
    net = models.build(config.model)
  tx = optim.make_optimizer(config, schedule if schedule is not None else
                            optax.constant_schedule(config.optax.lr))
  init = make_init_fn(net, tx, config, images if images is not None else image_spec(config.model))
  rng_data = jax.random.key_data(jax.random.key(config.seed))
  shapes = jax.eval_shape(init, rng_data)
  shardings = None if mesh is None else sharding_lib.infer_shardings(shapes, mesh, config.sharding_rules)
  return StateSetup(net=net, tx=tx, init=init, rng_data=rng_data, shapes=shapes, shardings=shardings,
                    abstract=sharding_lib.abstract(shapes, shardings), mesh=mesh)


def inference_abstract(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *,
                       with_ema: bool) -> dict[str, Any]:
  """The abstract `{"step", "params", "model_state"[, "ema_params"]}` of a checkpoint: what evaluation
  reads from a TrainState, laid out by `config.sharding_rules` on `mesh`, with no optimizer state, so
  that it does not depend on `config.optax` (`Checkpointer.restore(..., partial=True)`).

  Args:
    config: the experiment config (`model`, `sharding_rules`).
    mesh: the mesh the restored arrays live on.
    with_ema: include `ema_params` (shaped as `params`): the checkpoint kept an EMA.
  """
  from ge2ms_jax import model as models  # pylint: disable=g-import-not-at-top
  net = models.build(config.model)
  images = image_spec(config.model)
  variables = jax.eval_shape(lambda x: net.init({"params": jax.random.key(0)}, x, train=False),
                             jnp.zeros(images.shape, images.dtype))
  params, model_state = split_variables(variables)
  shapes = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params, "model_state": model_state}
  if with_ema:
    shapes["ema_params"] = params
  return sharding_lib.abstract(shapes, sharding_lib.infer_shardings(shapes, mesh, config.sharding_rules))
