"""A test-only reference simulator of the converted spiking network, in plain NumPy.

It is written from METHOD.md and the network layout documented at the top of `ge2ms_jax/model.py`,
and shares no code with the production spike path: no neuron kernel, no spike-train type, no
synapse, no attention windowing, no grid or shift helper is imported. It reads only the converted
parameter tree (`conversion.convert(...)["params"]`, plain nested dicts of arrays) and the fields of
the model config, so a bug in the production kernels cannot hide in both.

What it simulates (one window of T steps per neuron; T = G (b - 1) may differ per site):

* ExpG-IF neuron: a float membrane integrates its input current one input time step at a time (the
  binary spikes of that step times their weight θ_in b^-g, through the synapse), plus the bias once,
  then adds the rounding shift θ b^-G / 2, then for each of its own T steps (group g = 1..G, b - 1
  steps each, coarse first) fires when the membrane reaches w_g = θ b^-g and subtracts w_g.
* The first layer (stem) sees the real-valued pixels.
* GW-SSA: Q, K, V are spike trains; a spike train's value is θ/L times an integer level
  n = Σ_t b^(G - g_t) s_t, so the window products are computed exactly in integers,
  (Q K^T) V = θ_q θ_k θ_v / (L_q L_k L_v) · (n_q n_k^T) n_v, scaled by 2^-shift; both product orders
  are computed and must be equal, which in integers they are exactly.
* Shortcuts are identity synapses: the shortcut's spikes are integrated into the next membrane.
* Blocks: conv (depthwise mixer + conv-FFN), dense (two full 3x3 convolutions and a shortcut) and
  attention blocks, each stage after a downsampling convolution of its configured stride (2 unless
  the config's `strides` says otherwise).
* Head: a per-token linear layer on the last spikes, then the mean over tokens.

Operation count (`Result.ops`), per layer and from the oracle's own spikes, with every fan-out
derived here from the layer shapes (METHOD.md §4 and docs/energy.md for the conventions):

* a synapse fed by spikes: each spike at grid position (y, x) reaches every output position whose
  k x k window (stride s, padding k // 2) covers (y, x), times the output channels of its group;
* the encoding layer: multiply-accumulates, outputs x k·k·Cin/groups (padding taps included, as the
  ANN count has them);
* a shortcut: one accumulate per incoming spike;
* an attention product: each spike of its spike operand (the left one if both are spike trains)
  accumulates the other operand over that operand's free axis: the window's token slots (padding
  slots included) for Q K^T and S V, the head dim for K^T V and Q (K^T V); the order is the cheaper
  one, Q (K^T V) when a window holds more tokens than the head dim;
* real multiplications ("scalings"): one per output element of each attention product by its
  spike operand's threshold, one per element of a spike-train operand taken by value (θ · level),
  one per output and group for a synapse or product fed by a code whose base is not a power of two,
  and one per logit for the mean over a token count that is not a power of two.

Teacher forcing: given `forced` spike trains (e.g. the production path's own spikes), every site
still fires from its own current but passes the forced spikes on, so each site can be compared with
the production site given identical inputs (float32 flips then do not compound).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import numpy as np

GLOBAL = 0  # window size meaning "the whole grid"


# ---------------------------------------------------------------------------------------------
# Configuration facts, re-derived from the config fields
# ---------------------------------------------------------------------------------------------
def _get(config: Any, key: str, default: Any = None) -> Any:
  """A config field from a ConfigDict or a plain dict."""
  if isinstance(config, Mapping):
    return config.get(key, default)
  return config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)


def parse_overrides(text: str) -> list[tuple[str, int, int]]:
  """`"REGEX=B,G;REGEX=B,G"` -> `[(regex, b, g), ...]` in the given order."""
  out = []
  for entry in (text or "").split(";"):
    entry = entry.strip()
    if not entry:
      continue
    # The regex itself may contain "=", the code never does.
    pattern, _, code = entry.rpartition("=")
    b, g = (int(p) for p in code.split(","))
    out.append((pattern, b, g))
  return out


def site_code(model_config: Any, site: str) -> tuple[int, int]:
  """`(base, groups)` of a neuron site: the first override regex that `re.search`es the site name
  wins, else the default `config.neuron`."""
  for pattern, b, g in parse_overrides(_get(model_config, "neuron_overrides", "")):
    if re.search(pattern, site):
      return b, g
  n = _get(model_config, "neuron")
  return int(_get(n, "base")), int(_get(n, "groups"))


def window_sizes(model_config: Any) -> list[int]:
  """Window side per head group, `GLOBAL` (0) for a global window (0, -1, None, "global")."""
  out = []
  for m in _get(model_config, "window_sizes"):
    if m is None or (isinstance(m, str) and m.lower() == "global") or m in (0, -1):
      out.append(GLOBAL)
    else:
      out.append(int(m))
  return out


def attention_shifts(model_config: Any, grid_hw: tuple[int, int]) -> list[int]:
  """Output scale exponent per head group: the configured one, or automatic
  `max(0, round(log2(window tokens * head_dim)) - 4)` (global window: all grid tokens)."""
  windows = window_sizes(model_config)
  shift = _get(model_config, "attn_shift")
  if isinstance(shift, (tuple, list)):
    return [int(s) for s in shift]
  if int(shift) >= 0:
    return [int(shift)] * len(windows)
  d = int(_get(model_config, "head_dim"))
  out = []
  for m in windows:
    tokens = grid_hw[0] * grid_hw[1] if m == GLOBAL else m * m
    # log2 of an integer is never exactly x.5, so the half-rounding rule does not matter here.
    out.append(max(0, int(math.floor(math.log2(tokens * d) + 0.5)) - 4))
  return out


# ---------------------------------------------------------------------------------------------
# Spike trains and the ExpG-IF neuron
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Train:
  """The output of one neuron site.

  Attributes:
    spikes: `[T, B, H, W, C]` bool.
    theta: threshold, `()` or `[C]`, in the simulation dtype.
    base, groups: the site's code; step t belongs to group `g_t = t // (b - 1) + 1`.
  """
  spikes: np.ndarray
  theta: np.ndarray
  base: int
  groups: int

  def step_groups(self) -> np.ndarray:
    """`[T]` 1-based group of each step."""
    return np.repeat(np.arange(1, self.groups + 1), self.base - 1)

  def step_weights(self, dtype) -> np.ndarray:
    """`[T]` (scalar θ) or `[T, C]` (per-channel θ): the weight θ b^-g of each step's spikes."""
    scale = np.asarray([float(self.base) ** -g for g in self.step_groups()], dtype)
    return scale.reshape((-1,) + (1,) * self.theta.ndim) * self.theta.astype(dtype)

  def levels(self) -> np.ndarray:
    """`[B, H, W, C]` int64: the integer level n = Σ_t b^(G - g_t) s_t the train encodes (value θ n / L)."""
    place = np.asarray([self.base ** (self.groups - g) for g in self.step_groups()], np.int64)
    return np.tensordot(place, self.spikes.astype(np.int64), axes=1)


