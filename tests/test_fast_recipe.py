"""The fast CIFAR-10 recipe (experiments/cifar10.py:fast): a quick form trains a few steps and converts
losslessly; its new pieces (dense stages, strides, BatchNorm without scale, patch whitening) leave every
other variant as it was."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ge2ms_jax import config_utils
from ge2ms_jax import conversion
from ge2ms_jax import model as M
from ge2ms_jax import snn
from ge2ms_jax import train
from test_train_support import ArrayData, make_arrays

ROOT = pathlib.Path(__file__).resolve().parents[1]


class RGBData(ArrayData):
  """In-memory 32x32 RGB splits of 10 classes."""

  def __init__(self):
    super().__init__(num_train=64, num_test=16, size=32, num_classes=10)
    self.splits = {"train": make_arrays(64, 32, channels=3, num_classes=10, seed=1),
                   "test": make_arrays(16, 32, channels=3, num_classes=10, seed=2)}


def _quick_config():
  """The `fast` recipe with its architecture shrunk (same stage kinds, strides, BatchNorm) and 3 steps."""
  config = config_utils.load_config("experiments/cifar10.py:fast", {})
  m = config.model
  m.stem_channels, m.dims, m.head_dim, m.heads_per_window = 8, (8, 16, 16), 8, (1, 1)
  config.batch_size = 16
  config.total_steps = 3
  config.schedule.warmup_epochs = 0.0
  config.init_whiten = 32
  config.ckpt.every_steps = 0
  config.ckpt.async_save = False
  config.evals.batch_size = 8
  config.evals.split = "test"
  config.log_every_steps = 1
  return config


def test_fast_recipe_config():
  config = config_utils.load_config("experiments/cifar10.py:fast", {})
  m = config.model
  assert m.variant == "fast" and "attn" in m.kinds and "dense" in m.kinds
  assert config.optax.name == "sgd" and config.optax.nesterov and config.total_epochs == 24.0
  assert "smoothing=0.2" in config.pp_train and "flip_lr" in config.pp_train
  assert config_utils.load_config("experiments/cifar10.py:fast,epochs=4", {}).total_epochs == 4.0
  c = M.count(m)
  assert 100e6 < c["macs"] < 160e6 and c["params"] < 3_000_000
  with pytest.raises(config_utils.ConfigError):
    config_utils.load_config("experiments/cifar10.py:fast,variant=tiny", {})


def test_fast_sparse_config_fine_tunes_the_shipped_fast_model():
  dense = config_utils.load_config("experiments/cifar10.py:fast", {})
  sparse = config_utils.load_config("experiments/cifar10.py:fast,sparse,target=0.25,lr=0.02", {})
  assert sparse.init_from == "checkpoints/cifar10_fast" and not sparse.init_whiten
  assert (sparse.sparsity.weight, sparse.sparsity.target, sparse.optax.lr) == (10.0, 0.25, 0.02)
  assert sparse.total_epochs == 4.0 and sparse.schedule.warmup_steps == 50
  # The rest of the recipe, the network above all, is the dense model's.
  assert sparse.model == dense.model and sparse.pp_train == dense.pp_train
  assert (sparse.optax.name, sparse.optax.nesterov, sparse.batch_size) == ("sgd", True, 128)
  assert not sparse.distill.teacher
  distilled = config_utils.load_config("experiments/cifar10.py:fast,sparse,distill=0.5", {})
  assert (distilled.distill.teacher, distilled.distill.weight) == ("checkpoints/cifar10_fast", 0.5)
  for item in ("target=0.25", "distill=0.5"):
    with pytest.raises(config_utils.ConfigError, match="`target`, `lr` and `distill`"):
      config_utils.load_config(f"experiments/cifar10.py:fast,{item}", {})
  with pytest.raises(config_utils.ConfigError, match="CIFAR-10 model"):
    config_utils.load_config("experiments/cifar100.py:fast,sparse", {})


def test_fast_sparsity_sweep_keeps_its_runs_and_ends_at_the_shipped_setting():
  # The sweep's first runs were made at 2 epochs; the recipe's default later became 4, and the sweep
  # must still build those runs as they were made (its base says epochs=2), with the last run
  # equal to what `fast,sparse` now builds (the shipped model's recipe).
  from ge2ms_jax import sweep  # pylint: disable=g-import-not-at-top
  runs, spec = sweep.load_sweep("experiments/sweeps/cifar10_fast_sparsity.py")
  configs = sweep.build_configs(spec, runs)
  assert [c.total_epochs for c in configs] == [2.0] * 5 + [4.0] * 2
  assert [sweep.run_name(i, r) for i, r in enumerate(runs)][:5] == [
      "000_target=0.27_lr=0.01", "001_target=0.3_lr=0.01", "002_target=0.3_lr=0.005",
      "003_target=0.3_lr=0.01_teacher=checkpointscifar10_fast_weight=0.5", "004_target=0.3_lr=0.02"]
  shipped = config_utils.load_config("experiments/cifar10.py:fast,sparse", {})
  assert configs[-1].to_dict() == shipped.to_dict()


def test_quick_fast_recipe_trains_and_converts_losslessly(tmp_path):
  config = _quick_config()
  trainer = train.Trainer(config, str(tmp_path), data_module=RGBData())
  try:
    result = trainer.run()
  finally:
    trainer.close()
  assert result.status == "done" and result.step == 3
  assert all(np.isfinite(h["loss"]) for h in result.history)
  state = result.state
  # BatchNorm keeps its scale, so the residual branches could start at zero.
  assert "scale" in state.params["stage0"]["block0"]["conv2"]["bn"]
  variables = {"params": state.params, **state.model_state}
  x = jax.random.uniform(jax.random.key(0), (8, 32, 32, 3), minval=-2.0, maxval=2.0)
  with jax.enable_x64(True):
    cfg = M.default_config("fast")
    cfg.update(config.model.to_dict())
    cfg.dtype = "float64"
    v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    x64 = x.astype(jnp.float64)
    qann = M.build(cfg).apply(v64, x64)
    res = snn.simulate(conversion.convert(v64, cfg), x64, "spike", config=cfg)
    np.testing.assert_allclose(res.logits, qann, rtol=0, atol=1e-9)
  assert any("stage0/block0/conv1" in layer.name for layer in res.layers)
  assert any(layer.kind == "attention" for layer in res.layers)


def test_whiten_kernel_whitens_patches():
  rng = np.random.default_rng(0)
  mix = rng.normal(size=(3, 3))
  images = rng.normal(size=(64, 8, 8, 3)) @ mix  # correlated channels
  kernel = train.whiten_kernel(images, (3, 3, 3, 12), eps=0.0)
  assert kernel.shape == (3, 3, 3, 12)
  np.testing.assert_allclose(kernel[..., 6:], -kernel[..., :6])
  patches = np.stack([images[:, i:i + 6, j:j + 6, :] for i in range(3) for j in range(3)], axis=-2)
  out = patches.reshape(-1, 27) @ kernel.reshape(27, 12)[:, :6]
  np.testing.assert_allclose(np.cov(out, rowvar=False), np.eye(6), atol=1e-6)


@pytest.mark.parametrize("variant", ["tiny", "s"])
def test_other_variants_keep_their_parameters(variant):
  cfg = M.default_config(variant)
  cfg.image_size = 32
  assert cfg.strides == () and cfg.bn_scale
  assert M.stage_strides(cfg) == (2,) * len(cfg.dims)
  x = jax.ShapeDtypeStruct((1, 32, 32, cfg.in_channels), jnp.float32)
  shapes = jax.eval_shape(lambda x: M.build(cfg).init({"params": jax.random.key(0)}, x), x)
  assert "scale" in shapes["params"]["stem_conv"]["bn"]
  assert "scale" in shapes["params"]["stage0"]["down"]["bn"]


def test_dense_site_graph_and_strides():
  cfg = M.default_config("fast")
  cfg.num_classes, cfg.in_channels = 10, 3
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: M.build(cfg).init({"params": jax.random.key(0)}, x), x)
  assert sorted(M.site_graph(cfg)) == sorted(conversion.neuron_sites(shapes))
  cfg.strides = (1, 2, 2)
  assert M.stage_grids(cfg) == [(32, 32), (16, 16), (8, 8)]
  cfg.strides = (3, 2, 2)
  with pytest.raises(ValueError, match="strides"):
    M.validate(cfg)


def test_ablation_benchmark_reads_the_sweeps_runs_and_shows_missing_ones(tmp_path):
  # Finished runs are folders with the run's config.json and result.json, named as the sweep names
  # them; the rows follow the sweep's ABLATIONS, with a run not yet done listed as missing.
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import cifar10_ablation  # pylint: disable=g-import-not-at-top
  from ge2ms_jax import sweep  # pylint: disable=g-import-not-at-top
  runs, spec = sweep.load_sweep(str(ROOT / "experiments/sweeps/cifar10_fast_ablation.py") + ":epochs=2")
  configs = sweep.build_configs(spec, runs)
  for i, top1 in ((0, 0.646), (1, 0.6018), (6, 0.70)):
    workdir = tmp_path / sweep.run_name(i, runs[i])
    workdir.mkdir()
    (workdir / "config.json").write_text(configs[i].to_json())
    (workdir / "result.json").write_text(json.dumps({"step": 704, "seconds": 600.0, "eval_top1": top1}))
  rows = cifar10_ablation.rows(str(tmp_path), 2.0)
  assert [r["name"] for r in rows][:2] == ["full_recipe", "no_whitening"] and len(rows) == len(runs)
  assert [r["status"] for r in rows] == ["done", "done"] + ["missing"] * (len(runs) - 3) + ["done"]
  assert rows[1]["points"] == pytest.approx(-4.42) and rows[1]["overrides"] == {"init_whiten": "0"}
  # The dense third stage has its own MACs, so its cost differs; the images seen are the same.
  assert rows[0]["train_pflops"] == pytest.approx(6 * M.count(configs[0].model)["macs"] * 704 * 128 / 1e15)
  assert rows[-1]["train_pflops"] != rows[0]["train_pflops"]
  with pytest.raises(SystemExit, match="not --epochs 4"):
    cifar10_ablation.rows(str(tmp_path), 4.0)


def test_curve_fit_recovers_a_power_law_and_its_budget():
  # Points on error = 0.12 x PFLOP^-0.4 exactly: the fit returns that law, and the budget at which it
  # reaches 92% is where the law says (0.08 / 0.12) ** (1 / -0.4) PFLOP, in epochs and hours at the
  # points' own cost per epoch and fastest rate.
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import cifar10_curve  # pylint: disable=g-import-not-at-top
  points = [{"name": f"e{e}", "epochs": float(e), "train_pflops": 0.035 * e, "top1": 1 - 0.12 * (0.035 * e) ** -0.4,
             "train_gflops_per_s": rate} for e, rate in ((2, 90.0), (4, 120.0), (24, 100.0))]
  fit = cifar10_curve.power_law_budget(points)
  assert fit["exponent"] == pytest.approx(-0.4) and fit["coefficient"] == pytest.approx(0.12)
  pflops = (0.08 / 0.12) ** (1 / -0.4)
  assert fit["pflops"] == pytest.approx(pflops) and fit["epochs"] == pytest.approx(pflops / 0.035)
  assert fit["hours"] == pytest.approx(pflops * 1e15 / 120e9 / 3600)
  assert cifar10_curve.power_law_budget(points[:1]) is None
