"""QANN -> SNN conversion: a pure pytree transformation (METHOD.md §1, §3).

`convert(variables, config)` folds every BatchNorm into the synapse before it,

    W' = W * gamma / sqrt(var + eps)        b' = beta - mean * gamma / sqrt(var + eps)

and carries every neuron's threshold over unchanged; each neuron site keeps its `(base, groups)` from
the model config (per-site overrides included). The result runs as `build(config, "fused")` or
`build(config, "spike")`. Because every neuron's spikes encode exactly the QANN quantizer's output,
the converted network computes the QANN's function layer by layer: its outputs differ only by the
float rounding of the folded weights and of the summation order.

Conversion refuses a model that is not conversion-safe, naming the layer: parameters of an unknown
kind (e.g. a LayerNorm's scale), a BatchNorm without a synapse to fold into, or, in the traced QANN
forward pass, an operation that a spiking network cannot implement (exp/softmax, tanh/GELU,
max-pooling, ...).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ge2ms_jax import model as models

BN_EPSILON = 1e-5  # layers.SynapseBN's default

# Primitives a spiking network cannot compute in its forward pass.
NON_CONVERTIBLE = {
    "exp": "exponential (softmax?)", "exp2": "exponential", "log": "logarithm", "log1p": "logarithm",
    "expm1": "exponential", "tanh": "tanh (GELU approximation?)", "logistic": "sigmoid",
    "erf": "erf (GELU?)", "erfc": "erf", "erf_inv": "erf", "reduce_max": "max reduction (softmax / max-pool?)",
    "reduce_min": "min reduction", "argmax": "argmax", "argmin": "argmin",
    "reduce_window_max": "max-pooling", "reduce_window_min": "min-pooling", "cumsum": "cumulative sum",
    "reduce_precision": "precision reduction", "pow": "power",
}


class ConversionError(ValueError):
  """The model is not conversion-safe; the message names the layer and the operation."""


def _fold(path: str, syn: Mapping[str, Any], bn: Mapping[str, Any], stats: Mapping[str, Any]) -> dict:
  if "kernel" not in syn:
    raise ConversionError(f"{path}: a BatchNorm follows 'syn', which has no kernel to fold it into.")
  if set(bn) - {"scale", "bias"} or set(stats) != {"mean", "var"}:
    raise ConversionError(f"{path}/bn: expected BatchNorm parameters {{scale, bias}} and statistics "
                          f"{{mean, var}}, got {sorted(bn)} and {sorted(stats)}.")
  kernel = syn["kernel"]
  dtype = kernel.dtype
  inv = jax.lax.rsqrt(stats["var"].astype(dtype) + jnp.asarray(BN_EPSILON, dtype))
  gamma = bn.get("scale", jnp.ones_like(inv)).astype(dtype) * inv
  beta = bn.get("bias", jnp.zeros_like(inv)).astype(dtype)
  out = {"kernel": kernel * gamma, "bias": beta - stats["mean"].astype(dtype) * gamma}
  if "bias" in syn:
    out["bias"] = out["bias"] + syn["bias"] * gamma
  return out


def fold_batchnorm(params: Mapping[str, Any], batch_stats: Mapping[str, Any], path: str = "") -> dict:
  """Folds every `{"syn", "bn"}` pair of a parameter tree; returns the folded tree.

  Raises:
    ConversionError: naming the path of any parameter that is not a synapse kernel/bias, a neuron
      threshold, or a foldable BatchNorm.
  """
  out = {}
  for name, sub in params.items():
    here = f"{path}/{name}" if path else name
    stats = batch_stats.get(name, {}) if isinstance(batch_stats, Mapping) else {}
    if not isinstance(sub, Mapping):
      if name in ("kernel", "bias", "theta"):
        out[name] = sub
        continue
      raise ConversionError(f"{here}: parameter {name!r} is of no conversion-safe kind (synapse kernel/bias, "
                            "neuron theta, or a BatchNorm after a synapse).")
    if "bn" in sub:
      if "syn" not in sub:
        raise ConversionError(f"{here}/bn: a BatchNorm with no synapse before it cannot be folded.")
      rest = set(sub) - {"syn", "bn"}
      if rest:
        raise ConversionError(f"{here}: unexpected parameters {sorted(rest)} beside a synapse and its BatchNorm.")
      out[name] = {"syn": _fold(f"{here}/syn", sub["syn"], sub["bn"], stats.get("bn", {}))}
      continue
    out[name] = fold_batchnorm(sub, stats, here)
  return out


def check_operations(fn, *args) -> None:
  """Traces `fn(*args)` and rejects operations a spiking network cannot perform.

  Args:
    fn: a forward pass, e.g. `lambda v, x: net.apply(v, x)`; args: its (abstract or concrete) inputs.

  Raises:
    ConversionError: naming the layer (the module path of the operation) and the operation.
  """
  jaxpr = jax.make_jaxpr(fn)(*args)

  def sub_jaxprs(value):
    if hasattr(value, "eqns"):
      yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
      yield value.jaxpr
    elif isinstance(value, (tuple, list)):
      for v in value:
        yield from sub_jaxprs(v)

  def walk(eqns, prefix):
    for eqn in eqns:
      here = "/".join(p for p in (prefix, str(eqn.source_info.name_stack)) if p)
      for value in eqn.params.values():
        for sub in sub_jaxprs(value):
          walk(sub.eqns, here)
      name = eqn.primitive.name
      if name in NON_CONVERTIBLE:
        raise ConversionError(f"{here or 'the top level'}: operation '{name}' ({NON_CONVERTIBLE[name]}) is not "
                              "conversion-safe; a spiking network has only synapses, BatchNorm, additions, "
                              "averages and neurons.")

  walk(jaxpr.jaxpr.eqns, "")


def convert(variables: Mapping[str, Any], config: ml_collections.ConfigDict,
            check: bool = True) -> dict[str, Any]:
  """Converts trained QANN variables into the SNN's variables.

  Args:
    variables: `{"params": ..., "batch_stats": ...}` of `build(config, "qann")`.
    config: the model config (neuron codes, per-site overrides, architecture).
    check: also trace the QANN and reject non-convertible operations.

  Returns:
    `{"params": folded}` for `build(config, "fused" | "spike")`.

  Raises:
    ConversionError: naming the first layer that cannot be converted.
  """
  if config.get("neuron_kind", "expg") != "expg":
    raise ConversionError(f"an STBP model (neuron_kind={config.neuron_kind!r}) is trained through time and "
                          "has no ExpG-IF conversion; convert a QANN (neuron_kind='expg').")
  if "params" not in variables:
    raise ConversionError(f"variables must hold 'params' (and 'batch_stats'), got keys {sorted(variables)}.")
  if check:
    net = models.build(config, mode="qann")
    images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, config.in_channels), jnp.float32)
    check_operations(lambda v, x: net.apply(v, x, train=False), variables, images)
  folded = fold_batchnorm(variables["params"], variables.get("batch_stats", {}))
  snn = models.build(config, mode="fused")
  images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, config.in_channels), jnp.float32)
  expected = jax.eval_shape(lambda x: snn.init({"params": jax.random.key(0)}, x), images)["params"]
  got = jax.tree.structure(folded)
  if got != jax.tree.structure(expected):
    missing = sorted(set(_paths(expected)) ^ set(_paths(folded)))[:5]
    raise ConversionError(f"converted parameters do not match the SNN of this config; differing paths: {missing}.")
  return {"params": folded}


def _paths(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
  out = []
  for k, v in tree.items():
    p = f"{prefix}/{k}" if prefix else k
    out.extend(_paths(v, p) if isinstance(v, Mapping) else [p])
  return out


def neuron_sites(variables: Mapping[str, Any]) -> list[str]:
  """Names (module paths) of every neuron site of a parameter tree, in order."""
  return [p[: -len("/theta")] for p in _paths(variables["params"]) if p.endswith("/theta")]


def as_numpy(tree: Any) -> Any:
  return jax.tree.map(np.asarray, tree)