def fire(current: np.ndarray, theta: np.ndarray, base: int, groups: int) -> np.ndarray:
  """ExpG-IF over one window, step by step.

  Args:
    current: `[..., C]` integrated input current (bias included), in the simulation dtype.
    theta: `()` or `[C]` threshold in the same dtype.
    base, groups: the code.

  Returns:
    spikes `[T, ..., C]` bool, `T = groups * (base - 1)`.
  """
  dtype = current.dtype
  theta = theta.astype(dtype)
  v = current + theta * dtype.type(float(base) ** -groups) * dtype.type(0.5)
  out = np.empty((groups * (base - 1),) + current.shape, bool)
  t = 0
  for g in range(1, groups + 1):
    w = theta * dtype.type(float(base) ** -g)
    for _ in range(base - 1):
      s = v >= w
      v = np.where(s, v - w, v)  # soft reset: subtract the step's threshold
      out[t] = s
      t += 1
  return out


# ---------------------------------------------------------------------------------------------
# Synapses
# ---------------------------------------------------------------------------------------------
def conv2d(x: np.ndarray, kernel: np.ndarray, stride: int = 1, groups: int = 1) -> np.ndarray:
  """Cross-correlation `[N, H, W, Cin] * [k, k, Cin/groups, Cout] -> [N, ceil(H/s), ceil(W/s), Cout]`.

  Padding k//2 on every side and outputs at rows/columns 0, s, 2s, ... of the padded input: output
  (i, j) reads input rows i*s - k//2 .. i*s + k//2, which gives ceil(H / s) outputs.
  """
  k, _, ipg, cout = kernel.shape
  n, h, w, cin = x.shape
  p = k // 2
  ho, wo = (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))

  def tap(i, j):
    return xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]

  if groups == 1:
    patches = np.stack([tap(i, j) for i in range(k) for j in range(k)], axis=3)  # [N, ho, wo, k*k, Cin]
    return (patches.reshape(-1, k * k * cin) @ kernel.reshape(k * k * cin, cout)).reshape(n, ho, wo, cout)
  opg = cout // groups
  if ipg == 1:  # depthwise (with a channel multiplier opg): output o reads input channel o // opg
    src = np.repeat(np.arange(cin), opg)
    out = None
    for i in range(k):
      for j in range(k):
        term = (tap(i, j) if opg == 1 else tap(i, j)[..., src]) * kernel[i, j, 0]
        out = term if out is None else out + term
    return out
  patches = np.stack([tap(i, j) for i in range(k) for j in range(k)], axis=3)
  patches = patches.reshape(n, ho, wo, k * k, groups, ipg)
  kr = kernel.reshape(k * k, ipg, groups, opg)
  return np.einsum("nhwtgc,tcgo->nhwgo", patches, kr).reshape(n, ho, wo, cout)


