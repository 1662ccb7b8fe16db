"""Latency of the converted network: time steps on the longest path of neuron sites (docs/energy.md)."""

import jax
import jax.numpy as jnp
import pytest

from ge2ms_jax import config_utils
from ge2ms_jax import conversion
from ge2ms_jax import model as M


def _runlocal():
  """The runlocal model: a conv stage and an attention stage, one block each, default code (2, 4)."""
  cfg = config_utils.load_config("experiments/fashion_mnist.py:runlocal", {}).model
  assert tuple(cfg.kinds) == ("conv", "attn") and tuple(cfg.depths) == (1, 1)
  return cfg


def _sites_of_the_network(cfg):
  net = M.build(cfg)
  x = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, cfg.in_channels), jnp.float32)
  return conversion.neuron_sites(jax.eval_shape(lambda x: net.init({"params": jax.random.key(0)}, x), x))


@pytest.mark.parametrize("variant", ["runlocal", "tiny", "s"])
def test_site_graph_names_exactly_the_networks_neuron_sites(variant):
  cfg = _runlocal() if variant == "runlocal" else M.default_config(variant)
  if variant == "s":
    cfg.image_size = 32
  graph = M.site_graph(cfg)
  assert sorted(graph) == sorted(_sites_of_the_network(cfg))
  for site, preds in graph.items():
    assert all(p == "input" or p in graph for p in preds), site


def test_runlocal_latency_counted_by_hand():
  # Longest path, counted from the block definitions: stem_n; stage0/n_down; conv block: mix_n_dw,
  # mix_n_out, ffn_n_up, ffn_n_dw, ffn_n_out; stage1/n_down; attention block: one of attn_q/k/v,
  # attn_n_mix, attn_n_out, mlp_n_up, mlp_n_out. 1 + 1 + 5 + 1 + 5 = 13 sites of T = 1 * 4 steps.
  lat = M.latency(_runlocal())
  assert lat["latency_steps"] == 52
  assert lat["steps_per_image"] == 4
  assert len(lat["path"]) == 13
  assert lat["path"][0] == "stem_n" and lat["path"][-1] == "stage1/block0/mlp_n_out"
  assert "stage1/block0/attn_q" in lat["path"]  # ties between q, k and v go to the first


def test_tiny_latency_is_18_sites_of_4_steps():
  lat = M.latency(M.default_config("tiny"))
  assert (lat["latency_steps"], lat["steps_per_image"], len(lat["path"])) == (72, 4, 18)


def test_an_override_on_the_longest_path_lengthens_it():
  cfg = _runlocal()
  cfg.neuron_overrides = "attn_v=4,2"  # T = 2 * (4 - 1) = 6 for attn_v, 4 elsewhere
  lat = M.latency(cfg)
  assert lat["latency_steps"] == 52 - 4 + 6
  assert lat["steps_per_image"] == 6
  assert "stage1/block0/attn_v" in lat["path"] and "stage1/block0/attn_q" not in lat["path"]
  cfg.neuron_overrides = "stem=2,8"  # T = 8 on the one site every path starts with
  assert M.latency(cfg)["latency_steps"] == 52 - 4 + 8


def test_an_override_off_the_longest_path_changes_nothing():
  cfg = _runlocal()
  cfg.neuron_overrides = "attn_k$=4,1"  # T = 3 < 4: attn_q and attn_v stay the longer branches
  lat = M.latency(cfg)
  assert lat["latency_steps"] == 52 and lat["steps_per_image"] == 4
  assert "stage1/block0/attn_k" not in lat["path"]
  # Shorter codes on the whole branch of the attention shorten the path by the difference.
  cfg.neuron_overrides = "attn_(q|k|v)$=4,1"
  assert M.latency(cfg)["latency_steps"] == 52 - 1


def test_stbp_latency_is_time_steps_plus_depth():
  cfg = _runlocal()
  cfg.neuron_kind, cfg.time_steps = "lif", 4
  lat = M.latency(cfg)
  assert lat["latency_steps"] == 4 + 13 - 1 and lat["steps_per_image"] == 4
