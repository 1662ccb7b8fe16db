"""Spiking neuron kernels: the ExpG-IF neuron, its quantized-ANN twin, and STBP baselines.

Every function here is pure and jit-able. Shapes use `T` for time steps and `...` for any
batch/feature shape.

ExpG-IF (METHOD.md §1): a neuron with threshold `theta`, base `b >= 2` and `G >= 1` groups has
`L = b**G` levels and `T = G * (b - 1)` time steps. Group `g = 1..G` holds `b - 1` steps whose spikes
all weigh `theta * b**-g` (coarse groups first). Within one window the neuron fires, per group, the
base-`b` digit of the level index

    n = clip(floor(I * L / theta + 1/2), 0, L - 1)

of its input current `I`, so the weighted sum of its spikes is exactly the ANN quantizer
`Q(I) = theta / L * n` (`expg_quantize`): the SNN reproduces the quantized ANN layer by layer.

Exactness: the three SNN methods (`"scan"`, `"steps"`, `"closed"`) all start from the same integer
membrane `floor(I * L / theta + 1/2)` in level units, where every spike weight is an integer power of
`b`; from there on all arithmetic is integer, so the methods agree bit for bit, also at level
boundaries, and the spike digits are exactly those of `n`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Level indices are held in float32 (and int32) during the neuron's computation; past 2**24 a
# float32 no longer represents every integer, and exactness would be lost.
MAX_LEVELS = 2**24

EXPG_METHODS = ("scan", "steps", "closed")
SURROGATES = ("atan", "sigmoid", "rectangular", "triangle")
RESETS = ("soft", "hard")


# ---------------------------------------------------------------------------------------------
# Argument checking (static, at trace time)
# ---------------------------------------------------------------------------------------------
def _check_int(name: str, value: Any, minimum: int, where: str) -> int:
  """Returns `value` as a Python int, or raises a ValueError naming the argument."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)):
    raise ValueError(f"{where}: {name} must be an integer >= {minimum}, got {value!r} "
                     f"of type {type(value).__name__}.")
  if isinstance(value, (float, np.floating)) and not float(value).is_integer():
    raise ValueError(f"{where}: {name} must be an integer >= {minimum}, got the non-integer {value!r}.")
  value = int(value)
  if value < minimum:
    raise ValueError(f"{where}: {name} must be an integer >= {minimum}, got {value}.")
  return value


def check_code(base: Any, groups: Any, where: str = "ExpG-IF") -> tuple[int, int]:
  """Validates a (base, groups) spike code and returns it as Python ints.

  Args:
    base: the base `b`, an integer >= 2.
    groups: the number of groups `G`, an integer >= 1.
    where: the name of the caller, used in error messages.

  Returns:
    `(base, groups)` as ints.

  Raises:
    ValueError: naming the argument and its valid range, if either is invalid or if
      `base**groups` exceeds `MAX_LEVELS`.
  """
  base = _check_int("base", base, 2, where)
  groups = _check_int("groups", groups, 1, where)
  if base**groups > MAX_LEVELS:
    raise ValueError(f"{where}: base**groups = {base}**{groups} = {base**groups} levels exceeds the "
                     f"exact range of float32 ({MAX_LEVELS} = 2**24); use fewer groups or a smaller base.")
  return base, groups


def _check_theta(theta: Any, where: str) -> None:
  """Raises a ValueError if a concrete `theta` has a non-positive or non-finite entry.

  Thresholds that are tracers (learnable parameters inside `jit`) cannot be inspected at trace
  time; those are left to the caller.
  """
  try:
    value = np.asarray(theta)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return
  if value.dtype == object or not np.issubdtype(value.dtype, np.number):
    raise ValueError(f"{where}: theta must be a positive number or array, got {theta!r}.")
  if not np.all(np.isfinite(value)) or np.any(value <= 0):
    bad = value[~(np.isfinite(value) & (value > 0))] if value.ndim else value
    raise ValueError(f"{where}: theta must be > 0 and finite everywhere, got {np.ravel(bad)[:4]} "
                     f"(shape {value.shape}).")


