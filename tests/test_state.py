"""The train-state module: one set-up for every user, and loading that reads only what inference needs."""

import json

import jax
import numpy as np
import pytest

from ge2ms_jax import checkpoint as ckpt_lib
from ge2ms_jax import loading
from ge2ms_jax import sharding as sharding_lib
from ge2ms_jax import state as state_lib
from ge2ms_jax.configs import fashion_mnist


def _config(**optax):
  config = fashion_mnist.get_config("runlocal")
  config.mesh = [("data", 1), ("fsdp", 1)]
  config.optax.update(optax)
  return config


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A checkpoint of an AdamW run that kept an EMA (the EMA set apart from the parameters)."""
  workdir = tmp_path_factory.mktemp("adamw_ema")
  config = _config(name="adamw", ema_decay=0.99)
  mesh = sharding_lib.make_mesh(config.mesh, jax.devices()[:1])
  setup = state_lib.make_setup(config, mesh)
  state = setup.init_on_mesh()
  state = state.replace(step=state.step + 5, ema_params=jax.tree.map(lambda p: p + 1.0, state.params))
  checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", max_to_keep=None, async_save=False)
  checkpointer.save(5, state)
  checkpointer.close()
  (workdir / "config.json").write_text(json.dumps({"model": config.model.to_dict()}))
  return workdir, jax.device_get(state)


def test_a_checkpoint_loads_for_evaluation_under_another_optimizer(saved):
  workdir, state = saved
  other = _config(name="sgd", nesterov=True, ema_decay=0.0)  # another optimizer state, no EMA
  loaded = loading.load(other, str(workdir), devices=jax.devices()[:1])
  assert loaded.step == 5
  # The run kept an EMA, so its EMA parameters are the model, whatever the loading config says.
  assert jax.tree.all(jax.tree.map(np.array_equal, loaded.variables["params"], state.ema_params))
  assert jax.tree.all(jax.tree.map(np.array_equal, loaded.variables["batch_stats"],
                                   state.model_state["batch_stats"]))
  # The whole train state, optimizer included, does not restore under that config: only the partial
  # restore makes the load independent of it.
  mesh = sharding_lib.make_mesh(other.mesh, jax.devices()[:1])
  checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", max_to_keep=None, async_save=False)
  try:
    with pytest.raises(ckpt_lib.CheckpointMismatchError):
      checkpointer.restore(state_lib.make_setup(other, mesh).abstract, 5)
  finally:
    checkpointer.close()


def test_a_partial_restore_gives_an_empty_field_for_what_was_saved_empty(tmp_path):
  config = _config(name="adamw", ema_decay=0.0)
  mesh = sharding_lib.make_mesh(config.mesh, jax.devices()[:1])
  state = state_lib.make_setup(config, mesh).init_on_mesh()
  checkpointer = ckpt_lib.Checkpointer(tmp_path / "checkpoints", max_to_keep=None, async_save=False)
  try:
    checkpointer.save(1, state)
    restored = checkpointer.restore(state_lib.inference_abstract(config, mesh, with_ema=True), partial=True)
  finally:
    checkpointer.close()
  assert restored.state["ema_params"] == {} and restored.data_state is None
  variables = state_lib.qann_variables(restored.state)
  assert jax.tree.all(jax.tree.map(np.array_equal, variables["params"], jax.device_get(state.params)))
  assert set(variables) == {"params", "batch_stats"}
