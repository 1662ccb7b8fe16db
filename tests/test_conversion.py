"""Lossless conversion, spike-level simulation, multiplication-free check, energy and planning."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ge2ms_jax import conversion as C
from ge2ms_jax import energy as E
from ge2ms_jax import layers as L
from ge2ms_jax import model as M
from ge2ms_jax import planning
from ge2ms_jax import snn
from ge2ms_jax import spikes as sp


def _randomise(variables, seed, dtype):
  """Non-trivial weights and statistics, as training would leave them (thresholds > 0, var > 0).

  Works on concrete arrays or on shapes (`jax.eval_shape` of an init), so no init is compiled.
  """
  leaves, tree = jax.tree_util.tree_flatten_with_path(variables)
  rng = np.random.default_rng(seed)
  out = []
  for path, leaf in leaves:
    name = jax.tree_util.keystr(path)
    noise = rng.standard_normal(leaf.shape)
    if "theta" in name:
      value = 0.6 + 0.4 * np.abs(noise)
    elif "var" in name:
      value = 0.5 + np.abs(noise)
    elif "mean" in name or "bias" in name:
      value = 0.1 * noise
    elif "scale" in name:
      value = 1.0 + 0.3 * noise
    else:  # kernels: He-style scale so that activations neither vanish nor explode
      fan_in = int(np.prod(leaf.shape[:-1])) or 1
      value = noise * np.sqrt(2.0 / fan_in)
    out.append(jnp.asarray(value, dtype))
  return jax.tree_util.tree_unflatten(tree, out)


@functools.lru_cache(maxsize=None)
def _setup(overrides="", dtype=jnp.float32, seed=0, batch=4):
  cfg = M.default_config("tiny")
  cfg.neuron_overrides = overrides
  if dtype == jnp.float64:
    cfg.dtype = "float64"
  net = M.build(cfg)
  x = jax.random.uniform(jax.random.key(seed), (batch, 28, 28, 1), dtype)
  shapes = jax.eval_shape(lambda x: net.init({"params": jax.random.key(0)}, x), x)
  variables = _randomise(shapes, seed + 2, dtype)
  return cfg, jax.jit(lambda v, x: net.apply(v, x)), variables, x


@pytest.mark.parametrize("overrides", [
    "",                                                        # (2, 4) everywhere
    ".*=4,2",                                                  # base 4
    ".*=3,2",                                                  # L = 9, a non-power-of-two base
    r"stem=2,8;stage0/.*n_dw=16,1;stage1/block0/attn_(q|k|v)$=3,2;stage1/block1=5,1",  # mixed per layer
])
def test_spike_simulation_equals_qann_in_float64(overrides):
  with jax.enable_x64(True):
    cfg, qann, variables, x = _setup(overrides, jnp.float64)
    lq = qann(variables, x)
    converted = C.convert(variables, cfg)
    res = snn.simulate(converted, x, "spike", config=cfg)
    assert res.logits.dtype == jnp.float64
    np.testing.assert_allclose(res.logits, lq, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(jnp.argmax(res.logits, -1), jnp.argmax(lq, -1))
    fused = snn.simulate(converted, x, "fused", config=cfg)
    np.testing.assert_allclose(fused.logits, lq, rtol=0, atol=1e-9)
    fast = snn.simulate(converted, x, "fused", config=cfg, stats=False)
    np.testing.assert_array_equal(fast.logits, fused.logits)
    assert fast.layers == []
    # Both paths count the same synaptic operations and spikes.
    for a, b in zip(res.layers, fused.layers):
      assert a.name == b.name and a.kind == b.kind
      np.testing.assert_allclose(a.sops, b.sops, rtol=1e-12)
      np.testing.assert_allclose(a.spikes, b.spikes, rtol=1e-12)


def test_float32_predictions_agree_on_a_test_set():
  cfg, qann, variables, _ = _setup("", jnp.float32, seed=3)
  converted = C.convert(variables, cfg)
  x = jax.random.uniform(jax.random.key(9), (256, 28, 28, 1))
  lq = qann(variables, x)
  res = snn.simulate(converted, x, "spike", config=cfg)
  agreement = float(jnp.mean(jnp.argmax(lq, -1) == jnp.argmax(res.logits, -1)))
  assert agreement >= 0.999, agreement


def test_batchnorm_folding_is_exact():
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (3, 6, 6, 4), jnp.float64)
    for kwargs in [dict(kernel_size=3, groups=1), dict(kernel_size=3, groups=4), dict(kernel_size=1)]:
      m = L.SynapseBN(8, dtype=jnp.float64, **kwargs)
      v = _randomise(jax.eval_shape(lambda x: m.init(jax.random.key(1), x), x), 2, jnp.float64)
      folded = C.fold_batchnorm({"m": v["params"]}, {"m": v["batch_stats"]})["m"]
      ref = m.apply(v, x)
      got = L.SynapseBN(8, mode="fused", first=True, dtype=jnp.float64, **kwargs).apply({"params": folded}, x)
      np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-13)


def test_verify_reports_every_site_and_zero_difference_in_float64():
  with jax.enable_x64(True):
    cfg, _, variables, x = _setup("", jnp.float64, batch=2)
    rows = snn.verify(variables, C.convert(variables, cfg), x, config=cfg)
    assert sorted(r["site"] for r in rows[:-1]) == sorted(C.neuron_sites(variables))
    assert rows[0]["site"] == "stem_n" and rows[-1]["site"] == "logits"  # network order
    assert max(r["max_abs_diff"] for r in rows) < 1e-9
    assert all(r["mismatch_fraction"] == 0 for r in rows)
    assert "stage1/block0/attn_q" in snn.format_verify(rows)


def test_multiplication_free_checker_catches_a_non_spiking_operand(monkeypatch):
  cfg, _, variables, x = _setup("", jnp.float32, batch=2)
  converted = C.convert(variables, cfg)
  snn.simulate(converted, x, "spike", config=cfg)  # clean run: no error
  original = sp.from_neuron

  def leaky(current, theta, base, groups, method="scan"):
    train = original(current, theta, base, groups, method)
    return train.replace(spikes=train.spikes * 0.5)  # graded "spikes": products would multiply

  monkeypatch.setattr(sp, "from_neuron", leaky)
  snn._apply_fn.cache_clear()
  try:
    with pytest.raises(snn.MultiplicationFreeError, match="stage0/down.*stage1/block0/attn_p1"):
      snn.simulate(converted, x, "spike", config=cfg)
  finally:
    snn._apply_fn.cache_clear()


def test_graded_spike_trains_are_refused_without_statistics_too(monkeypatch):
  # The oracle tests' path: neuron_site_outputs without the "stats" collection, and a bare apply.
  cfg, _, variables, x = _setup("", jnp.float32, batch=2)
  converted = C.convert(variables, cfg)
  net = M.build(cfg, "spike")
  snn.neuron_site_outputs(net, converted, x, stats=False)  # clean run: no error
  with pytest.raises(snn.MultiplicationFreeError, match="'checks' collection is not mutable"):
    net.apply(converted, x)  # a spike-mode run that would check nothing refuses to run
  original = sp.from_neuron
  monkeypatch.setattr(sp, "from_neuron", lambda *a, **k: original(*a, **k).replace(
      spikes=original(*a, **k).spikes * 0.37))
  with pytest.raises(snn.MultiplicationFreeError, match=r"stage0/down, .*stage1/block0/attn_p1, .*attn_shortcut"):
    snn.neuron_site_outputs(net, converted, x, stats=False)


class _Consumers(nn.Module):
  """The three consumers of a spike train in spike mode: a synapse, a shortcut, a product."""

  @nn.compact
  def __call__(self, train):
    y = L.Synapse(3, mode="spike", name="syn")(train)
    z = L.add_to_current(self, jnp.zeros(train.shape), train, "shortcut")
    w = sp.spike_einsum("...ij,...jk->...ik", train, jnp.ones((2, 5)),
                        lambda stats: self.sow("stats", "attn_p1", stats), spiking="product",
                        check=lambda s: sp.check_binary(self, "attn_p1", s))
    return y, z, w


@pytest.mark.parametrize("stats", [False, True])
@pytest.mark.parametrize("value", [1.0, 0.37])
def test_each_spike_train_consumer_checks_values(stats, value):
  spikes = jnp.zeros((4, 1, 3, 2)).at[:, 0, 1, :].set(value)
  train = sp.SpikeTrain(spikes=spikes, scales=jnp.asarray([0.5, 0.25, 0.125, 0.0625]), theta=jnp.asarray(0.8),
                        base=2, groups=4)
  net = _Consumers()
  variables = {"params": net.init(jax.random.key(0), train)["params"]}
  _, state = jax.jit(lambda v, t: net.apply(v, t, mutable=["checks"] + (["stats"] if stats else [])))(
      variables, train)
  assert sorted(state["checks"]) == ["attn_p1", "shortcut", "syn"]
  if value == 1.0:
    snn.raise_unless_binary(state["checks"])
    return
  with pytest.raises(snn.MultiplicationFreeError, match=r"at: attn_p1, shortcut, syn$"):
    snn.raise_unless_binary(state["checks"])
  if stats:
    with pytest.raises(snn.MultiplicationFreeError, match="attn_p1, shortcut, syn"):
      snn.collect_stats(state["stats"])


def test_real_valued_input_to_a_later_synapse_is_refused():
  with pytest.raises(snn.MultiplicationFreeError, match="received a real-valued input in spike mode"):
    L.Synapse(4, mode="spike").init(jax.random.key(0), jnp.ones((1, 2, 2, 3)))


def test_attention_product_of_two_real_valued_operands_is_an_error(monkeypatch):
  cfg, _, variables, x = _setup("", jnp.float32, batch=2)
  converted = C.convert(variables, cfg)
  # Q, K and V reach the attention as their dense values instead of spike trains: every window
  # product would multiply two real-valued tensors.
  monkeypatch.setattr(L, "map_activation", lambda a, fn: fn(sp.dense(a)))
  snn._apply_fn.cache_clear()
  try:
    with pytest.raises(snn.MultiplicationFreeError, match=r"stage1/block0: the product .* no spike-train operand"):
      snn.simulate(converted, x, "spike", config=cfg)
    # The fused path runs the same products on values: it is not a spike-level check.
    snn.simulate(converted, x, "fused", config=cfg)
  finally:
    snn._apply_fn.cache_clear()


def test_spike_einsum_refuses_dense_operands_in_spike_mode():
  a, b = jnp.ones((2, 3)), jnp.ones((3, 4))
  np.testing.assert_allclose(sp.spike_einsum("...ij,...jk->...ik", a, b), a @ b)  # outside spike mode
  with pytest.raises(sp.MultiplicationFreeError, match="layer/x: the product"):
    sp.spike_einsum("...ij,...jk->...ik", a, b, spiking="layer/x")


def test_conversion_refuses_non_convertible_models():
  class WithSoftmax(nn.Module):
    @nn.compact
    def __call__(self, x):
      return jax.nn.softmax(nn.Dense(4, name="scores")(x))

  m = WithSoftmax()
  v = m.init(jax.random.key(0), jnp.ones((1, 3)))
  with pytest.raises(C.ConversionError, match="WithSoftmax.*operation '(exp|reduce_max)'"):
    C.check_operations(lambda v, x: m.apply(v, x), v, jnp.ones((1, 3)))
  with pytest.raises(C.ConversionError, match="LayerNorm_0/scale: parameter 'scale' is of no conversion-safe kind"):
    C.fold_batchnorm({"LayerNorm_0": {"scale": jnp.ones(3), "bias": jnp.zeros(3)}}, {})
  with pytest.raises(C.ConversionError, match="head/bn: a BatchNorm with no synapse before it"):
    C.fold_batchnorm({"head": {"bn": {"scale": jnp.ones(3), "bias": jnp.zeros(3)}}}, {"head": {"bn": {}}})
  cfg = M.default_config("tiny")
  cfg.neuron_kind = "if"
  with pytest.raises(C.ConversionError, match="STBP model"):
    C.convert({"params": {}}, cfg)


class _TwoLayer(nn.Module):
  """Hand-computable: a 1x1 encoding conv (1 -> 3), an ExpG-IF site (b=2, G=2, theta=1), a 3x3 conv (3 -> 2)."""
  mode: str

  @nn.compact
  def __call__(self, x):
    codes = L.NeuronCodes(L.NeuronSpec(base=2, groups=2, theta_init=1.0))
    h = L.Synapse(3, 1, use_bias=True, first=True, mode=self.mode, name="enc")(x)
    s = L.Neuron(codes, self.mode, name="n")(h)
    return L.Synapse(2, 3, use_bias=True, mode=self.mode, name="out")(s)


def test_energy_of_a_hand_computable_network():
  x = jnp.array([0.1, 0.4, 0.6, 0.9]).reshape(1, 2, 2, 1)
  params = {"enc": {"kernel": jnp.array([1.0, 0.5, 2.0]).reshape(1, 1, 1, 3), "bias": jnp.zeros(3)},
            "n": {"theta": jnp.asarray(1.0)},
            "out": {"kernel": jnp.ones((3, 3, 3, 2)), "bias": jnp.zeros(2)}}
  # Currents per position/channel: x * [1, .5, 2]; L = 4 levels of 1/4: n = clip(round(4 I), 0, 3).
  currents = np.array([0.1, 0.4, 0.6, 0.9])[:, None] * np.array([1.0, 0.5, 2.0])[None]
  n = np.clip(np.floor(currents * 4 + 0.5), 0, 3).astype(int)
  spikes = int(sum(bin(v).count("1") for v in n.ravel()))  # binary digits: one spike per 1-bit
  for mode in ("spike", "fused"):
    out, state = _TwoLayer(mode).apply({"params": params}, x, mutable=["stats", "checks"])
    rows = snn.collect_stats(state["stats"])
    rep = E.energy_report(rows, ann_macs=12 + 4 * 2 * 27, num_images=1)
    # Encoding layer: 4 positions x 3 channels x 1 input = 12 MACs. On a 2x2 grid a 3x3 'same'
    # kernel reaches all 4 output positions from any input: each spike drives 4 x 2 = 8 accumulates.
    assert rep.macs_first == 12
    assert rep.sops == 8 * spikes
    assert rep.snn_mj == pytest.approx((4.6 * 12 + 0.9 * 8 * spikes) * 1e-9)
    assert rep.ann_mj == pytest.approx(4.6 * (12 + 4 * 2 * 27) * 1e-9)
    # Shifts: the 3x3 conv rescales its 4 x 2 accumulators once per group (G = 2).
    assert rep.shifts == 8 * 2 and rep.scalings == 0
    neuron = [r for r in rep.layers if r.kind == "neuron"][0]
    assert neuron.spikes_per_neuron == pytest.approx(spikes / 12)
    assert neuron.firing_rate == pytest.approx(spikes / (12 * 2))
    # The output is exact: sum over spikes of their weights.
    np.testing.assert_allclose(out[0, 0, 0], np.full(2, n.sum() / 4), rtol=1e-6)


def test_energy_table_json_and_plot(tmp_path):
  cfg, _, variables, x = _setup("", jnp.float32, batch=2)
  res = snn.simulate(C.convert(variables, cfg), x, "spike", config=cfg)
  rep = E.energy_report(res, M.count(cfg)["macs"])
  assert 0 < rep.snn_mj < rep.ann_mj
  assert rep.time_steps == 4 and 0 < rep.firing_rate < 1
  text = rep.format_table()
  assert "stage1/block0/attn_p1" in text and "ANN/SNN" in text
  rep.save_json(tmp_path / "energy.json")
  rep.plot(tmp_path / "energy.png")
  assert (tmp_path / "energy.png").stat().st_size > 1000
  with pytest.raises(ValueError, match="e_ac_pj must be a finite number >= 0"):
    E.EnergyModel(e_ac_pj=-1.0)


def test_planning_keeps_outputs_and_lowers_spikes():
  cfg, _, variables, x = _setup(".*=16,1", jnp.float32, batch=4)  # rate coding, L = 16
  converted = C.convert(variables, cfg)
  plan = planning.plan_codes(cfg, converted, x)
  assert set(plan.codes.values()) <= {(2, 4), (4, 2), (16, 1)}
  # Same level count everywhere: the planned network computes the same function, bit for bit.
  np.testing.assert_array_equal(snn.simulate(converted, x, "fused", config=plan.config).logits,
                                snn.simulate(converted, x, "fused", config=cfg).logits)
  assert plan.after.sops < plan.before.sops
  assert plan.after.spikes_per_neuron < plan.before.spikes_per_neuron
  # Under a budget of 6 steps the rate code (T = 15) is excluded.
  limited = planning.plan_codes(cfg, converted, x, max_steps=6)
  assert all(b**g == 16 and g * (b - 1) <= 6 for b, g in limited.codes.values())
  with pytest.raises(ValueError, match="no code of that level count fits max_steps=3"):
    planning.plan_codes(cfg, converted, x, max_steps=3)


def test_flip_tta_evaluates_both_networks_on_both_views_and_counts_both():
  from ge2ms_jax import evaluation
  from ge2ms_jax import train
  from test_train_support import make_arrays
  cfg, _, variables, _ = _setup("", jnp.float32, batch=2)
  images, labels = make_arrays(6, 28, num_classes=10, seed=3)

  class data:  # one evaluation batch, as the input pipeline gives it
    @staticmethod
    def build_iterator(*args, **kwargs):
      del args, kwargs
      return iter([{"image": images, "label": labels, "mask": np.ones(6, np.float32)}])

  config = train.base_config()
  config.model = cfg
  config.evals.split, config.evals.batch_size = "test", 6
  plain = evaluation.evaluate_snn(config, variables, data_module=data, mode="fused")
  config.evals.tta = "flip"
  both = evaluation.evaluate_snn(config, variables, data_module=data, mode="fused")
  p, b = plain.metrics, both.metrics
  assert (p["views_per_image"], b["views_per_image"], b["tta"]) == (1, 2, "flip")
  assert b["num_examples"] == p["num_examples"] == 6
  # Per image: the mirrored view's operations on top of the plain view's, against twice the MACs.
  assert b["ann_macs_per_image"] == 2 * p["ann_macs_per_image"]
  flipped = snn.simulate(C.convert(variables, cfg), jnp.asarray(images[:, :, ::-1]), "fused", config=cfg)
  assert b["sops_per_image"] == pytest.approx(p["sops_per_image"] + sum(r.sops for r in flipped.layers) / 6,
                                              rel=1e-6)
  # The QANN's evaluation during training averages the same two views.
  eval_fn = jax.jit(train.make_eval_fn(M.build(cfg), "flip"))
  sums = eval_fn(variables["params"], {"batch_stats": variables["batch_stats"]},
                 {"image": jnp.asarray(images), "label": jnp.asarray(labels), "target": jax.nn.one_hot(labels, 10)})
  assert float(sums["correct"]) / 6 == pytest.approx(b["qann_top1"])
  with pytest.raises(ValueError, match="config.evals.tta='mirror'"):
    train.make_eval_fn(M.build(cfg), "mirror")
