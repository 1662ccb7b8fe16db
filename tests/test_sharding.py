"""Mesh resolution, regex sharding rules, batch sharding and divisibility errors (8 CPU devices)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ge2ms_jax import sharding


@pytest.mark.parametrize("config,n,expected", [
    ([("data", -1)], 8, {"data": 8, "fsdp": 1}),
    ([("data", -1), ("fsdp", 2)], 8, {"data": 4, "fsdp": 2}),
    ([("fsdp", -1)], 8, {"data": 1, "fsdp": 8}),
    ([("data", 2), ("fsdp", 4)], 8, {"data": 2, "fsdp": 4}),
    ([("data", 1)], 1, {"data": 1, "fsdp": 1}),
])
def test_mesh_shape(config, n, expected):
  assert sharding.mesh_shape(config, n) == expected


@pytest.mark.parametrize("config,match", [
    ([("data", 3)], r"multiply to 3, but there are 8 devices"),
    ([("data", -1), ("fsdp", 3)], r"multiply to 3, which does not divide the 8 devices"),
    ([("data", -1), ("fsdp", -1)], r"only one axis may have size -1"),
    ([("model", 8)], r"unknown axis 'model'"),
    ([("data", 4), ("data", 2)], r"named twice"),
    ([("data", 0)], r"size 0"),
])
def test_mesh_errors(config, match):
  with pytest.raises(ValueError, match=match):
    sharding.mesh_shape(config, 8)


def test_make_mesh_on_all_and_on_a_subset_of_devices():
  mesh = sharding.make_mesh([("data", -1), ("fsdp", 2)])
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2} and mesh.axis_names == ("data", "fsdp")
  one = sharding.make_mesh([("data", -1)], jax.devices()[:1])
  assert dict(one.shape) == {"data": 1, "fsdp": 1}


def test_batch_sharding_splits_the_leading_axis_over_data_and_fsdp():
  mesh = sharding.make_mesh([("data", 4), ("fsdp", 2)])
  batch = sharding.host_to_global({"image": np.arange(16 * 3, dtype=np.float32).reshape(16, 3),
                                   "label": np.arange(16, dtype=np.int32)},
                                  sharding.batch_sharding(mesh))
  shards = batch["image"].addressable_shards
  assert len(shards) == 8 and all(s.data.shape == (2, 3) for s in shards)
  np.testing.assert_array_equal(np.asarray(batch["label"]), np.arange(16))


def test_batch_size_errors_name_both_numbers():
  mesh = sharding.make_mesh([("data", -1)])
  assert sharding.check_batch_size(64, mesh) == 64
  with pytest.raises(ValueError, match=r"batch_size=12 is not divisible by the data-parallel size 8 "
                                       r"\(mesh data=8 × fsdp=1\).*multiple of 8"):
    sharding.check_batch_size(12, mesh, "batch_size")
  with pytest.raises(ValueError, match=r"evals.batch_size=0"):
    sharding.check_batch_size(0, mesh, "evals.batch_size")


def _tree():
  return {"params": {"conv": {"kernel": jnp.zeros((3, 3, 4, 16)), "bias": jnp.zeros(16)},
                     "head": {"kernel": jnp.zeros((16, 10))}, "theta": jnp.zeros(())},
          "opt_state": {"mu": {"conv": {"kernel": jnp.zeros((3, 3, 4, 16))}}, "count": jnp.zeros(())}}


def test_rules_first_match_wins_and_fsdp_takes_the_largest_divisible_dim():
  mesh = sharding.make_mesh([("data", 2), ("fsdp", 4)])
  rules = [(r"bias$", "replicate"), (r"head/kernel$", ("fsdp", None)), (r".*", "fsdp")]
  s = sharding.infer_shardings(_tree(), mesh, rules)
  assert s["params"]["conv"]["kernel"].spec == P(None, None, None, "fsdp")  # 16 is the largest.
  assert s["opt_state"]["mu"]["conv"]["kernel"].spec == P(None, None, None, "fsdp")
  assert s["params"]["conv"]["bias"].spec == P()
  assert s["params"]["head"]["kernel"].spec == P("fsdp", None)
  assert s["params"]["theta"].spec == P() and s["opt_state"]["count"].spec == P()  # Scalars.


def test_fsdp_rule_replicates_when_nothing_divides_and_on_a_size_one_axis():
  tree = {"w": jnp.zeros((3, 5))}
  assert sharding.infer_shardings(tree, sharding.make_mesh([("fsdp", -1)]), [(".*", "fsdp")]
                                  )["w"].spec == P()
  tree = {"w": jnp.zeros((8, 16))}
  assert sharding.infer_shardings(tree, sharding.make_mesh([("data", -1)]), [(".*", "fsdp")]
                                  )["w"].spec == P()


def test_unmatched_leaves_are_replicated():
  mesh = sharding.make_mesh([("fsdp", -1)])
  s = sharding.infer_shardings(_tree(), mesh, [(r"head", "fsdp")])
  assert s["params"]["conv"]["kernel"].spec == P()
  assert s["params"]["head"]["kernel"].spec == P("fsdp", None)  # 16 divides by 8; 10 does not.


@pytest.mark.parametrize("rules,match", [
    ([(r"conv/kernel", ("fsdp", None))], r"splits dim 0 of '.*conv/kernel' \(shape \(3, 3, 4, 16\)\) over \('fsdp',\) of size 8"),
    ([(r"conv/bias", (None, "fsdp"))], r"has 2 entries, but 'params/conv/bias' has only 1 dimensions"),
    ([(r"(", "fsdp")], r"bad regex"),
    ([(r".*", "shard")], r"must be 'replicate', 'fsdp', or a tuple"),
    ([(r".*", ("model",))], r"unknown mesh axis 'model'"),
    ([(r".*",)], r"must be a \(regex, spec\) pair"),
])
def test_rule_errors(rules, match):
  mesh = sharding.make_mesh([("fsdp", -1)])
  with pytest.raises(ValueError, match=match):
    sharding.infer_shardings(_tree(), mesh, rules)


def test_abstract_carries_the_shardings():
  mesh = sharding.make_mesh([("fsdp", -1)])
  tree = _tree()
  s = sharding.infer_shardings(tree, mesh, [(".*", "fsdp")])
  abstract = sharding.abstract(tree, s)
  leaf = abstract["params"]["conv"]["kernel"]
  assert isinstance(leaf, jax.ShapeDtypeStruct) and leaf.shape == (3, 3, 4, 16)
  assert leaf.sharding == s["params"]["conv"]["kernel"]


def test_path_str_covers_dicts_sequences_and_attributes():
  from ge2ms_jax import train
  state = train.TrainState(step=jnp.zeros(()), params={"a": [jnp.zeros(2)]}, model_state={},
                           opt_state=(), ema_params={}, rng=jnp.zeros(2, jnp.uint32))
  paths = [sharding.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
  assert paths == ["step", "params/a/0", "rng"]


def test_initialize_distributed_is_a_no_op_without_settings(monkeypatch):
  for var in ("GE2MS_COORDINATOR", "GE2MS_NUM_PROCESSES", "GE2MS_PROCESS_ID", "GE2MS_DISTRIBUTED"):
    monkeypatch.delenv(var, raising=False)
  assert sharding.initialize_distributed() is False
  with pytest.raises(ValueError, match="also needs num_processes"):
    sharding.initialize_distributed("127.0.0.1:1234")
