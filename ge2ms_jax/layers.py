"""Conversion-safe Flax building blocks that run as a QANN, a fused SNN, a spiking SNN, or STBP.

Every module takes a `mode`:

* `"qann"`: the quantized ANN that training uses. Synapses have no bias and are followed by
  BatchNorm; neurons are the ExpG quantizer `Q`. When the `"stats"` collection is mutable, neurons
  return `spikes.Coded` values as in the fused path, so that the synaptic operations of the converted
  network are counted (with gradients: the spike-aware loss of `ge2ms_jax.sparsity`).
* `"fused"`: the converted network (BatchNorm folded into synapse biases) applied to the weighted
  sums of spikes; when the `"stats"` collection is mutable, neurons return `spikes.Coded` values
  carrying spike counts so that synaptic operations are counted, otherwise plain values.
* `"spike"`: the converted network run on binary spike trains (`spikes.SpikeTrain`); every synapse
  after the first has a {0, 1} operand and records its synaptic operations.
* `"stbp"`: the baseline: same structure, IF/LIF neurons unrolled over `T` steps on a leading time
  axis, trained with surrogate gradients.

Activations are grids `[..., H, W, C]` (leading axes are batch, and time in STBP mode); a dense
layer is a 1x1 convolution over the grid. Statistics (synaptic operations, spikes, the binary-operand
check) are sown into the `"stats"` collection.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ge2ms_jax import neurons
from ge2ms_jax import spikes as sp

Array = jax.Array
MODES = ("qann", "fused", "spike", "stbp")
FOLDED_MODES = ("fused", "spike")
NEURON_KINDS = ("expg", "if", "lif")


def check_mode(mode: str) -> str:
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
  return mode


# ---------------------------------------------------------------------------------------------
# Neuron site configuration
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NeuronSpec:
  """Settings of one neuron site."""
  base: int = 2
  groups: int = 4
  theta_init: float = 1.0
  per_channel: bool = False
  method: str = "closed"       # expg_if method in spike mode (all methods fire the same spikes)
  kind: str = "expg"           # "expg" (QANN/SNN), or the STBP baselines "if" / "lif"
  time_steps: int = 4          # STBP only
  tau: float = 2.0             # LIF only
  decay_input: bool = False    # LIF only: True scales the input by 1/tau too (see model.default_config)
  surrogate: str = "atan"      # STBP only
  alpha: float = 2.0           # STBP only
  reset: str = "soft"          # STBP only


@dataclasses.dataclass(frozen=True)
class NeuronCodes:
  """Default neuron settings plus per-site `(base, groups)` overrides matched by regex.

  `overrides` is a tuple of `(pattern, base, groups)`; the first pattern that `re.search`es a site
  name (e.g. `"stage2/block0/attn_q"`) wins.
  """
  default: NeuronSpec = NeuronSpec()
  overrides: tuple[tuple[str, int, int], ...] = ()

  def resolve(self, site: str) -> NeuronSpec:
    for pattern, base, groups in self.overrides:
      if re.search(pattern, site):
        return dataclasses.replace(self.default, base=base, groups=groups)
    return self.default


def parse_overrides(text: str) -> tuple[tuple[str, int, int], ...]:
  """Parses `"pattern=base,groups;pattern=base,groups"` into override tuples.

  Raises:
    ValueError: naming the malformed entry and the expected form.
  """
  out = []
  for entry in (e.strip() for e in (text or "").split(";")):
    if not entry:
      continue
    pattern, sep, code = entry.rpartition("=")
    parts = code.split(",")
    if not sep or not pattern or len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
      raise ValueError(f"neuron_overrides: cannot parse {entry!r}; expected 'REGEX=BASE,GROUPS' entries "
                       "separated by ';', e.g. 'attn_(q|k|v)$=4,2;stem=2,8'.")
    try:
      re.compile(pattern)
    except re.error as e:
      raise ValueError(f"neuron_overrides: {pattern!r} is not a valid regular expression ({e}).") from None
    base, groups = neurons.check_code(int(parts[0]), int(parts[1]), f"neuron_overrides entry {entry!r}")
    out.append((pattern, base, groups))
  return tuple(out)


def format_overrides(codes: dict[str, tuple[int, int]]) -> str:
  """Inverse of `parse_overrides` for exact site names: `{site: (b, G)}` -> override string."""
  return ";".join(f"^{re.escape(site)}$={b},{g}" for site, (b, g) in codes.items())


def _path(module: nn.Module) -> str:
  return "/".join(str(p) for p in module.path)


# ---------------------------------------------------------------------------------------------
# Synapses
# ---------------------------------------------------------------------------------------------
def _shift_sum(x: Array, kernel: Array, stride: int) -> Array:
  """Depthwise convolution `[N, H, W, C] * [k, k, 1, C]` as a sum of k*k shifted slices."""
  k = kernel.shape[0]
  h, w = x.shape[1:3]
  ho, wo = -(-h // stride), -(-w // stride)
  xp = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
  out = None
  for i in range(k):
    for j in range(k):
      tap = xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :] * kernel[i, j, 0]
      out = tap if out is None else out + tap
  return out


@jax.custom_vjp
def depthwise_conv(x: Array, kernel: Array) -> Array:
  """Stride-1 'same' depthwise convolution `[N, H, W, C] * [k, k, 1, C] -> [N, H, W, C]`.

  XLA's CPU backend runs grouped convolutions (`feature_group_count = C`) several times slower than
  this shifted-slice form, and differentiating the slices naively is slower still; the backward pass
  here is a depthwise convolution of the cotangent with the flipped kernel (input gradient) and one
  reduction per tap inside a loop (kernel gradient). On accelerators all forms are fast.
  """
  return _shift_sum(x, kernel, 1)


def _depthwise_fwd(x, kernel):
  return _shift_sum(x, kernel, 1), (x, kernel)


def _depthwise_bwd(res, g):
  x, kernel = res
  k = kernel.shape[0]
  n, h, w, c = x.shape
  dx = _shift_sum(g, kernel[::-1, ::-1], 1)
  xp = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
  taps = jnp.asarray([(i, j) for i in range(k) for j in range(k)], jnp.int32)

  def tap(carry, ij):
    zero = jnp.zeros((), ij.dtype)  # one index type, also under jax x64
    window = jax.lax.dynamic_slice(xp, (zero, ij[0], ij[1], zero), (n, h, w, c))
    return carry, jnp.sum((window * g).reshape(-1, c), axis=0, dtype=jnp.promote_types(g.dtype, jnp.float32))

  # A loop keeps XLA from fusing the k*k reductions into one slow multi-output kernel.
  _, dk = jax.lax.scan(tap, None, taps)
  return dx, dk.reshape(k, k, 1, c).astype(kernel.dtype)


depthwise_conv.defvjp(_depthwise_fwd, _depthwise_bwd)


def _im2col_conv(x: Array, kernel: Array, stride: int) -> Array:
  """Dense 'same' convolution as one matrix product over k*k shifted slices (faster to
  differentiate on CPU than `conv_general_dilated`)."""
  k, _, cin, cout = kernel.shape
  h, w = x.shape[1:3]
  ho, wo = -(-h // stride), -(-w // stride)
  xp = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
  patches = jnp.concatenate([xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
                             for i in range(k) for j in range(k)], axis=-1)
  y = patches.reshape(-1, k * k * cin) @ kernel.reshape(k * k * cin, cout)
  return y.reshape(x.shape[0], ho, wo, cout)


CONV_IMPLS = ("auto", "xla", "cpu")


def resolve_conv_impl(impl: str) -> str:
  """The convolution implementation to trace: `"xla"` or `"cpu"` (`"auto"`: "cpu" on the CPU backend,
  "xla" on GPU and TPU, where `lax.conv_general_dilated` runs the accelerator's convolution kernels
  and the shifted-slice forms would cost k*k times the activation memory)."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"model config: conv_impl={impl!r} is not allowed; choose one of {CONV_IMPLS}.")
  if impl == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "xla"
  return impl


