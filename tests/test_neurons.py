"""ExpG-IF neuron, its quantized-ANN twin, and the STBP baselines."""

import functools

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ge2ms_jax import neurons as N

CODES = [(2, 1), (2, 4), (2, 8), (3, 3), (4, 2), (16, 1), (5, 2), (3, 1)]
N_VALUES = 48


@functools.lru_cache(maxsize=None)
def _spikes_fn(base, groups, method):
  return jax.jit(lambda x, t: N.expg_if(x, t, base, groups, method))


@functools.lru_cache(maxsize=None)
def _quantize_fn(base, groups):
  return jax.jit(lambda x, t: N.expg_quantize(x, t, base, groups))


def _place_values(base, groups):
  return N.step_layout(base, groups)[2]


# Currents: ordinary values, huge ones, zeros, negatives, and exact level boundaries.
_floats = st.one_of(
    st.floats(-4.0, 4.0, width=32),
    st.floats(-1e30, 1e30, allow_subnormal=False).map(np.float32),
    st.sampled_from([0.0, -0.0, 1.2e-38, -1.2e-38, 3.4e38, -3.4e38]),
)


def _check_lossless(x, theta, base, groups, dtype):
  """All three methods agree bit for bit and encode exactly the quantizer's level index."""
  x = jnp.asarray(x, dtype)
  theta = jnp.asarray(theta, dtype)
  spikes = [np.asarray(_spikes_fn(base, groups, m)(x, theta)) for m in N.EXPG_METHODS]
  T = groups * (base - 1)
  for s in spikes:
    assert s.shape == (T,) + x.shape
    assert set(np.unique(s)) <= {0.0, 1.0}
    np.testing.assert_array_equal(s, spikes[0])
  # Integer identity: the spikes are the base-b digits of n, fire-first within each group.
  n = np.asarray(N.level_index(x, theta, base, groups)).astype(np.int64)
  place = _place_values(base, groups).reshape((-1,) + (1,) * x.ndim)
  np.testing.assert_array_equal((place * spikes[0].astype(np.int64)).sum(0), n)
  per_group = spikes[0].reshape((groups, base - 1) + x.shape)
  assert np.all(np.diff(per_group, axis=1) <= 0), "spikes inside a group must be fire-first"
  # Value identity: the weighted spike sum equals Q(x) up to the rounding of that sum.
  q = np.asarray(_quantize_fn(base, groups)(x, theta), np.float64)
  s = np.asarray(N.spike_sum(jnp.asarray(spikes[0], dtype), theta, base, groups), np.float64)
  eps = np.finfo(np.dtype(dtype)).eps
  tol = 4 * eps * np.maximum(np.abs(q), np.max(np.asarray(theta, np.float64)))
  assert np.all(np.abs(s - q) <= tol), np.max(np.abs(s - q) - tol)


@pytest.mark.parametrize("base,groups", CODES)
@given(values=hnp.arrays(np.float32, (N_VALUES,), elements=_floats),
       theta=st.floats(0.0625, 20.0, width=32))
def test_lossless_float32(base, groups, values, theta):
  _check_lossless(values, theta, base, groups, jnp.float32)


@pytest.mark.parametrize("base,groups", [(2, 1), (2, 4), (3, 3), (4, 2), (16, 1)])
@given(values=hnp.arrays(np.float64, (N_VALUES,), elements=st.floats(-1e6, 1e6)),
       theta=st.floats(1e-3, 1e3))
def test_lossless_float64(base, groups, values, theta):
  with jax.enable_x64(True):
    _check_lossless(values, theta, base, groups, jnp.float64)


@pytest.mark.parametrize("base,groups", CODES)
@pytest.mark.parametrize("theta", [1.0, 0.3, 7.25])
def test_exact_level_boundaries(base, groups, theta):
  """Currents exactly on (and one ulp around) each rounding boundary theta*(k - 1/2)/L."""
  levels = base**groups
  k = np.arange(-1, levels + 2, dtype=np.float64)
  edges = (theta * (k - 0.5) / levels).astype(np.float32)
  x = np.concatenate([edges, np.nextafter(edges, np.inf), np.nextafter(edges, -np.inf)])
  _check_lossless(x, theta, base, groups, jnp.float32)


