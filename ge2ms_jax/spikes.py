"""Spike-train values and multiplication-free synaptic products (the spiking side of the network).

Between layers the network passes one of three kinds of activation:

* a dense array: the quantized ANN (QANN) and the STBP baseline;
* `Coded(value, counts)`: the fused SNN path, a layer applied to the weighted sum of its input spikes,
  carrying each neuron's spike count so that synaptic operations can be counted exactly without
  materialising the spikes;
* `SpikeTrain(spikes, scales, theta)`: the faithful SNN path, binary spikes `[S, ...]` of every step.

A synaptic product with a `SpikeTrain` operand is computed as
`sum_s scales[s] * op(spikes[s], other * theta)`: each step's binary spikes gate accumulations of the
other operand (ACs), and the per-step power-of-two scale is applied once per output neuron and step
(a shift for base 2). Time is folded into the batch; there is no Python loop over steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from typing import Any, Callable, Iterator

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ge2ms_jax import neurons

Array = jax.Array


class MultiplicationFreeError(RuntimeError):
  """A synaptic product in the spiking simulation had no binary operand (it would be a multiplication)."""


@flax.struct.dataclass
class SpikeTrain:
  """Binary spikes of every time step of one window, with their weights.

  Attributes:
    spikes: `[S, *shape]` in {0, 1}.
    scales: `[S]` per-step scale (`base**-g` for an ExpG-IF neuron).
    theta: threshold, scalar or `[C]` on the last axis of `shape`.
    base, groups: the code (static); steps of one group share a scale, so a synapse rescales its
      accumulator `groups` times per window: a shift when `base` is a power of two.
  The train encodes the value `sum_s scales[s] * theta * spikes[s]` (`dense()`).
  """
  spikes: Array
  scales: Array
  theta: Array
  base: int = flax.struct.field(pytree_node=False, default=2)
  groups: int = flax.struct.field(pytree_node=False, default=1)

  @property
  def shape(self) -> tuple[int, ...]:
    """Shape of the encoded value (without the time axis)."""
    return tuple(self.spikes.shape[1:])

  @property
  def steps(self) -> int:
    return self.spikes.shape[0]

  def map(self, fn: Callable[[Array], Array]) -> "SpikeTrain":
    """Applies a shape function (leading axes treated as batch) to the spikes of every step."""
    out = fn(self.spikes)
    if jnp.ndim(self.theta) and out.shape[-1] != self.spikes.shape[-1]:
      raise ValueError(f"SpikeTrain.map: a per-channel threshold of shape {jnp.shape(self.theta)} cannot "
                       f"follow a reshape of the channel axis ({self.spikes.shape} -> {out.shape}); use a "
                       "scalar threshold for this neuron site.")
    return self.replace(spikes=out)

  def dense(self) -> Array:
    """The encoded value `[*shape]`."""
    dtype = self.scales.dtype
    v = jnp.tensordot(self.scales, self.spikes.astype(dtype), axes=1)
    return v * jnp.asarray(self.theta, dtype)


@flax.struct.dataclass
class Coded:
  """A neuron output on the fused path: its value and its spike count per neuron.

  Attributes:
    value: `[*shape]` the weighted spike sum (equal to the quantizer's output).
    counts: `[*shape]` spikes fired by each neuron in the window (the digit sum of its level index).
  """
  value: Array
  counts: Array
  base: int = flax.struct.field(pytree_node=False, default=2)
  groups: int = flax.struct.field(pytree_node=False, default=1)

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.value.shape)

  def map(self, fn: Callable[[Array], Array]) -> "Coded":
    return self.replace(value=fn(self.value), counts=fn(self.counts))


def dense(x: Any) -> Array:
  """The value of any activation kind, as an array."""
  if isinstance(x, SpikeTrain):
    return x.dense()
  if isinstance(x, Coded):
    return x.value
  return x


def from_neuron(current: Array, theta: Any, base: int, groups: int, method: str = "scan") -> SpikeTrain:
  """Fires an ExpG-IF neuron on `current` `[..., C]` and wraps its spikes `[T, ..., C]` as a train.

  Spikes, scales and threshold are held in the neuron's compute dtype (float32, or float64).
  """
  dtype = jnp.promote_types(current.dtype, jnp.float32)
  spikes = neurons.expg_if(current, theta, base, groups, method, dtype=dtype)
  scales = jnp.asarray(neurons.step_scales(base, groups), dtype)
  return SpikeTrain(spikes=spikes, scales=scales, theta=jnp.asarray(theta, dtype), base=base, groups=groups)


def coded_from_neuron(current: Array, theta: Any, base: int, groups: int, dtype: Any = None) -> Coded:
  """The fused path's neuron: `Q(current)` and each neuron's spike count, `[..., C]` each.

  Both are differentiable (`neurons.spike_count` has a surrogate gradient), so the QANN can run this
  way in training to estimate, and penalise, the synaptic operations of its converted network.
  """
  value = neurons.expg_quantize(current, theta, base, groups)
  counts = neurons.spike_count(current, theta, base, groups).astype(jnp.float32)
  return Coded(value=value if dtype is None else value.astype(dtype), counts=counts,
               base=base, groups=groups)


def is_binary(spikes: Array) -> Array:
  """Scalar bool: every entry of `spikes` is 0 or 1."""
  return jnp.all((spikes == 0) | (spikes == 1))


# ---------------------------------------------------------------------------------------------
# Products with a spike-train operand
# ---------------------------------------------------------------------------------------------
def _parse(subscripts: str) -> tuple[str, str, str]:
  lhs, out = subscripts.replace(" ", "").split("->")
  a, b = lhs.split(",")
  return a, b, out


def _labels(spec: str, shape: tuple[int, ...]) -> dict[str, int]:
  """Sizes of the named (non-ellipsis) labels of an einsum operand, read from the right."""
  names = spec.replace("...", "")
  return dict(zip(names, shape[len(shape) - len(names):]))


def einsum_fanout(subscripts: str, train_left: bool, train_shape: tuple[int, ...],
                  other_shape: tuple[int, ...]) -> int:
  """Accumulations each spike of the train operand triggers: the other operand's free axes' size."""
  a, b, _ = _parse(subscripts)
  t_spec, o_spec = (a, b) if train_left else (b, a)
  t_labels = set(t_spec.replace("...", ""))
  sizes = _labels(o_spec, other_shape)
  return int(np.prod([s for name, s in sizes.items() if name not in t_labels], dtype=np.int64))


def spike_einsum(subscripts: str, a: Any, b: Any, record: Callable[[dict], None] | None = None, *,
                 spiking: str | None = None, check: Callable[[Array], None] | None = None) -> Array:
  """An einsum in which one operand may be a spike train; the other is used as its dense value.

  With a train operand the product is `sum_s scales[s] * theta * einsum(spikes[s], other)`: the
  binary spikes select which entries of the other operand are accumulated. If both are trains the
  left one contributes spikes and the right one its value.

  Args:
    subscripts: einsum subscripts `"...ab,...bc->...ac"` with a leading ellipsis on every operand.
    a, b: dense arrays, `Coded` values or `SpikeTrain`s (a train with a scalar threshold).
    record: called with `{"sops", "binary", "nnz", "shifts", "scalings"}` when a train or coded operand
      is present. `scalings` counts the real multiplications: one per output element by the train's
      threshold θ, and, when the other operand is a train (or coded) too, one per element of it by
      its θ (its value `θ * level`); the power-of-two step weights are `shifts`.
    spiking: the calling layer's name when it runs in spike mode: a product without a spike-train
      operand is then a multiplication of two real-valued tensors, and an error naming the layer.
    check: called with the train operand's spikes whenever there is one, statistics or not (a
      model passes `check_binary`), so that graded values cannot pass as spikes.

  Returns:
    the dense product.

  Raises:
    MultiplicationFreeError: with `spiking` set, when neither operand is a `SpikeTrain`.
  """
  if spiking is not None and not (isinstance(a, SpikeTrain) or isinstance(b, SpikeTrain)):
    raise MultiplicationFreeError(
        f"{spiking}: the product {subscripts!r} in the spiking network has no spike-train operand "
        f"(operands {type(a).__name__} {tuple(a.shape)} and {type(b).__name__} {tuple(b.shape)}); it "
        "would multiply two real-valued tensors. Feed one operand from a neuron site.")
  if isinstance(a, SpikeTrain):
    train, other, left, other_coded = a, dense(b), True, isinstance(b, (SpikeTrain, Coded))
  elif isinstance(b, SpikeTrain):
    train, other, left, other_coded = b, dense(a), False, isinstance(a, (SpikeTrain, Coded))
  elif isinstance(a, Coded) or isinstance(b, Coded):
    # Fused path: the value times the other operand; the synaptic operations follow from the spike
    # counts, because the fan-out of a spike does not depend on its step.
    left = isinstance(a, Coded)
    coded, other = (a, dense(b)) if left else (b, dense(a))
    out = jnp.einsum(subscripts, coded.value, other) if left else jnp.einsum(subscripts, other, coded.value)
    if record is not None:
      fanout = einsum_fanout(subscripts, left, coded.shape, other.shape)
      both = isinstance(a, Coded) and isinstance(b, Coded)
      record({"sops": jnp.sum(coded.counts) * fanout, "binary": jnp.asarray(True),
              "order": trace_order(), **rescale_stats(out.size, coded.base, coded.groups,
                                                      theta_scalings=out.size + (other.size if both else 0))})
    return out
  else:
    return jnp.einsum(subscripts, dense(a), dense(b))
  if jnp.ndim(train.theta):
    raise ValueError("spike_einsum: a spike train entering an activation-activation product needs a "
                     f"scalar threshold, got shape {jnp.shape(train.theta)}.")
  spikes = train.spikes
  if check is not None:
    check(spikes)
  other = other.astype(spikes.dtype)
  out = jnp.einsum(subscripts, spikes, other) if left else jnp.einsum(subscripts, other, spikes)
  out = jnp.tensordot(train.scales, out, axes=1) * train.theta
  if record is not None:
    fanout = einsum_fanout(subscripts, left, train.shape, other.shape)
    nnz = jnp.sum(spikes.reshape(spikes.shape[0], -1), axis=1)
    record({"sops": jnp.sum(nnz) * fanout, "nnz": nnz, "binary": is_binary(spikes),
            "order": trace_order(),
            **rescale_stats(out.size, train.base, train.groups,
                            theta_scalings=out.size + (other.size if other_coded else 0))})
  return out


def rescale_stats(outputs: int, base: int, groups: int, theta_scalings: int = 0) -> dict[str, Array]:
  """Per-window accumulator rescalings of a synapse with `outputs` output elements fed by a (base,
  groups) code: shifts for a power-of-two base, multiplications otherwise; plus `theta_scalings`
  real multiplications by thresholds (activation-activation products, whose θ cannot be folded into
  a weight)."""
  n = float(outputs) * groups
  pow2 = base & (base - 1) == 0
  return {"shifts": jnp.asarray(n if pow2 else 0.0, jnp.float32),
          "scalings": jnp.asarray((0.0 if pow2 else n) + float(theta_scalings), jnp.float32)}


# ---------------------------------------------------------------------------------------------
# The multiplication-free check on values
# ---------------------------------------------------------------------------------------------
CHECKS = "checks"  # the Flax collection every spike-mode product writes its operand check into


def check_binary(module: Any, name: str, spikes: Array) -> None:
  """Records, in the `"checks"` collection of `module`, whether `spikes` are all 0 or 1.

  Every consumer of a `SpikeTrain` in spike mode calls this, with or without statistics: a train of
  graded values (a multiplication in disguise) is then found by whoever runs the network
  (`snn.raise_unless_binary`). A spike-mode network applied without the collection mutable refuses
  to run, since its products would go unchecked.

  Raises:
    MultiplicationFreeError: when the `"checks"` collection is not mutable.
  """
  if not module.sow(CHECKS, name, is_binary(spikes)):
    raise MultiplicationFreeError(
        f"{'/'.join(str(p) for p in module.path)}: spike mode checks that every spike-train operand is "
        f"binary, but the {CHECKS!r} collection is not mutable; run the network with "
        f"`apply(..., mutable=[{CHECKS!r}, ...])`, or through snn.simulate / snn.neuron_site_outputs, "
        "which do and raise if a check fails.")


# ---------------------------------------------------------------------------------------------
# Static cost recording (trace time)
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LayerCost:
  """Static cost of one layer for one forward pass of the traced batch."""
  name: str
  kind: str            # "conv", "dense", "attention", "add", "pool"
  macs: int            # multiply-accumulates a dense ANN performs
  fan_in: int          # synapses per output neuron
  outputs: int         # output neurons
  first: bool = False  # consumes real-valued input (the encoding layer)


_RECORDER = threading.local()


@contextlib.contextmanager
def record_costs() -> Iterator[list[LayerCost]]:
  """Collects the `LayerCost` of every synaptic layer traced inside the block.

  Use with `jax.eval_shape(model.apply, ...)` to count parameters and MACs of any variant at any
  resolution without allocating activations.
  """
  stack = getattr(_RECORDER, "stack", [])
  table: list[LayerCost] = []
  _RECORDER.stack = stack + [table]
  try:
    yield table
  finally:
    _RECORDER.stack = stack


def trace_order() -> Array:
  """A number that grows with every call during tracing: sown statistics carry it, so that layers
  can be listed in the order the network runs them (jit returns dicts sorted by key)."""
  _RECORDER.order = getattr(_RECORDER, "order", 0) + 1
  return jnp.asarray(_RECORDER.order, jnp.int32)


def note_cost(cost: LayerCost) -> None:
  """Adds `cost` to the innermost active `record_costs` table (no-op when none is active)."""
  stack = getattr(_RECORDER, "stack", None)
  if stack:
    stack[-1].append(cost)


def batch_size_of(shape: tuple[int, ...], trailing: int) -> int:
  """Product of the leading (batch/time) axes of an activation with `trailing` feature axes."""
  return int(math.prod(shape[:len(shape) - trailing]))

