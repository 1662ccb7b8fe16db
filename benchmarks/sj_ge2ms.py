"""Ge2mS-T in PyTorch with SpikingJelly neurons: the network of `ge2ms_jax.model`, trained through time.

This port exists to be measured against (`benchmarks/peers.py`): the same layers as `Ge2msNet` in its
STBP form (`neuron_kind="lif"`) — stem, stages of conv or GW-SSA attention blocks, per-token head —
with SpikingJelly's multi-step `LIFNode` at every neuron site, trained by surrogate gradients through
`T` steps as a SpikingJelly user would: activations `[T, B, C, H, W]`, stateless layers applied to
the time-folded batch, membranes reset (`functional.reset_net`) at the start of every forward pass.

The architecture comes in as a plain dict (`spec`, made by `peers.py` from a `ge2ms_jax` model config:
`stem_channels`, `kinds`, `dims`, `depths`, `head_dim`, `mlp_ratio`, `image_size`, `in_channels`,
`num_classes`, and per stage `windows`: `[(win_h, win_w, heads, shift), ...]`), so that this module
imports neither JAX nor the project. Module names follow the Flax parameter tree (`stem_conv.syn`,
`stage1.block0.attn_wq.bn`, ...), which lets `load_flax_variables` copy a JAX model's weights in and
`peers.py` check that both frameworks compute the same function.

Neuron: `LIFNode(tau=2, decay_input=False, v_threshold=1, v_reset=None, ATan(alpha=2))`, i.e.
`v <- v (1 - 1/tau) + x`, soft reset: the JAX baseline's own settings (`model.default_config`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from spikingjelly.activation_based import functional, neuron, surrogate
from torch import nn


def _lif(tau: float = 2.0) -> neuron.LIFNode:
  return neuron.LIFNode(tau=tau, decay_input=False, v_threshold=1.0, v_reset=None,
                        surrogate_function=surrogate.ATan(alpha=2.0), detach_reset=False, step_mode="m")


def _fold(fn, x: torch.Tensor) -> torch.Tensor:
  """Applies a stateless layer to `[T, B, ...]` with time folded into the batch."""
  t, b = x.shape[:2]
  y = fn(x.flatten(0, 1))
  return y.reshape(t, b, *y.shape[1:])


def _truncated_he_(weight: torch.Tensor) -> None:
  """Flax's `variance_scaling(2.0, "fan_in", "truncated_normal")`: He-normal cut at 2 sigma."""
  fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
  std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
  nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class SynBN(nn.Module):
  """Conv (no bias) + BatchNorm over `[T, B, C, H, W]`; `zero_init` starts BN's scale at 0."""

  def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, zero_init: bool = False):
    super().__init__()
    self.syn = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
    # torch's momentum weighs the new batch: 0.1 is Flax's 0.9.
    self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
    _truncated_he_(self.syn.weight)
    if zero_init:
      nn.init.zeros_(self.bn.weight)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return _fold(lambda a: self.bn(self.syn(a)), x)


class ConvBlock(nn.Module):
  """Depthwise-separable token mixer + conv-FFN (`ge2ms_jax.model.ConvBlock`)."""

  def __init__(self, c: int, mlp_ratio: int, tau: float):
    super().__init__()
    h = c * mlp_ratio
    self.mix_dw, self.mix_n_dw = SynBN(c, c, 3, groups=c), _lif(tau)
    self.mix_pw, self.mix_n_out = SynBN(c, c, zero_init=True), _lif(tau)
    self.ffn_up, self.ffn_n_up = SynBN(c, h), _lif(tau)
    self.ffn_dw, self.ffn_n_dw = SynBN(h, h, 3, groups=h), _lif(tau)
    self.ffn_down, self.ffn_n_out = SynBN(h, c, zero_init=True), _lif(tau)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = self.mix_pw(self.mix_n_dw(self.mix_dw(x)))
    x = self.mix_n_out(h + x)
    h = self.ffn_down(self.ffn_n_dw(self.ffn_dw(self.ffn_n_up(self.ffn_up(x)))))
    return self.ffn_n_out(h + x)