@pytest.mark.parametrize("base,groups", [(2, 4), (4, 2), (3, 2)])
def test_per_channel_theta(base, groups):
  key = jax.random.key(0)
  x = 3 * jax.random.normal(key, (5, 7, 6))
  theta = jnp.linspace(0.2, 4.0, 6)
  spikes = [N.expg_if(x, theta, base, groups, m) for m in N.EXPG_METHODS]
  for s in spikes[1:]:
    np.testing.assert_array_equal(s, spikes[0])
  q = N.expg_quantize(x, theta, base, groups)
  np.testing.assert_allclose(N.spike_sum(spikes[0], theta, base, groups), q, rtol=0, atol=1e-6)
  # Each channel is quantized with its own threshold.
  for c in range(6):
    np.testing.assert_array_equal(q[..., c], N.expg_quantize(x[..., c], theta[c], base, groups))


def test_spike_weights_and_layout():
  w = N.spike_weights(2.0, 4, 2)
  np.testing.assert_allclose(w, [0.5, 0.5, 0.5, 0.125, 0.125, 0.125])
  assert N.spike_weights(jnp.ones(5), 2, 3).shape == (3, 5)
  assert N.num_steps(2, 4) == 4 and N.num_steps(4, 2) == 6 and N.num_steps(16, 1) == 15
  assert N.num_levels(3, 4) == 81
  group, rank, place = N.step_layout(3, 2)
  np.testing.assert_array_equal(group, [1, 1, 2, 2])
  np.testing.assert_array_equal(rank, [0, 1, 0, 1])
  np.testing.assert_array_equal(place, [3, 3, 1, 1])
  assert N.codes_for_levels(16) == [(2, 4), (4, 2), (16, 1)]
  assert N.codes_for_levels(64) == [(2, 6), (4, 3), (8, 2), (64, 1)]


def test_quantizer_values():
  # L = 4, theta = 1: levels 0, .25, .5, .75; rounding to nearest, clipped at 0.75.
  x = jnp.array([-1.0, 0.0, 0.12, 0.13, 0.3, 0.62, 0.63, 0.9, 5.0])
  np.testing.assert_allclose(N.expg_quantize(x, 1.0, 2, 2), [0, 0, 0, 0.25, 0.25, 0.5, 0.75, 0.75, 0.75])


def _reference_quantize(x, theta, levels):
  """Q with the rounding made straight-through by stop_gradient: autodiff gives LSQ's gradient."""
  z = x * levels / theta + 0.5
  n = jnp.floor(z)
  z_ste = z + jax.lax.stop_gradient(n - z)
  clipped = jnp.where(n > levels - 1, levels - 1.0, 0.0)
  return theta / levels * jnp.where((n >= 0) & (n <= levels - 1), z_ste, clipped)


@pytest.mark.parametrize("base,groups", [(2, 4), (3, 2), (16, 1)])
def test_quantize_gradients_match_reference(base, groups):
  levels = base**groups
  x = jax.random.uniform(jax.random.key(1), (4, 64, 3), minval=-0.5, maxval=2.5)
  x = x.at[0, 0, 0].set(2.0 * (levels + 3) / levels)  # far above the top level
  g_out = jax.random.normal(jax.random.key(2), x.shape)
  for theta in [jnp.asarray(1.5), jnp.array([0.5, 1.0, 2.0])]:
    loss = lambda x, t: jnp.sum(g_out * N.expg_quantize(x, t, base, groups))
    ref = lambda x, t: jnp.sum(g_out * _reference_quantize(x, t, levels))
    gx, gt = jax.grad(loss, argnums=(0, 1))(x, theta)
    rx, rt = jax.grad(ref, argnums=(0, 1))(x, theta)
    assert gt.shape == theta.shape
    np.testing.assert_allclose(gx, rx, atol=1e-6)
    np.testing.assert_allclose(gt, rt, rtol=1e-4, atol=1e-4)


def test_quantize_gradient_hand_values():
  # L = 4, theta = 1. Inside: dx = 1, dtheta = n/L - x/theta; above: dx = 0, dtheta = 3/4; below: 0.
  x = jnp.array([0.3, 2.0, -0.5])
  gx = jax.grad(lambda x: N.expg_quantize(x, 1.0, 2, 2).sum())(x)
  np.testing.assert_array_equal(gx, [1.0, 0.0, 0.0])
  for xi, expected in [(0.3, 0.25 - 0.3), (2.0, 0.75), (-0.5, 0.0)]:
    gt = jax.grad(lambda t: N.expg_quantize(jnp.float32(xi), t, 2, 2))(1.0)
    np.testing.assert_allclose(gt, expected, rtol=1e-6)


