"""Spike-aware training: the converted network's synaptic operations as a term of the QANN's loss.

A spike drives one accumulate per synapse it reaches, so the converted network performs

    SOPs = sum over neuron sites of  spikes fired x fan-out of the site

synaptic operations per image (exactly what `snn.simulate` counts). With the `"stats"` collection
mutable, the QANN's neurons return their spike counts beside their values (the base-b digit sums
of their levels, `neurons.spike_count`) and every synapse, shortcut and attention product records
the operations those spikes drive, with the layer's exact fan-out. Their sum is therefore not an
approximation of the converted network's count but that count, for the training batch's currents;
its gradient comes from the spike count's surrogate.

The loss term is `weight * SOPs/MAC` (SOPs per image over the ANN's MACs per image), or, with a
target ratio, `weight * max(0, SOPs/MAC - target)`: no pull once the network is sparse enough.

Config (`config.sparsity`): `weight` (0 turns it off), `target` (0: none), `track` (log the estimate
every step even when the weight is 0).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from ge2ms_jax.configs import common as configs_common


default_config = configs_common.sparsity_config


def check(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns `config.sparsity` (defaults where the config predates it), checked.

  Raises:
    ValueError: naming a negative weight or target.
  """
  s = config.get("sparsity") or default_config()
  for field in ("weight", "target"):
    value = s.get(field, 0.0)
    if not isinstance(value, (int, float)) or value < 0 or value != value:
      raise ValueError(f"config.sparsity.{field}={value!r}; use a number >= 0 (0 turns it off).")
  return s


def enabled(config: ml_collections.ConfigDict) -> bool:
  """True when training computes the SOP estimate (a weight > 0, or `track`)."""
  s = check(config)
  return s.weight > 0 or bool(s.get("track", False))


def total_sops(stats: Mapping[str, Any]) -> jax.Array:
  """Synaptic operations recorded in a `"stats"` collection: the sum of every `"sops"` entry.

  Args:
    stats: the `"stats"` collection of one forward pass (any batch size).

  Returns:
    a float32 scalar: operations over the whole batch.
  """
  total = jnp.zeros((), jnp.float32)
  for path, value in jax.tree_util.tree_leaves_with_path(stats):
    if getattr(path[-1], "key", None) == "sops":
      total = total + jnp.asarray(value, jnp.float32)
  return total


def penalty(sop_per_mac: jax.Array, weight: float, target: float = 0.0) -> jax.Array:
  """The loss term: `weight * sop_per_mac`, or `weight * max(0, sop_per_mac - target)` with a target.

  Args:
    sop_per_mac: scalar SOPs per image over ANN MACs per image.
    weight, target: `config.sparsity.weight` and `.target`.
  """
  excess = sop_per_mac - target if target > 0 else sop_per_mac
  return weight * jnp.maximum(excess, 0.0)


# Sweep and recipe helpers, as config overrides (ge2ms_jax/configs/common.py).
finetune_overrides = configs_common.finetune_overrides
target_run = configs_common.target_run
# The recipe of the shipped sparse models, as config overrides.
reference_overrides = configs_common.reference_overrides
