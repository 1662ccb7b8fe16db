"""Checkpointer: save/restore with data state, keep-N, no overwrite, fallback past a corrupt
checkpoint, incomplete saves ignored, restore onto another mesh, SIGTERM watcher."""

import logging
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from ge2ms_jax import checkpoint
from ge2ms_jax import sharding


def _state(value: float, mesh=None):
  mesh = mesh or sharding.make_mesh([("fsdp", -1)])
  w = jax.device_put(jnp.full((8, 4), value), NamedSharding(mesh, P("fsdp", None)))
  b = jax.device_put(jnp.full((4,), value), NamedSharding(mesh, P()))
  return {"w": w, "b": b, "step": jax.device_put(jnp.array(int(value), jnp.int32),
                                                 NamedSharding(mesh, P()))}


def _abstract(mesh, spec_w=P("fsdp", None)):
  return {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=NamedSharding(mesh, spec_w)),
          "b": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=NamedSharding(mesh, P())),
          "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))}


@pytest.mark.parametrize("async_save", [False, True])
def test_save_and_restore_with_data_state(tmp_path, async_save):
  ckpt = checkpoint.Checkpointer(tmp_path, max_to_keep=3, async_save=async_save)
  assert ckpt.save(5, _state(5.0), {"epoch": 1, "position": 40})
  ckpt.wait()
  assert ckpt.all_steps() == [5] and ckpt.latest_step() == 5
  mesh = sharding.make_mesh([("fsdp", -1)])
  restored = checkpoint.Checkpointer(tmp_path).restore(_abstract(mesh))
  assert restored.step == 5 and restored.data_state == {"epoch": 1, "position": 40}
  np.testing.assert_array_equal(restored.state["w"], np.full((8, 4), 5.0))
  assert restored.state["w"].sharding.spec == P("fsdp", None)
  ckpt.close()


def test_a_relative_directory_is_resolved_against_the_working_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  ckpt = checkpoint.Checkpointer(os.path.join("runs", "x"), async_save=False)
  assert ckpt.save(2, _state(2.0), {"position": 3})
  ckpt.wait()
  monkeypatch.chdir("/")  # Restoring later from elsewhere still finds the same folder.
  restored = checkpoint.Checkpointer(tmp_path / "runs" / "x").restore(
      _abstract(sharding.make_mesh([("fsdp", -1)])))
  assert restored.step == 2 and restored.data_state == {"position": 3}


def test_keep_n_and_named_step(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, max_to_keep=2, async_save=False)
  for step in range(1, 5):
    ckpt.save(step, _state(float(step)), {"position": step})
  assert ckpt.all_steps() == [3, 4]
  mesh = sharding.make_mesh([("fsdp", -1)])
  assert ckpt.restore(_abstract(mesh), step=3).data_state == {"position": 3}
  with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 1 .*available steps: \[3, 4\]"):
    ckpt.restore(_abstract(mesh), step=1)
  ckpt.close()


def test_an_existing_step_is_never_overwritten(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
  assert ckpt.save(2, _state(2.0), {"position": 2})
  assert not ckpt.save(2, _state(9.0), {"position": 9})
  restored = ckpt.restore(_abstract(sharding.make_mesh([("fsdp", -1)])))
  np.testing.assert_array_equal(restored.state["b"], np.full(4, 2.0))
  assert restored.data_state == {"position": 2}
  ckpt.close()


def test_restore_onto_one_device(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
  ckpt.save(1, _state(3.0), None)
  ckpt.close()
  one = sharding.make_mesh([("data", 1)], jax.devices()[:1])
  restored = checkpoint.Checkpointer(tmp_path).restore(_abstract(one, P()))
  assert restored.state["w"].sharding.device_set == {jax.devices()[0]}
  np.testing.assert_array_equal(restored.state["w"], np.full((8, 4), 3.0))
  assert restored.data_state is None


def _corrupt(path):
  """Truncates every array data file of a checkpoint's state."""
  n = 0
  for root, _, files in os.walk(path / "state"):
    for name in files:
      if "/d" in root or root.endswith("/d"):
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(3)
        n += 1
  assert n, f"no data files under {path}"


def test_restore_falls_back_past_a_corrupt_newest_checkpoint(tmp_path, caplog):
  ckpt = checkpoint.Checkpointer(tmp_path, max_to_keep=5, async_save=False)
  ckpt.save(1, _state(1.0), {"position": 1})
  ckpt.save(2, _state(2.0), {"position": 2})
  ckpt.close()
  _corrupt(tmp_path / "2")
  fresh = checkpoint.Checkpointer(tmp_path, max_to_keep=5, async_save=False)
  with caplog.at_level(logging.WARNING, logger="ge2ms_jax.checkpoint"):
    restored = fresh.restore(_abstract(sharding.make_mesh([("fsdp", -1)])))
  assert restored.step == 1 and restored.data_state == {"position": 1}
  np.testing.assert_array_equal(restored.state["w"], np.full((8, 4), 1.0))
  assert "checkpoint at step 2" in caplog.text and "falling back to step 1" in caplog.text
  # The unreadable folder is set aside, so training on from step 1 can save step 2 again.
  assert fresh.all_steps() == [1]
  assert any(p.startswith("2.unreadable-") for p in os.listdir(tmp_path))
  assert fresh.save(2, _state(2.5), {"position": 2})
  fresh.close()


def test_no_readable_checkpoint_raises_with_every_failure(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
  ckpt.save(1, _state(1.0), None)
  ckpt.close()
  _corrupt(tmp_path / "1")
  with pytest.raises(RuntimeError, match=r"(?s)no readable checkpoint .*step 1: CheckpointCorruptError: .*file state/.* is truncated"):
    checkpoint.Checkpointer(tmp_path).restore(_abstract(sharding.make_mesh([("fsdp", -1)])))
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    checkpoint.Checkpointer(tmp_path / "empty").restore({})


def test_an_incomplete_save_is_not_listed(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
  ckpt.save(1, _state(1.0), None)
  ckpt.close()
  # What a save killed mid-way leaves: a temporary folder that was never renamed to its step.
  (tmp_path / "2.orbax-checkpoint-tmp-1234567").mkdir()
  (tmp_path / "2.orbax-checkpoint-tmp-1234567" / "partial").write_text("x")
  fresh = checkpoint.Checkpointer(tmp_path)
  assert fresh.all_steps() == [1]
  assert fresh.restore(_abstract(sharding.make_mesh([("fsdp", -1)]))).step == 1
  fresh.close()


def test_split_checkpoint_path(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", async_save=False)
  ckpt.save(7, _state(7.0), None)
  ckpt.close()
  assert checkpoint.split_checkpoint_path(tmp_path / "checkpoints" / "7") == (
      str(tmp_path / "checkpoints"), 7)
  assert checkpoint.split_checkpoint_path(tmp_path / "checkpoints") == (
      str(tmp_path / "checkpoints"), None)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    checkpoint.split_checkpoint_path(tmp_path / "nope")


def test_preemption_watcher_catches_sigterm_and_restores_the_handler():
  before = signal.getsignal(signal.SIGTERM)
  watcher = checkpoint.PreemptionWatcher()
  assert not watcher.reached(1)
  os.kill(os.getpid(), signal.SIGTERM)
  assert watcher.reached(2)
  watcher.close()
  assert signal.getsignal(signal.SIGTERM) == before