def test_quantize_theta_gradient_descends_error():
  """Learning theta by the LSQ gradient reduces the quantization error of a fixed signal."""
  x = jnp.abs(jax.random.normal(jax.random.key(3), (4096,)))
  err = lambda t: jnp.mean((N.expg_quantize(x, t, 2, 3) - x) ** 2)
  theta = jnp.float32(0.5)
  before = err(theta)
  for _ in range(50):
    theta = theta - 0.5 * jax.grad(err)(theta)
  assert err(theta) < 0.5 * before


def test_bf16_input_computes_in_float32():
  x = jnp.linspace(0.0, 1.0, 257, dtype=jnp.bfloat16)
  q = N.expg_quantize(x, 1.0, 2, 8)
  assert q.dtype == jnp.bfloat16
  ref = N.expg_quantize(x.astype(jnp.float32), 1.0, 2, 8)
  np.testing.assert_allclose(q.astype(jnp.float32), ref, atol=4e-3)
  s = N.expg_if(x, 1.0, 2, 8)
  np.testing.assert_array_equal(s, N.expg_if(x.astype(jnp.float32), 1.0, 2, 8))


# --------------------------------------------------------------------------- jit / vmap / traces
def test_jit_vmap_and_no_recompiles():
  x = jax.random.normal(jax.random.key(4), (3, 10, 4))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(x, theta):
    return N.expg_if(x, theta, 2, 4, "scan"), N.expg_quantize(x, theta, 2, 4)

  s1, q1 = f(x, 1.0)
  s2, _ = f(x + 1, 2.0)  # new values, same shapes: no retrace
  s_eager = N.expg_if(x, 1.0, 2, 4)
  np.testing.assert_array_equal(s1, s_eager)
  assert not np.array_equal(s1, s2)
  v = jax.vmap(lambda xi: N.expg_if(xi, 1.0, 2, 4, "closed"), out_axes=1)(x)
  np.testing.assert_array_equal(v, s_eager)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,match", [
    (dict(base=1, groups=2), "base must be an integer >= 2"),
    (dict(base=2.5, groups=2), "base must be an integer"),
    (dict(base="2", groups=2), "base must be an integer"),
    (dict(base=True, groups=2), "base must be an integer"),
    (dict(base=2, groups=0), "groups must be an integer >= 1"),
    (dict(base=2, groups=30), "exceeds the exact range"),
    (dict(base=2, groups=4, theta=0.0), "theta must be > 0"),
    (dict(base=2, groups=4, theta=-1.0), "theta must be > 0"),
    (dict(base=2, groups=4, theta=float("nan")), "theta must be > 0"),
    (dict(base=2, groups=4, theta=np.array([1.0, -1.0, 1.0])), "theta must be > 0"),
    (dict(base=2, groups=4, theta=np.ones(5)), "per-channel vector of shape"),
    (dict(base=2, groups=4, method="loop"), "method must be one of"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
  args = dict(theta=1.0, method="scan") | kwargs
  x = jnp.ones((2, 3))
  with pytest.raises(ValueError, match=match):
    N.expg_if(x, args["theta"], args["base"], args["groups"], args["method"])
  if "method" not in kwargs:
    with pytest.raises(ValueError, match=match):
      N.expg_quantize(x, args["theta"], args["base"], args["groups"])


def test_bad_arguments_raise_at_trace_time():
  with pytest.raises(ValueError, match="groups must be"):
    jax.jit(lambda x: N.expg_if(x, 1.0, 2, 0)).lower(jnp.ones(3))
  with pytest.raises(ValueError, match="theta must be > 0"):
    jax.jit(lambda x: N.expg_quantize(x, -2.0, 2, 2)).lower(jnp.ones(3))


# --------------------------------------------------------------------------- STBP baselines
def _np_if(x, thr, reset):
  v = np.zeros(x.shape[1:])
  out = []
  for t in range(x.shape[0]):
    v = v + x[t]
    s = (v >= thr).astype(np.float64)
    v = v - s * thr if reset == "soft" else np.where(s > 0, 0.0, v)
    out.append(s)
  return np.stack(out)


def _np_lif(x, tau, thr):
  v = np.zeros(x.shape[1:])
  out = []
  for t in range(x.shape[0]):
    v = v + (x[t] - v) / tau
    s = (v >= thr).astype(np.float64)
    v = np.where(s > 0, 0.0, v)
    out.append(s)
  return np.stack(out)


@pytest.mark.parametrize("reset", ["soft", "hard"])
def test_if_neuron_matches_reference(reset):
  x = np.asarray(jax.random.uniform(jax.random.key(5), (8, 32, 5), minval=-0.5, maxval=1.5))
  s = N.if_neuron(jnp.asarray(x), threshold=1.0, reset=reset)
  np.testing.assert_array_equal(s, _np_if(x, 1.0, reset))


def test_lif_neuron_matches_reference():
  x = np.asarray(jax.random.uniform(jax.random.key(6), (8, 32, 5), minval=-0.5, maxval=3.0))
  np.testing.assert_array_equal(N.lif_neuron(jnp.asarray(x), tau=2.0), _np_lif(x, 2.0, 1.0))


def test_lif_charge_forms():
  """STBP's form passes a weight-1 spike at once; the input-decaying form needs 1 - 2**-T >= 1: never."""
  ones = jnp.ones((4, 3))
  np.testing.assert_array_equal(N.lif_neuron(ones, tau=2.0, decay_input=False), ones)
  assert not np.any(np.asarray(N.lif_neuron(ones, tau=2.0, decay_input=True)))
  np.testing.assert_array_equal(N.lif_neuron(2.0 * ones, tau=2.0, decay_input=True), ones)


def test_if_soft_reset_rate_codes_the_mean_input():
  """Over many steps a soft-reset IF neuron's rate approaches its mean input (rate coding)."""
  x = jnp.broadcast_to(jnp.linspace(0.0, 0.99, 11), (256, 11))
  rate = N.if_neuron(x, threshold=1.0).mean(0)
  np.testing.assert_allclose(rate, jnp.linspace(0.0, 0.99, 11), atol=1 / 256 + 1e-6)


@pytest.mark.parametrize("kind", N.SURROGATES)
def test_surrogate_gradients(kind):
  alpha = 2.0
  x = jnp.asarray(np.arange(-102400, 102401) * 2.0**-11, jnp.float32)  # exactly symmetric grid
  g = jax.vmap(jax.grad(lambda v: N.heaviside(v, alpha, kind)))(x)
  np.testing.assert_array_equal(N.heaviside(x, alpha, kind), (x >= 0).astype(x.dtype))
  # Each surrogate is a probability-density-like bump: peaked at 0, symmetric, integral ~ 1
  # (atan's heavy tails leave (2/pi) * atan(50 pi) of it inside [-50, 50]).
  assert float(g[102400]) == pytest.approx(float(jnp.max(g)))
  np.testing.assert_allclose(g, g[::-1], rtol=1e-6, atol=1e-6)
  integral = float(jnp.sum(g) * (x[1] - x[0]))
  assert integral == pytest.approx(2 / np.pi * np.arctan(50 * np.pi) if kind == "atan" else 1.0, abs=0.01)
  expected = {
      "atan": alpha / 2 / (1 + (np.pi / 2 * alpha * 0.1) ** 2),
      "sigmoid": alpha * jax.nn.sigmoid(alpha * 0.1) * (1 - jax.nn.sigmoid(alpha * 0.1)),
      "rectangular": alpha,
      "triangle": alpha - alpha**2 * 0.1,
  }[kind]
  np.testing.assert_allclose(jax.grad(lambda v: N.heaviside(v, alpha, kind))(0.1), expected, rtol=1e-5)


def test_stbp_gradient_flows_through_time():
  """The surrogate gradient reaches inputs at early steps through the membrane carry."""
  x = jnp.full((6, 4), 0.3)
  for fn in (lambda x: N.if_neuron(x), lambda x: N.lif_neuron(x, tau=2.0, threshold=0.5)):
    g = jax.grad(lambda x: fn(x)[-1].sum())(x)
    assert float(jnp.abs(g[0]).sum()) > 0
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("fn,kwargs,match", [
    (N.if_neuron, dict(reset="zero"), "reset must be one of"),
    (N.if_neuron, dict(surrogate="relu"), "surrogate must be one of"),
    (N.if_neuron, dict(alpha=0.0), "alpha must be a positive"),
    (N.if_neuron, dict(threshold=-1.0), "theta must be > 0"),
    (N.lif_neuron, dict(tau=0.5), "tau must be a number >= 1"),
])
def test_stbp_bad_arguments(fn, kwargs, match):
  with pytest.raises(ValueError, match=match):
    fn(jnp.ones((3, 2)), **kwargs)