def synapse_current(x: Any, syn: Mapping[str, np.ndarray], dtype, stride: int = 1, groups: int = 1) -> np.ndarray:
  """The current a synaptic layer drives into the next membrane.

  Args:
    x: a `Train` (integrated step by step: each step's binary spikes through the kernel, times the
      step weight θ b^-g) or real-valued images `[B, H, W, C]` (the encoding layer).
    syn: `{"kernel": [k, k, Cin/groups, Cout], "bias": [Cout]}`; the membrane starts at the bias.

  Returns:
    `[B, H', W', Cout]` in `dtype`.
  """
  kernel = np.asarray(syn["kernel"], dtype)
  v = np.asarray(syn["bias"], dtype)  # broadcast to [B, H', W', Cout] by the first step
  if isinstance(x, Train):
    t_steps, b = x.spikes.shape[:2]
    weights = x.step_weights(dtype)
    if x.theta.ndim == 0:
      # One convolution of all steps' binary spikes (time folded into the batch), then the steps
      # are integrated in order, each with its power-of-two weight.
      y = conv2d(x.spikes.reshape((-1,) + x.spikes.shape[2:]).astype(dtype), kernel, stride, groups)
      y = y.reshape((t_steps, b) + y.shape[1:])
      for t in range(t_steps):
        v = v + y[t] * weights[t]
    else:
      for t in range(t_steps):
        v = v + conv2d(x.spikes[t].astype(dtype) * weights[t], kernel, stride, groups)
    return v
  return v + conv2d(np.asarray(x, dtype), kernel, stride, groups)


def integrate_shortcut(v: np.ndarray, x: Train, dtype) -> np.ndarray:
  """Adds a shortcut's spikes into a membrane (identity synapse), step by step: `[B, H, W, C]`."""
  weights = x.step_weights(dtype)
  for t in range(x.spikes.shape[0]):
    v = v + x.spikes[t].astype(dtype) * weights[t]
  return v


# ---------------------------------------------------------------------------------------------
# GW-SSA
# ---------------------------------------------------------------------------------------------
def _windows(a: np.ndarray, win_h: int, win_w: int) -> np.ndarray:
  """`[B, H, W, h, d]` -> `[B, nW, win_h*win_w, h, d]`, zero-padding bottom/right to whole windows.

  Windows are numbered row-major over the grid, tokens row-major inside a window.
  """
  b, h, w, heads, d = a.shape
  ph, pw = (-h) % win_h, (-w) % win_w
  a = np.pad(a, ((0, 0), (0, ph), (0, pw), (0, 0), (0, 0)))
  nh, nw = (h + ph) // win_h, (w + pw) // win_w
  a = a.reshape(b, nh, win_h, nw, win_w, heads, d).transpose(0, 1, 3, 2, 4, 5, 6)
  return a.reshape(b, nh * nw, win_h * win_w, heads, d)


