"""The Ge2mS-T network (METHOD.md §3): a hierarchical hybrid of spiking convolutions and GW-SSA.

    image -> stem (conv3x3 + BN + neuron; the only layer that sees real values)
          -> stage 0..k-1, each: downsample (conv3x3 stride s + BN + neuron), then `depth` blocks
               conv block:  x = N(x + BN(pw(N(BN(dw3x3(x))))))                      token mixer
                            x = N(x + BN(pw(N(BN(dw3x3(N(BN(pw_up(x)))))))))         conv-FFN
               dense block: x = N(x + BN(conv3x3(N(BN(conv3x3(x))))))                  full convolutions
               attn block:  q, k, v = N(BN(pw(x)))
                            x = N(x + BN(pw(N(GW-SSA(q, k, v) + BN(dw3x3(v))))))    hybrid attention
                            x = N(x + BN(pw(N(BN(pw_up(x))))))                      MLP
          -> per-token linear head -> mean over tokens -> logits

`N` is a neuron site (ExpG quantizer for training, ExpG-IF after conversion, IF/LIF for STBP); the
residual stream carries neuron outputs, and each addition is integrated by the next neuron (an
identity synapse in the SNN). Only conversion-safe operators appear: convolutions, BatchNorm (folded
at conversion), additions, a mean, and neurons; no LayerNorm, softmax, max-pool or GELU.

Variants (`VARIANTS`): `tiny` (28x28 / 32x32, under 2M parameters), `s` (32x32 and ImageNet 224),
`b` (ImageNet 224, about 64M parameters), `fast` (32x32: wide full-convolution stages and one GW-SSA
stage, the fast CIFAR-10 recipe of experiments/cifar10.py:fast). `build(config)` returns the Flax
module; `count(config)` reports parameters and MACs per image without allocating.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ge2ms_jax import attention
from ge2ms_jax import layers as L
from ge2ms_jax import spikes as sp
from ge2ms_jax.configs import common as configs_common

Array = jax.Array

# Each variant: stem channels, per-stage (kind, dim, depth, stride), attention layout, resolutions.
VARIANTS = configs_common.MODEL_VARIANTS
STAGE_KINDS = ("conv", "dense", "attn")


# The model config of a variant (its fields are documented there).
default_config = configs_common.model_config


def _fail(field: str, value: Any, allowed: str) -> None:
  raise ValueError(f"model config: {field}={value!r} is not allowed; {allowed}.")


def _check_int(field: str, value: Any, minimum: int, maximum: int, whole: Any = None) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
    _fail(field, value if whole is None else whole,
          f"{'each entry must be' if whole is not None else 'use'} an int in [{minimum}, {maximum}]")


def neuron_codes(config: ml_collections.ConfigDict) -> L.NeuronCodes:
  """The `NeuronCodes` (default spec + per-site overrides) of a model config."""
  n = config.neuron
  kind = config.get("neuron_kind", "expg")
  if kind not in L.NEURON_KINDS:
    _fail("neuron_kind", kind, f"choose one of {L.NEURON_KINDS}")
  spec = L.NeuronSpec(base=n.base, groups=n.groups, theta_init=float(n.theta_init),
                      per_channel=bool(n.per_channel), method=n.get("method", "closed"), kind=kind,
                      time_steps=int(config.get("time_steps", 4)), tau=float(config.get("tau", 2.0)),
                      decay_input=bool(config.get("decay_input", False)),
                      surrogate=config.get("surrogate", "atan"), alpha=float(config.get("alpha", 2.0)),
                      reset=config.get("reset", "soft"))
  return L.NeuronCodes(default=spec, overrides=L.parse_overrides(config.get("neuron_overrides", "")))


def stage_grids(config: ml_collections.ConfigDict) -> list[tuple[int, int]]:
  """Token grid `(H, W)` of each stage: the stem keeps small images' size and halves large ones
  (> 64 px); every stage then divides the grid by its stride (`stage_strides`, 2 by default; rounding
  up, as the strided 'same' convs do)."""
  s = int(config.image_size)
  if s > 64:
    s = math.ceil(s / 2)
  grids = []
  for stride in stage_strides(config):
    s = math.ceil(s / stride)
    grids.append((s, s))
  return grids


def stage_strides(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The downsampling stride of each stage (`config.strides`; empty or absent: 2 everywhere)."""
  strides = tuple(config.get("strides", ()) or ())
  return strides if strides else (2,) * len(config.dims)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks a model config; raises ValueError naming the field and what is allowed."""
  if config.variant not in VARIANTS:
    _fail("variant", config.variant, f"choose one of {sorted(VARIANTS)}")
  allowed = VARIANTS[config.variant]["image_sizes"]
  if config.image_size not in allowed:
    _fail("image_size", config.image_size, f"variant {config.variant!r} takes image sizes {allowed}")
  if config.in_channels not in (1, 3):
    _fail("in_channels", config.in_channels, "use 1 (grey) or 3 (RGB)")
  if config.dtype not in ("float32", "bfloat16", "float64"):
    _fail("dtype", config.dtype, "use 'float32', 'bfloat16', or 'float64' (verification, with jax x64 enabled)")
  # Sizes: a zero or absurd width would otherwise surface as a division by zero or an overflow
  # deep inside parameter initialisation.
  for field, minimum, maximum in (("num_classes", 1, 2**20), ("stem_channels", 1, 2**16),
                                  ("head_dim", 1, 2**12), ("mlp_ratio", 1, 64)):
    _check_int(field, config[field], minimum, maximum)
  for field, minimum, maximum in (("dims", 1, 2**16), ("depths", 0, 256)):
    values = config[field]
    if not isinstance(values, (tuple, list)) or not values:
      _fail(field, values, "give a non-empty tuple with one entry per stage")
    for v in values:
      _check_int(field, v, minimum, maximum, whole=values)
  n = len(config.dims)
  if not (len(config.kinds) == len(config.depths) == n):
    _fail("kinds/dims/depths", (config.kinds, config.dims, config.depths), "give one entry per stage")
  for kind in config.kinds:
    if kind not in STAGE_KINDS:
      _fail("kinds", config.kinds, f"each stage is one of {STAGE_KINDS}")
  strides = tuple(config.get("strides", ()) or ())
  if strides and (len(strides) != n or any(isinstance(t, bool) or t not in (1, 2) for t in strides)):
    _fail("strides", strides, "give () or one stride (1 or 2) per stage")
  windows = attention.normalize_windows(config.window_sizes)
  if sum(config.heads_per_window) <= 0 or len(config.heads_per_window) != len(windows):
    _fail("heads_per_window", config.heads_per_window, f"give one head count per window size {windows}")
  heads = sum(config.heads_per_window)
  for kind, dim, (h, w) in zip(config.kinds, config.dims, stage_grids(config)):
    if kind != "attn":
      continue
    if dim != heads * config.head_dim:
      _fail("dims", config.dims, f"an attention stage needs dim = heads * head_dim = "
            f"{heads} * {config.head_dim} = {heads * config.head_dim}")
    for m in windows:
      if m != attention.GLOBAL and m > max(h, w):
        _fail("window_sizes", config.window_sizes, f"the {h}x{w} grid of this stage takes windows up to "
              f"{max(h, w)} (or 0 for global)")
  L.resolve_conv_impl(config.get("conv_impl", "auto"))
  neuron_codes(config)


def _shifts(config, grid_hw: tuple[int, int]) -> tuple[int, ...]:
  """Attention output scale `2**-shift` per head group.

  Automatic (`attn_shift = -1`): the product sums `tokens * head_dim` terms of spike values, each
  about `1/16` on average at initialisation, so `shift = round(log2(tokens * d)) - 4` keeps the
  output near unit scale.
  """
  if isinstance(config.attn_shift, (tuple, list)):
    return tuple(int(s) for s in config.attn_shift)
  if config.attn_shift >= 0:
    return (int(config.attn_shift),) * len(config.window_sizes)
  out = []
  for m in attention.normalize_windows(config.window_sizes):
    tokens = grid_hw[0] * grid_hw[1] if m == attention.GLOBAL else m * m
    out.append(max(0, round(math.log2(tokens * config.head_dim)) - 4))
  return tuple(out)


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------
class _Parts(nn.Module):
  """Shared constructors of the blocks (mode, dtype, neuron codes)."""
  codes: L.NeuronCodes
  mode: str
  dtype: Any
  conv_impl: str = "cpu"
  bn_scale: bool = True

  def syn(self, features, kernel_size=1, stride=1, groups=1, zero_init=False, first=False, name=None):
    # Without a BatchNorm scale a branch cannot start at zero; it starts as a plain BatchNorm.
    return L.SynapseBN(features, kernel_size, stride, groups, first=first, mode=self.mode,
                       dtype=self.dtype, zero_init=zero_init and self.bn_scale, conv_impl=self.conv_impl,
                       use_scale=self.bn_scale, name=name)

  def neuron(self, name, scalar_theta=False):
    return L.Neuron(self.codes, self.mode, scalar_theta=scalar_theta, name=name)


class ConvBlock(_Parts):
  """Spiking depthwise-separable token mixer + conv-FFN, `[..., H, W, C] -> [..., H, W, C]`."""
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x: Any, train: bool = False) -> Any:
    c = L.spatial_shape(x)[-1]
    h = self.neuron("mix_n_dw")(self.syn(c, 3, groups=c, name="mix_dw")(x, train))
    h = self.syn(c, zero_init=True, name="mix_pw")(h, train)
    x = self.neuron("mix_n_out")(L.add_to_current(self, h, x, "mix_shortcut"))
    h = self.neuron("ffn_n_up")(self.syn(c * self.mlp_ratio, name="ffn_up")(x, train))
    h = self.neuron("ffn_n_dw")(self.syn(c * self.mlp_ratio, 3, groups=c * self.mlp_ratio, name="ffn_dw")(h, train))
    h = self.syn(c, zero_init=True, name="ffn_down")(h, train)
    return self.neuron("ffn_n_out")(L.add_to_current(self, h, x, "ffn_shortcut"))


class DenseBlock(_Parts):
  """Two full 3x3 convolutions with an identity shortcut (a ResNet basic block),
  `[..., H, W, C] -> [..., H, W, C]`."""

  @nn.compact
  def __call__(self, x: Any, train: bool = False) -> Any:
    c = L.spatial_shape(x)[-1]
    h = self.neuron("conv1_n")(self.syn(c, 3, name="conv1")(x, train))
    h = self.syn(c, 3, zero_init=True, name="conv2")(h, train)
    return self.neuron("n_out")(L.add_to_current(self, h, x, "shortcut"))


class AttnBlock(_Parts):
  """GW-SSA with a depthwise-conv branch on V, then an MLP, `[..., H, W, C] -> [..., H, W, C]`."""
  head_dim: int = 32
  window_sizes: tuple = (2, 4, 0)
  heads_per_window: tuple = (1, 1, 1)
  shifts: tuple = (0, 0, 0)
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x: Any, train: bool = False) -> Any:
    hh, ww, c = L.spatial_shape(x)
    heads = sum(self.heads_per_window)
    qkv = [self.neuron(f"attn_{n}", scalar_theta=True)(self.syn(c, name=f"attn_w{n}")(x, train))
           for n in ("q", "k", "v")]
    to_heads = lambda a: a.reshape(a.shape[:-3] + (hh * ww, heads, self.head_dim))  # noqa: E731
    q, k, v = (L.map_activation(t, to_heads) for t in qkv)

    names = iter(["p1", "p2"] * len(self.window_sizes))

    def matmul(subscripts, a, b):
      # Products of spike operands are recorded (a no-op unless "stats" is mutable): the SNN's
      # statistics, and the QANN's estimate of them in spike-aware training.
      name = f"attn_{next(names)}"
      spiking = self.mode == "spike"
      return sp.spike_einsum(subscripts, a, b, lambda stats: self.sow("stats", name, stats),
                             spiking="/".join(self.path) if spiking else None,
                             check=(lambda spikes: sp.check_binary(self, name, spikes)) if spiking else None)

    a = attention.gw_ssa(q, k, v, (hh, ww), self.window_sizes, self.heads_per_window, self.shifts,
                         matmul=matmul)
    a = a.reshape(a.shape[:-3] + (hh, ww, c))
    if self.mode in L.FOLDED_MODES:
      # The 2**-shift output scale: one shift per output element of the window products.
      self.sow("stats", "attn_scale", {"order": sp.trace_order(), "sops": jnp.zeros(()), "binary": jnp.asarray(True),
                                       "shifts": jnp.asarray(float(a.size), jnp.float32),
                                       "scalings": jnp.zeros(())})
      sp.note_cost(sp.LayerCost(name="/".join(self.path) + "/attn_products", kind="attention",
                                macs=attention.attention_macs((hh, ww), self.head_dim, self.window_sizes,
                                                              self.heads_per_window),
                                fan_in=0, outputs=hh * ww * c))
    conv = self.syn(c, 3, groups=c, name="attn_dw_v")(qkv[2], train)
    h = self.neuron("attn_n_mix")(a.astype(conv.dtype) + conv)
    h = self.syn(c, zero_init=True, name="attn_proj")(h, train)
    x = self.neuron("attn_n_out")(L.add_to_current(self, h, x, "attn_shortcut"))
    h = self.neuron("mlp_n_up")(self.syn(c * self.mlp_ratio, name="mlp_up")(x, train))
    h = self.syn(c, zero_init=True, name="mlp_down")(h, train)
    return self.neuron("mlp_n_out")(L.add_to_current(self, h, x, "mlp_shortcut"))


class Stage(_Parts):
  """A strided (2 by default) downsampling conv + neuron, then `depth` conv, dense or attention blocks."""
  kind: str = "conv"
  dim: int = 64
  depth: int = 1
  mlp_ratio: int = 4
  head_dim: int = 32
  window_sizes: tuple = (2, 4, 0)
  heads_per_window: tuple = (1, 1, 1)
  shifts: tuple = (0, 0, 0)
  stride: int = 2

  @nn.compact
  def __call__(self, x: Any, train: bool = False) -> Any:
    x = self.neuron("n_down")(self.syn(self.dim, 3, self.stride, name="down")(x, train))
    parts = dict(codes=self.codes, mode=self.mode, dtype=self.dtype, conv_impl=self.conv_impl,
                 bn_scale=self.bn_scale)
    for j in range(self.depth):
      if self.kind == "conv":
        x = ConvBlock(**parts, mlp_ratio=self.mlp_ratio, name=f"block{j}")(x, train)
      elif self.kind == "dense":
        x = DenseBlock(**parts, name=f"block{j}")(x, train)
      else:
        x = AttnBlock(**parts, head_dim=self.head_dim, window_sizes=self.window_sizes,
                      heads_per_window=self.heads_per_window, shifts=self.shifts,
                      mlp_ratio=self.mlp_ratio, name=f"block{j}")(x, train)
    return x


class Ge2msNet(nn.Module):
  """The Ge2mS-T network.

  Attributes:
    config: a model config (`default_config`), validated by `build`.
    mode: "qann" (training), "fused" / "spike" (the converted SNN), "stbp" (baseline).

  Call: `images [B, H, W, C]` float -> logits `[B, num_classes]` (float32; float64 for a float64 model).
  """
  config: Any
  mode: str = "qann"

  @nn.compact
  def __call__(self, images: Array, train: bool = False) -> Array:
    cfg = self.config
    if images.ndim != 4 or images.shape[1:] != (cfg.image_size, cfg.image_size, cfg.in_channels):
      raise ValueError(f"images must be [B, {cfg.image_size}, {cfg.image_size}, {cfg.in_channels}] for this "
                       f"config (variant {cfg.variant!r}), got shape {tuple(images.shape)}.")
    if jnp.issubdtype(images.dtype, jnp.complexfloating):
      raise TypeError(f"images must be real (float, integer or bool), got dtype {images.dtype}.")
    dtype = jnp.dtype(cfg.dtype)
    codes = neuron_codes(cfg)
    conv_impl = L.resolve_conv_impl(cfg.get("conv_impl", "auto"))
    bn_scale = bool(cfg.get("bn_scale", True))
    parts = dict(codes=codes, mode=self.mode, dtype=dtype, conv_impl=conv_impl, bn_scale=bn_scale)
    x = images.astype(dtype)
    if self.mode == "stbp":  # direct encoding: the image is the input current of every step
      x = jnp.broadcast_to(x[None], (codes.default.time_steps,) + x.shape)

    large = cfg.image_size > 64
    stem = L.SynapseBN(cfg.stem_channels, 3, 2 if large else 1, first=True, mode=self.mode, dtype=dtype,
                       conv_impl=conv_impl, use_scale=bn_scale, name="stem_conv")
    x = L.Neuron(codes, self.mode, name="stem_n")(stem(x, train))
    grids = stage_grids(cfg)
    strides = stage_strides(cfg)
    for i, (kind, dim, depth) in enumerate(zip(cfg.kinds, cfg.dims, cfg.depths)):
      x = Stage(**parts, kind=kind, dim=dim, depth=depth, mlp_ratio=cfg.mlp_ratio, head_dim=cfg.head_dim,
                window_sizes=attention.normalize_windows(cfg.window_sizes),
                heads_per_window=tuple(cfg.heads_per_window), shifts=_shifts(cfg, grids[i]),
                stride=strides[i], name=f"stage{i}")(x, train)
    # The head is linear, so applying it to each token's spikes and then averaging equals averaging
    # first; this order keeps every synaptic operand binary in the SNN.
    head = L.Synapse(cfg.num_classes, 1, use_bias=True, mode=self.mode, dtype=dtype, name="head",
                     kernel_init=nn.initializers.zeros_init(), conv_impl=conv_impl)
    per_token = head(x).astype(jnp.promote_types(dtype, jnp.float32))
    logits = jnp.mean(per_token, axis=(-3, -2))
    if self.mode in L.FOLDED_MODES:
      # The mean over tokens: a shift per logit for a power-of-two token count, else a multiplication.
      tokens = per_token.shape[-3] * per_token.shape[-2]
      n = float(logits.size)
      pow2 = tokens & (tokens - 1) == 0
      self.sow("stats", "head_mean", {"order": sp.trace_order(), "sops": jnp.zeros(()), "binary": jnp.asarray(True),
                                      "shifts": jnp.asarray(n if pow2 else 0.0, jnp.float32),
                                      "scalings": jnp.asarray(0.0 if pow2 else n, jnp.float32)})
    if self.mode == "stbp":
      logits = jnp.mean(logits, axis=0)
    return logits


def build(config: ml_collections.ConfigDict, mode: str = "qann") -> Ge2msNet:
  """Validates a model config and returns the network module.

  The module holds the config frozen (`ml_collections.FrozenConfigDict`), and one network is built
  per (config, mode): later changes to `config` do not reach a built network, and building the same
  network again costs a dictionary lookup.

  Args:
    config: `config.model` of an experiment (see `default_config`), mutable or frozen.
    mode: "qann" | "fused" | "spike" | "stbp"; an STBP config (`neuron_kind` "if"/"lif") always builds
      in "stbp" mode.

  Returns:
    a `Ge2msNet`: `net.init({"params": rng}, images, train=False)`,
    `net.apply(variables, images, train=True, mutable=["batch_stats"])`.
  """
  frozen = config if isinstance(config, ml_collections.FrozenConfigDict) else ml_collections.FrozenConfigDict(config)
  return _build(frozen, mode)


@functools.lru_cache(maxsize=64)
def _build(config: ml_collections.FrozenConfigDict, mode: str) -> Ge2msNet:
  validate(config)
  if config.get("neuron_kind", "expg") != "expg":
    if mode not in ("qann", "stbp"):
      raise ValueError(f"an STBP model (neuron_kind={config.neuron_kind!r}) has no converted form; mode "
                       f"{mode!r} needs neuron_kind='expg'.")
    mode = "stbp"
  L.check_mode(mode)
  return Ge2msNet(config=config, mode=mode)


def count(config: ml_collections.ConfigDict, image_size: int | None = None) -> dict[str, Any]:
  """Parameters and per-image MACs of a config at a resolution, without allocating.

  Args:
    config: a model config; `image_size` overrides its resolution.

  Returns:
    `{"params": int, "macs": int, "first_layer_macs": int, "layers": [LayerCost, ...]}` with MACs
    per image of the converted network as an ANN would compute it (attention products included).
  """
  config = ml_collections.ConfigDict(config.to_dict())
  if image_size is not None:
    config.image_size = image_size
  config.neuron_kind = "expg"
  net = build(config, mode="fused")
  images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, config.in_channels), jnp.float32)
  with sp.record_costs() as table:
    shapes = jax.eval_shape(lambda x: net.init({"params": jax.random.key(0)}, x), images)
  params = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["params"]))
  # In the QANN the BatchNorm scale/bias sit where the folded bias is; count the trained parameters.
  qann_shapes = jax.eval_shape(lambda x: build(config).init({"params": jax.random.key(0)}, x), images)
  qann_params = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(qann_shapes["params"]))
  # init traces the module once; the recorder saw each layer once.
  macs = sum(c.macs for c in table)
  return {"params": qann_params, "snn_params": params, "macs": macs,
          "first_layer_macs": sum(c.macs for c in table if c.first), "layers": list(table)}



# ---------------------------------------------------------------------------------------------
# Latency
# ---------------------------------------------------------------------------------------------
def site_graph(config: ml_collections.ConfigDict) -> dict[str, tuple[str, ...]]:
  """The neuron sites of a config and the sites whose spikes each one integrates, in network order.

  Edges follow the blocks above (`"input"` is the image): a conv block's `mix_n_out` and
  `ffn_n_out` also integrate the block input / `mix_n_out` through the shortcut (a dense block's
  `n_out` its input); `attn_n_mix` integrates both attention products (of q, k, v) and the depthwise
  branch on v; `attn_n_out` and `mlp_n_out` integrate their shortcuts.

  Returns:
    `{site: (predecessor sites, ...)}` for every neuron site (names as in the parameter tree).
  """
  graph: dict[str, tuple[str, ...]] = {"stem_n": ("input",)}
  x = "stem_n"
  for i, (kind, depth) in enumerate(zip(config.kinds, config.depths)):
    down = f"stage{i}/n_down"
    graph[down] = (x,)
    x = down
    for j in range(depth):
      p = f"stage{i}/block{j}/"
      if kind == "dense":
        graph[p + "conv1_n"] = (x,)
        graph[p + "n_out"] = (p + "conv1_n", x)
        x = p + "n_out"
      elif kind == "conv":
        graph[p + "mix_n_dw"] = (x,)
        graph[p + "mix_n_out"] = (p + "mix_n_dw", x)
        graph[p + "ffn_n_up"] = (p + "mix_n_out",)
        graph[p + "ffn_n_dw"] = (p + "ffn_n_up",)
        graph[p + "ffn_n_out"] = (p + "ffn_n_dw", p + "mix_n_out")
        x = p + "ffn_n_out"
      else:
        for n in ("q", "k", "v"):
          graph[p + f"attn_{n}"] = (x,)
        graph[p + "attn_n_mix"] = (p + "attn_q", p + "attn_k", p + "attn_v")
        graph[p + "attn_n_out"] = (p + "attn_n_mix", x)
        graph[p + "mlp_n_up"] = (p + "attn_n_out",)
        graph[p + "mlp_n_out"] = (p + "mlp_n_up", p + "attn_n_out")
        x = p + "mlp_n_out"
  return graph


def latency(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Time steps from the first input step until the head's output is complete (docs/energy.md).

  An ExpG-IF site emits its most significant digit first, and its rounding depends on its whole
  input, so it can fire only after its input window is complete; it then fires for `T_site =
  G (b - 1)` steps. The head is linear and the stem's input is the image, present at step 0. The
  output is therefore complete after the sum of `T_site` over the longest path of neuron sites
  (`site_graph`; where paths branch, e.g. q/k/v or branch vs. shortcut, the longest counts).
  A layer-pipelined network accepts a new image every `max T_site` steps.

  For an STBP config (IF/LIF neurons, which may fire at step t from input step t) the same path
  gives `T + depth - 1` steps with one step of delay per layer after the first; zero-delay
  propagation within a step (as simulated in training) would give `T`.

  Args:
    config: a model config.

  Returns:
    `{"latency_steps": int, "steps_per_image": int, "path": [site, ...]}` (the longest path, from
    `stem_n` to the last site before the head).
  """
  graph = site_graph(config)
  kind = config.get("neuron_kind", "expg")
  codes = neuron_codes(config)
  if kind == "expg":
    steps = {site: codes.resolve(site).groups * (codes.resolve(site).base - 1) for site in graph}
  else:  # one step of delay per layer: the spike train is shifted, not waited for
    steps = {site: 1 for site in graph}
  done: dict[str, int] = {"input": 0}
  via: dict[str, str] = {}
  for site, preds in graph.items():  # network order is a topological order
    # Ties go to the first predecessor, so a tie never prefers a shortcut over its branch.
    best = max(preds, key=lambda p: done[p])
    done[site] = done[best] + steps[site]
    via[site] = best
  path = [next(reversed(graph))]
  while via[path[-1]] != "input":
    path.append(via[path[-1]])
  path.reverse()
  if kind == "expg":
    return {"latency_steps": done[path[-1]], "steps_per_image": max(steps.values()), "path": path}
  t = int(config.get("time_steps", 4))
  return {"latency_steps": t + len(path) - 1, "steps_per_image": t, "path": path}
