"""The optimizer, its learning-rate schedule and the weight-decay mask: pure functions of the config.

    schedule = optim.make_schedule(config, total_updates, updates_per_epoch)
    tx = optim.make_optimizer(config, schedule)       # clip -> AdamW/SGD (masked decay) -> accumulate

Config keys: `optax.*` (`name`, `lr`, `b1`, `b2`, `eps`, `wd`, `wd_exclude`, `momentum`, `nesterov`,
`clip_norm`, `grad_accum_steps`) and `schedule.*` (`warmup_steps` / `warmup_epochs`, `decay_type`,
`min_lr_ratio`); their defaults are in `configs.common.base_config`.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jax
import ml_collections
import optax

from ge2ms_jax import sharding as sharding_lib
from ge2ms_jax.configs import common as configs_common

# Parameters that take no weight decay: biases, BatchNorm scales, neuron thresholds.
DEFAULT_WD_EXCLUDE = configs_common.WD_EXCLUDE


def make_schedule(config: ml_collections.ConfigDict, total_updates: int,
                  updates_per_epoch: float) -> optax.Schedule:
  """Learning-rate schedule over optimizer updates: linear warm-up, then cosine/linear/constant.

  Args:
    config: the experiment config (`optax.lr`, `schedule.*`).
    total_updates: the number of optimizer updates of the run (steps / accumulation).
    updates_per_epoch: optimizer updates per epoch, for `schedule.warmup_epochs`.
  """
  sc, peak = config.schedule, config.optax.lr
  warmup = int(sc.warmup_steps or round(sc.warmup_epochs * updates_per_epoch))
  if warmup > total_updates:
    raise ValueError(f"schedule warm-up of {warmup} updates exceeds the run's {total_updates} "
                     "updates; shorten schedule.warmup_steps / warmup_epochs.")
  end = peak * sc.min_lr_ratio
  rest = max(1, total_updates - warmup)
  if sc.decay_type == "cosine":
    decay = optax.cosine_decay_schedule(peak, rest, alpha=sc.min_lr_ratio)
  elif sc.decay_type == "linear":
    decay = optax.linear_schedule(peak, end, rest)
  elif sc.decay_type == "constant":
    decay = optax.constant_schedule(peak)
  else:
    raise ValueError(f"schedule.decay_type={sc.decay_type!r}; use 'cosine', 'linear' or 'constant'.")
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def weight_decay_mask(params: Any, exclude: Any) -> Any:
  """Pytree of bools: True where weight decay applies (the path matches none of `exclude`)."""
  regexes = [re.compile(p) for p in exclude]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(r.search(sharding_lib.path_str(path)) for r in regexes), params)


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule
                   ) -> optax.GradientTransformation:
  """Clipping → AdamW or SGD+momentum with masked weight decay, wrapped for accumulation."""
  o = config.optax
  mask = functools.partial(weight_decay_mask, exclude=tuple(o.wd_exclude))
  parts = []
  if o.clip_norm and o.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(o.clip_norm))
  if o.name == "adamw":
    parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.wd, mask=mask))
  elif o.name == "sgd":
    if o.wd:
      parts.append(optax.add_decayed_weights(o.wd, mask=mask))
    parts.append(optax.sgd(schedule, momentum=o.momentum or None, nesterov=o.nesterov))
  else:
    raise ValueError(f"optax.name={o.name!r}; use 'adamw' or 'sgd'.")
  tx = optax.chain(*parts)
  if o.grad_accum_steps < 1:
    raise ValueError(f"optax.grad_accum_steps must be >= 1, got {o.grad_accum_steps}.")
  if o.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=o.grad_accum_steps)
  return tx