def _windows(x: torch.Tensor, win_h: int, win_w: int) -> torch.Tensor:
  """`[N, H, W, h, d]` -> `[N, nW, win_h * win_w, h, d]`, zero-padding to whole windows."""
  n, hh, ww, heads, d = x.shape
  ph, pw = (-hh) % win_h, (-ww) % win_w
  if ph or pw:
    x = nn.functional.pad(x, (0, 0, 0, 0, 0, pw, 0, ph))
  nh, nw = (hh + ph) // win_h, (ww + pw) // win_w
  x = x.reshape(n, nh, win_h, nw, win_w, heads, d).transpose(2, 3)
  return x.reshape(n, nh * nw, win_h * win_w, heads, d)


def _unwindows(x: torch.Tensor, hh: int, ww: int, win_h: int, win_w: int) -> torch.Tensor:
  """Inverse of `_windows`, cropping the padding: -> `[N, H, W, h, d]`."""
  n, _, _, heads, d = x.shape
  nh, nw = -(-hh // win_h), -(-ww // win_w)
  x = x.reshape(n, nh, nw, win_h, win_w, heads, d).transpose(2, 3)
  return x.reshape(n, nh * win_h, nw * win_w, heads, d)[:, :hh, :ww]


def gw_ssa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, head_dim: int, windows) -> torch.Tensor:
  """Softmax-free windowed attention, `[N, C, H, W]` spikes -> `[N, C, H, W]` current.

  `windows`: per head group `(win_h, win_w, heads, shift)`; each group attends inside its windows,
  `Q (K^T V)` when a window holds more tokens than `head_dim`, else `(Q K^T) V`, scaled by `2**-shift`.
  """
  n, c, hh, ww = q.shape
  to_heads = lambda a: a.permute(0, 2, 3, 1).reshape(n, hh, ww, c // head_dim, head_dim)  # noqa: E731
  q, k, v = to_heads(q), to_heads(k), to_heads(v)
  outs, start = [], 0
  for win_h, win_w, heads, shift in windows:
    sl = slice(start, start + heads)
    start += heads
    qw, kw, vw = (_windows(a[..., sl, :], win_h, win_w) for a in (q, k, v))
    if win_h * win_w > head_dim:
      out = torch.einsum("nwihc,nwhce->nwihe", qw, torch.einsum("nwjhc,nwjhe->nwhce", kw, vw))
    else:
      out = torch.einsum("nwhij,nwjhe->nwihe", torch.einsum("nwihc,nwjhc->nwhij", qw, kw), vw)
    outs.append(_unwindows(out, hh, ww, win_h, win_w) * (2.0 ** -shift))
  a = torch.cat(outs, dim=3) if len(outs) > 1 else outs[0]
  return a.reshape(n, hh, ww, c).permute(0, 3, 1, 2)


class AttnBlock(nn.Module):
  """GW-SSA with a depthwise branch on V, then an MLP (`ge2ms_jax.model.AttnBlock`)."""

  def __init__(self, c: int, head_dim: int, windows, mlp_ratio: int, tau: float):
    super().__init__()
    self.head_dim, self.windows = head_dim, [tuple(w) for w in windows]
    for n in ("q", "k", "v"):
      setattr(self, f"attn_w{n}", SynBN(c, c))
      setattr(self, f"attn_{n}", _lif(tau))
    self.attn_dw_v = SynBN(c, c, 3, groups=c)
    self.attn_n_mix = _lif(tau)
    self.attn_proj, self.attn_n_out = SynBN(c, c, zero_init=True), _lif(tau)
    self.mlp_up, self.mlp_n_up = SynBN(c, c * mlp_ratio), _lif(tau)
    self.mlp_down, self.mlp_n_out = SynBN(c * mlp_ratio, c, zero_init=True), _lif(tau)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    q = self.attn_q(self.attn_wq(x))
    k = self.attn_k(self.attn_wk(x))
    v = self.attn_v(self.attn_wv(x))
    a = gw_ssa(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), self.head_dim, self.windows)
    h = self.attn_n_mix(a.reshape(v.shape) + self.attn_dw_v(v))
    x = self.attn_n_out(self.attn_proj(h) + x)
    h = self.mlp_down(self.mlp_n_up(self.mlp_up(x)))
    return self.mlp_n_out(h + x)


