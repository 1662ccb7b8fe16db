"""benchmarks/peers.py: the SpikingJelly comparison's own pieces.

Without PyTorch (the project's environment): the port's architecture dict, the curve's batches and
learning-rate schedule against the trainer's, and the target ratios. With PyTorch and SpikingJelly
(the benchmarks' environment, `benchmarks/setup_torch_env.sh`): the port computes the JAX STBP
network's function from the same weights, and the smoke run of the whole benchmark (slow).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import peers  # noqa: E402

from ge2ms_jax import attention  # noqa: E402
from ge2ms_jax import model as models  # noqa: E402
from ge2ms_jax import optim, train  # noqa: E402
from ge2ms_jax.data import preprocess  # noqa: E402

HAVE_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "spikingjelly"))
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch and SpikingJelly (benchmarks/setup_torch_env.sh)")


@pytest.mark.parametrize("variant, size, grids", [("tiny", 28, [(14, 14), (7, 7)]),
                                                  ("s", 32, [(16, 16), (8, 8), (4, 4)])])
def test_port_spec_follows_the_model_config(variant, size, grids):
  cfg = peers.model_config(variant, image_size=size, in_channels=1 if variant == "tiny" else 3)
  spec = peers.port_spec(cfg)
  assert spec["dims"] == list(cfg.dims) and spec["depths"] == list(cfg.depths)
  assert [tuple(g) for g in models.stage_grids(cfg)] == grids
  for kind, grid, windows in zip(cfg.kinds, grids, spec["windows"]):
    if kind == "conv":
      assert windows == []
      continue
    # One group per window size: a global window spans the whole grid; heads and shifts are the model's.
    assert [w[2] for w in windows] == list(cfg.heads_per_window)
    assert [w[3] for w in windows] == list(models._shifts(cfg, grid))  # noqa: SLF001
    for (win_h, win_w, _, _), m in zip(windows, attention.normalize_windows(cfg.window_sizes)):
      assert (win_h, win_w) == (grid if m == attention.GLOBAL else (m, m))


def test_curve_batches_are_the_same_for_both_libraries_and_augmented():
  images = np.random.default_rng(0).integers(0, 256, size=(200, 28, 28), dtype=np.uint8)
  labels = np.arange(200) % 10
  norm = preprocess.NORMALIZATION_STATS["fashion_mnist"]
  norm = (norm[0][0], norm[1][0])
  a = peers._fm_batches(images, labels, 64, seed=1, norm=norm)  # noqa: SLF001
  b = peers._fm_batches(images, labels, 64, seed=1, norm=norm)  # noqa: SLF001
  for _ in range(4):  # past the end of an epoch (3 batches of 64 in 200)
    (xa, ya), (xb, yb) = next(a), next(b)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
  assert xa.shape == (64, 28, 28, 1) and xa.dtype == np.float32
  # Normalised with the pipeline's Fashion-MNIST statistics: a zero (padding) pixel maps to -mean/std.
  assert np.isclose(xa.min(), -norm[0] / norm[1])
  x0, _ = next(peers._fm_batches(images, labels, 64, seed=2, norm=norm))  # noqa: SLF001
  assert not np.array_equal(x0, xa)


def test_curve_learning_rate_is_the_trainers_schedule():
  config = train.base_config()
  config.optax.lr = 4e-3
  config.schedule.decay_type = "cosine"
  total, warmup = 300, 15
  config.schedule.warmup_steps = warmup
  schedule = optim.make_schedule(config, total, 1.0)
  ours = [peers._lr(s, total, 4e-3, warmup) for s in range(total)]  # noqa: SLF001
  np.testing.assert_allclose(ours, [float(schedule(s)) for s in range(total)], rtol=1e-5, atol=1e-9)


def test_eval_points_end_at_the_last_step():
  assert peers._eval_points(100, 5) == [20, 40, 60, 80, 100]  # noqa: SLF001
  assert peers._eval_points(3, 5) == [1, 2, 3]  # noqa: SLF001


def test_targets_are_ratios_of_the_same_network():
  ours = {"train_ms_per_image": 2.0, "train_peak_rss_bytes": 400,
          "inference_ms_per_image": {"qann": 1.0, "fused": 1.0, "spike": 4.0, "spike_stats": 5.0}}
  theirs = {"train_ms_per_image": 10.0, "train_peak_rss_bytes": 1000, "inference_ms_per_image": 3.5}
  r = peers._targets({"ge2ms_tiny": ours, "sj_tiny": theirs})  # noqa: SLF001
  assert set(r) == {"tiny"}
  t = r["tiny"]
  assert t["train_speedup"] == 5.0 and t["train_peak_memory_ratio"] == 0.4
  assert t["spike_over_sj_inference"] == pytest.approx(4.0 / 3.5) and t["fused_speedup"] == 3.5
  assert t["met"] == {"train_speedup": True, "train_peak_memory_ratio": True,
                      "spike_over_sj_inference": False, "fused_speedup": True}


def test_unknown_rows_are_refused(capsys):
  with pytest.raises(SystemExit):
    peers.main(["--rows", "sj_tiny,resnet"])
  assert "unknown rows ['resnet']" in capsys.readouterr().err


@needs_torch
@pytest.mark.parametrize("quick", [True, False])
def test_port_computes_the_jax_stbp_network(quick):
  # Perturbed BatchNorm (no residual branch is an identity) and a non-zero head; eval mode.
  r = peers.port_check({"variant": "tiny", "threads": 1, "quick": quick})
  assert r["params_port"] == r["params_jax"]
  assert r["max_abs_logit"] > 0.1
  assert r["max_abs_logit_diff"] <= 1e-4 * max(1.0, r["max_abs_logit"])
  assert r["prediction_agreement"] == 1.0


@needs_torch
@pytest.mark.slow
def test_peers_quick_run(tmp_path):
  out = tmp_path / "peers.json"
  subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--quick", "--out", str(out)],
                 check=True, cwd=ROOT, timeout=1800)
  result = json.loads(out.read_text())
  names = [r["name"] for r in result["rows"]]
  assert names == ["sj_tiny", "ge2ms_tiny"]
  sj, ours = result["rows"]
  assert sj["macs_per_step"] == ours["macs_per_step"]  # the same network, counted two ways
  assert {c["library"] for c in result["curves"]} == {"ge2ms_jax", "spikingjelly"}
  assert (tmp_path / "peers_curve.png").exists()
