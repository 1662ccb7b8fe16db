"""Group-wise spiking self-attention (GW-SSA), METHOD.md §2: a pure function.

Tokens lie on an `H x W` grid. The heads are split into scale groups; group `s` partitions the grid
into non-overlapping windows of `M_s x M_s` tokens (or one global window) and attends only inside a
window, with no softmax:

    A = (Q_w K_w^T) V_w * 2**-shift    (or, equal, Q_w (K_w^T V_w) * 2**-shift)

so the cost is `O(N * M * d)` rather than `O(N^2 * d)`. In a spiking network Q, K and V are spike
trains; every product then has a {0, 1} operand and is accumulate-only. The products go through a
pluggable `matmul(subscripts, a, b)` so that the spiking simulation (`ge2ms_jax.spikes`) can run the
same windowing with spike-train operands; the default is `jnp.einsum` on dense arrays.

Grids that a window size does not divide are zero-padded on the bottom/right to a multiple of the
window and cropped afterwards. Because there is no softmax and no bias inside the products, a padded
(all-zero) key or value contributes exactly nothing, so padding is the mask: windows on the border
simply hold fewer real tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
GLOBAL = 0  # window size meaning "the whole grid"


def _map(fn: Callable[[Array], Array], x: Any) -> Any:
  """Applies an array function to a dense array or to the spikes of a spike train."""
  return x.map(fn) if hasattr(x, "map") else fn(x)


def _shape(x: Any) -> tuple[int, ...]:
  """Token shape `[..., N, heads, d]` of a dense array or of a spike train (without its time axis)."""
  return tuple(x.shape)


@dataclasses.dataclass(frozen=True)
class WindowPlan:
  """Static plan of one head group: window side (grid side for global), padding, product order."""
  window: int          # side M of a window in tokens (for GLOBAL: 0)
  heads: int           # heads in this group
  shift: int           # output scale 2**-shift
  win_h: int           # window height in tokens (H for global)
  win_w: int           # window width in tokens (W for global)
  pad_h: int
  pad_w: int
  kv_first: bool       # True: Q (K^T V); False: (Q K^T) V

  @property
  def tokens(self) -> int:
    return self.win_h * self.win_w


def normalize_windows(window_sizes: Sequence[Any]) -> tuple[int, ...]:
  """Maps window sizes to ints, `GLOBAL` (0) for a global window.

  Accepts ints >= 1, and 0 / None / -1 / "global" for the global scale.
  """
  out = []
  for m in window_sizes:
    if m is None or (isinstance(m, str) and m.lower() == "global") or (
        isinstance(m, (int, np.integer)) and not isinstance(m, bool) and m in (0, -1)):
      out.append(GLOBAL)
    elif isinstance(m, (int, np.integer)) and not isinstance(m, bool) and m >= 1:
      out.append(int(m))
    else:
      raise ValueError(f"gw_ssa: window sizes must be integers >= 1 or 'global' (0/None/-1), "
                       f"got {m!r} in {tuple(window_sizes)}.")
  return tuple(out)


def plan_windows(grid_hw: tuple[int, int], head_dim: int, window_sizes: Sequence[Any],
                 heads_per_window: Sequence[int], shift: int | Sequence[int],
                 order: str = "auto") -> tuple[WindowPlan, ...]:
  """Validates the grouping and returns one `WindowPlan` per head group.

  Args:
    grid_hw: `(H, W)` token grid.
    head_dim: `d`, channels per head.
    window_sizes: window side per group (ints, or `GLOBAL`/"global").
    heads_per_window: heads per group, same length as `window_sizes`.
    shift: output scale exponent, one int or one per group.
    order: `"auto"` (the cheaper order per group), `"qk_first"` or `"kv_first"`.

  Raises:
    ValueError: naming the offending argument and what is allowed.
  """
  windows = normalize_windows(window_sizes)
  if not windows:
    raise ValueError("gw_ssa: window_sizes is empty; give at least one window size (an int >= 1, "
                     "or 'global'/0), with one heads_per_window entry each.")
  h, w = (int(v) for v in grid_hw)
  if h < 1 or w < 1:
    raise ValueError(f"gw_ssa: grid_hw must be two positive ints, got {grid_hw}.")
  if len(heads_per_window) != len(windows):
    raise ValueError(f"gw_ssa: heads_per_window {tuple(heads_per_window)} must have one entry per window "
                     f"size {tuple(window_sizes)}.")
  if any((not isinstance(n, (int, np.integer))) or n < 1 for n in heads_per_window):
    raise ValueError(f"gw_ssa: heads_per_window must be positive ints, got {tuple(heads_per_window)}.")
  shifts = (shift,) * len(windows) if isinstance(shift, (int, np.integer)) else tuple(shift)
  if len(shifts) != len(windows) or any(not isinstance(s, (int, np.integer)) for s in shifts):
    raise ValueError(f"gw_ssa: shift must be an int or one int per window size, got {shift!r}.")
  if order not in ("auto", "qk_first", "kv_first"):
    raise ValueError(f"gw_ssa: order must be 'auto', 'qk_first' or 'kv_first', got {order!r}.")
  plans = []
  for m, n_heads, s in zip(windows, heads_per_window, shifts):
    if m != GLOBAL and m > max(h, w):
      raise ValueError(f"gw_ssa: window size {m} is larger than the {h}x{w} token grid; use a window "
                       f"<= {max(h, w)} or 'global' (0).")
    win_h, win_w = (h, w) if m == GLOBAL else (m, m)
    tokens = win_h * win_w
    kv_first = {"auto": tokens > head_dim, "qk_first": False, "kv_first": True}[order]
    plans.append(WindowPlan(window=m, heads=int(n_heads), shift=int(s), win_h=win_h, win_w=win_w,
                            pad_h=(-h) % win_h, pad_w=(-w) % win_w, kv_first=kv_first))
  return tuple(plans)


def _to_windows(x: Array, grid_hw: tuple[int, int], p: WindowPlan) -> Array:
  """`[..., H*W, h, d]` -> `[..., nW, M_h*M_w, h, d]`, zero-padding the grid to whole windows."""
  h, w = grid_hw
  lead = x.shape[:-3]
  heads, d = x.shape[-2:]
  x = x.reshape(lead + (h, w, heads, d))
  if p.pad_h or p.pad_w:
    pad = [(0, 0)] * len(lead) + [(0, p.pad_h), (0, p.pad_w), (0, 0), (0, 0)]
    x = jnp.pad(x, pad)
  nh, nw = (h + p.pad_h) // p.win_h, (w + p.pad_w) // p.win_w
  x = x.reshape(lead + (nh, p.win_h, nw, p.win_w, heads, d))
  k = len(lead)
  x = jnp.moveaxis(x, k + 2, k + 1)  # [..., nh, nw, win_h, win_w, heads, d]
  return x.reshape(lead + (nh * nw, p.tokens, heads, d))


def _from_windows(x: Array, grid_hw: tuple[int, int], p: WindowPlan) -> Array:
  """Inverse of `_to_windows`: `[..., nW, M_h*M_w, h, d]` -> `[..., H*W, h, d]`, cropping padding."""
  h, w = grid_hw
  lead = x.shape[:-4]
  heads, d = x.shape[-2:]
  nh, nw = (h + p.pad_h) // p.win_h, (w + p.pad_w) // p.win_w
  x = x.reshape(lead + (nh, nw, p.win_h, p.win_w, heads, d))
  k = len(lead)
  x = jnp.moveaxis(x, k + 1, k + 2)  # [..., nh, win_h, nw, win_w, heads, d]
  x = x.reshape(lead + (nh * p.win_h, nw * p.win_w, heads, d))[..., :h, :w, :, :]
  return x.reshape(lead + (h * w, heads, d))


def window_products(q: Any, k: Any, v: Any, kv_first: bool,
                    matmul: Callable[[str, Any, Any], Any] = jnp.einsum) -> Array:
  """Softmax-free attention inside windows: `[..., M, h, d]` operands -> `[..., M, h, d]`.

  Args:
    q, k, v: windowed tokens `[..., M, h, d]` (dense arrays or spike trains).
    kv_first: compute `Q (K^T V)` (cost `M d^2`) instead of `(Q K^T) V` (cost `M^2 d`).
    matmul: `matmul(subscripts, a, b)` with einsum semantics.

  Returns:
    `[..., M, h, d]`, unscaled.
  """
  if kv_first:
    kv = matmul("...jhc,...jhe->...hce", k, v)
    return matmul("...ihc,...hce->...ihe", q, kv)
  s = matmul("...ihc,...jhc->...hij", q, k)
  return matmul("...hij,...jhe->...ihe", s, v)


def gw_ssa(q: Any, k: Any, v: Any, grid_hw: tuple[int, int], window_sizes: Sequence[Any],
           heads_per_window: Sequence[int], shift: int | Sequence[int], *, order: str = "auto",
           matmul: Callable[[str, Any, Any], Any] = jnp.einsum) -> Array:
  """Group-wise spiking self-attention over multi-scale windows.

  Args:
    q, k, v: `[..., N, heads, d]` with `N = H * W` tokens in row-major grid order; dense arrays (the
      QANN) or spike trains (`ge2ms_jax.spikes.SpikeTrain`, with a matching `matmul`).
    grid_hw: `(H, W)`.
    window_sizes: one window side per head group; `0`/`None`/`"global"` for a global window.
      Sizes that do not divide the grid are padded (see the module docstring).
    heads_per_window: heads in each group, in order; must sum to `heads`.
    shift: the output is scaled by `2**-shift`; one int, or one per group.
    order: `"auto"` picks, per group, `Q (K^T V)` when a window holds more tokens than `d` and
      `(Q K^T) V` otherwise (the cheaper one); `"qk_first"` / `"kv_first"` force an order.
    matmul: the product, `matmul(subscripts, a, b)` with einsum semantics.

  Returns:
    `[..., N, heads, d]` attention output (a dense current).

  Raises:
    ValueError: if shapes, window sizes, head counts or the shift do not fit.
  """
  shape = _shape(q)
  if len(shape) < 3 or _shape(k) != shape or _shape(v) != shape:
    raise ValueError(f"gw_ssa: q, k, v must share one shape [..., N, heads, d], got {_shape(q)}, "
                     f"{_shape(k)}, {_shape(v)}.")
  n, heads, d = shape[-3:]
  h, w = (int(s) for s in grid_hw)
  if h * w != n:
    raise ValueError(f"gw_ssa: grid_hw {tuple(grid_hw)} holds {h * w} tokens but q has N = {n}.")
  if sum(heads_per_window) != heads:
    raise ValueError(f"gw_ssa: heads_per_window {tuple(heads_per_window)} sums to {sum(heads_per_window)} "
                     f"but the inputs have {heads} heads.")
  plans = plan_windows((h, w), d, window_sizes, heads_per_window, shift, order)
  outs = []
  start = 0
  for p in plans:
    sl = slice(start, start + p.heads)
    start += p.heads
    part = lambda x: _map(lambda a: _to_windows(a[..., sl, :], (h, w), p), x)  # noqa: E731
    out = window_products(part(q), part(k), part(v), p.kv_first, matmul)
    outs.append(_from_windows(out, (h, w), p) * (2.0 ** -p.shift))
  return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-2)


def global_ssa(q: Array, k: Array, v: Array, shift: int) -> Array:
  """Plain spiking self-attention `(Q K^T) V * 2**-shift` over all tokens: `[..., N, h, d]`."""
  return jnp.einsum("...ihc,...jhc,...jhe->...ihe", q, k, v) * (2.0 ** -shift)


def attention_macs(grid_hw: tuple[int, int], head_dim: int, window_sizes: Sequence[Any],
                   heads_per_window: Sequence[int], order: str = "auto") -> int:
  """Multiply-accumulates of both products for one image (padding included), as a dense ANN would.

  Returns:
    an int: `sum over groups of heads * windows * (2 M d^2 or 2 M^2 d)`.
  """
  plans = plan_windows(grid_hw, head_dim, window_sizes, heads_per_window, 0, order)
  h, w = grid_hw
  total = 0
  for p in plans:
    n_windows = ((h + p.pad_h) // p.win_h) * ((w + p.pad_w) // p.win_w)
    per_window = 2 * p.tokens * head_dim * head_dim if p.kv_first else 2 * p.tokens**2 * head_dim
    total += p.heads * n_windows * per_window
  return total
