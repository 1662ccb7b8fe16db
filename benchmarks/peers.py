"""Benchmark: ge2ms_jax beside SpikingJelly, on the same networks and on SpikingJelly's own.

Runs in the benchmarks' torch environment (`benchmarks/setup_torch_env.sh`). Every row is a fresh
process (so resident-set numbers do not mix) on the same synthetic batch shape (B = 32, 32x32x3,
10 classes, T = 4) and the same number of threads:

* `spikformer`: SpikingJelly's `spikformer_cifar10(T=4)`;
* `qkformer`: SpikingJelly's `QKFormer(T=4, embed_dims=384, depths=(1, 1, 2), num_heads=(6, 6, 6))`
  (SpikingJelly has no CIFAR constructor; this is the paper's 4-block, 384-wide CIFAR setting);
* `sj_tiny`, `sj_s`: Ge2mS-T `tiny` / `s` written in PyTorch with SpikingJelly's multi-step LIF
  nodes (`benchmarks/sj_ge2ms.py`), trained by surrogate gradients through T = 4 steps;
* `ge2ms_tiny`, `ge2ms_s`: the same networks in ge2ms_jax: the QANN training step of the trainer
  (`train.make_update_fn`), and inference as the QANN, the converted SNN in fused mode, and in spike
  mode (binary spike trains of all T = 4 steps of code (2, 4)), without and with its statistics.

Per row: parameters, MACs per time step (`model.count` for ge2ms_jax; PyTorch's `FlopCounterMode`
on a T = 1 instance for the torch rows, which also checks that the port has ge2ms_jax's MACs),
training ms/image, peak resident set while the training steps run (the high-water mark is reset
after warm-up), inference ms/image. A `port_check` process copies a JAX STBP model's weights into the
port (`sj_ge2ms.load_flax_variables`) and compares logits: the port computes the same function.

Targets on the same network (ratios within one run): ge2ms_jax QANN training >= 3x faster per image
than SpikingJelly's T = 4 surrogate-gradient training, with <= 0.5x its training peak memory;
spike-mode simulation no slower than SpikingJelly's multi-step inference; fused mode >= 3x faster.

Accuracy per CPU-minute (`--curve`): `tiny` trained by ge2ms_jax (QANN, evaluated as the converted
SNN in spike mode) and by the SpikingJelly port (LIF, T = 4) on the embedded Fashion-MNIST subset for
the same wall-clock budget, same batches (64, the same augmentation and order), AdamW with the
experiment's settings (lr 4e-3, weight decay 0.05 on kernels, clipping 1.0, warm-up then cosine). A
short probe of each library's step time sets its number of steps to fit the budget; the budget counts
compilation; evaluations on the 2,500 test images (five along the run) are not counted. The probe
takes the median of 10 steps after 5 warm-up steps.

  benchmarks/setup_torch_env.sh && .venv-bench/bin/python benchmarks/peers.py          # everything
  .venv-bench/bin/python benchmarks/peers.py --quick --out /tmp/peers.json             # smoke run
  .venv-bench/bin/python benchmarks/peers.py --rows sj_tiny,ge2ms_tiny --no_curve      # some rows

Writes `benchmarks/results/peers.json` (and `peers_curve.png` with the curve).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procmem  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
EMBEDDED = ROOT / "ge2ms_jax" / "data" / "embedded" / "fashion_mnist_subset.npz"
ROWS = ("spikformer", "qkformer", "sj_tiny", "sj_s", "ge2ms_tiny", "ge2ms_s")
TIME_STEPS = 4
TARGETS = {"train_speedup_ge": 3.0, "train_peak_memory_ratio_le": 0.5, "spike_over_sj_inference_le": 1.0,
           "fused_speedup_ge": 3.0}


# ---------------------------------------------------------------------------------------------
# Process memory
# ---------------------------------------------------------------------------------------------
def _memory(reset_ok: bool, rss_before: int | None) -> dict[str, Any]:
  """Peak RSS while the training steps ran, the RSS just before them, and the whole process's peak."""
  return {"train_peak_rss_bytes": procmem.status_bytes("VmHWM") if reset_ok else None,
          "rss_before_train_bytes": rss_before,
          "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


# ---------------------------------------------------------------------------------------------
# Architecture of a ge2ms_jax config, for the port (computed where JAX is imported)
# ---------------------------------------------------------------------------------------------
def model_config(variant: str, image_size: int = 32, in_channels: int = 3, neuron_kind: str = "expg"):
  """The ge2ms_jax model config of a row: code (2, 4) (T = 4) or LIF with T = 4, 10 classes."""
  sys.path.insert(0, str(ROOT))
  from ge2ms_jax import model as models
  cfg = models.default_config(variant)
  cfg.image_size, cfg.in_channels, cfg.num_classes = image_size, in_channels, 10
  cfg.neuron.base, cfg.neuron.groups = 2, TIME_STEPS
  cfg.neuron_kind, cfg.time_steps = neuron_kind, TIME_STEPS
  return cfg


def port_spec(cfg) -> dict[str, Any]:
  """The architecture dict of `sj_ge2ms.Ge2msSJ` for a ge2ms_jax model config."""
  from ge2ms_jax import attention
  from ge2ms_jax import model as models
  windows = []
  for kind, grid in zip(cfg.kinds, models.stage_grids(cfg)):
    if kind != "attn":
      windows.append([])
      continue
    shifts = models._shifts(cfg, grid)  # noqa: SLF001 (the network's own output scales)
    groups = []
    for m, heads, shift in zip(attention.normalize_windows(cfg.window_sizes), cfg.heads_per_window, shifts):
      win = grid if m == attention.GLOBAL else (m, m)
      groups.append([int(win[0]), int(win[1]), int(heads), int(shift)])
    windows.append(groups)
  return {"stem_channels": cfg.stem_channels, "kinds": list(cfg.kinds), "dims": list(cfg.dims),
          "depths": list(cfg.depths), "head_dim": cfg.head_dim, "mlp_ratio": cfg.mlp_ratio,
          "image_size": cfg.image_size, "in_channels": cfg.in_channels, "num_classes": cfg.num_classes,
          "windows": windows}


def _quick_model(cfg):
  """The experiments' laptop-sized network (`configs.common.shrink_model_for_local`) for smoke runs."""
  from ge2ms_jax.configs import common
  return common.shrink_model_for_local(cfg)


# ---------------------------------------------------------------------------------------------
# Torch rows
# ---------------------------------------------------------------------------------------------
def _torch_setup(threads: int):
  import torch
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  sys.path.insert(0, str(Path(__file__).resolve().parent))
  return torch


def _torch_model(row: dict[str, Any], time_steps: int):
  import sj_ge2ms
  if row["name"] == "spikformer":
    from spikingjelly.activation_based.model import spikformer
    return spikformer.spikformer_cifar10(T=time_steps, num_classes=10)
  if row["name"] == "qkformer":
    from spikingjelly.activation_based.model import qkformer
    return qkformer.QKFormer(T=time_steps, in_channels=3, num_classes=10, embed_dims=384,
                             num_heads=(6, 6, 6), depths=(1, 1, 2))
  return sj_ge2ms.Ge2msSJ(row["spec"], time_steps=time_steps)


def _torch_macs_per_step(row: dict[str, Any], shape) -> int:
  """MACs of one time step: FLOPs / 2 of a T = 1 instance on one image (convs, matmuls, einsums)."""
  import torch
  from torch.utils.flop_counter import FlopCounterMode
  from spikingjelly.activation_based import functional
  model = _torch_model(row, 1).eval()
  with torch.no_grad(), FlopCounterMode(display=False) as counter:
    model(torch.zeros((1,) + tuple(shape)))
  functional.reset_net(model)
  return int(counter.get_total_flops() // 2)


def measure_torch(row: dict[str, Any]) -> dict[str, Any]:
  """Parameters, MACs per step, training and inference time and memory of one PyTorch model."""
  torch = _torch_setup(row["threads"])
  from spikingjelly.activation_based import functional
  b, shape = row["batch"], tuple(row["shape"])
  model = _torch_model(row, TIME_STEPS)
  params = sum(p.numel() for p in model.parameters())
  macs = _torch_macs_per_step(row, shape)
  g = torch.Generator().manual_seed(0)
  images = torch.randn((b,) + shape, generator=g)
  labels = torch.randint(0, 10, (b,), generator=g)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
  model.train()

  def step():
    functional.reset_net(model)
    opt.zero_grad(set_to_none=True)
    out = model(images)
    if out.ndim == 3:  # Spikformer returns [T, B, K]; its training script averages over T
      out = out.mean(0)
    loss = torch.nn.functional.cross_entropy(out, labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss)

  for _ in range(row["warmup"]):
    step()
  reset_ok = procmem.reset_peak_rss(trim=True)
  rss_before = procmem.status_bytes("VmRSS")
  times = []
  for _ in range(row["steps"]):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  mem = _memory(reset_ok, rss_before)
  model.eval()
  infer = []
  with torch.inference_mode():
    for i in range(row["warmup"] + row["steps"]):
      functional.reset_net(model)
      t0 = time.perf_counter()
      model(images)
      if i >= row["warmup"]:
        infer.append(time.perf_counter() - t0)
  return {"name": row["name"], "library": "spikingjelly", "params": params, "macs_per_step": macs,
          "train_ms_per_image": 1e3 * statistics.median(times) / b,
          "train_ms_per_image_min": 1e3 * min(times) / b,
          "inference_ms_per_image": 1e3 * statistics.median(infer) / b,
          "inference_ms_per_image_min": 1e3 * min(infer) / b,
          **mem, "torch": torch.__version__, "threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------
# ge2ms_jax rows
# ---------------------------------------------------------------------------------------------
def _jax_config(row: dict[str, Any]):
  sys.path.insert(0, str(ROOT))
  from ge2ms_jax import train
  config = train.base_config()
  config.model = model_config(row["variant"])
  if row.get("quick"):
    _quick_model(config.model)
  config.optax.lr, config.optax.wd, config.optax.clip_norm = 1e-3, 0.05, 1.0
  return config


def measure_jax(row: dict[str, Any]) -> dict[str, Any]:
  """The same quantities for ge2ms_jax: QANN training step; QANN, fused and spike-mode inference."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from ge2ms_jax import conversion, snn, train
  from ge2ms_jax import model as models
  from ge2ms_jax import state as state_lib
  config = _jax_config(row)
  cfg = config.model
  b, shape = row["batch"], tuple(row["shape"])
  setup = state_lib.make_setup(config, None, optax.constant_schedule(1e-3),
                               images=jax.ShapeDtypeStruct((b,) + shape, jnp.float32))
  net, tx = setup.net, setup.tx
  state = setup.init_on_mesh()
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, size=b).astype(np.int32)
  batch = {"image": jnp.asarray(rng.normal(size=(b,) + shape).astype(np.float32)),
           "label": jnp.asarray(labels), "target": jnp.asarray(np.eye(10, dtype=np.float32)[labels])}
  update = jax.jit(train.make_update_fn(net, tx, optax.constant_schedule(1e-3), config), donate_argnums=(0,))
  for _ in range(row["warmup"]):
    state, m = update(state, batch)
    jax.block_until_ready(m)
  reset_ok = procmem.reset_peak_rss(trim=True)
  rss_before = procmem.status_bytes("VmRSS")
  times = []
  for _ in range(row["steps"]):
    t0 = time.perf_counter()
    state, m = update(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  mem = _memory(reset_ok, rss_before)

  variables = {"params": state.params, **state.model_state}
  converted = conversion.convert(jax.device_get(variables), cfg, check=False)
  frozen = snn._frozen(cfg)  # noqa: SLF001 (the simulator's own jitted programs)
  qann = jax.jit(lambda v, x: net.apply(v, x))
  fns = {"qann": lambda: qann(variables, batch["image"]),
         "fused": lambda: snn._apply_fn(frozen, "fused", False)(converted, batch["image"])[0],  # noqa: SLF001
         "spike": lambda: snn._apply_fn(frozen, "spike", False)(converted, batch["image"])[0],  # noqa: SLF001
         "spike_stats": lambda: snn._apply_fn(frozen, "spike", True)(converted, batch["image"])[0]}  # noqa: SLF001
  for fn in fns.values():
    jax.block_until_ready(fn())
  infer: dict[str, list[float]] = {k: [] for k in fns}
  for _ in range(row["steps"]):
    for k, fn in fns.items():  # interleaved, so machine noise lands on every mode alike
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      infer[k].append(time.perf_counter() - t0)
  agree = float(jnp.mean(jnp.argmax(fns["qann"](), -1) == jnp.argmax(fns["spike"](), -1)))
  counted = models.count(cfg)
  return {"name": row["name"], "library": "ge2ms_jax", "params": counted["params"],
          "macs_per_step": counted["macs"], "code": [cfg.neuron.base, cfg.neuron.groups],
          "train_ms_per_image": 1e3 * statistics.median(times) / b,
          "train_ms_per_image_min": 1e3 * min(times) / b,
          "inference_ms_per_image": {k: 1e3 * statistics.median(v) / b for k, v in infer.items()},
          "inference_ms_per_image_min": {k: 1e3 * min(v) / b for k, v in infer.items()},
          "qann_spike_agreement": agree, **mem, "jax": jax.__version__,
          "conv_impl": models.L.resolve_conv_impl(cfg.conv_impl)}


# ---------------------------------------------------------------------------------------------
# The port computes ge2ms_jax's STBP network
# ---------------------------------------------------------------------------------------------
def port_check(row: dict[str, Any]) -> dict[str, Any]:
  """JAX STBP `tiny` with perturbed BatchNorm (so no branch is an identity) vs the port with its weights."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  torch = _torch_setup(row["threads"])
  import sj_ge2ms
  from ge2ms_jax import model as models
  cfg = model_config(row["variant"], neuron_kind="lif")
  if row.get("quick"):
    _quick_model(cfg)
  net = models.build(cfg)
  shape = (cfg.image_size, cfg.image_size, cfg.in_channels)
  x = np.random.default_rng(1).normal(size=(16,) + shape).astype(np.float32)
  variables = jax.device_get(net.init({"params": jax.random.key(0)}, jnp.asarray(x)))
  rng = np.random.default_rng(2)

  def perturb(path, leaf):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return (rng.uniform(0.5, 1.5, leaf.shape)).astype(np.float32)
    if "bias" in name or "mean" in name:
      return rng.normal(0.0, 0.3, leaf.shape).astype(np.float32)
    if "var" in name:
      return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
    if "head" in name and "kernel" in name:
      return rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)
    return np.asarray(leaf)

  variables = jax.tree_util.tree_map_with_path(perturb, variables)
  logits_jax = np.asarray(net.apply(variables, jnp.asarray(x)))
  port = sj_ge2ms.Ge2msSJ(port_spec(cfg), time_steps=cfg.time_steps).eval()
  sj_ge2ms.load_flax_variables(port, variables)
  with torch.no_grad():
    logits_torch = port(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  scale = float(np.max(np.abs(logits_jax)))
  return {"name": "port_check", "variant": row["variant"], "images": int(x.shape[0]),
          "params_jax": sum(int(np.size(v)) for v in jax.tree.leaves(variables["params"])),
          "params_port": sj_ge2ms.num_params(port),
          "max_abs_logit_diff": float(np.max(np.abs(logits_jax - logits_torch))), "max_abs_logit": scale,
          "prediction_agreement": float(np.mean(logits_jax.argmax(-1) == logits_torch.argmax(-1)))}


# ---------------------------------------------------------------------------------------------
# Accuracy per CPU-minute on the embedded Fashion-MNIST subset
# ---------------------------------------------------------------------------------------------
def _fm_data():
  import numpy as np
  d = np.load(EMBEDDED)
  return d["train_images"], d["train_labels"].astype(np.int64), d["test_images"], d["test_labels"].astype(np.int64)


def _normalize(images, norm):
  """uint8 `[N, 28, 28]` -> float32 `[N, 28, 28, 1]`, `(x / 255 - mean) / std` as the pipeline's
  `normalize('fashion_mnist')`; `norm` is `(mean, std)`, read from its table by the parent process."""
  import numpy as np
  mean, std = norm
  return ((images.astype(np.float32) / 255.0 - mean) / std)[..., None]


def _fm_batches(images, labels, batch: int, seed: int, norm):
  """Endless augmented batches, identical for both libraries: random crop (pad 2), flip, normalise.

  Yields `(images [B, 28, 28, 1] float32, labels [B] int64)`.
  """
  import numpy as np
  rng = np.random.default_rng(seed)
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
  while True:
    order = rng.permutation(len(images))
    for i in range(0, len(order) - batch + 1, batch):
      idx = order[i:i + batch]
      dy, dx = rng.integers(0, 5, size=(2, batch))
      crops = np.stack([padded[j, y:y + 28, x:x + 28] for j, y, x in zip(idx, dy, dx)])
      flip = rng.random(batch) < 0.5
      crops[flip] = crops[flip, :, ::-1]
      yield _normalize(crops, norm), labels[idx]


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
  """Linear warm-up, then cosine to 0 (the schedule of `optim.make_schedule`)."""
  if step < warmup:
    return peak * step / warmup
  return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _eval_points(total: int, n: int) -> list[int]:
  return sorted({max(1, round(total * i / n)) for i in range(1, n + 1)})


def curve_jax(row: dict[str, Any]) -> dict[str, Any]:
  """ge2ms_jax `tiny` QANN trained for the budget; accuracy of the converted SNN in spike mode."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  sys.path.insert(0, str(ROOT))
  from ge2ms_jax import conversion, optim, snn, train
  from ge2ms_jax import model as models
  from ge2ms_jax import state as state_lib
  from ge2ms_jax.configs import fashion_mnist
  config = fashion_mnist.get_config()
  if row.get("quick"):
    _quick_model(config.model)
  config.batch_size = row["batch"]
  cfg = config.model
  net = models.build(cfg)
  xtr, ytr, xte, yte = _fm_data()
  test_images = jnp.asarray(_normalize(xte, row["norm"]))

  def program(total):
    config.schedule.warmup_steps = max(1, round(0.05 * total))
    config.schedule.warmup_epochs = 0.0
    schedule = optim.make_schedule(config, total, 1.0)
    setup = state_lib.make_setup(config, None, schedule, net=net,
                                 images=jax.ShapeDtypeStruct((row["batch"], 28, 28, 1), jnp.float32))
    update = jax.jit(train.make_update_fn(net, setup.tx, schedule, config), donate_argnums=(0,))
    return setup.init_on_mesh(), update

  def as_batch(x, y):
    return {"image": jnp.asarray(x), "label": jnp.asarray(y, jnp.int32),
            "target": jnp.asarray(np.eye(10, dtype=np.float32)[y])}

  # Probe: the step time after compilation (not counted), to size the run to the budget.
  batches = _fm_batches(xtr, ytr, row["batch"], seed=0, norm=row["norm"])
  state, update = program(1000)
  t0 = time.perf_counter()
  state, m = update(state, as_batch(*next(batches)))
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  probe = []
  for _ in range(row["probe_warmup"] + row["probe_steps"]):
    t0 = time.perf_counter()
    state, m = update(state, as_batch(*next(batches)))
    jax.block_until_ready(m)
    probe.append(time.perf_counter() - t0)
  step_s = statistics.median(probe[row["probe_warmup"]:])
  total = max(5, int((row["budget_s"] - compile_s) / step_s))

  def evaluate(state):
    variables = jax.device_get({"params": state.params, **state.model_state})
    converted = conversion.convert(variables, cfg, check=False)
    correct = 0
    for i in range(0, len(yte), 500):
      out = snn.simulate(converted, test_images[i:i + 500], "spike", config=cfg)
      correct += int(np.sum(np.asarray(out.logits).argmax(-1) == yte[i:i + 500]))
    return correct / len(yte)

  batches = _fm_batches(xtr, ytr, row["batch"], seed=1, norm=row["norm"])
  clock = time.perf_counter()
  state, update = program(total)  # compilation counts against the budget
  points, trained, evals = [], 0.0, _eval_points(total, row["points"])
  for step in range(1, total + 1):
    state, m = update(state, as_batch(*next(batches)))
    if step in evals:
      jax.block_until_ready(m)
      trained += time.perf_counter() - clock
      points.append({"step": step, "minutes": trained / 60, "test_top1": evaluate(state),
                     "loss": float(m["loss"])})
      print(json.dumps(points[-1]), file=sys.stderr, flush=True)
      clock = time.perf_counter()
  return {"name": "curve_ge2ms_tiny", "library": "ge2ms_jax", "model": "tiny (28x28x1), QANN code (2, 4)",
          "evaluated_as": "converted SNN, spike mode (T = 4)", "budget_minutes": row["budget_s"] / 60,
          "probe_step_ms": 1e3 * step_s, "probe_compile_s": compile_s, "steps": total,
          "batch": row["batch"], "train_minutes": trained / 60, "points": points,
          "final_test_top1": points[-1]["test_top1"]}


def curve_torch(row: dict[str, Any]) -> dict[str, Any]:
  """The SpikingJelly port of `tiny` (LIF, T = 4) trained for the budget by surrogate gradients."""
  torch = _torch_setup(row["threads"])
  import sj_ge2ms
  xtr, ytr, xte, yte = _fm_data()
  test_images = torch.from_numpy(_normalize(xte, row["norm"]).transpose(0, 3, 1, 2).copy())

  def program():
    torch.manual_seed(0)
    model = sj_ge2ms.Ge2msSJ(row["spec"], time_steps=TIME_STEPS)
    # Weight decay on kernels only, as the project's mask does (no decay on BN scale/bias, head bias).
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim == 4]
    rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.ndim == 4)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                            lr=row["lr"], betas=(0.9, 0.999), eps=1e-8)
    return model.train(), opt

  def step(model, opt, x, y, lr):
    for group in opt.param_groups:
      group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())),
                                             torch.from_numpy(y))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss)

  batches = _fm_batches(xtr, ytr, row["batch"], seed=0, norm=row["norm"])
  model, opt = program()
  t0 = time.perf_counter()
  step(model, opt, *next(batches), 1e-4)
  first_s = time.perf_counter() - t0
  probe = []
  for _ in range(row["probe_warmup"] + row["probe_steps"]):
    t0 = time.perf_counter()
    step(model, opt, *next(batches), 1e-4)
    probe.append(time.perf_counter() - t0)
  step_s = statistics.median(probe[row["probe_warmup"]:])
  total = max(5, int(row["budget_s"] / step_s))

  def evaluate(model):
    model.eval()
    correct = 0
    with torch.inference_mode():
      for i in range(0, len(yte), 500):
        correct += int((model(test_images[i:i + 500]).argmax(-1).numpy() == yte[i:i + 500]).sum())
    model.train()
    return correct / len(yte)

  batches = _fm_batches(xtr, ytr, row["batch"], seed=1, norm=row["norm"])
  clock = time.perf_counter()
  model, opt = program()
  warmup = max(1, round(0.05 * total))
  points, trained, evals = [], 0.0, _eval_points(total, row["points"])
  for s in range(1, total + 1):
    loss = step(model, opt, *next(batches), _lr(s - 1, total, row["lr"], warmup))
    if s in evals:
      trained += time.perf_counter() - clock
      points.append({"step": s, "minutes": trained / 60, "test_top1": evaluate(model), "loss": loss})
      print(json.dumps(points[-1]), file=sys.stderr, flush=True)
      clock = time.perf_counter()
  return {"name": "curve_sj_tiny", "library": "spikingjelly",
          "model": f"tiny (28x28x1) port, LIF T = {TIME_STEPS}, surrogate gradients",
          "evaluated_as": f"the trained SNN, T = {TIME_STEPS}", "budget_minutes": row["budget_s"] / 60,
          "probe_step_ms": 1e3 * step_s, "probe_first_step_s": first_s, "steps": total,
          "batch": row["batch"], "train_minutes": trained / 60, "points": points,
          "final_test_top1": points[-1]["test_top1"]}


WORKERS = {"torch": measure_torch, "jax": measure_jax, "port_check": port_check, "curve_jax": curve_jax,
           "curve_torch": curve_torch}


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def _run(row: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
  return procmem.run_worker(__file__, row, env, f"peers.py: the {row['name']} row")


def _targets(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """Ratios on the same network, ge2ms_jax against the SpikingJelly port, per variant."""
  out = {}
  for variant in ("tiny", "s"):
    ours, theirs = rows.get(f"ge2ms_{variant}"), rows.get(f"sj_{variant}")
    if not ours or not theirs:
      continue
    inf = ours["inference_ms_per_image"]
    r = {"train_speedup": theirs["train_ms_per_image"] / ours["train_ms_per_image"],
         "train_peak_memory_ratio": (ours["train_peak_rss_bytes"] / theirs["train_peak_rss_bytes"]
                                     if ours["train_peak_rss_bytes"] and theirs["train_peak_rss_bytes"] else None),
         "spike_over_sj_inference": inf["spike"] / theirs["inference_ms_per_image"],
         "spike_stats_over_sj_inference": inf["spike_stats"] / theirs["inference_ms_per_image"],
         "fused_speedup": theirs["inference_ms_per_image"] / inf["fused"]}
    r["met"] = {"train_speedup": r["train_speedup"] >= TARGETS["train_speedup_ge"],
                "train_peak_memory_ratio": r["train_peak_memory_ratio"] is not None
                and r["train_peak_memory_ratio"] <= TARGETS["train_peak_memory_ratio_le"],
                "spike_over_sj_inference": r["spike_over_sj_inference"] <= TARGETS["spike_over_sj_inference_le"],
                "fused_speedup": r["fused_speedup"] >= TARGETS["fused_speedup_ge"]}
    out[variant] = r
  return out


def _plot(curves: list[dict[str, Any]], path: Path) -> Path | None:
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return None
  fig, ax = plt.subplots(figsize=(6, 4))
  for c in curves:
    ax.plot([p["minutes"] for p in c["points"]], [100 * p["test_top1"] for p in c["points"]],
            marker="o", label=f"{c['library']}: {c['model']}")
  ax.set_xlabel("training wall-clock minutes (2 CPU cores, compilation included)")
  ax.set_ylabel("top-1 (%) on the 2,500 embedded test images")
  ax.set_title("Fashion-MNIST subset: accuracy per CPU-minute")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return path


def _machine(threads: int) -> dict[str, Any]:
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count()
  return {"cores": cores, "threads": threads, "cpu": platform.processor() or platform.machine(),
          "python": platform.python_version(), "platform": platform.platform()}


def main(argv=None) -> dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true",
                 help="laptop-sized ge2ms networks, the port rows and a 20-second curve only (smoke run)")
  p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=5, help="timed training / inference steps per row")
  p.add_argument("--threads", type=int, default=0, help="compute threads (0: the cores this process may use)")
  p.add_argument("--no_curve", action="store_true", help="skip the accuracy-per-CPU-minute runs")
  p.add_argument("--budget_minutes", type=float, default=10.0, help="training budget of each curve")
  p.add_argument("--out", default=str(RESULTS / "peers.json"))
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    row = json.loads(args.worker)
    print(json.dumps(WORKERS[row["worker"]](row)))
    return {}

  names = [r.strip() for r in args.rows.split(",") if r.strip()]
  unknown = sorted(set(names) - set(ROWS))
  if unknown:
    p.error(f"--rows: unknown rows {unknown}; choose from {', '.join(ROWS)}.")
  if args.quick:
    names = [n for n in names if n in ("sj_tiny", "ge2ms_tiny")]
  threads = args.threads or _machine(0)["cores"]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
             JAX_PLATFORMS="cpu", OMP_NUM_THREADS=str(threads))
  env.pop("JAX_NUM_CPU_DEVICES", None)
  common = {"batch": args.batch, "shape": [3, 32, 32], "threads": threads, "quick": args.quick,
            "steps": 2 if args.quick else args.steps, "warmup": 1 if args.quick else 2}
  rows: dict[str, dict[str, Any]] = {}
  for name in names:
    row = dict(common, name=name)
    if name.startswith("ge2ms_"):
      row.update(worker="jax", variant=name.split("_", 1)[1], shape=[32, 32, 3])
    else:
      row["worker"] = "torch"
      if name.startswith("sj_"):
        cfg = model_config(name.split("_", 1)[1])
        row["spec"] = port_spec(_quick_model(cfg) if args.quick else cfg)
    rows[name] = _run(row, env)
    r = rows[name]
    inf = r["inference_ms_per_image"]
    inf_text = (" ".join(f"{k} {v:.2f}" for k, v in inf.items()) if isinstance(inf, dict) else f"{inf:.2f}")
    print(f"{name:11s} params {r['params'] / 1e6:6.2f}M  MACs/step {r['macs_per_step'] / 1e6:8.1f}M  "
          f"train {r['train_ms_per_image']:7.2f} ms/img  peak {(r['train_peak_rss_bytes'] or 0) / 2**30:5.2f} GiB"
          f"  inference ms/img: {inf_text}", flush=True)
  check = _run(dict(common, name="port_check", worker="port_check", variant="tiny"), env)
  print(f"port check: params JAX {check['params_jax']:,} / port {check['params_port']:,}; max |logit diff| "
        f"{check['max_abs_logit_diff']:.2e} (max |logit| {check['max_abs_logit']:.2f}); predictions agree "
        f"{100 * check['prediction_agreement']:.1f}%", flush=True)
  curves = []
  if not args.no_curve:
    budget_s = 20.0 if args.quick else 60.0 * args.budget_minutes
    from ge2ms_jax.data import preprocess
    mean, std = preprocess.NORMALIZATION_STATS["fashion_mnist"]
    base = dict(common, batch=64, budget_s=budget_s, norm=[mean[0], std[0]], probe_steps=3 if args.quick else 10,
                probe_warmup=1 if args.quick else 5,
                points=2 if args.quick else 5, lr=4e-3)
    cfg = model_config("tiny", image_size=28, in_channels=1)
    spec = port_spec(_quick_model(cfg) if args.quick else cfg)
    for worker in ("curve_jax", "curve_torch"):
      c = _run(dict(base, name=worker, worker=worker, spec=spec), env)
      curves.append(c)
      print(f"{c['library']:12s} {c['steps']} steps in {c['train_minutes']:.1f} min: " +
            ", ".join(f"{p['minutes']:.1f} min {100 * p['test_top1']:.2f}%" for p in c["points"]), flush=True)
  result = {"benchmark": "peers", "quick": args.quick, "machine": _machine(threads),
            "config": {"batch": args.batch, "input": [32, 32, 3], "classes": 10, "time_steps": TIME_STEPS,
                       "timed_steps": common["steps"], "warmup_steps": common["warmup"]},
            "rows": list(rows.values()), "port_check": check, "targets": TARGETS,
            "ratios": _targets(rows), "curves": curves}
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  if curves:
    plot = _plot(curves, out.with_name(out.stem + "_curve.png"))
    result["curve_plot"] = plot.name if plot else None
  out.write_text(json.dumps(result, indent=1) + "\n")
  print(json.dumps(result["ratios"], indent=1))
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
