"""Reliability: corrupt checkpoints are detected and set aside, NaN/Inf policy, workdir checks,
and bit-identical reruns on CPU."""

import errno
import json
import logging
import os
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from ge2ms_jax import checkpoint
from ge2ms_jax import sharding
from ge2ms_jax import train
from test_train_support import ArrayData, TinyNet, leaves_equal, small_config


def _state(value: float):
  mesh = sharding.make_mesh([("fsdp", -1)])
  return {"w": jax.device_put(jnp.full((8, 4), value), NamedSharding(mesh, P("fsdp", None))),
          "b": jax.device_put(jnp.full((4,), value), NamedSharding(mesh, P()))}


def _abstract():
  mesh = sharding.make_mesh([("fsdp", -1)])
  return {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=NamedSharding(mesh, P("fsdp", None))),
          "b": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=NamedSharding(mesh, P()))}


def _two_steps(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, max_to_keep=5, async_save=False)
  ckpt.save(1, _state(1.0), {"position": 1})
  ckpt.save(2, _state(2.0), {"position": 2})
  ckpt.close()


def _largest_data_file(step_dir):
  """The biggest file holding array bytes (what a bit-flip or truncation would hit)."""
  manifest = json.loads((step_dir / checkpoint.INTEGRITY).read_text())["files"]
  rel = max((r for r in manifest if "/d/" in r), key=lambda r: manifest[r]["size"])
  return rel, step_dir / rel


def _truncate(step_dir):
  rel, path = _largest_data_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  return rel, "truncated"


def _flip(step_dir):
  rel, path = _largest_data_file(step_dir)
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x10  # One bit; the size stays the same.
  path.write_bytes(bytes(data))
  return rel, "does not match its SHA-256"


def _remove(step_dir):
  rel = "data/process_0-of-1.json"
  (step_dir / rel).unlink()
  return rel, "is missing"


def _garbage_manifest(step_dir):
  (step_dir / checkpoint.INTEGRITY).write_text("{not json")
  return checkpoint.INTEGRITY, "manifest integrity.json is unreadable"


@pytest.mark.parametrize("fault", [_truncate, _flip, _remove, _garbage_manifest],
                         ids=["truncate", "bitflip", "missing", "garbage_manifest"])
def test_corrupt_checkpoint_is_named_set_aside_and_the_previous_used(tmp_path, caplog, fault):
  _two_steps(tmp_path)
  step_dir = tmp_path / "2"
  before = {p: (step_dir / p).stat().st_size for p in json.loads(
      (step_dir / checkpoint.INTEGRITY).read_text())["files"] if (step_dir / p).exists()}
  rel, words = fault(step_dir)
  with pytest.raises(checkpoint.CheckpointCorruptError, match=f"step 2 .*{words}"):
    checkpoint.Checkpointer(tmp_path).verify(2)
  fresh = checkpoint.Checkpointer(tmp_path, max_to_keep=5, async_save=False)
  with caplog.at_level(logging.WARNING, logger="ge2ms_jax.checkpoint"):
    restored = fresh.restore(_abstract())
  assert restored.step == 1 and restored.data_state == {"position": 1}
  np.testing.assert_array_equal(restored.state["w"], np.full((8, 4), 1.0))
  assert "CheckpointCorruptError" in caplog.text and rel in caplog.text and "step 2" in caplog.text
  assert "falling back to step 1" in caplog.text
  # Set aside, not deleted: the bad folder keeps its files under a new name.
  aside = [p for p in tmp_path.iterdir() if p.name.startswith("2.unreadable-")]
  assert len(aside) == 1 and (aside[0] / checkpoint.INTEGRITY).exists()
  assert {p for p in before if (aside[0] / p).exists()} >= set(before) - {rel}
  assert fresh.all_steps() == [1]
  fresh.close()


def test_a_single_bit_flip_anywhere_in_any_file_is_caught(tmp_path):
  _two_steps(tmp_path / "base")
  files = json.loads((tmp_path / "base" / "2" / checkpoint.INTEGRITY).read_text())["files"]
  flips = 0
  for i, rel in enumerate(sorted(files)):
    for where in (0.0, 0.5, 0.99):
      work = tmp_path / f"c{i}-{where}"
      shutil.copytree(tmp_path / "base" / "2", work)
      data = bytearray((work / rel).read_bytes())
      data[int(where * (len(data) - 1))] ^= 0x01
      (work / rel).write_bytes(bytes(data))
      with pytest.raises(checkpoint.CheckpointCorruptError, match=f"file {rel} does not match"):
        checkpoint.verify_manifest(work, 2)
      flips += 1
      shutil.rmtree(work)
  assert flips == 3 * len(files) and len(files) >= 8


