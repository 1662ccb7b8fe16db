"""Trainer tests on a stand-in net and in-memory data: tracing, devices, resume, optimizer pieces."""

import functools
import json
import os
import signal
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ge2ms_jax import metrics as metrics_lib
from ge2ms_jax import optim
from ge2ms_jax import sharding as sharding_lib
from ge2ms_jax import train
from test_train_support import ArrayData, TinyNet, leaves_equal, small_config

ONCE = functools.partial(chex.assert_max_traces, n=1)


def _trainer(workdir, config=None, devices=None, net=None, **kw):
  chex.clear_trace_counter()  # Counts are per call site; each Trainer gets its own budget of one.
  return train.Trainer(config or small_config(), workdir, net=net or TinyNet(),
                       data_module=ArrayData(), devices=devices, wrap_update=ONCE, **kw)


def _run(workdir, config=None, devices=None, callback=None, net=None):
  trainer = _trainer(workdir, config, devices, net)
  try:
    return trainer.run(callback)
  finally:
    trainer.close()


def _reference_config(**overrides):
  return small_config(total_steps=7, **{"ckpt.every_steps": 2, "ckpt.async_save": True,
                                        **overrides})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted 7-step run on 8 devices: (trainer, result, workdir)."""
  workdir = tmp_path_factory.mktemp("reference")
  trainer = _trainer(workdir, _reference_config())
  result = trainer.run()  # assert_max_traces(n=1) raises here on a second trace of the step.
  trainer.close()
  return trainer, result, workdir


def test_step_is_traced_once_and_the_loss_falls(reference):
  trainer, result, _ = reference
  losses = [h["loss"] for h in result.history]
  assert result.status == "done" and result.step == 7 and len(losses) == 7
  assert np.mean(losses[-2:]) < losses[0] - 0.1, losses
  assert int(result.state.step) == 7
  assert trainer.checkpointer.all_steps() == [4, 6, 7]  # Every 2 steps and the last; keep 3.


def test_evaluation_is_masked_and_matches_numpy(reference):
  trainer, result, _ = reference
  metrics = trainer.evaluate()  # 20 test examples in batches of 8: 4 padded rows.
  assert metrics == {k: v for k, v in result.evals[-1].items() if k != "step"}
  images, labels = trainer.data.splits["test"]
  variables = {"params": jax.device_get(trainer.state.params),
               **jax.device_get(trainer.state.model_state)}
  logits = np.asarray(trainer.net.apply(variables, images, train=False))
  assert metrics["num_examples"] == 20
  assert metrics["top1"] == pytest.approx(np.mean(logits.argmax(-1) == labels), abs=1e-6)
  xent = optax.softmax_cross_entropy(logits, np.eye(4)[labels])
  assert metrics["loss"] == pytest.approx(float(np.mean(xent)), rel=1e-4)


def test_workdir_has_config_metrics_and_event_files(reference):
  _, result, workdir = reference
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["total_steps"] == 7 and saved["optax"]["name"] == "adamw"
  rows = metrics_lib.read_jsonl(workdir / "metrics.jsonl")
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == list(range(1, 8))
  np.testing.assert_allclose([r["train/loss"] for r in train_rows],
                             [h["loss"] for h in result.history])
  assert [r["step"] for r in rows if "eval/top1" in r] == [7]
  (event_file,) = list((workdir / "tb").iterdir())
  events = metrics_lib.read_events(event_file)
  assert events[0]["file_version"] == "brain.Event:2"
  tb_loss = [e["scalars"]["train/loss"] for e in events if "train/loss" in e["scalars"]]
  np.testing.assert_allclose(tb_loss, [h["loss"] for h in result.history], rtol=1e-6)
  assert [e["step"] for e in events if "eval/top1" in e["scalars"]] == [7]


def test_one_and_eight_devices_give_the_same_loss_curve(reference, tmp_path):
  _, eight, _ = reference
  one = _run(tmp_path, _reference_config(), devices=jax.devices()[:1])
  assert len(jax.tree.leaves(eight.state.params)[0].sharding.device_set) == 8
  assert len(jax.tree.leaves(one.state.params)[0].sharding.device_set) == 1
  np.testing.assert_allclose([h["loss"] for h in one.history], [h["loss"] for h in eight.history],
                             rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
               jax.device_get(one.state.params), jax.device_get(eight.state.params))


def test_fsdp_run_matches_and_restores_onto_one_device(reference, tmp_path):
  _, dp, _ = reference
  config = _reference_config(mesh=[("data", 4), ("fsdp", 2)],
                             sharding_rules=[(r"kernel$", "fsdp"), (".*", "replicate")])
  fsdp = _run(tmp_path, config)
  kernel = fsdp.state.params["conv"]["kernel"]  # [3, 3, 1, 8]: the 8 output channels split.
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, "fsdp")
  assert fsdp.state.opt_state[1][0].mu["conv"]["kernel"].sharding.spec == kernel.sharding.spec
  np.testing.assert_allclose([h["loss"] for h in fsdp.history], [h["loss"] for h in dp.history],
                             rtol=2e-5)
  # The same workdir opened on a 1-device mesh restores the 8-device checkpoint.
  single = _trainer(tmp_path, _reference_config(mesh=[("data", 1), ("fsdp", 1)]),
                    devices=jax.devices()[:1])
  assert single.step == 7
  assert leaves_equal(fsdp.state, single.state)
  assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(single.state))
  single.close()


def test_preempted_run_resumes_bit_identical(reference, tmp_path):
  _, full, _ = reference

  def preempt_at_2(step, trainer):
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)  # Handled by the trainer: save at the next check.

  before = signal.getsignal(signal.SIGTERM)
  first = _run(tmp_path, _reference_config(), callback=preempt_at_2)
  assert first.status == "preempted" and first.step == 3, (first.status, first.step)
  assert signal.getsignal(signal.SIGTERM) == before  # The trainer's handler is removed again.
  assert ckpt_steps(tmp_path) == [2, 3]  # Periodic at 2, preemption at 3.
  second = _run(tmp_path, _reference_config())  # A fresh Trainer on the same workdir.
  assert second.status == "done" and [h["step"] for h in second.history] == [4, 5, 6, 7]
  assert leaves_equal(full.state, second.state)
  np.testing.assert_array_equal([h["loss"] for h in full.history][3:],
                                [h["loss"] for h in second.history])


def test_killed_run_resumes_from_the_last_periodic_checkpoint(reference, tmp_path):
  _, full, _ = reference

  class Killed(Exception):
    pass

  def kill_at_5(step, trainer):
    if step == 5:
      raise Killed()  # No save at 5: the newest checkpoint is step 4.

  with pytest.raises(Killed):
    _run(tmp_path, _reference_config(), callback=kill_at_5)
  trainer = _trainer(tmp_path, _reference_config())
  assert trainer.step == 4
  second = trainer.run()
  trainer.close()
  assert leaves_equal(full.state, second.state)


def ckpt_steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_gradient_accumulation_updates_every_k_steps(tmp_path):
  config = small_config(total_steps=4, **{"optax.grad_accum_steps": 2})
  trainer = _trainer(tmp_path, config)
  p0 = jax.device_get(trainer.state.params)
  seen = []
  trainer.run(lambda step, t: seen.append(jax.device_get(t.state.params)))
  trainer.close()
  assert leaves_equal(seen[0], p0)            # Step 1 only accumulates.
  assert not leaves_equal(seen[1], seen[0])   # Step 2 applies the mean gradient.
  assert leaves_equal(seen[2], seen[1]) and not leaves_equal(seen[3], seen[2])


def test_bf16_compute_keeps_float32_params_and_ema_follows_its_definition(tmp_path):
  config = small_config(total_steps=2, **{"optax.ema_decay": 0.75})
  trainer = _trainer(tmp_path, config, net=TinyNet(dtype="bfloat16"))
  params = [jax.device_get(trainer.state.params)]
  emas = []

  def record(step, t):
    params.append(jax.device_get(t.state.params))
    emas.append(jax.device_get(t.state.ema_params))

  result = trainer.run(record)
  trainer.close()
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(result.state.params))
  assert all(np.isfinite(h["loss"]) for h in result.history)
  expected = params[0]
  for p, e in zip(params[1:], emas):
    expected = jax.tree.map(lambda a, b: 0.75 * a + 0.25 * b, expected, p)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6), e, expected)
  assert "top1_ema" in result.evals[-1]


def test_batch_size_not_divisible_by_the_data_axis(tmp_path):
  with pytest.raises(ValueError, match=r"batch_size=12 .*data-parallel size 8"):
    _trainer(tmp_path, small_config(batch_size=12))


def test_non_finite_loss_stops_the_run(tmp_path):
  config = small_config(total_steps=3, **{"optax.lr": 1e30, "optax.clip_norm": 0.0})
  with pytest.raises(FloatingPointError, match="training (loss|grad_norm) is .* at step"):
    _run(tmp_path, config, devices=jax.devices()[:1])


# ---------------------------------------------------------------------------------------------
# Optimizer pieces
# ---------------------------------------------------------------------------------------------
def test_weight_decay_mask_skips_bias_scale_and_thresholds():
  params = {"conv": {"kernel": 1, "bias": 1}, "bn": {"scale": 1, "bias": 1},
            "neuron": {"theta": 1}, "head": {"kernel": 1}}
  mask = optim.weight_decay_mask(params, optim.DEFAULT_WD_EXCLUDE)
  assert mask == {"conv": {"kernel": True, "bias": False}, "bn": {"scale": False, "bias": False},
                  "neuron": {"theta": False}, "head": {"kernel": True}}


def test_adamw_decays_only_masked_params():
  config = small_config(**{"optax.wd": 0.5, "optax.clip_norm": 0.0})
  tx = optim.make_optimizer(config, optax.constant_schedule(0.1))
  params = {"w": {"kernel": jnp.ones(3)}, "b": {"bias": jnp.ones(3)}}
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["w"]["kernel"], -0.1 * 0.5 * np.ones(3), rtol=1e-6)
  np.testing.assert_allclose(updates["b"]["bias"], 0.0)


def test_sgd_with_momentum_and_l2():
  config = small_config(**{"optax.name": "sgd", "optax.wd": 0.1, "optax.momentum": 0.9,
                           "optax.clip_norm": 0.0})
  tx = optim.make_optimizer(config, optax.constant_schedule(1.0))
  params = {"kernel": jnp.array([2.0])}
  grads = {"kernel": jnp.array([1.0])}
  state = tx.init(params)
  u1, state = tx.update(grads, state, params)
  u2, state = tx.update(grads, state, params)
  np.testing.assert_allclose(u1["kernel"], [-1.2])          # -(g + wd·p)
  np.testing.assert_allclose(u2["kernel"], [-1.2 * 1.9])    # momentum 0.9 accumulates.


def test_clipping_bounds_the_global_norm():
  config = small_config(**{"optax.name": "sgd", "optax.momentum": 0.0, "optax.wd": 0.0,
                           "optax.clip_norm": 1.0})
  tx = optim.make_optimizer(config, optax.constant_schedule(1.0))
  params = {"kernel": jnp.zeros(2)}
  updates, _ = tx.update({"kernel": jnp.array([30.0, 40.0])}, tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], [-0.6, -0.8], rtol=1e-6)


def test_schedule_warmup_then_cosine():
  config = small_config(**{"optax.lr": 1.0, "schedule.warmup_steps": 4,
                           "schedule.min_lr_ratio": 0.1})
  s = optim.make_schedule(config, total_updates=14, updates_per_epoch=7)
  np.testing.assert_allclose([s(0), s(2), s(4)], [0.0, 0.5, 1.0], atol=1e-6)
  np.testing.assert_allclose(s(9), 0.1 + 0.9 * 0.5, atol=1e-6)  # Half-way through the decay.
  np.testing.assert_allclose(s(14), 0.1, atol=1e-6)
  config.schedule.warmup_steps = 20
  with pytest.raises(ValueError, match="warm-up of 20 updates exceeds the run's 14"):
    optim.make_schedule(config, total_updates=14, updates_per_epoch=7)


def test_run_length_from_epochs():
  config = small_config(total_steps=0, total_epochs=2.5)
  info = types.SimpleNamespace(splits={"train": 100})
  steps, per_epoch = train.run_length(config, info)
  assert per_epoch == 100 / 16 and steps == int(np.ceil(2.5 * 100 / 16))
  with pytest.raises(ValueError, match="no split 'val'"):
    train.num_examples(info, "val")


def test_weight_decay_mask_on_the_real_network():
  from ge2ms_jax import model as models
  net = models.build(models.default_config("tiny"))
  shapes = jax.eval_shape(lambda: net.init({"params": jax.random.key(0)}, jnp.zeros((1, 28, 28, 1)),
                                           train=False))["params"]
  mask = optim.weight_decay_mask(shapes, optim.DEFAULT_WD_EXCLUDE)
  decayed = {sharding_lib.path_str(p).rsplit("/", 1)[-1]
             for p, m in jax.tree_util.tree_leaves_with_path(mask) if m}
  skipped = {sharding_lib.path_str(p).rsplit("/", 1)[-1]
             for p, m in jax.tree_util.tree_leaves_with_path(mask) if not m}
  assert decayed == {"kernel"} and skipped == {"bias", "scale", "theta"}
