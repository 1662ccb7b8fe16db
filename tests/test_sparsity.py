"""Spike-aware training: the spike count and its surrogate, the SOP estimate, the loss, fine-tuning."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ge2ms_jax import config_utils
from ge2ms_jax import conversion as C
from ge2ms_jax import distill
from ge2ms_jax import export
from ge2ms_jax import model as M
from ge2ms_jax import neurons
from ge2ms_jax import snn
from ge2ms_jax import sparsity
from ge2ms_jax import train
from ge2ms_jax.data import splits

CODES = [(2, 4), (3, 2), (4, 2), (16, 1)]


@pytest.mark.parametrize("base,groups", CODES)
def test_spike_count_is_the_number_of_spikes_expg_if_fires(base, groups):
  theta = 1.3
  levels = base**groups
  s = theta / levels
  rng = np.random.default_rng(base * 10 + groups)
  # Random currents, every rounding boundary and its float neighbours, negatives and saturation.
  edges = (np.arange(-1, levels + 1) + 0.5) * s
  x = np.concatenate([rng.uniform(-0.5, 1.5 * theta, 500), edges, np.nextafter(edges, -np.inf),
                      np.nextafter(edges, np.inf)]).astype(np.float32)
  counts = neurons.spike_count(jnp.asarray(x), theta, base, groups)
  spikes = neurons.expg_if(jnp.asarray(x), theta, base, groups)
  np.testing.assert_array_equal(np.asarray(counts), np.asarray(spikes).sum(0))
  assert counts.dtype == jnp.float32 and float(counts.max()) == groups * (base - 1)


@pytest.mark.parametrize("base,groups", CODES)
def test_spike_count_surrogate_gradient(base, groups):
  theta = 0.8
  levels = base**groups
  x = jnp.linspace(-0.2, 1.2 * theta, 301)
  dx, dtheta = jax.grad(lambda x, t: jnp.sum(neurons.spike_count(x, t, base, groups)), (0, 1))(x, theta)
  level = np.asarray(neurons.level_index(x, theta, base, groups))
  u = np.clip(np.asarray(x) * levels / theta, 0, levels - 1)
  # d/du of the mean digit sum (b - 1)/2 * log_b(1 + u), where the neuron fires; nothing where silent.
  slope = np.where(level >= 1, (base - 1) / (2 * np.log(base)) / (1 + u), 0.0)
  np.testing.assert_allclose(np.asarray(dx), slope * levels / theta, rtol=1e-5)
  np.testing.assert_allclose(float(dtheta), np.sum(-slope * u / theta), rtol=1e-4)
  assert np.all(np.asarray(dx)[level == 0] == 0) and np.all(np.asarray(dx)[level >= 1] > 0)
  assert float(dtheta) < 0  # a higher threshold means lower levels and fewer spikes


def _small_config(dtype="float32"):
  cfg = M.default_config("tiny")
  cfg.stem_channels, cfg.dims, cfg.depths, cfg.head_dim = 8, (16, 48), (1, 1), 8
  cfg.dtype = dtype
  return cfg


def _trained_like(cfg, seed, dtype):
  """Initialised variables with non-trivial BatchNorm statistics and thresholds."""
  net = M.build(cfg)
  x = jnp.zeros((1, 28, 28, 1), dtype)
  # Jitted: one compile of the whole init is faster than dispatching it op by op.
  variables = jax.device_get(jax.jit(lambda key: net.init({"params": key}, x))(jax.random.key(seed)))
  rng = np.random.default_rng(seed)

  def perturb(path, leaf):
    name = jax.tree_util.keystr(path)
    noise = rng.standard_normal(np.shape(leaf))
    if "theta" in name:
      return jnp.asarray(0.6 + 0.4 * np.abs(noise), dtype)
    if "['scale']" in name:
      return jnp.asarray(1.0 + 0.3 * noise, dtype)  # zero-initialised residual scales come alive
    if "['mean']" in name or "['bias']" in name:
      return jnp.asarray(0.1 * noise, dtype)
    return jnp.asarray(leaf, dtype)

  return jax.tree_util.tree_map_with_path(perturb, variables)


def test_training_estimate_is_the_converted_networks_count():
  # float64: the QANN's currents and the folded SNN's agree to ~1e-16, so every level, every spike
  # and every synaptic operation is the same; the estimate is the simulator's count, not a proxy.
  with jax.enable_x64(True):
    cfg = _small_config("float64")
    variables = _trained_like(cfg, 0, jnp.float64)
    images = jax.random.normal(jax.random.key(1), (6, 28, 28, 1), jnp.float64)
    _, stats = jax.jit(lambda v, x: M.build(cfg).apply(v, x, mutable=["stats"]))(variables, images)
    estimate = snn.collect_stats(stats["stats"])
    total = float(sparsity.total_sops(stats["stats"]))
    snn._apply_fn.cache_clear()
    sim = snn.simulate(C.convert(variables, cfg), images, "spike", config=cfg)
    snn._apply_fn.cache_clear()
  # Layer by layer (the encoding layer and the attention's output scale perform no SOPs), every count
  # an integer below 2**24: exactly equal.
  counted = {r.name: r.sops for r in sim.layers if r.kind != "neuron" and r.sops}
  assert {r.name: r.sops for r in estimate if r.kind != "neuron" and r.sops} == counted
  assert len(counted) == 21
  assert {r.name: r.spikes for r in estimate if r.kind == "neuron"} == {
      r.name: r.spikes for r in sim.layers if r.kind == "neuron"}
  assert sum(counted.values()) > 1e6
  assert total == pytest.approx(sum(counted.values()), rel=1e-6)  # summed in float32


def test_spike_aware_loss_lowers_the_estimate_and_zero_weight_is_plain_training():
  cfg = _small_config()
  net = M.build(cfg)
  variables = _trained_like(cfg, 3, jnp.float32)
  params, model_state = variables.pop("params"), variables
  images = jax.random.normal(jax.random.key(2), (16, 28, 28, 1))
  labels = jnp.arange(16) % 10
  batch = {"image": images, "label": labels, "target": jax.nn.one_hot(labels, 10)}
  ann_macs = float(M.count(cfg)["macs"])
  tx = optax.adam(1e-2)

  def run(weight, track, steps=12):
    config = train.base_config()
    config.sparsity.weight, config.sparsity.track = weight, track
    update = jax.jit(train.make_update_fn(net, tx, optax.constant_schedule(1e-2), config,
                                          ann_macs if sparsity.enabled(config) else None))
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=dict(model_state),
                             opt_state=tx.init(params), ema_params={},
                             rng=jax.random.key_data(jax.random.key(0)))
    history = []
    for _ in range(steps):
      state, metrics = update(state, batch)
      history.append(jax.device_get(metrics))
    return state, history

  _, plain = run(0.0, False)
  tracked_state, tracked = run(0.0, True)
  _, penalised = run(5.0, False)
  assert "sop_per_mac" not in plain[0]
  assert set(tracked_state.model_state) == {"batch_stats"}  # the statistics are not kept in the state
  # Tracking measures without changing the training: the same losses as plain training.
  np.testing.assert_allclose([h["loss"] for h in tracked], [h["loss"] for h in plain], rtol=1e-5)
  assert tracked[0]["sparsity_loss"] == 0
  assert penalised[0]["sop_per_mac"] == pytest.approx(tracked[0]["sop_per_mac"], rel=1e-5)
  assert penalised[-1]["sop_per_mac"] < 0.9 * tracked[-1]["sop_per_mac"]
  assert penalised[0]["loss"] == pytest.approx(plain[0]["loss"] + 5.0 * penalised[0]["sop_per_mac"], rel=1e-5)


def test_penalty_with_a_target_stops_pulling_below_it():
  assert float(sparsity.penalty(jnp.asarray(0.5), 2.0)) == pytest.approx(1.0)
  assert float(sparsity.penalty(jnp.asarray(0.5), 2.0, target=0.3)) == pytest.approx(0.4)
  assert float(sparsity.penalty(jnp.asarray(0.2), 2.0, target=0.3)) == 0.0
  assert float(jax.grad(lambda r: sparsity.penalty(r, 2.0, 0.3))(jnp.asarray(0.2))) == 0.0


def test_bad_sparsity_settings_are_named():
  config = train.base_config()
  config.sparsity.weight = -1.0
  with pytest.raises(ValueError, match=r"config.sparsity.weight=-1.0; use a number >= 0"):
    sparsity.check(config)
  config.sparsity.weight = 1.0
  with pytest.raises(ValueError, match="needs ann_macs"):
    train.make_update_fn(None, optax.adam(1e-3), optax.constant_schedule(1e-3), config)


def test_distillation_term_is_the_tempered_kl_and_leaves_the_teacher_alone():
  rng = np.random.default_rng(0)
  student, teacher = rng.standard_normal((2, 6, 5))
  t = 2.5
  p = np.exp(teacher / t) / np.exp(teacher / t).sum(-1, keepdims=True)
  q = np.exp(student / t) / np.exp(student / t).sum(-1, keepdims=True)
  expected = t * t * np.mean(np.sum(p * np.log(p / q), -1))
  got = distill.kl_term(jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32), t)
  assert float(got) == pytest.approx(expected, rel=1e-5)
  assert float(distill.kl_term(jnp.asarray(teacher), jnp.asarray(teacher), t)) == pytest.approx(0.0, abs=1e-6)
  grad_teacher = jax.grad(lambda x: distill.kl_term(jnp.asarray(student), x, t))(jnp.asarray(teacher))
  assert not np.any(np.asarray(grad_teacher))


def test_distillation_pulls_towards_the_teacher_and_zero_weight_is_plain_training():
  cfg = _small_config()
  net = M.build(cfg)
  variables = _trained_like(cfg, 3, jnp.float32)
  params, model_state = variables.pop("params"), variables
  teacher = _trained_like(cfg, 4, jnp.float32)
  # A confident teacher: its soft labels differ clearly from the near-uniform student's.
  teacher["params"]["head"]["bias"] = jnp.linspace(-3.0, 3.0, 10)
  images = jax.random.normal(jax.random.key(2), (16, 28, 28, 1))
  labels = jnp.arange(16) % 10
  batch = {"image": images, "label": labels, "target": jax.nn.one_hot(labels, 10)}
  tx = optax.adam(1e-2)

  def run(weight, steps=10):
    config = train.base_config()
    if weight is not None:
      config.distill.teacher, config.distill.weight = "teacher", weight
    update = jax.jit(train.make_update_fn(net, tx, optax.constant_schedule(1e-2), config))
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=dict(model_state),
                             opt_state=tx.init(params), ema_params={},
                             rng=jax.random.key_data(jax.random.key(0)))
    history = []
    for _ in range(steps):
      state, metrics = update(state, batch, teacher) if weight is not None else update(state, batch)
      history.append(jax.device_get(metrics))
    return history

  plain, weightless, pulled = run(None), run(0.0), run(1.0)
  np.testing.assert_allclose([h["loss"] for h in weightless], [h["loss"] for h in plain], rtol=1e-5)
  assert weightless[0]["distill_loss"] > 0.05
  assert pulled[0]["loss"] == pytest.approx(pulled[0]["distill_loss"], rel=1e-6)
  assert pulled[-1]["distill_loss"] < 0.5 * pulled[0]["distill_loss"]
  assert weightless[-1]["distill_loss"] > pulled[-1]["distill_loss"]


def test_bad_distillation_settings_are_named():
  config = train.base_config()
  config.distill.teacher, config.distill.weight = "t", 1.5
  with pytest.raises(ValueError, match=r"config.distill.weight=1.5; use a number in \[0, 1\]"):
    distill.check(config)
  config.distill.weight, config.distill.temperature = 0.5, 0.0
  with pytest.raises(ValueError, match=r"config.distill.temperature=0.0; use a number > 0"):
    distill.check(config)
  config.distill.temperature = 2.0
  update = train.make_update_fn(None, optax.adam(1e-3), optax.constant_schedule(1e-3), config)
  with pytest.raises(ValueError, match="needs the teacher's variables"):
    update(None, {})


def _local_config(**overrides):
  config = config_utils.load_config("experiments/fashion_mnist.py:runlocal", overrides)
  config.ckpt.async_save = False
  return config


def test_fine_tuning_starts_from_an_export_with_a_fresh_optimizer(tmp_path):
  config = _local_config()
  net = M.build(config.model)
  variables = jax.device_get(_trained_like(config.model, 5, jnp.float32))
  export.save(tmp_path / "export", variables, step=77, model_config=config.model)
  config.init_from = str(tmp_path / "export")
  config.total_steps = 2
  trainer = train.Trainer(config, tmp_path / "run")
  try:
    assert int(trainer.state.step) == 0
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(trainer.state.params), variables["params"])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(trainer.state.model_state),
                 {"batch_stats": variables["batch_stats"]})
    moments = [x for x in jax.tree.leaves(trainer.state.opt_state) if np.ndim(x) > 0]
    assert moments and all(not np.any(np.asarray(m)) for m in moments)  # fresh Adam moments
  finally:
    trainer.close()
  del net


def test_fine_tuning_distils_from_the_model_it_starts_from(tmp_path):
  config = _local_config()
  variables = jax.device_get(_trained_like(config.model, 5, jnp.float32))
  export.save(tmp_path / "export", variables, step=77, model_config=config.model)
  config.update_from_flattened_dict(sparsity.finetune_overrides(str(tmp_path / "export"), epochs=1.0,
                                                                 lr=1e-3, warmup_steps=1, distill_weight=0.7))
  config.total_steps, config.log_every_steps, config.evals.every_steps = 2, 1, 0
  trainer = train.Trainer(config, tmp_path / "run")
  try:
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(trainer.teacher["params"]), variables["params"])
    result = trainer.run()
  finally:
    trainer.close()
  assert [h["step"] for h in result.history] == [1, 2]
  # At step 1 the student is the teacher but trains with dropout and batch statistics: small, not 0.
  assert all(0 <= h["distill_loss"] < 5 for h in result.history)


def test_init_from_a_missing_path_is_named(tmp_path):
  config = _local_config()
  config.init_from = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="config.init_from=.*nowhere.*does not exist"):
    train.Trainer(config, tmp_path / "run")


def test_tune_split_is_carved_from_train_and_leaves_validation_unchanged():
  labels = np.repeat(np.arange(10), 50)
  images = np.arange(500)
  arrays = {"train": (images, labels), "test": (images[:5], labels[:5])}
  with_val = splits.hold_out_arrays(arrays, 0.1, 0, "validation", 10)
  both = splits.hold_out_arrays(with_val, 0.2, 0, "tune", 10)
  np.testing.assert_array_equal(both["validation"][0], with_val["validation"][0])
  assert len(both["validation"][0]) == 50 and len(both["tune"][0]) == 90 and len(both["train"][0]) == 360
  assert np.all(np.bincount(both["tune"][1]) == 9)  # stratified by class
  seen = np.concatenate([both[s][0] for s in ("train", "validation", "tune")])
  assert sorted(seen.tolist()) == images.tolist()  # a partition: nothing lost, nothing twice
  again = splits.hold_out_arrays(splits.hold_out_arrays(arrays, 0.1, 0, "validation", 10), 0.2, 0, "tune", 10)
  np.testing.assert_array_equal(again["tune"][0], both["tune"][0])  # deterministic


def test_sparse_config_strings_are_the_shipped_sparse_models_recipe():
  for spec, dense, base_spec, epochs, target in (
      ("experiments/fashion_mnist.py:data=fashion_mnist_full,sparse", "checkpoints/fashion_mnist_tiny",
       "experiments/fashion_mnist.py:data=fashion_mnist_full", 7.0, 0.295),
      ("experiments/cifar10.py:variant=tiny,cpu,sparse", "checkpoints/cifar10_tiny",
       "experiments/cifar10.py:variant=tiny,cpu", 7.0, 0.28)):
    config = config_utils.load_config(spec)
    base = config_utils.load_config(base_spec)
    changed = config_utils.diff(config_utils.flatten(base), config_utils.flatten(config))
    recipe = sparsity.reference_overrides(dense, epochs, target)
    assert set(changed) == set(recipe), spec
    assert all(changed[k][1] == recipe[k] for k in recipe), spec
    assert config.init_from == dense and (pathlib.Path(__file__).parents[1] / dense / "export.json").exists()
    assert 0 < config.sparsity.target < 0.30 and config.data.tune_fraction == 0
  with pytest.raises(config_utils.ConfigError, match="variant=tiny,cpu"):
    config_utils.load_config("experiments/cifar10.py:variant=s,sparse")