def test_named_corrupt_step_is_an_error_not_a_fallback(tmp_path):
  _two_steps(tmp_path)
  _flip(tmp_path / "2")
  ckpt = checkpoint.Checkpointer(tmp_path)
  with pytest.raises(checkpoint.CheckpointCorruptError, match=r"checkpoint step 2 .*file state/"):
    ckpt.restore(_abstract(), step=2)
  assert ckpt.all_steps() == [1, 2]  # An explicitly named step is reported, not moved.
  ckpt.close()


def test_every_committed_step_has_a_manifest_covering_all_its_files(tmp_path):
  _two_steps(tmp_path)
  for step in (1, 2):
    manifest = json.loads((tmp_path / str(step) / checkpoint.INTEGRITY).read_text())
    assert manifest["step"] == step
    on_disk = set(checkpoint._files(tmp_path / str(step)))
    assert set(manifest["files"]) == on_disk and any(f.startswith("state/") for f in on_disk)
    assert checkpoint.Checkpointer(tmp_path).verify(step)


def test_a_checkpoint_that_does_not_fit_the_state_is_a_mismatch_not_corruption(tmp_path):
  _two_steps(tmp_path)
  mesh = sharding.make_mesh([("fsdp", -1)])
  wrong = dict(_abstract(), w=jax.ShapeDtypeStruct((8, 6), jnp.float32,
                                                   sharding=NamedSharding(mesh, P())))
  ckpt = checkpoint.Checkpointer(tmp_path)
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"step 2 .*intact.*config"):
    ckpt.restore(wrong)
  assert ckpt.all_steps() == [1, 2]  # Nothing was set aside.
  ckpt.close()


def test_a_checkpoint_without_a_manifest_still_restores(tmp_path):
  _two_steps(tmp_path)
  (tmp_path / "2" / checkpoint.INTEGRITY).unlink()  # As saved before manifests existed.
  ckpt = checkpoint.Checkpointer(tmp_path)
  assert ckpt.verify(2) is False
  assert ckpt.restore(_abstract()).step == 2
  ckpt.close()


# ---------------------------------------------------------------------------------------------
# Numerical faults
# ---------------------------------------------------------------------------------------------
class PoisonData(ArrayData):
  """ArrayData whose training `field` ("target" or "image") is NaN in the batches of the steps
  listed in `bad_batches` (1-based)."""

  def __init__(self, bad_batches, field="target", **kw):
    super().__init__(**kw)
    self.bad, self.field = set(bad_batches), field

  def build_iterator(self, config, split="train", **kw):
    it = super().build_iterator(config, split, **kw)
    if split != "train":
      return it
    bad, inner_next, self_ = self.bad, it.__next__, self
    count = {"n": it.position // it.batch + it.epoch * (len(it.labels) // it.batch)}

    class Poisoned:
      def __iter__(self):
        return self

      def __next__(self):
        count["n"] = it.position // it.batch + it.epoch * (len(it.labels) // it.batch)
        batch = inner_next()
        if count["n"] + 1 in bad:  # 1-based: the batch of step n+1.
          batch = dict(batch, **{self_.field: batch[self_.field] * jnp.nan})
        return batch

      def get_state(self):
        return it.get_state()

      def set_state(self, state):
        it.set_state(state)

    return Poisoned()


def _run(workdir, config, data):
  trainer = train.Trainer(config, workdir, net=TinyNet(), data_module=data,
                          devices=jax.devices()[:1])
  try:
    return trainer.run()
  finally:
    trainer.close()


def test_nan_stops_with_the_step_metric_and_last_good_checkpoint(tmp_path):
  config = small_config(total_steps=6, **{"ckpt.every_steps": 2})
  with pytest.raises(train.NonFiniteError) as info:
    _run(tmp_path, config, PoisonData({5}))
  err = info.value
  assert err.step == 5 and err.metric == "loss"
  assert err.checkpoint == str(tmp_path / "checkpoints" / "4")
  assert "training loss is nan" in str(err) and "at step 5" in str(err)
  assert str(tmp_path / "checkpoints" / "4") in str(err)
  steps = sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit())
  assert steps == [2, 4]  # Nothing non-finite was saved.