class Stage(nn.Module):
  def __init__(self, cin: int, kind: str, dim: int, depth: int, spec: dict[str, Any], windows, tau: float):
    super().__init__()
    self.down, self.n_down = SynBN(cin, dim, 3, 2), _lif(tau)
    for j in range(depth):
      block = (ConvBlock(dim, spec["mlp_ratio"], tau) if kind == "conv"
               else AttnBlock(dim, spec["head_dim"], windows, spec["mlp_ratio"], tau))
      self.add_module(f"block{j}", block)
    self.depth = depth

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.n_down(self.down(x))
    for j in range(self.depth):
      x = getattr(self, f"block{j}")(x)
    return x


class Ge2msSJ(nn.Module):
  """The STBP Ge2mS-T network: images `[B, C, H, W]` -> logits `[B, num_classes]` (mean over T steps).

  Args:
    spec: the architecture dict (module docstring).
    time_steps: `T`; the image is the input current of every step (direct encoding).
    tau: LIF time constant.
  """

  def __init__(self, spec: dict[str, Any], time_steps: int = 4, tau: float = 2.0):
    super().__init__()
    self.time_steps = time_steps
    large = spec["image_size"] > 64
    self.stem_conv = SynBN(spec["in_channels"], spec["stem_channels"], 3, 2 if large else 1)
    self.stem_n = _lif(tau)
    cin = spec["stem_channels"]
    for i, (kind, dim, depth) in enumerate(zip(spec["kinds"], spec["dims"], spec["depths"])):
      self.add_module(f"stage{i}", Stage(cin, kind, dim, depth, spec, spec["windows"][i], tau))
      cin = dim
    self.head = nn.Conv2d(cin, spec["num_classes"], 1, bias=True)
    nn.init.zeros_(self.head.weight)
    nn.init.zeros_(self.head.bias)
    self.num_stages = len(spec["dims"])

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    functional.reset_net(self)  # each batch starts from resting membranes
    # Every step sees the same image, so the stem's synapse and BatchNorm (which only see the image)
    # run once and the current is repeated: the same values and statistics as T copies.
    x = self.stem_conv(images[None]).expand(self.time_steps, -1, -1, -1, -1)
    x = self.stem_n(x)
    for i in range(self.num_stages):
      x = getattr(self, f"stage{i}")(x)
    return _fold(self.head, x).mean(dim=(-2, -1)).mean(dim=0)


def num_params(model: nn.Module) -> int:
  """Trained parameters (BatchNorm scale and bias included; running statistics not)."""
  return sum(p.numel() for p in model.parameters())


def load_flax_variables(model: Ge2msSJ, variables: dict[str, Any]) -> None:
  """Copies the weights of a JAX STBP model (`{"params", "batch_stats"}`, NumPy leaves) into `model`.

  Kernels `[k, k, Cin/g, Cout]` become `[Cout, Cin/g, k, k]`; BatchNorm `scale`/`bias` and the
  running `mean`/`var` map to `weight`/`bias`/`running_mean`/`running_var`. Every tensor of the
  model must be written exactly once.

  Raises:
    KeyError / ValueError: a parameter of either side without a counterpart, or a shape mismatch.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  flat: dict[str, Any] = {}

  def visit(tree, path, collection):
    for key, value in tree.items():
      p = path + (key,)
      if isinstance(value, dict):
        visit(value, p, collection)
      else:
        flat[(collection,) + p] = np.asarray(value)

  visit(variables["params"], (), "params")
  visit(variables.get("batch_stats", {}), (), "batch_stats")
  names = {("params", "kernel"): "weight", ("params", "bias"): "bias", ("params", "scale"): "weight",
           ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}
  state = model.state_dict()
  written = set()
  for (collection, *path), value in flat.items():
    *module, leaf = path
    target = ".".join(module) + "." + names[(collection, leaf)]
    if target not in state:
      raise KeyError(f"load_flax_variables: {collection}/{'/'.join(path)} has no counterpart {target!r}.")
    if value.ndim == 4:
      value = value.transpose(3, 2, 0, 1)
    if tuple(state[target].shape) != value.shape:
      raise ValueError(f"load_flax_variables: {target} is {tuple(state[target].shape)}, the JAX value "
                       f"{'/'.join(path)} is {value.shape}.")
    state[target] = torch.from_numpy(np.ascontiguousarray(value)).to(state[target].dtype)
    written.add(target)
  missing = [k for k in state if k not in written and not k.endswith("num_batches_tracked")]
  if missing:
    raise KeyError(f"load_flax_variables: no JAX value for {missing[:5]} ({len(missing)} in all).")
  model.load_state_dict(state)