def _check_theta_shape(theta: Array, x_shape: tuple[int, ...], where: str) -> None:
  t_shape = jnp.shape(theta)
  if len(t_shape) > 1 or (len(t_shape) == 1 and (not x_shape or t_shape[0] not in (1, x_shape[-1]))):
    raise ValueError(f"{where}: theta must be a scalar or a per-channel vector of shape "
                     f"[{x_shape[-1] if x_shape else 'C'}] matching the last axis of the input "
                     f"{tuple(x_shape)}, got shape {tuple(t_shape)}.")


# ---------------------------------------------------------------------------------------------
# The spike code
# ---------------------------------------------------------------------------------------------
def num_levels(base: int, groups: int) -> int:
  """Number of quantization levels `L = base**groups`."""
  base, groups = check_code(base, groups)
  return base**groups


def num_steps(base: int, groups: int) -> int:
  """Number of time steps `T = groups * (base - 1)` of one window."""
  base, groups = check_code(base, groups)
  return groups * (base - 1)


def step_layout(base: int, groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Static description of the `T` steps of one window.

  Returns:
    `(group, rank, place)`, each an int64 numpy array of shape `[T]`: the 1-based group `g` of the
    step, its rank `r = 0..b-2` inside the group, and its weight in level units `b**(G-g)`.
  """
  base, groups = check_code(base, groups)
  group = np.repeat(np.arange(1, groups + 1), base - 1)
  rank = np.tile(np.arange(base - 1), groups)
  place = base ** (groups - group)
  return group, rank, place


def step_scales(base: int, groups: int) -> np.ndarray:
  """Spike weights `b**-g` of the `T` steps for a unit threshold, as float64 `[T]`."""
  group, _, _ = step_layout(base, groups)
  return np.asarray(float(base)) ** (-group.astype(np.float64))


def spike_weights(theta: Any, base: int, groups: int) -> Array:
  """Weight `w_t = theta * base**-g(t)` of each time step.

  Args:
    theta: threshold, a scalar or a per-channel vector `[C]`.
    base, groups: the spike code.

  Returns:
    `[T]` for a scalar theta, `[T, C]` for a per-channel one (in theta's float dtype).
  """
  base, groups = check_code(base, groups, "spike_weights")
  _check_theta(theta, "spike_weights")
  theta = jnp.asarray(theta)
  if not jnp.issubdtype(theta.dtype, jnp.floating):
    theta = theta.astype(jnp.float32)
  scales = jnp.asarray(step_scales(base, groups), theta.dtype)
  return scales.reshape((-1,) + (1,) * theta.ndim) * theta


# ---------------------------------------------------------------------------------------------
# Level index: the one place where currents are turned into integers
# ---------------------------------------------------------------------------------------------
def _compute_dtype(dtype) -> Any:
  """Neurons compute in at least float32 so that L levels are resolved in bf16/fp16 models."""
  return jnp.promote_types(dtype, jnp.float32)


def level_step(theta: Any, levels: int, dtype: Any = jnp.float32) -> Array:
  """Quantization step `s = theta * (1/L)` (one level), in `dtype` (>= float32).

  A multiplication by the constant `1/L` rounded once: the same value in every XLA context, where a
  division by `L` might be rewritten into a reciprocal multiply in some programs and not in others.
  """
  ct = _compute_dtype(dtype)
  return jnp.asarray(theta, ct) * jnp.asarray(1.0 / levels, ct)


def _signed_level(current: Array, theta: Any, levels: int) -> Array:
  """Unclipped level `m = floor(current / s + 1/2)`, clipped only to [-1, L], integral floats.

  The exact rounding boundaries are `(k - 1/2) * s` (one rounding each). XLA may turn `x / s + 1/2`
  into a multiply by a reciprocal and fuse it with the add into one FMA in some programs but not in
  others, which moves the result by an ulp; so that estimate is corrected by exact comparisons with
  the two boundaries around it. The level of a current is then the same, bit for bit, in eager and
  jitted code, in every fusion and on every backend.
  """
  ct = _compute_dtype(current.dtype)
  x = current.astype(ct)
  s = level_step(theta, levels, ct)
  m = jnp.clip(jnp.floor(x / s + jnp.asarray(0.5, ct)), -1, levels)
  half = jnp.asarray(0.5, ct)
  m = m - (x < (m - half) * s).astype(ct) + (x >= (m + half) * s).astype(ct)
  return jnp.clip(m, -1, levels)


def level_index(current: Array, theta: Any, base: int, groups: int) -> Array:
  """Level index `n = clip(floor(current * L / theta + 1/2), 0, L - 1)`.

  Args:
    current: input current `[..., C]` (or any shape for a scalar theta).
    theta: scalar or `[C]` threshold.
    base, groups: the spike code.

  Returns:
    `n` with the shape of `current`, integral values in the compute dtype (>= float32).
  """
  base, groups = check_code(base, groups, "level_index")
  _check_theta(theta, "level_index")
  current = jnp.asarray(current)
  _check_theta_shape(jnp.asarray(theta), current.shape, "level_index")
  levels = base**groups
  return jnp.clip(_signed_level(current, theta, levels), 0, levels - 1)


def _membrane_int(current: Array, theta: Any, levels: int) -> Array:
  """Integer membrane `floor(current * L / theta + 1/2)`, clipped to [-1, L], as int32.

  Clipping to [-1, L] changes no spike (the neuron saturates at L - 1 and is silent below 0) and
  keeps int32 from overflowing for currents far outside the range.
  """
  return _signed_level(current, theta, levels).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# The ANN twin: Q(x) with straight-through / learnable-threshold gradients
# ---------------------------------------------------------------------------------------------
def _sum_to_shape(g: Array, shape: tuple[int, ...]) -> Array:
  """Sums a broadcast gradient `g` back to `shape` (a scalar or a trailing-axis vector).

  The sum runs in two stages, first over rows of the last axis, then over that axis: XLA's CPU
  backend reduces a fused expression straight to a scalar many times slower than a column sum.
  """
  if g.shape == tuple(shape):
    return g
  if len(shape) > 1:
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and g.shape[lead + i] != 1)
    return jnp.sum(g, axis=axes).reshape(shape)
  cols = jnp.sum(g.reshape(-1, g.shape[-1]) if g.ndim else g.reshape(1, 1), axis=0)
  if len(shape) == 1 and shape[0] == cols.shape[0]:
    return cols
  return jnp.sum(cols).reshape(shape)


def _level_int_dtype(levels: int):
  """Smallest signed integer type holding the levels -1..L (saved between forward and backward)."""
  return jnp.int8 if levels < 127 else (jnp.int16 if levels < 32767 else jnp.int32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _quantize(x: Array, theta: Array, levels: int) -> Array:
  n = jnp.clip(_signed_level(x, theta, levels), 0, levels - 1)
  return (n * level_step(theta, levels, n.dtype)).astype(x.dtype)


def _quantize_fwd(x, theta, levels):
  m = _signed_level(x, theta, levels)
  out = (jnp.clip(m, 0, levels - 1) * level_step(theta, levels, m.dtype)).astype(x.dtype)
  # The level is kept as a small integer: the backward pass needs it, and recomputing it costs more
  # than reading one byte per element.
  return out, (x, theta, m.astype(_level_int_dtype(levels)))


def _quantize_bwd(levels, res, g):
  x, theta, m = res
  ct = _compute_dtype(x.dtype)
  m = m.astype(ct)
  inside = (m >= 0) & (m <= levels - 1)
  above = m >= levels
  g = g.astype(ct)
  # Straight-through in x inside the representable range, zero where the quantizer clips.
  dx = jnp.where(inside, g, 0).astype(x.dtype)
  # LSQ/QCFS threshold gradient: d/dtheta of (theta/L) * round(x L / theta), rounding treated as
  # identity, i.e. n/L - x/theta inside the range and (L-1)/L where the output saturates.
  theta_c = jnp.asarray(theta, ct)
  dq_dtheta = jnp.where(inside, m / levels - x.astype(ct) / theta_c,
                        jnp.where(above, (levels - 1) / levels, 0))
  dtheta = _sum_to_shape(g * dq_dtheta, jnp.shape(theta)).astype(jnp.result_type(theta))
  return dx, dtheta


_quantize.defvjp(_quantize_fwd, _quantize_bwd)


def expg_quantize(x: Array, theta: Any, base: int, groups: int) -> Array:
  """The ExpG-IF neuron's ANN twin `Q(x) = s * clip(floor(x / s + 1/2), 0, L-1)`, `s = theta/L`.

  One pass, independent of the number of time steps: this is what the QANN trains with.
  Gradients: straight-through in `x` where `Q` does not clip, zero where it does; in `theta` the
  learnable-clipping-threshold gradient of LSQ/QCFS (`n/L - x/theta` inside the range, `(L-1)/L`
  where the output saturates), summed over broadcast axes.

  Args:
    x: input `[..., C]`, any float dtype (computed in at least float32, returned in `x.dtype`).
    theta: threshold `> 0`, a scalar or a per-channel vector `[C]` (may be a traced parameter).
    base, groups: the spike code; `L = base**groups`.

  Returns:
    `Q(x)`, same shape and dtype as `x`.
  """
  x, theta, base, groups = _float_args(x, theta, base, groups, "expg_quantize")
  return _quantize(x, theta, base**groups)


def _float_args(x: Any, theta: Any, base: Any, groups: Any, where: str) -> tuple[Array, Array, int, int]:
  """Checks the code and threshold of a one-pass neuron function; `x` and `theta` as float arrays."""
  base, groups = check_code(base, groups, where)
  _check_theta(theta, where)
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  theta = jnp.asarray(theta)
  if not jnp.issubdtype(theta.dtype, jnp.floating):
    theta = theta.astype(jnp.float32)
  _check_theta_shape(theta, x.shape, where)
  return x, theta, base, groups


# ---------------------------------------------------------------------------------------------
# The ExpG-IF spiking neuron over one window
# ---------------------------------------------------------------------------------------------
def _spikes_scan(v: Array, base: int, groups: int) -> Array:
  """lax.scan over the G groups; carry = integer membrane; emits [G, b-1, ...] spikes."""
  places = jnp.asarray(base ** np.arange(groups - 1, -1, -1), jnp.int32)
  levels = jnp.arange(1, base, dtype=jnp.int32).reshape((-1,) + (1,) * v.ndim)

  def group(v, place):
    # Spike r fires iff v >= (r + 1) * place, so the digit clip(v // place, 0, b - 1) is the number
    # of spikes: b - 1 vector compares instead of an integer division, which CPUs cannot vectorize.
    fire = v[None] >= levels * place
    digit = jnp.sum(fire, axis=0, dtype=jnp.int32)
    return v - digit * place, fire

  _, spikes = jax.lax.scan(group, v, places)
  return spikes.reshape((groups * (base - 1),) + v.shape)


def _spikes_steps(v: Array, base: int, groups: int) -> Array:
  """lax.scan over all T steps: fire when the membrane reaches the step weight, then subtract."""
  _, _, place = step_layout(base, groups)
  places = jnp.asarray(place, jnp.int32)

  def step(v, w):
    fire = v >= w
    return v - jnp.where(fire, w, 0), fire

  _, spikes = jax.lax.scan(step, v, places)
  return spikes


def _spikes_closed(n: Array, base: int, groups: int) -> Array:
  """Digits computed directly: spike (g, r) fires iff n mod b**(G-g+1) >= (r+1) * b**(G-g).

  One block of `b - 1` steps per group, each with scalar constants, concatenated in step order:
  XLA fuses the blocks into the single pass that writes the `[T, ...]` output.
  """
  n_int = n.astype(jnp.int32)
  ranks = jnp.arange(1, base, dtype=jnp.int32).reshape((-1,) + (1,) * n.ndim)
  blocks = []
  for g in range(groups):
    place = base ** (groups - 1 - g)
    modulus = place * base
    if g == 0:
      rem = n_int  # n < L = b**G: the first modulus changes nothing.
    elif base & (base - 1) == 0:
      rem = n_int & (modulus - 1)  # power-of-two base: the modulus is a bit mask
    else:
      # n mod m without an integer division (CPUs have no vector form of it): for 0 <= n < 2**24
      # the float quotient n * fl(1/m) is within 2/m < 1 of n/m, so its floor is off by at most
      # one, which the exact int32 remainder then corrects.
      rem = n_int - jnp.floor(n * (1.0 / modulus)).astype(jnp.int32) * modulus
      rem = jnp.where(rem < 0, rem + modulus, rem)
      rem = jnp.where(rem >= modulus, rem - modulus, rem)
    blocks.append(rem[None] >= ranks * place)
  return jnp.concatenate(blocks, axis=0)


def expg_if(current: Array, theta: Any, base: int, groups: int, method: str = "scan",
            dtype: Any = None) -> Array:
  """Spikes of the ExpG-IF neuron for one window of `T = groups*(base-1)` steps.

  The neuron integrates its whole input current, shifts it by half a level
  (`theta * b**-G / 2`), then for each group `g = 1..G` fires `d_g = clip(floor(v / w_g), 0, b-1)`
  spikes (fire-first within the group) and subtracts `d_g * w_g` (soft reset). The `d_g` are the
  base-`b` digits of `level_index(current)`, so `sum_t spike_weights[t] * spikes[t]` equals
  `expg_quantize(current)` up to the float rounding of that sum.

  Args:
    current: aggregated input current `[..., C]` of the window.
    theta: threshold `> 0`, scalar or per-channel `[C]`.
    base, groups: the spike code (`base >= 2`, `groups >= 1`, integers).
    method: `"scan"` (lax.scan over the G groups, carry = membrane), `"steps"` (lax.scan over all T
      steps, fire-and-subtract), or `"closed"` (digits computed directly in one elementwise pass).
      All three return identical spikes.
    dtype: dtype of the returned spikes; defaults to `current`'s float dtype (float32 for ints).

  Returns:
    spikes `[T, ...current.shape]` with values in {0, 1}.

  Raises:
    ValueError: for an invalid base, groups, method, or a concrete non-positive theta.
  """
  base, groups = check_code(base, groups, "expg_if")
  if method not in EXPG_METHODS:
    raise ValueError(f"expg_if: method must be one of {EXPG_METHODS}, got {method!r}.")
  _check_theta(theta, "expg_if")
  current = jnp.asarray(current)
  if not jnp.issubdtype(current.dtype, jnp.floating):
    current = current.astype(jnp.float32)
  theta = jnp.asarray(theta)
  _check_theta_shape(theta, current.shape, "expg_if")
  dtype = current.dtype if dtype is None else dtype
  levels = base**groups
  if method == "closed":
    n = jnp.clip(_signed_level(current, theta, levels), 0, levels - 1)
    spikes = _spikes_closed(n, base, groups)
  else:
    v = _membrane_int(current, theta, levels)
    spikes = (_spikes_scan if method == "scan" else _spikes_steps)(v, base, groups)
  return spikes.astype(dtype)


def spike_sum(spikes: Array, theta: Any, base: int, groups: int) -> Array:
  """Weighted sum `sum_t w_t * spikes[t]` of a window's spikes: the value the train encodes.

  Args:
    spikes: `[T, ..., C]` in {0, 1}.
    theta, base, groups: as in `expg_if`.

  Returns:
    `[..., C]` in the compute dtype (>= float32).
  """
  base, groups = check_code(base, groups, "spike_sum")
  if spikes.shape[0] != groups * (base - 1):
    raise ValueError(f"spike_sum: spikes has {spikes.shape[0]} steps on axis 0, but base={base}, "
                     f"groups={groups} needs T = {groups * (base - 1)}.")
  ct = _compute_dtype(spikes.dtype)
  w = spike_weights(jnp.asarray(theta, ct), base, groups)
  w = w.reshape(w.shape[:1] + (1,) * (spikes.ndim - w.ndim) + w.shape[1:])
  return jnp.sum(w * spikes.astype(ct), axis=0)


def digit_counts(current: Array, theta: Any, base: int, groups: int) -> Array:
  """Spikes fired per time step, summed over all neurons, without materialising the spikes.

  Args:
    current: `[..., C]`; theta, base, groups as in `expg_if`.

  Returns:
    `[T]` int32: the number of neurons that fire at each step (`nnz(spikes[t])`).
  """
  n = level_index(current, theta, base, groups).astype(jnp.int32)
  counts = []
  for g in range(groups):
    digit = (n // base ** (groups - 1 - g)) % base
    counts.extend(jnp.sum(digit > r, dtype=jnp.int32) for r in range(base - 1))
  return jnp.stack(counts)


def _digit_sum(n: Array, base: int, groups: int) -> Array:
  """Sum of the `groups` base-`base` digits of integral levels `n` (any float or int dtype)."""
  n = n.astype(jnp.int32)
  total = jnp.zeros_like(n)
  for g in range(groups):
    total = total + (n // base ** (groups - 1 - g)) % base
  return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _spike_count(x: Array, theta: Array, base: int, groups: int) -> Array:
  levels = base**groups
  n = jnp.clip(_signed_level(x, theta, levels), 0, levels - 1)
  return _digit_sum(n, base, groups).astype(x.dtype)


def _spike_count_fwd(x, theta, base, groups):
  levels = base**groups
  m = _signed_level(x, theta, levels)
  out = _digit_sum(jnp.clip(m, 0, levels - 1), base, groups).astype(x.dtype)
  return out, (x, theta, m.astype(_level_int_dtype(levels)))


def _spike_count_bwd(base, groups, res, g):
  x, theta, m = res
  levels = base**groups
  ct = _compute_dtype(x.dtype)
  theta_c = jnp.asarray(theta, ct)
  # The digit sum is a step function of the continuous level u = x L / theta; its gradient is that of
  # the mean digit sum of the levels up to u, S(u) = (b - 1)/2 * log_b(1 + u), which is exact at
  # u = b**k - 1 and puts the strongest pull toward silence on the smallest non-zero levels. Silent
  # neurons (level 0) get no gradient: there is nothing left to save.
  u = jnp.clip(x.astype(ct) * levels / theta_c, 0, levels - 1)
  ds_du = jnp.where(m.astype(ct) >= 1, (base - 1) / (2 * np.log(base)) / (1 + u), 0)
  g = g.astype(ct)
  dx = (g * ds_du * levels / theta_c).astype(x.dtype)
  dtheta = _sum_to_shape(-g * ds_du * u / theta_c, jnp.shape(theta)).astype(jnp.result_type(theta))
  return dx, dtheta


_spike_count.defvjp(_spike_count_fwd, _spike_count_bwd)


def spike_count(x: Array, theta: Any, base: int, groups: int) -> Array:
  """Spikes each ExpG-IF neuron fires in one window (the base-b digit sum of its level), with a
  surrogate gradient, so that a loss on the converted network's synaptic operations can train the QANN.

  Forward: exactly the spike count of `expg_if` for the current `x` (`sum_t spikes[t]`). Backward: the
  gradient of the smooth mean digit sum `S(u) = (b - 1)/2 * log_b(1 + u)` of the continuous level
  `u = x L / theta` (clipped to `[0, L - 1]`), for neurons that fire (level >= 1); zero for silent ones.
  With respect to `theta` through `u` (a larger threshold means lower levels, fewer spikes).

  Args:
    x: input current `[..., C]` (float).
    theta: threshold `> 0`, scalar or `[C]`.
    base, groups: the spike code.

  Returns:
    `[..., C]` spike counts in `x`'s dtype, values in `0 .. groups * (base - 1)`.
  """
  x, theta, base, groups = _float_args(x, theta, base, groups, "spike_count")
  return _spike_count(x, theta, base, groups)


# ---------------------------------------------------------------------------------------------
# STBP baselines: multi-step IF / LIF with surrogate gradients
# ---------------------------------------------------------------------------------------------
def _surrogate_grad(x: Array, alpha: float, kind: str) -> Array:
  if kind == "atan":
    return alpha / 2 / (1 + (jnp.pi / 2 * alpha * x) ** 2)
  if kind == "sigmoid":
    s = jax.nn.sigmoid(alpha * x)
    return alpha * s * (1 - s)
  if kind == "rectangular":
    return (jnp.abs(x) < 0.5 / alpha).astype(x.dtype) * alpha
  if kind == "triangle":
    return jnp.maximum(0.0, alpha - alpha**2 * jnp.abs(x))
  raise ValueError(f"surrogate must be one of {SURROGATES}, got {kind!r}.")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def heaviside(x: Array, alpha: float = 2.0, surrogate: str = "atan") -> Array:
  """Spike function `[x >= 0]` with a surrogate gradient.

  Args:
    x: membrane minus threshold, any shape.
    alpha: width/sharpness of the surrogate (non-differentiable).
    surrogate: one of `SURROGATES`: `"atan"` (`alpha/2 / (1 + (pi/2 alpha x)^2)`), `"sigmoid"`
      (`alpha s (1-s)`, `s = sigmoid(alpha x)`), `"rectangular"` (`alpha` on `|x| < 1/(2 alpha)`),
      `"triangle"` (`max(0, alpha - alpha^2 |x|)`). Each integrates to 1.

  Returns:
    `[x >= 0]` in `x.dtype`.
  """
  x = jnp.asarray(x)
  return (x >= 0).astype(x.dtype)


def _heaviside_fwd(x, alpha, surrogate):
  x = jnp.asarray(x)
  return heaviside(x, alpha, surrogate), x


def _heaviside_bwd(alpha, surrogate, x, g):
  return (g * _surrogate_grad(x, alpha, surrogate).astype(g.dtype),)


heaviside.defvjp(_heaviside_fwd, _heaviside_bwd)


def _check_stbp(where: str, threshold: Any, reset: str, surrogate: str, alpha: Any) -> None:
  if reset not in RESETS:
    raise ValueError(f"{where}: reset must be one of {RESETS}, got {reset!r}.")
  if surrogate not in SURROGATES:
    raise ValueError(f"{where}: surrogate must be one of {SURROGATES}, got {surrogate!r}.")
  if not isinstance(alpha, (int, float)) or alpha <= 0:
    raise ValueError(f"{where}: alpha must be a positive number, got {alpha!r}.")
  _check_theta(threshold, where)


def _fire(v: Array, threshold: Any, reset: str, surrogate: str, alpha: float,
          v_reset: float) -> tuple[Array, Array]:
  """Fire and reset a charged membrane `v [...]`: `(v', spike)` (IF and LIF share it)."""
  spike = heaviside(v - threshold, alpha, surrogate)
  if reset == "soft":
    v = v - spike * threshold
  else:
    v = spike * v_reset + (1 - spike) * v
  return v, spike


def if_step(v: Array, x: Array, threshold: Any = 1.0, reset: str = "soft", surrogate: str = "atan",
            alpha: float = 2.0, v_reset: float = 0.0) -> tuple[Array, Array]:
  """One step of the integrate-and-fire neuron: `(v, x) -> (v', spike)`.

  Args:
    v: membrane `[...]`; x: input current `[...]`; threshold: scalar or `[C]`.
    reset: `"soft"` (subtract the threshold) or `"hard"` (set to `v_reset`).

  Returns:
    `(v', spike)`, both shaped like `x`.
  """
  return _fire(v + x, threshold, reset, surrogate, alpha, v_reset)


def lif_step(v: Array, x: Array, tau: float = 2.0, threshold: Any = 1.0, reset: str = "hard",
             surrogate: str = "sigmoid", alpha: float = 4.0, v_reset: float = 0.0,
             decay_input: bool = True) -> tuple[Array, Array]:
  """One step of the leaky integrate-and-fire neuron: `(v, x) -> (v', spike)`.

  Charge: `v += (x - (v - v_reset)) / tau` if `decay_input`, else `v += x - (v - v_reset) / tau`.

  Returns:
    `(v', spike)`, both shaped like `x`.
  """
  if decay_input:
    v = v + (x - (v - v_reset)) / tau
  else:
    v = v - (v - v_reset) / tau + x
  return _fire(v, threshold, reset, surrogate, alpha, v_reset)


def _multi_step(step: Callable, x: Array, v0: Array | None, v_reset: float) -> Array:
  x = jnp.asarray(x)
  v0 = jnp.full(x.shape[1:], v_reset, x.dtype) if v0 is None else v0
  _, spikes = jax.lax.scan(step, v0, x)
  return spikes


def if_neuron(x: Array, threshold: Any = 1.0, reset: str = "soft", surrogate: str = "atan",
              alpha: float = 2.0, v_reset: float = 0.0, v0: Array | None = None) -> Array:
  """Multi-step IF neuron (the STBP baseline), a `lax.scan` over time.

  Args:
    x: input currents `[T, ...]`, one per time step.
    threshold: firing threshold, scalar or per-channel `[C]` (> 0).
    reset: `"soft"` or `"hard"`; surrogate, alpha: see `heaviside`.
    v_reset: membrane after a hard reset (and the initial membrane if `v0` is None).
    v0: optional initial membrane `[...]`.

  Returns:
    spikes `[T, ...]` in {0, 1}; differentiable through the surrogate.
  """
  _check_stbp("if_neuron", threshold, reset, surrogate, alpha)
  step = functools.partial(if_step, threshold=threshold, reset=reset, surrogate=surrogate,
                           alpha=alpha, v_reset=v_reset)
  return _multi_step(step, x, v0, v_reset)


def lif_neuron(x: Array, tau: float = 2.0, threshold: Any = 1.0, reset: str = "hard",
               surrogate: str = "sigmoid", alpha: float = 4.0, v_reset: float = 0.0,
               decay_input: bool = True, v0: Array | None = None) -> Array:
  """Multi-step LIF neuron (the STBP baseline), a `lax.scan` over time.

  Args:
    x: input currents `[T, ...]`.
    tau: membrane time constant (> 1 leaks, 1 resets each step).
    threshold, reset, surrogate, alpha, v_reset, v0: as in `if_neuron`.
    decay_input: whether the input is divided by `tau` too (SpikingJelly's default).

  Returns:
    spikes `[T, ...]` in {0, 1}.
  """
  _check_stbp("lif_neuron", threshold, reset, surrogate, alpha)
  if not isinstance(tau, (int, float)) or tau < 1:
    raise ValueError(f"lif_neuron: tau must be a number >= 1, got {tau!r}.")
  step = functools.partial(lif_step, tau=tau, threshold=threshold, reset=reset, surrogate=surrogate,
                           alpha=alpha, v_reset=v_reset, decay_input=decay_input)
  return _multi_step(step, x, v0, v_reset)


def codes_for_levels(levels: int) -> list[tuple[int, int]]:
  """All `(base, groups)` codes with exactly `levels` levels, fewest time steps first.

  Args:
    levels: `L`, an integer >= 2.

  Returns:
    list of `(base, groups)` with `base**groups == levels`, sorted by `T = groups*(base-1)`.
  """
  levels = _check_int("levels", levels, 2, "codes_for_levels")
  codes = []
  for groups in range(1, levels.bit_length()):
    base = round(levels ** (1.0 / groups))
    for b in (base - 1, base, base + 1):  # guards against the float root's rounding
      if b >= 2 and b**groups == levels:
        codes.append((b, groups))
  return sorted(set(codes), key=lambda c: (c[1] * (c[0] - 1), c[0]))
