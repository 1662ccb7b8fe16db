"""GW-SSA: windowed, softmax-free, multi-scale attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ge2ms_jax import attention as A
from ge2ms_jax import neurons
from ge2ms_jax import spikes as sp


def _spike_values(key, shape, levels=4):
  """Random quantized (spike-train valued) tensors: multiples of 1/levels in [0, 1)."""
  return jax.random.randint(key, shape, 0, levels).astype(jnp.float32) / levels


def _qkv(shape, seed=0, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(seed), 3)
  return [_spike_values(k, shape).astype(dtype) for k in keys]


def _window_ids(h, w, m):
  """Window index of each token of an h x w grid for windows of side m (global: m = 0)."""
  if m == A.GLOBAL:
    return np.zeros(h * w, int)
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  n_cols = -(-w // m)
  return ((rows // m) * n_cols + cols // m).reshape(-1)


def _masked_reference(q, k, v, grid, windows, heads_per_window, shift):
  """Global attention with a block mask: token i sees token j iff they share a window."""
  h, w = grid
  outs, start = [], 0
  for m, nh in zip(A.normalize_windows(windows), heads_per_window):
    sl = slice(start, start + nh)
    start += nh
    ids = _window_ids(h, w, m)
    mask = jnp.asarray(ids[:, None] == ids[None, :], q.dtype)
    s = jnp.einsum("bihc,bjhc->bhij", q[..., sl, :], k[..., sl, :]) * mask
    outs.append(jnp.einsum("bhij,bjhe->bihe", s, v[..., sl, :]) * 2.0**-shift)
  return jnp.concatenate(outs, axis=-2)


@pytest.mark.parametrize("grid,windows,heads", [
    ((8, 8), (2, 4, 0), (1, 2, 1)),
    ((7, 7), (2, 4, 0), (2, 1, 1)),   # not divisible: padded windows on the border
    ((6, 10), (3, 4), (1, 1)),        # rectangular grid
    ((5, 5), (5,), (2,)),             # one window covering the grid
    ((4, 4), (1, 0), (1, 1)),         # windows of one token
])
def test_windowed_equals_masked_global_reference(grid, windows, heads):
  d = 8
  q, k, v = _qkv((2, grid[0] * grid[1], sum(heads), d))
  out = A.gw_ssa(q, k, v, grid, windows, heads, shift=3)
  ref = _masked_reference(q, k, v, grid, windows, heads, 3)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d", [4, 32])
def test_both_product_orders_agree(d):
  grid = (8, 8)
  q, k, v = _qkv((2, 64, 3, d), seed=1)
  args = (grid, (2, 4, 0), (1, 1, 1), 2)
  qk = A.gw_ssa(q, k, v, *args, order="qk_first")
  kv = A.gw_ssa(q, k, v, *args, order="kv_first")
  auto = A.gw_ssa(q, k, v, *args)
  np.testing.assert_allclose(qk, kv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(auto, kv, rtol=1e-5, atol=1e-5)
  # The auto order is the cheaper one: Q(K^T V) exactly when a window has more tokens than d.
  plans = A.plan_windows(grid, d, (2, 4, 0), (1, 1, 1), 0)
  assert [p.kv_first for p in plans] == [4 > d, 16 > d, 64 > d]


def test_global_window_is_plain_spiking_self_attention():
  q, k, v = _qkv((3, 36, 2, 8), seed=2)
  np.testing.assert_allclose(A.gw_ssa(q, k, v, (6, 6), ("global",), (2,), 4),
                             A.global_ssa(q, k, v, 4), rtol=1e-5, atol=1e-5)


def test_leading_batch_axes_and_exactness_in_float64():
  with jax.enable_x64(True):
    q, k, v = _qkv((2, 3, 16, 2, 4), seed=3, dtype=jnp.float64)  # [T, B, N, h, d]
    out = A.gw_ssa(q, k, v, (4, 4), (2, 0), (1, 1), 1)
    for t in range(2):
      ref = _masked_reference(q[t], k[t], v[t], (4, 4), (2, 0), (1, 1), 1)
      np.testing.assert_allclose(out[t], ref, rtol=1e-13)


def test_spike_train_operands_give_the_dense_result_and_are_binary():
  """With spike-train q, k, v every product has a binary operand and equals the dense product."""
  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.key(4), 3)
    currents = [jax.random.uniform(kk, (2, 49, 3, 8), jnp.float64, -0.2, 1.2) for kk in keys]
    trains = [sp.from_neuron(c, 1.0, 2, 3) for c in currents]
    values = [neurons.expg_quantize(c, 1.0, 2, 3) for c in currents]
    records = []
    mm = lambda s, a, b: sp.spike_einsum(s, a, b, records.append)  # noqa: E731
    args = ((7, 7), (2, 4, 0), (1, 1, 1), 2)
    out = A.gw_ssa(*trains, *args, matmul=mm)
    ref = A.gw_ssa(*values, *args)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    assert len(records) == 6 and all(bool(r["binary"]) for r in records)
    assert all(float(r["sops"]) > 0 for r in records)


def test_attention_macs_counts_both_products():
  # 8x8 grid, windows of 2 (16 windows of 4 tokens, d = 8 > 4: (QK^T)V, 2 * 4^2 * 8 per window).
  assert A.attention_macs((8, 8), 8, (2,), (1,)) == 16 * 2 * 16 * 8
  # A global window of 64 tokens > d = 8: Q(K^T V), 2 * 64 * 8^2 per head, 3 heads.
  assert A.attention_macs((8, 8), 8, (0,), (3,)) == 3 * 2 * 64 * 64


def test_cost_grows_linearly_for_windows_and_quadratically_for_global():
  sizes = [8, 16, 32]
  win = [A.attention_macs((s, s), 32, (4,), (1,), order="qk_first") for s in sizes]
  glob = [A.attention_macs((s, s), 32, (0,), (1,), order="qk_first") for s in sizes]
  assert win[1] / win[0] == pytest.approx(4) and win[2] / win[1] == pytest.approx(4)      # ~ N
  assert glob[1] / glob[0] == pytest.approx(16) and glob[2] / glob[1] == pytest.approx(16)  # ~ N^2


@pytest.mark.parametrize("kwargs,match", [
    (dict(grid_hw=(5, 5)), "holds 25 tokens but q has N = 16"),
    (dict(window_sizes=(2, 8)), "larger than the 4x4 token grid"),
    (dict(window_sizes=(2, -3)), "window sizes must be integers >= 1 or 'global'"),
    (dict(window_sizes=(2, 2.5)), "window sizes must be integers"),
    (dict(heads_per_window=(1, 2)), "sums to 3 but the inputs have 2 heads"),
    (dict(heads_per_window=(2,)), "one entry per window size"),
    (dict(shift=(1, 2, 3)), "shift must be an int or one int per window size"),
    (dict(order="fast"), "order must be"),
])
def test_bad_arguments(kwargs, match):
  q, k, v = _qkv((1, 16, 2, 4))
  args = dict(grid_hw=(4, 4), window_sizes=(2, 0), heads_per_window=(1, 1), shift=1) | kwargs
  order = args.pop("order", "auto")
  with pytest.raises(ValueError, match=match):
    A.gw_ssa(q, k, v, order=order, **args)
  with pytest.raises(ValueError, match="share one shape"):
    A.gw_ssa(q, k[:, :8], v, (4, 4), (2, 0), (1, 1), 1)