def test_nan_skip_policy_steps_over_bad_batches(tmp_path):
  config = small_config(total_steps=6, **{"nan_policy": "skip", "nan_max_skips": 1})
  clean = _run(tmp_path / "clean", small_config(total_steps=6), ArrayData())
  result = _run(tmp_path / "skip", config, PoisonData({3}, field="image"))
  assert result.status == "done" and result.step == 6
  assert [h["skipped"] for h in result.history] == [0, 0, 1, 0, 0, 0]
  assert np.isfinite(result.history[2]["loss"]) and np.isnan(result.history[2]["grad_norm"])
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(result.state.params)))
  assert not leaves_equal(clean.state.params, result.state.params)
  # Two bad batches in a row exceed nan_max_skips=1.
  with pytest.raises(train.NonFiniteError, match=r"at step 4, the 2th step in a row .*nan_max_skips=1"):
    _run(tmp_path / "two", config, PoisonData({3, 4}))


def test_bad_nan_policy_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match=r"config.nan_policy='ignore'; use one of \('stop', 'skip'\)"):
    _run(tmp_path, small_config(nan_policy="ignore"), ArrayData())


# ---------------------------------------------------------------------------------------------
# Disk
# ---------------------------------------------------------------------------------------------
def test_workdir_that_cannot_be_created(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(checkpoint.WorkdirError, match=r"workdir .*file/run' cannot be created"):
    checkpoint.check_workdir(tmp_path / "file" / "run")
  with pytest.raises(checkpoint.WorkdirError, match="cannot be created"):
    train.Trainer(small_config(), tmp_path / "file" / "run", net=TinyNet(), data_module=ArrayData())


def test_read_only_workdir(tmp_path, monkeypatch):
  ro = tmp_path / "ro"
  ro.mkdir()
  os.chmod(ro, 0o555)
  try:
    if os.access(ro, os.W_OK):  # Root ignores permission bits: make os.access say what a user sees.
      real = os.access
      monkeypatch.setattr(os, "access", lambda p, m, **kw: False if os.fspath(p) == str(ro)
                          else real(p, m, **kw))
    with pytest.raises(checkpoint.WorkdirError, match=r"workdir .*ro' is not writable") as info:
      train.Trainer(small_config(), ro, net=TinyNet(), data_module=ArrayData())
    assert info.value.errno == errno.EACCES
  finally:
    os.chmod(ro, 0o755)


def test_full_disk_fails_at_start_up(tmp_path, monkeypatch):
  real = os.statvfs

  def nearly_full(path):
    st = real(path)
    return types.SimpleNamespace(f_bavail=10, f_frsize=4096, f_blocks=st.f_blocks)

  monkeypatch.setattr(os, "statvfs", nearly_full)
  with pytest.raises(checkpoint.WorkdirError, match=r"has 0.0 MiB free, less than the 256.0 MiB") as info:
    train.Trainer(small_config(), tmp_path / "run", net=TinyNet(), data_module=ArrayData())
  assert info.value.errno == errno.ENOSPC and "ckpt.min_free_mb" in str(info.value)
  # Lowering the knob lets the same run start.
  config = small_config(**{"ckpt.min_free_mb": 0})
  train.Trainer(config, tmp_path / "run", net=TinyNet(), data_module=ArrayData()).close()


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------
def test_same_config_and_seed_are_bit_identical_twice(tmp_path):
  config = small_config(total_steps=4, **{"optax.ema_decay": 0.5})
  a = _run(tmp_path / "a", config, ArrayData())
  b = _run(tmp_path / "b", config, ArrayData())
  assert leaves_equal(a.state, b.state)
  assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
  assert a.evals == b.evals
  c = _run(tmp_path / "c", small_config(total_steps=4, seed=1, **{"optax.ema_decay": 0.5}),
           ArrayData())
  assert not leaves_equal(a.state.params, c.state.params)  # The seed does matter.
