"""`model.conv_impl`: the accelerator path (`lax.conv` + flax BatchNorm) against the CPU path.

Both compute the same network from the same variables: outputs, gradients, BatchNorm statistics and
the converted SNN agree within float tolerance, and a checkpoint of one loads under the other.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ge2ms_jax import config_utils
from ge2ms_jax import conversion
from ge2ms_jax import layers as L
from ge2ms_jax import model as M
from ge2ms_jax import snn


def _small(conv_impl, variant="tiny"):
  cfg = M.default_config(variant)
  cfg.stem_channels = 8
  cfg.dims = tuple(8 * sum(cfg.heads_per_window) if kind == "attn" else 16 for kind in cfg.kinds)
  cfg.depths = tuple(1 for _ in cfg.kinds)
  cfg.head_dim = 8
  cfg.conv_impl = conv_impl
  return cfg


def _images(cfg, batch=4, seed=0):
  shape = (batch, cfg.image_size, cfg.image_size, cfg.in_channels)
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize("k,stride,groups,cin,cout", [
    (1, 1, 1, 8, 16), (1, 2, 1, 8, 16), (3, 1, 1, 8, 16), (3, 2, 1, 8, 16),
    (3, 1, 8, 8, 8), (3, 2, 8, 8, 8), (3, 1, 8, 8, 16), (3, 1, 2, 8, 8)])
def test_conv_forms_agree_in_values_and_gradients(k, stride, groups, cin, cout):
  x = jax.random.normal(jax.random.key(0), (2, 3, 7, 7, cin))  # two leading batch axes
  w = jax.random.normal(jax.random.key(1), (k, k, cin // groups, cout))
  probe = jax.random.normal(jax.random.key(2), (2, 3, -(-7 // stride), -(-7 // stride), cout))

  def loss(impl, x, w):
    return jnp.sum(L._conv(x, w, stride, groups, jnp.float32, impl) * probe)

  y_cpu = L._conv(x, w, stride, groups, jnp.float32, "cpu")
  y_xla = L._conv(x, w, stride, groups, jnp.float32, "xla")
  assert y_cpu.shape == y_xla.shape == probe.shape
  np.testing.assert_allclose(y_xla, y_cpu, rtol=1e-5, atol=1e-5)
  g_cpu = jax.grad(lambda *a: loss("cpu", *a), argnums=(0, 1))(x, w)
  g_xla = jax.grad(lambda *a: loss("xla", *a), argnums=(0, 1))(x, w)
  for a, b in zip(g_xla, g_cpu):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_auto_is_the_cpu_path_on_cpu_and_bad_values_are_named():
  assert jax.default_backend() == "cpu"
  assert L.resolve_conv_impl("auto") == "cpu"
  assert L.resolve_conv_impl("xla") == "xla"
  with pytest.raises(ValueError, match=r"conv_impl='cudnn'.*'auto', 'xla', 'cpu'"):
    L.resolve_conv_impl("cudnn")
  cfg = _small("cudnn")
  with pytest.raises(ValueError, match="conv_impl"):
    M.validate(cfg)


@pytest.mark.parametrize("conv_kwargs", [dict(kernel_size=3, stride=2), dict(kernel_size=3, groups=16),
                                         dict(kernel_size=1)])
def test_synapse_with_batchnorm_agrees_in_training(conv_kwargs):
  # One SynapseBN in training mode: the convolution and BatchNorm pair that the two paths implement
  # differently, with its gradients and the running statistics it updates.
  x = jax.random.normal(jax.random.key(0), (4, 9, 9, 16))
  layers = {impl: L.SynapseBN(16, conv_impl=impl, **conv_kwargs) for impl in ("cpu", "xla")}
  variables = layers["cpu"].init(jax.random.key(1), x)
  variables = {"params": jax.tree.map(lambda v: v + 0.1, variables["params"]),
               "batch_stats": variables["batch_stats"]}

  def run(impl, params, x):
    y, state = layers[impl].apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y)), state["batch_stats"]

  outs = {impl: jax.value_and_grad(lambda p, x: run(impl, p, x), argnums=(0, 1), has_aux=True)(
      variables["params"], x) for impl in layers}
  (l_cpu, bs_cpu), g_cpu = outs["cpu"]
  (l_xla, bs_xla), g_xla = outs["xla"]
  np.testing.assert_allclose(l_xla, l_cpu, rtol=1e-5)
  for a, b in zip(jax.tree.leaves((bs_xla, g_xla)), jax.tree.leaves((bs_cpu, g_cpu))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  eval_cpu = layers["cpu"].apply(variables, x)
  np.testing.assert_allclose(layers["xla"].apply(variables, x), eval_cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # Three compiles of the whole network, about half a minute.
def test_network_forward_agrees_and_shares_variables():
  cfg_cpu, cfg_xla = _small("cpu"), _small("xla")
  net_cpu, net_xla = M.build(cfg_cpu), M.build(cfg_xla)
  x = _images(cfg_cpu)
  variables = net_cpu.init({"params": jax.random.key(0)}, x)
  # The same variables, tree for tree: a checkpoint of either loads under the other.
  assert jax.tree.structure(net_xla.init({"params": jax.random.key(0)}, x)) == jax.tree.structure(variables)
  leaves, tree = jax.tree.flatten(variables)
  rng = np.random.default_rng(0)
  variables = jax.tree.unflatten(tree, [v + 0.2 * np.abs(rng.standard_normal(v.shape)).astype(v.dtype)
                                        for v in leaves])
  np.testing.assert_allclose(net_xla.apply(variables, x), net_cpu.apply(variables, x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # Four float64 compiles of a whole network's training step, a minute or more.
@pytest.mark.parametrize("variant", ["tiny", "s"])
def test_network_outputs_gradients_and_batchnorm_statistics_agree(variant):
  # In float64: the quantizers round, so float32's last-bit differences between two correct
  # convolution algorithms would move a few pre-activations across a level and change the gradient.
  with jax.enable_x64(True):
    cfg_cpu, cfg_xla = _small("cpu", variant), _small("xla", variant)
    cfg_cpu.dtype = cfg_xla.dtype = "float64"
    net_cpu, net_xla = M.build(cfg_cpu), M.build(cfg_xla)
    x = _images(cfg_cpu).astype(jnp.float64)
    variables = net_cpu.init({"params": jax.random.key(0)}, x)
    # The same variables, tree for tree: a checkpoint of either loads under the other.
    assert jax.tree.structure(net_xla.init({"params": jax.random.key(0)}, x)) == jax.tree.structure(variables)
    # Zero-initialised residual scales and head would hide the branches: perturb every variable.
    leaves, tree = jax.tree.flatten(variables)
    rng = np.random.default_rng(0)
    variables = jax.tree.unflatten(tree, [jnp.asarray(v, jnp.float64) + 0.2 * rng.standard_normal(v.shape)
                                          for v in leaves])
    variables["batch_stats"] = jax.tree.map(jnp.abs, variables["batch_stats"])
    np.testing.assert_allclose(net_xla.apply(variables, x), net_cpu.apply(variables, x), rtol=1e-9, atol=1e-9)

    def loss(net, params):
      logits, state = net.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
      return jnp.mean(jax.nn.log_softmax(logits)[:, 0]), state["batch_stats"]

    (l_cpu, bs_cpu), g_cpu = jax.value_and_grad(lambda p: loss(net_cpu, p), has_aux=True)(variables["params"])
    (l_xla, bs_xla), g_xla = jax.value_and_grad(lambda p: loss(net_xla, p), has_aux=True)(variables["params"])
    np.testing.assert_allclose(l_xla, l_cpu, rtol=1e-9, atol=1e-9)
    for a, b in zip(jax.tree.leaves(bs_xla), jax.tree.leaves(bs_cpu)):
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    flat_cpu = np.concatenate([np.ravel(g) for g in jax.tree.leaves(g_cpu)])
    flat_xla = np.concatenate([np.ravel(g) for g in jax.tree.leaves(g_xla)])
    assert np.count_nonzero(flat_cpu) > flat_cpu.size // 2
    np.testing.assert_allclose(flat_xla, flat_cpu, rtol=1e-7, atol=1e-9)


@pytest.mark.slow  # Two spike-mode simulations compiled, about a minute.
def test_converted_snn_agrees_in_spike_mode():
  cfg_cpu, cfg_xla = _small("cpu"), _small("xla")
  x = _images(cfg_cpu, batch=8, seed=1)
  net = M.build(cfg_cpu)
  variables = net.init({"params": jax.random.key(3)}, x)
  # A few training-mode passes give BatchNorm statistics and non-trivial folded biases.
  leaves, tree = jax.tree.flatten(variables["params"])
  rng = np.random.default_rng(1)
  params = jax.tree.unflatten(tree, [v + 0.3 * rng.standard_normal(v.shape).astype(v.dtype) for v in leaves])
  _, state = net.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
  variables = {"params": params, "batch_stats": state["batch_stats"]}
  snn_cpu = conversion.convert(variables, cfg_cpu)
  snn_xla = conversion.convert(variables, cfg_xla)
  for a, b in zip(jax.tree.leaves(snn_xla), jax.tree.leaves(snn_cpu)):
    np.testing.assert_array_equal(a, b)  # conversion does not depend on how convolutions run
  r_cpu = snn.simulate(snn_cpu, x, "spike", config=cfg_cpu)
  r_xla = snn.simulate(snn_xla, x, "spike", config=cfg_xla)
  np.testing.assert_allclose(r_xla.logits, r_cpu.logits, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(np.argmax(r_xla.logits, -1), np.argmax(r_cpu.logits, -1))
  assert [s.sops for s in r_xla.layers] == pytest.approx([s.sops for s in r_cpu.layers])
  qann = M.build(cfg_xla).apply(variables, x)
  np.testing.assert_allclose(r_xla.logits, qann, rtol=1e-4, atol=1e-4)


def test_a_checkpoint_adopts_its_architecture_but_not_how_it_computed(tmp_path):
  (tmp_path / "checkpoints").mkdir()
  import json  # pylint: disable=g-import-not-at-top
  from ge2ms_jax import loading  # pylint: disable=g-import-not-at-top
  recorded = _small("cpu").to_dict()
  recorded["head_dim"] = 4
  recorded["neuron"]["method"] = "scan"
  recorded["neuron"]["groups"] = 3
  (tmp_path / "config.json").write_text(json.dumps({"model": recorded}))
  config = config_utils.load_config("experiments/fashion_mnist.py", {"model.conv_impl": "xla",
                                                                     "model.neuron.method": "closed"})
  changed = loading.adopt_model_config(config, loading.resolve(tmp_path))
  assert "head_dim" in changed and "neuron.groups" in changed
  assert config.model.head_dim == 4 and config.model.neuron.groups == 3
  assert config.model.conv_impl == "xla" and config.model.neuron.method == "closed"