def _conv(x: Array, kernel: Array, stride: int, groups: int, dtype: Any, impl: str = "cpu") -> Array:
  """NHWC convolution `[..., H, W, Cin] * [k, k, Cin/groups, Cout] -> [..., ceil(H/s), ceil(W/s), Cout]`
  with 'same'-style padding (k // 2 on each side) over any number of leading batch axes.

  `impl="xla"`: `lax.conv_general_dilated` for every layer. `impl="cpu"`: pointwise layers are a 2-D
  matrix product, dense k x k ones a matrix product over shifted slices, depthwise ones a
  shifted-slice sum with a hand-written backward pass; all are much faster than XLA's generic
  convolution on CPU. Other grouped convolutions use `lax.conv_general_dilated` there too.
  """
  k, _, ipg, cout = kernel.shape
  lead = x.shape[:-3]
  x = x.reshape((-1,) + x.shape[-3:]).astype(dtype)
  kernel = kernel.astype(dtype)
  cin = x.shape[-1]
  if impl == "xla":
    y = jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(k // 2, k // 2)] * 2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
  elif k == 1 and groups == 1:
    xs = x[:, ::stride, ::stride, :]
    y = (xs.reshape(-1, cin) @ kernel[0, 0]).reshape(xs.shape[:-1] + (cout,))
  elif groups == 1:
    y = _im2col_conv(x, kernel, stride)
  elif ipg == 1 and groups == cin:
    mult = cout // groups
    xr = jnp.repeat(x, mult, axis=-1) if mult > 1 else x
    y = depthwise_conv(xr, kernel) if stride == 1 else _shift_sum(xr, kernel, stride)
  else:
    y = jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(k // 2, k // 2)] * 2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
  return y.reshape(lead + y.shape[1:])


def _box_sum(counts: Array, k: int, stride: int) -> Array:
  """Sum over the output positions of a k x k box filter (same padding/stride as the conv) of a
  per-position count map `[..., H, W]`: each input event counted once per output it reaches."""
  lead = counts.shape[:-2]
  x = counts.reshape((-1,) + counts.shape[-2:] + (1,)).astype(jnp.float32)
  y = _shift_sum(x, jnp.ones((k, k, 1, 1), jnp.float32), stride)
  return jnp.sum(y.reshape(lead + (-1,)), axis=-1)


def _input_theta_kernel(kernel: Array, theta: Array, groups: int) -> Array:
  """Folds a per-input-channel threshold into a kernel `[k, k, Cin/groups, Cout]`: W[., ., i, o] *= theta[c(i, o)]."""
  ipg, cout = kernel.shape[-2:]
  opg = cout // groups
  idx = (np.arange(cout)[None, :] // opg) * ipg + np.arange(ipg)[:, None]
  return kernel * theta[idx].astype(kernel.dtype)


class Synapse(nn.Module):
  """A convolution (`kernel_size > 1` or grids) or dense (1x1) synaptic layer.

  Attributes:
    features: output channels.
    kernel_size: odd spatial size (1 for a dense/pointwise layer).
    stride: spatial stride.
    groups: channel groups (`groups == Cin` is depthwise).
    use_bias: True in folded modes (BatchNorm folded into a bias).
    first: consumes real-valued input (its operations are MACs).
    mode, dtype: see the module docstring; `dtype` is the compute dtype.
    conv_impl: "xla" | "cpu" (`resolve_conv_impl`); the parameters are the same under either.

  Input `[..., H, W, Cin]` (array, `Coded` or `SpikeTrain`); output `[..., H', W', features]` dense.
  """
  features: int
  kernel_size: int = 1
  stride: int = 1
  groups: int = 1
  use_bias: bool = False
  first: bool = False
  mode: str = "qann"
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
  conv_impl: str = "cpu"

  @nn.compact
  def __call__(self, x: Any) -> Array:
    cin = x.shape[-1]
    if cin % self.groups or self.features % self.groups:
      raise ValueError(f"{_path(self)}: channels {cin} -> {self.features} are not divisible by "
                       f"groups={self.groups}.")
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, cin // self.groups, self.features))
    op = lambda a, w: _conv(a, w, self.stride, self.groups, self.dtype, self.conv_impl)  # noqa: E731
    fan_in = k * k * cin // self.groups

    if isinstance(x, sp.SpikeTrain):
      theta = jnp.asarray(x.theta, kernel.dtype)
      w = _input_theta_kernel(kernel, theta, self.groups) if theta.ndim else kernel * theta
      s = x.spikes
      sp.check_binary(self, "synapse", s)
      y_steps = op(s, w)  # [S, ..., H', W', Cout]: time folded into the batch
      y = jnp.tensordot(x.scales.astype(y_steps.dtype), y_steps, axes=1)
      per_step = _box_sum(jnp.sum(s, axis=-1), k, self.stride)  # [S, ...]
      per_step = jnp.sum(per_step.reshape(s.shape[0], -1), axis=1) * (self.features // self.groups)
      self.sow("stats", "synapse", {"order": sp.trace_order(), "sops": jnp.sum(per_step), "sops_per_step": per_step,
                                    "binary": sp.is_binary(s), "macs": jnp.zeros(()),
                                    **sp.rescale_stats(y.size, x.base, x.groups)})
    elif isinstance(x, sp.Coded):
      y = op(x.value, kernel)
      sops = jnp.sum(_box_sum(jnp.sum(x.counts, axis=-1), k, self.stride)) * (self.features // self.groups)
      self.sow("stats", "synapse", {"order": sp.trace_order(), "sops": sops, "binary": jnp.asarray(True), "macs": jnp.zeros(()),
                                    **sp.rescale_stats(y.size, x.base, x.groups)})
    else:
      y = op(x, kernel)
      if self.mode in FOLDED_MODES:
        if not self.first and self.mode == "spike":
          raise sp.MultiplicationFreeError(
              f"{_path(self)}: a synapse after the encoding layer received a real-valued input in spike "
              "mode; only the first layer may (it would be a multiplication).")
        macs = float(np.prod(y.shape, dtype=np.float64)) * fan_in
        self.sow("stats", "synapse", {"order": sp.trace_order(), "sops": jnp.zeros(()), "binary": jnp.asarray(True),
                                      "macs": jnp.asarray(macs, jnp.float32)})
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,)).astype(y.dtype)
    out_shape = y.shape[-3:]
    sp.note_cost(sp.LayerCost(name=_path(self), kind="conv" if k > 1 else "dense",
                              macs=int(np.prod(out_shape)) * fan_in, fan_in=fan_in,
                              outputs=int(np.prod(out_shape)), first=self.first))
    return y


class BatchNorm(nn.Module):
  """BatchNorm over all axes but the last, with running statistics (`"batch_stats"`: mean, var).

  The same parameters as `flax.linen.BatchNorm` (`scale`, `bias`), written so that its statistics are
  plain column means of a `[rows, C]` view: XLA on CPU fuses and differentiates that several times
  faster inside a network than the library module. Under `jit` with a batch sharded over devices, the
  means are over the global batch.

  Input/output `[..., C]`.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  scale_init: Any = nn.initializers.ones_init()
  use_scale: bool = True  # False: no `scale` parameter (gamma fixed at 1)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    c = x.shape[-1]
    scale = self.param("scale", self.scale_init, (c,)) if self.use_scale else jnp.ones((c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (c,))
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if train:
      rows = x.reshape(-1, c).astype(jnp.promote_types(x.dtype, jnp.float32))
      mean = jnp.mean(rows, axis=0)
      var = jnp.mean(jnp.square(rows - mean), axis=0)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    else:
      mean, var = ra_mean.value, ra_var.value
    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    return (x * mul.astype(self.dtype) + (bias - mean * mul).astype(self.dtype)).astype(self.dtype)


class SynapseBN(nn.Module):
  """`Synapse` followed by BatchNorm (QANN/STBP) or with the BatchNorm folded in (fused/spike).

  The parameters of the two forms are `{"syn": {"kernel"}, "bn": {"scale", "bias"}}` (+ batch_stats
  `{"bn": {"mean", "var"}}`) and `{"syn": {"kernel", "bias"}}`; `conversion.convert` maps the first to the
  second. With `conv_impl="xla"` the BatchNorm is `flax.linen.BatchNorm` (same variables), the
  standard one for accelerators; with "cpu" it is this module's `BatchNorm`, faster on CPU.
  """
  features: int
  kernel_size: int = 1
  stride: int = 1
  groups: int = 1
  first: bool = False
  mode: str = "qann"
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  zero_init: bool = False  # scale of the BN (gamma) starts at 0: residual branches start as identity
  conv_impl: str = "cpu"
  use_scale: bool = True   # False: BatchNorm without a learned scale (no "scale" parameter)

  @nn.compact
  def __call__(self, x: Any, train: bool = False) -> Array:
    folded = self.mode in FOLDED_MODES
    y = Synapse(self.features, self.kernel_size, self.stride, self.groups, use_bias=folded,
                first=self.first, mode=self.mode, dtype=self.dtype, conv_impl=self.conv_impl, name="syn")(x)
    if folded:
      return y
    scale_init = nn.initializers.zeros_init() if self.zero_init else nn.initializers.ones_init()
    if self.conv_impl == "xla":
      return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                          dtype=self.dtype, scale_init=scale_init, use_scale=self.use_scale,
                          use_fast_variance=False, name="bn")(y)
    return BatchNorm(momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype,
                     scale_init=scale_init, use_scale=self.use_scale, name="bn")(y, train)


# ---------------------------------------------------------------------------------------------
# Neurons
# ---------------------------------------------------------------------------------------------
class Neuron(nn.Module):
  """A neuron site: ExpG quantizer (QANN), ExpG-IF (fused/spike), or IF/LIF (STBP).

  Attributes:
    codes: default settings and per-site overrides; the site's name is its module path.
    mode: see the module docstring.

  Input: current `[..., C]` (dense). Output: `[..., C]` dense (QANN), `Coded` (fused),
  `SpikeTrain` (spike), or spikes `[T, ..., C]` (STBP, the time axis leading).
  """
  codes: NeuronCodes = NeuronCodes()
  mode: str = "qann"
  scalar_theta: bool = False  # sites whose spikes enter activation-activation products

  @nn.compact
  def __call__(self, current: Array) -> Any:
    spec = self.codes.resolve(_path(self))
    if spec.kind != "expg":
      if self.mode != "stbp":
        raise ValueError(f"{_path(self)}: neuron kind {spec.kind!r} is an STBP baseline; it runs in mode "
                         f"'stbp' only, not {self.mode!r}.")
      if spec.kind == "if":
        return neurons.if_neuron(current, 1.0, spec.reset, spec.surrogate, spec.alpha)
      return neurons.lif_neuron(current, spec.tau, 1.0, "hard" if spec.reset == "hard" else "soft",
                                spec.surrogate, spec.alpha, decay_input=spec.decay_input)
    if self.mode == "stbp":
      raise ValueError(f"{_path(self)}: mode 'stbp' needs neuron kind 'if' or 'lif', got 'expg'.")
    base, groups = neurons.check_code(spec.base, spec.groups, _path(self))
    channels = current.shape[-1]
    per_channel = spec.per_channel and not self.scalar_theta
    theta = self.param("theta", nn.initializers.constant(spec.theta_init), (channels,) if per_channel else ())
    if self.mode in ("qann", "fused"):
      # With statistics the QANN runs like the fused SNN: every layer counts the synaptic operations
      # its converted form will perform, differentiably (the spike-aware training loss uses them).
      # `init` (where every collection is mutable) keeps the QANN's plain variables.
      wanted = self.is_mutable_collection("stats") and not (self.mode == "qann" and self.is_initializing())
      if not wanted:
        return neurons.expg_quantize(current, theta, base, groups)  # no statistics wanted: the fast path
      out = sp.coded_from_neuron(current, theta, base, groups)
      self.sow("stats", "neuron", {"order": sp.trace_order(), "spikes": jnp.sum(out.counts), "neurons": jnp.asarray(out.counts.size),
                                   "steps": jnp.asarray(groups * (base - 1)),
                                   "code": jnp.asarray([base, groups])})
      return out
    train = sp.from_neuron(current, theta, base, groups, spec.method)
    per_step = jnp.sum(train.spikes.reshape(train.steps, -1), axis=1)
    self.sow("stats", "neuron", {"order": sp.trace_order(), "spikes": jnp.sum(per_step), "spikes_per_step": per_step,
                                 "neurons": jnp.asarray(int(np.prod(current.shape))),
                                 "steps": jnp.asarray(train.steps), "code": jnp.asarray([base, groups])})
    return train


def add_to_current(module: nn.Module, current: Array, shortcut: Any, name: str = "shortcut") -> Array:
  """Adds a neuron output (`shortcut`) into a membrane current: an identity synapse.

  In spike mode each incoming spike adds its weight to the membrane (one AC per spike), recorded as
  synaptic operations of the site `name`.

  Args:
    module: the calling module (for `sow`).
    current: `[..., C]` dense current.
    shortcut: `[..., C]` activation of any kind.

  Returns:
    `[..., C]` dense current.
  """
  if isinstance(shortcut, sp.SpikeTrain):
    s = shortcut.spikes
    sp.check_binary(module, name, s)
    per_step = jnp.sum(s.reshape(s.shape[0], -1), axis=1)
    module.sow("stats", name, {"order": sp.trace_order(), "sops": jnp.sum(per_step), "sops_per_step": per_step,
                               "binary": sp.is_binary(s), "macs": jnp.zeros(())})
  elif isinstance(shortcut, sp.Coded):
    module.sow("stats", name, {"order": sp.trace_order(), "sops": jnp.sum(shortcut.counts), "binary": jnp.asarray(True),
                               "macs": jnp.zeros(())})
  return current + sp.dense(shortcut).astype(current.dtype)


def spatial_shape(x: Any) -> tuple[int, int, int]:
  """`(H, W, C)` of a grid activation of any kind."""
  return tuple(x.shape[-3:])


def map_activation(x: Any, fn) -> Any:
  """Applies a shape function to an activation of any kind (leading axes are batch)."""
  return x.map(fn) if isinstance(x, (sp.SpikeTrain, sp.Coded)) else fn(x)


def ensure_sequence(x: Any) -> Sequence:
  return tuple(x) if isinstance(x, (list, tuple)) else (x,)
