"""The Ge2mS-T network: variants, shapes, training signal, and config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ge2ms_jax import model as M


def _init(net, x, seed):
  # Jitted: one compile of the whole init is faster than dispatching it op by op.
  return jax.jit(lambda key: net.init({"params": key}, x))(jax.random.key(seed))


def _images(cfg, batch=4, seed=0):
  return jax.random.uniform(jax.random.key(seed), (batch, cfg.image_size, cfg.image_size, cfg.in_channels))


@pytest.mark.parametrize("variant,size,channels,classes", [
    ("tiny", 28, 1, 10), ("tiny", 32, 3, 10), ("s", 32, 3, 100), ("s", 224, 3, 1000), ("b", 224, 3, 1000)])
def test_output_shapes_of_every_variant(variant, size, channels, classes):
  cfg = M.default_config(variant)
  cfg.image_size, cfg.in_channels, cfg.num_classes = size, channels, classes
  net = M.build(cfg)
  x = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
  variables = jax.eval_shape(lambda x: net.init({"params": jax.random.key(0)}, x), x)
  out = jax.eval_shape(lambda v, x: net.apply(v, x), variables, x)
  assert out.shape == (2, classes) and out.dtype == jnp.float32


def test_parameter_counts_and_macs():
  tiny = M.count(M.default_config("tiny"))
  assert tiny["params"] < 2_000_000
  b = M.count(M.default_config("b"))
  assert 55e6 <= b["params"] <= 70e6
  assert b["macs"] > 50 * tiny["macs"]
  # The stem is the only layer with real-valued input; its MACs are those of a 3x3 conv.
  cfg = M.default_config("tiny")
  assert tiny["first_layer_macs"] == 28 * 28 * cfg.stem_channels * 9 * 1
  # Doubling the resolution of b (224 -> 384 is allowed) grows the MACs by about (384/224)^2.
  b384 = M.count(M.default_config("b"), image_size=384)
  assert 2.3 < b384["macs"] / b["macs"] < 3.4


def test_tiny_forward_backward_and_loss_decreases():
  cfg = M.default_config("tiny")
  net = M.build(cfg)
  x = _images(cfg, batch=8)
  y = jnp.arange(8) % 10
  variables = _init(net, x, 1)
  params, stats = variables["params"], variables["batch_stats"]
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, stats, opt):
    def loss_fn(p):
      logits, upd = net.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd
    (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), upd["batch_stats"], opt, loss, grads

  losses = []
  for _ in range(20):
    params, stats, opt, loss, grads = step(params, stats, opt)
    losses.append(float(loss))
  # Once the zero-initialised head and residual branches have moved, every parameter, thresholds
  # included, receives a gradient.
  norms = jax.tree.map(lambda g: float(jnp.abs(g).sum()), grads)
  dead = [jax.tree_util.keystr(p) for p, n in jax.tree_util.tree_leaves_with_path(norms) if n == 0]
  assert not dead, dead
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.5 * losses[0], losses


def test_neuron_overrides_select_codes_per_site():
  cfg = M.default_config("tiny")
  cfg.neuron_overrides = r"stage1/block0/attn_(q|k|v)$=4,2;stem=2,8"
  codes = M.neuron_codes(cfg)
  assert (codes.resolve("stage1/block0/attn_q").base, codes.resolve("stage1/block0/attn_q").groups) == (4, 2)
  assert codes.resolve("stem_n").groups == 8
  assert codes.resolve("stage1/block1/attn_q") == codes.default
  # Different codes with the same level count give the same QANN function.
  net_a = M.build(M.default_config("tiny"))
  cfg_l = M.default_config("tiny")
  cfg_l.neuron_overrides = r".*=4,2"   # L = 16 everywhere, like the default (2, 4)
  x = _images(cfg)
  v = _init(net_a, x, 0)
  np.testing.assert_array_equal(jax.jit(net_a.apply)(v, x), jax.jit(M.build(cfg_l).apply)(v, x))


def test_stbp_variant_runs_through_time():
  cfg = M.default_config("tiny")
  cfg.neuron_kind, cfg.time_steps = "lif", 3
  net = M.build(cfg)
  assert net.mode == "stbp"
  x = _images(cfg, batch=2)
  v = _init(net, x, 0)
  assert "theta" not in str(jax.tree_util.tree_structure(v["params"]))
  loss = lambda p: net.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,  # noqa: E731
                             mutable=["batch_stats"])[0]
  logits, g = jax.jit(lambda p: (loss(p), jax.grad(lambda p: loss(p)[:, 0].sum())(p)))(v["params"])
  assert logits.shape == (2, 10)
  assert any(float(jnp.abs(leaf).sum()) > 0 for leaf in jax.tree.leaves(g))


def _stbp_site_rates(kind, decay_input):
  cfg = M.default_config("tiny")
  cfg.neuron_kind, cfg.time_steps, cfg.decay_input = kind, 4, decay_input
  net = M.build(cfg)
  x = jax.random.normal(jax.random.key(3), (8, 28, 28, 1))
  v = _init(net, x, 0)
  is_neuron = lambda mdl, name: type(mdl).__name__ == "Neuron" and name == "__call__"  # noqa: E731
  _, state = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats", "intermediates"],
                                            capture_intermediates=is_neuron))(v, x)
  return net, v, x, {jax.tree_util.keystr(p): float(jnp.mean(s))
                     for p, s in jax.tree_util.tree_leaves_with_path(state["intermediates"])}


# IF in the slow run: LIF, the baseline the benchmarks train, shares every code path but the leak.
@pytest.mark.parametrize("kind", [pytest.param("if", marks=pytest.mark.slow), "lif"])
def test_stbp_spikes_reach_the_head_and_gradients_every_layer(kind):
  net, v, x, rates = _stbp_site_rates(kind, decay_input=False)
  assert len(rates) == 22
  silent = {site: rate for site, rate in rates.items() if rate < 0.02}
  assert not silent, f"{kind}: silent neuron sites at initialisation: {silent}"
  # With a non-zero readout the gradient reaches, through the spikes of all T steps, the kernels on
  # the shortcut path from the stem to the head and the zero-initialised BatchNorm scales closing
  # every residual branch (which then open those branches' own kernels).
  params = dict(v["params"], head=dict(v["params"]["head"],
                                       kernel=jax.random.normal(jax.random.key(4), v["params"]["head"]["kernel"].shape)))
  loss = lambda p: net.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,  # noqa: E731
                             mutable=["batch_stats"])[0][:, 0].sum()
  grads = jax.jit(jax.grad(loss))(params)
  names = {jax.tree_util.keystr(p): float(jnp.abs(g).sum()) for p, g in jax.tree_util.tree_leaves_with_path(grads)}
  closing = ("['mix_pw']['bn']['scale']", "['ffn_down']['bn']['scale']", "['attn_proj']['bn']['scale']",
             "['mlp_down']['bn']['scale']")
  reached = [n for n in names if n.endswith(closing) or "['down']['syn']" in n or "stem_conv']['syn" in n]
  assert len(reached) == 9
  dead = [n for n in reached if not names[n] > 0]
  assert not dead, f"{kind}: parameters without gradient: {dead}"


def test_lif_that_decays_its_input_silences_the_residual_path():
  """The measurement behind `decay_input=False`: with SpikingJelly's charge v += (x - v) / tau, a spike
  through an identity shortcut never reaches threshold 1 within T = 4 steps, so every neuron after
  the first residual block is silent."""
  _, _, _, rates = _stbp_site_rates("lif", decay_input=True)
  assert rates["['stem_n']['__call__'][0]"] > 0.02
  after_residual = [site for site in rates if "stage1" in site]
  assert after_residual and all(rates[site] == 0.0 for site in after_residual)


@pytest.mark.parametrize("change,match", [
    (dict(variant="xl"), "unknown model variant 'xl'|variant='xl' is not allowed"),
    (dict(image_size=64), "variant 'tiny' takes image sizes \\(28, 32\\)"),
    (dict(in_channels=4), "in_channels=4 is not allowed"),
    (dict(window_sizes=(2, 16, 0)), "window_sizes=.* the 7x7 grid of this stage takes windows up to 7"),
    (dict(heads_per_window=(2, 2)), "one head count per window size"),
    (dict(dims=(64, 100)), "dim = heads \\* head_dim"),
    (dict(kinds=("conv", "mlp")), "each stage is one of"),
    (dict(dtype="float16"), "dtype='float16' is not allowed"),
    (dict(neuron_kind="relu"), "neuron_kind='relu' is not allowed"),
    (dict(neuron_overrides="stem=2"), "expected 'REGEX=BASE,GROUPS'"),
    (dict(neuron_overrides="stem=1,4"), "base must be an integer >= 2"),
])
def test_bad_configs_raise_clear_errors(change, match):
  cfg = M.default_config("tiny")
  for k, v in change.items():
    setattr(cfg, k, v)
  with pytest.raises(ValueError, match=match):
    M.build(cfg)


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="choose one of \\['b', 'fast', 's', 'tiny'\\]"):
    M.default_config("base")
  cfg = M.default_config("tiny")
  net = M.build(cfg)
  with pytest.raises(ValueError, match="images must be \\[B, 28, 28, 1\\].*got shape \\(2, 32, 32, 1\\)"):
    net.init({"params": jax.random.key(0)}, jnp.zeros((2, 32, 32, 1)))
  with pytest.raises(ValueError, match="got shape \\(2, 28, 28, 3\\)"):
    net.init({"params": jax.random.key(0)}, jnp.zeros((2, 28, 28, 3)))
  with pytest.raises(ValueError, match="mode must be one of"):
    M.build(cfg, mode="snn")