def _unwindows(a: np.ndarray, h: int, w: int, win_h: int, win_w: int) -> np.ndarray:
  """Inverse of `_windows`, cropping the padding: `[B, nW, M, h, d]` -> `[B, H, W, h, d]`."""
  b, _, _, heads, d = a.shape
  nh, nw = -(-h // win_h), -(-w // win_w)
  a = a.reshape(b, nh, nw, win_h, win_w, heads, d).transpose(0, 1, 3, 2, 4, 5, 6)
  return a.reshape(b, nh * win_h, nw * win_w, heads, d)[:, :h, :w]


def _int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  # Object arrays keep Python's exact integers where int64 could overflow (very large codes).
  return np.matmul(a, b)


def gw_ssa_current(q: Train, k: Train, v: Train, model_config: Any, dtype,
                   check_orders: bool = True) -> np.ndarray:
  """Softmax-free windowed attention of three spike trains, `[B, H, W, C]` in `dtype`.

  Heads: channel c is head c // head_dim, dim c % head_dim; heads are assigned to window groups in
  order (`heads_per_window`). Each group attends inside non-overlapping windows (global: the whole
  grid); grids a window does not divide are zero-padded, and a padded token has level 0 so it adds
  nothing: padding is the mask.
  """
  hd = int(_get(model_config, "head_dim"))
  hpw = [int(n) for n in _get(model_config, "heads_per_window")]
  b, h, w, c = q.spikes.shape[1:]
  heads = c // hd
  assert sum(hpw) == heads, (hpw, heads)
  lq, lk, lv = q.base ** q.groups, k.base ** k.groups, v.base ** v.groups
  nq, nk, nv = (t.levels().reshape(b, h, w, heads, hd) for t in (q, k, v))
  windows = window_sizes(model_config)
  shifts = attention_shifts(model_config, (h, w))
  factor = (q.theta.astype(dtype) * k.theta.astype(dtype) * v.theta.astype(dtype)
            / dtype(float(lq) * lk * lv))
  outs = []
  start = 0
  for m, n_heads, shift in zip(windows, hpw, shifts):
    win_h, win_w = (h, w) if m == GLOBAL else (m, m)
    tokens = win_h * win_w
    bound = tokens * hd * (lq - 1) * (lk - 1) * (lv - 1)
    itype = np.int64 if bound < 2**62 else object
    part = [_windows(a[..., start:start + n_heads, :], win_h, win_w).astype(itype).transpose(0, 1, 3, 2, 4)
            for a in (nq, nk, nv)]  # [B, nW, h, M, d]
    start += n_heads
    wq, wk, wv = part
    qk_first = _int_matmul(_int_matmul(wq, wk.swapaxes(-1, -2)), wv)   # (Q K^T) V
    if check_orders:
      kv_first = _int_matmul(wq, _int_matmul(wk.swapaxes(-1, -2), wv))  # Q (K^T V)
      if not np.array_equal(qk_first, kv_first):
        raise AssertionError("GW-SSA: (Q K^T) V and Q (K^T V) differ in integer arithmetic")
    levels = qk_first.transpose(0, 1, 3, 2, 4)  # [B, nW, M, h, d]
    levels = _unwindows(levels, h, w, win_h, win_w)
    # Levels stay exact up to the final scale: θ_q θ_k θ_v / (L_q L_k L_v) * 2^-shift.
    outs.append(levels.astype(dtype) * (factor * dtype(2.0 ** -shift)))
  return np.concatenate(outs, axis=3).reshape(b, h, w, c)


# ---------------------------------------------------------------------------------------------
# Operation counts
# ---------------------------------------------------------------------------------------------
def _pow2(n: int) -> bool:
  return n >= 1 and (n & (n - 1)) == 0


def reach(n: int, k: int, stride: int) -> np.ndarray:
  """`[n]` int: along one axis of length n, how many outputs of a k-tap, stride-s, padding-k//2
  convolution read input index i (output o reads inputs o*s - k//2 .. o*s - k//2 + k - 1)."""
  pad = k // 2
  outputs = (n + 2 * pad - k) // stride + 1
  first = np.arange(outputs) * stride - pad
  i = np.arange(n)[:, None]
  return np.sum((i >= first[None, :]) & (i <= first[None, :] + k - 1), axis=1)


def synapse_ops(x: Any, kernel_shape: tuple[int, ...], stride: int, groups: int) -> dict[str, float]:
  """Operations of one synaptic layer over the batch: `{"sops", "macs", "scalings"}`.

  Args:
    x: a `Train` (spikes) or real-valued images `[B, H, W, Cin]` (the encoding layer).
    kernel_shape: `(k, k, Cin/groups, Cout)`.
  """
  k, _, ipg, cout = kernel_shape
  b, h, w = x.spikes.shape[1:4] if isinstance(x, Train) else np.shape(x)[:3]
  ho, wo = (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1
  if not isinstance(x, Train):
    return {"sops": 0.0, "macs": float(b * ho * wo * cout * k * k * ipg), "scalings": 0.0}
  rows, cols = reach(h, k, stride), reach(w, k, stride)
  per_position = x.spikes.sum(axis=(0, 1, 4), dtype=np.int64)  # [H, W]: over steps, batch, channels
  sops = float(np.sum(per_position * np.outer(rows, cols))) * (cout // groups)
  outputs = b * ho * wo * cout
  return {"sops": sops, "macs": 0.0, "scalings": 0.0 if _pow2(x.base) else float(outputs * x.groups)}


def gw_ssa_ops(q: Train, k: Train, v: Train, model_config: Any) -> dict[str, dict[str, float]]:
  """Operations of the two attention products over the batch: `{"p1": {...}, "p2": {...}}`, each
  `{"sops", "macs", "scalings"}`, summed over the head groups (see the module docstring)."""
  hd = int(_get(model_config, "head_dim"))
  hpw = [int(n) for n in _get(model_config, "heads_per_window")]
  _, b, h, w, _ = q.spikes.shape
  out = {"p1": dict(sops=0.0, macs=0.0, scalings=0.0), "p2": dict(sops=0.0, macs=0.0, scalings=0.0)}
  start = 0
  for m, n_heads in zip(window_sizes(model_config), hpw):
    win_h, win_w = (h, w) if m == GLOBAL else (m, m)
    slots = win_h * win_w
    n_windows = (-(-h // win_h)) * (-(-w // win_w))
    channels = slice(start * hd, (start + n_heads) * hd)
    start += n_heads
    nnz = {name: float(t.spikes[..., channels].sum(dtype=np.int64)) for name, t in (("q", q), ("k", k), ("v", v))}
    operand = b * n_windows * slots * n_heads * hd  # elements of a windowed q, k, v or of the output
    if slots > hd:  # Q (K^T V): K^T V, then Q times it
      inner = b * n_windows * n_heads * hd * hd
      p1 = dict(sops=nnz["k"] * hd, scalings=inner + operand, rescale=(k, inner))
      p2 = dict(sops=nnz["q"] * hd, scalings=operand, rescale=(q, operand))
    else:  # (Q K^T) V
      inner = b * n_windows * n_heads * slots * slots
      p1 = dict(sops=nnz["q"] * slots, scalings=inner + operand, rescale=(q, inner))
      p2 = dict(sops=nnz["v"] * slots, scalings=operand, rescale=(v, operand))
    for name, part in (("p1", p1), ("p2", p2)):
      train, outputs = part["rescale"]
      out[name]["sops"] += part["sops"]
      out[name]["scalings"] += part["scalings"] + (0.0 if _pow2(train.base) else float(outputs * train.groups))
  return out


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Result:
  """Output of `simulate`.

  Attributes:
    logits: `[B, classes]` in the simulation dtype.
    spikes: `{site: [T, B, H, W, C] bool}` fired by the oracle at every computed site, network order.
    currents: `{site: [B, H, W, C]}` integrated current before the rounding shift (`return_currents`).
    ops: `{layer: {"sops", "macs", "scalings"}}` totals over the batch, for every synaptic layer,
      shortcut, attention product and the head's mean, named as the production statistics name
      them (complete only when every site is computed).
  """
  logits: np.ndarray | None
  spikes: dict[str, np.ndarray]
  currents: dict[str, np.ndarray]
  ops: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

  def __iter__(self):
    """Unpacks as `logits, spikes = simulate(...)`."""
    return iter((self.logits, self.spikes))


class _Sim:
  """Walks the network in order; each neuron site fires from its current, and passes on either its
  own spikes or the forced ones."""

  def __init__(self, params, model_config, dtype, forced, only, return_currents, check_orders):
    self.p = params
    self.cfg = model_config
    self.dtype = np.dtype(dtype).type
    self.forced = forced or {}
    self.only = only
    self.return_currents = return_currents
    self.check_orders = check_orders
    self.spikes: dict[str, np.ndarray] = {}
    self.currents: dict[str, np.ndarray] = {}
    self.ops: dict[str, dict[str, float]] = {}

  def _param(self, path: str) -> Mapping[str, Any]:
    node = self.p
    for key in path.split("/"):
      node = node[key]
    return node

  def syn(self, path: str) -> Mapping[str, np.ndarray]:
    return self._param(path)["syn"]

  def neuron(self, site: str, current_fn) -> Train:
    """Fires the site `site` on `current_fn()` (skipped for sites outside `only`, which must be
    forced) and returns the train passed downstream."""
    base, groups = site_code(self.cfg, site)
    theta = np.asarray(self._param(site)["theta"], self.dtype)
    if self.only is None or site in self.only:
      current = current_fn()
      if self.return_currents:
        self.currents[site] = current
      self.spikes[site] = fire(current, theta, base, groups)
    elif site not in self.forced:
      raise ValueError(f"site {site} is neither computed (only=...) nor forced")
    spikes = self.forced[site] if site in self.forced else self.spikes[site]
    spikes = np.asarray(spikes).astype(bool)
    if spikes.shape[0] != groups * (base - 1):
      raise ValueError(f"{site}: {spikes.shape[0]} steps, code ({base}, {groups}) has {groups * (base - 1)}")
    return Train(spikes=spikes, theta=theta, base=base, groups=groups)

  def count(self, name: str, ops: Mapping[str, float]) -> None:
    row = self.ops.setdefault(name, dict(sops=0.0, macs=0.0, scalings=0.0))
    for key in row:
      row[key] += float(ops.get(key, 0.0))

  def synapse(self, x: Any, path: str, stride: int = 1, groups: int = 1) -> np.ndarray:
    """The current of the synaptic layer `path` on `x`; its operations are counted under `path`."""
    syn = self.syn(path)
    self.count(path, synapse_ops(x, np.shape(syn["kernel"]), stride, groups))
    return synapse_current(x, syn, self.dtype, stride, groups)

  def shortcut(self, v: np.ndarray, x: Train, name: str) -> np.ndarray:
    """`v` plus the shortcut's spikes; one accumulate per spike, counted under `name`."""
    self.count(name, {"sops": float(x.spikes.sum(dtype=np.int64))})
    return integrate_shortcut(v, x, self.dtype)

  def conv_block(self, x: Train, path: str) -> Train:
    c = x.spikes.shape[-1]
    h = self.neuron(f"{path}/mix_n_dw", lambda: self.synapse(x, f"{path}/mix_dw", groups=c))
    x = self.neuron(f"{path}/mix_n_out", lambda: self.shortcut(
        self.synapse(h, f"{path}/mix_pw"), x, f"{path}/mix_shortcut"))
    h = self.neuron(f"{path}/ffn_n_up", lambda: self.synapse(x, f"{path}/ffn_up"))
    ch = h.spikes.shape[-1]
    h = self.neuron(f"{path}/ffn_n_dw", lambda: self.synapse(h, f"{path}/ffn_dw", groups=ch))
    return self.neuron(f"{path}/ffn_n_out", lambda: self.shortcut(
        self.synapse(h, f"{path}/ffn_down"), x, f"{path}/ffn_shortcut"))

  def dense_block(self, x: Train, path: str) -> Train:
    h = self.neuron(f"{path}/conv1_n", lambda: self.synapse(x, f"{path}/conv1"))
    return self.neuron(f"{path}/n_out", lambda: self.shortcut(
        self.synapse(h, f"{path}/conv2"), x, f"{path}/shortcut"))

  def attn_block(self, x: Train, path: str) -> Train:
    dt = self.dtype
    c = x.spikes.shape[-1]
    q, k, v = (self.neuron(f"{path}/attn_{n}", lambda n=n: self.synapse(x, f"{path}/attn_w{n}"))
               for n in ("q", "k", "v"))

    def mix():
      current = self.synapse(v, f"{path}/attn_dw_v", groups=c)
      for name, ops in gw_ssa_ops(q, k, v, self.cfg).items():
        self.count(f"{path}/attn_{name}", ops)
      return current + gw_ssa_current(q, k, v, self.cfg, dt, self.check_orders)

    h = self.neuron(f"{path}/attn_n_mix", mix)
    x = self.neuron(f"{path}/attn_n_out", lambda: self.shortcut(
        self.synapse(h, f"{path}/attn_proj"), x, f"{path}/attn_shortcut"))
    h = self.neuron(f"{path}/mlp_n_up", lambda: self.synapse(x, f"{path}/mlp_up"))
    return self.neuron(f"{path}/mlp_n_out", lambda: self.shortcut(
        self.synapse(h, f"{path}/mlp_down"), x, f"{path}/mlp_shortcut"))

  def run(self, images: np.ndarray, with_logits: bool) -> Result:
    dt = self.dtype
    cfg = self.cfg
    stem_stride = 2 if int(_get(cfg, "image_size")) > 64 else 1
    x = self.neuron("stem_n", lambda: self.synapse(np.asarray(images, dt), "stem_conv", stride=stem_stride))
    kinds = _get(cfg, "kinds")
    strides = tuple(_get(cfg, "strides", ()) or ()) or (2,) * len(kinds)
    blocks = {"conv": self.conv_block, "dense": self.dense_block, "attn": self.attn_block}
    for i, (kind, depth, stride) in enumerate(zip(kinds, _get(cfg, "depths"), strides)):
      x = self.neuron(f"stage{i}/n_down", lambda x=x, i=i, s=stride: self.synapse(x, f"stage{i}/down", stride=s))
      for j in range(int(depth)):
        x = blocks[kind](x, f"stage{i}/block{j}")
    logits = None
    if with_logits:
      head = self.p["head"]
      self.count("head", synapse_ops(x, np.shape(head["kernel"]), 1, 1))
      per_token = synapse_current(x, {"kernel": head["kernel"], "bias": head["bias"]}, dt)
      logits = per_token.mean(axis=(1, 2), dtype=dt)
      tokens = per_token.shape[1] * per_token.shape[2]
      self.count("head_mean", {"scalings": 0.0 if _pow2(tokens) else float(logits.size)})
    return Result(logits=logits, spikes=self.spikes, currents=self.currents, ops=self.ops)


def simulate(snn_params: Mapping[str, Any], model_config: Any, images: np.ndarray, dtype=np.float64, *,
             forced: Mapping[str, np.ndarray] | None = None, only: set[str] | None = None,
             return_currents: bool = False, check_orders: bool = True) -> Result:
  """Simulates the converted network on a batch.

  Args:
    snn_params: the converted parameters, `conversion.convert(...)["params"]` (or the whole
      `{"params": ...}`); leaves are cast to `dtype`.
    model_config: the model config (`config.model`): architecture, neuron codes and overrides.
    images: `[B, H, W, C]` real-valued, normalised images.
    dtype: `np.float64` or `np.float32`: every current, weight and membrane is held in it.
    forced: `{site: [T, B, H, W, C]}` spikes passed downstream instead of the oracle's own (teacher
      forcing); the oracle still fires every computed site from its own current.
    only: compute only these sites (the others must be forced); logits are then not computed.
    return_currents: also return every computed site's current `[B, H, W, C]` (before the shift).
    check_orders: assert that `(Q K^T) V == Q (K^T V)` in every window (exact integers).

  Returns:
    `Result(logits [B, classes] or None, spikes {site: [T, B, H, W, C] bool}, currents)`.
  """
  if "params" in snn_params and "stem_conv" not in snn_params:
    snn_params = snn_params["params"]
  params = _to_numpy(snn_params, dtype)
  sim = _Sim(params, model_config, dtype, forced, only, return_currents, check_orders)
  return sim.run(images, with_logits=only is None)


def _to_numpy(tree: Mapping[str, Any], dtype) -> dict:
  return {k: _to_numpy(v, dtype) if isinstance(v, Mapping) else np.asarray(v, dtype) for k, v in tree.items()}


def level_units(current: np.ndarray, theta: np.ndarray, base: int, groups: int) -> np.ndarray:
  """A current in units of one level, `u = I L / θ` (rounding boundaries at half-integers), float64."""
  return np.asarray(current, np.float64) * float(base**groups) / np.asarray(theta, np.float64)


def levels_of(spikes: np.ndarray, base: int, groups: int) -> np.ndarray:
  """Integer level `Σ_t b^(G - g_t) s_t` of spikes `[T, ...]`: int64 `[...]`."""
  g = np.repeat(np.arange(1, groups + 1), base - 1)
  place = np.asarray([base ** (groups - gi) for gi in g], np.int64)
  return np.tensordot(place, np.asarray(spikes).astype(np.int64), axes=1)
