"""One prepared script for the day a GPU or TPU is lent: training speed, memory, compile times, CIFAR-10.

    python benchmarks/accelerator.py                      # on a GPU/TPU, under 8 minutes
    python benchmarks/accelerator.py --cifar10 cifar10-train-jpeg.tar.gz   # + a 5-minute CIFAR-10 run
    python benchmarks/accelerator.py --smoke              # any machine, seconds: the same code, small

Rows (synthetic data, the trainer's own update step `train.jit_update_step` on all local devices,
`model.conv_impl = "auto"`: `lax.conv` and flax's BatchNorm on GPU/TPU):
  * `s` at 32 x 32, `experiments/cifar10.py` (the GPU recipe, batch 256);
  * `b` at 224 x 224, `experiments/imagenet.py` (bfloat16, 64 images per device).
Each row records lowering and compile seconds, then times `--steps` updates after two warm-up
steps: training images/s and the devices' peak memory (`memory_stats()["peak_bytes_in_use"]`
where the backend reports it, else the compiled program's planned bytes). With `--cifar10 PATH` (an
ImageFolder directory or `.tar.gz`), `experiments/cifar10.py:variant=s` then trains for
`--cifar10_seconds` (default 300) and stops with a preemption signal; its evaluation curve
(top-1 against wall time) is read from the run's `metrics.jsonl`. Everything is written to
`benchmarks/results/accelerator.json` (`--out`). On CPU without `--smoke` it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  pylint: disable=wrong-import-position
import jax  # noqa: E402
import numpy as np  # noqa: E402

from ge2ms_jax import config_utils  # noqa: E402

ROWS = {
    "s_32": dict(spec="experiments/cifar10.py:variant=s", per_device_batch=None),
    "b_224": dict(spec="experiments/imagenet.py:variant=b", per_device_batch=64),
}
SMOKE_ROWS = {
    "s_32": dict(spec="experiments/cifar10.py:variant=s,runlocal", per_device_batch=None),
    "b_224": dict(spec="experiments/imagenet.py:variant=b,runlocal", per_device_batch=2),
}


def _peak_bytes(devices) -> int | None:
  stats = [d.memory_stats() for d in devices]
  if not all(stats) or not all("peak_bytes_in_use" in s for s in stats):
    return None
  return max(int(s["peak_bytes_in_use"]) for s in stats)


def measure(name: str, spec: str, per_device_batch: int | None, steps: int) -> dict:
  """Compiles and times one row's training step on every local device; returns its figures."""
  devices = jax.local_devices()
  overrides = {"ckpt.async_save": False}
  if per_device_batch:
    overrides["batch_size"] = per_device_batch * len(devices)
  config = config_utils.load_config(spec, overrides)
  program = common.train_step(config, devices)
  rng = np.random.default_rng(0)
  shapes = program["inputs"]
  batch = {"image": rng.standard_normal(shapes["image"].shape, np.float32),
           "label": rng.integers(0, config.model.num_classes, shapes["label"].shape).astype(np.int32)}
  batch["target"] = np.eye(config.model.num_classes, dtype=np.float32)[batch["label"]]
  batch = {k: jax.device_put(v, shapes[k].sharding) for k, v in batch.items()}
  with jax.set_mesh(program["mesh"]):
    t0 = time.perf_counter()
    lowered = program["step"].lower(program["abstract"], shapes)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    state = program["init"](jax.random.key_data(jax.random.key(0)))
    for _ in range(2):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    t3 = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - t3
  planned = compiled.memory_analysis()
  peak = _peak_bytes(devices)
  return {"row": name, "config": spec, "backend": jax.default_backend(), "devices": len(devices),
          "conv_impl": config.model.conv_impl, "global_batch": config.batch_size,
          "image_size": config.model.image_size, "dtype": config.model.dtype,
          "lower_seconds": t1 - t0, "compile_seconds": t2 - t1, "timed_steps": steps,
          "step_seconds": seconds / steps, "images_per_second": config.batch_size * steps / seconds,
          "peak_bytes_per_device": peak, "peak_source": "memory_stats" if peak is not None else None,
          "planned_bytes_per_device": None if planned is None else int(
              planned.argument_size_in_bytes + planned.temp_size_in_bytes),
          "final_loss": float(metrics["loss"])}


def cifar10_curve(source: str, seconds: float, smoke: bool) -> dict:
  """Trains `s` on CIFAR-10 for `seconds`, stops it with SIGTERM (it saves and exits), and returns
  its evaluations `[{"step", "seconds", "top1"}]`."""
  workdir = tempfile.mkdtemp(prefix="ge2ms_accel_c10_")
  spec = "experiments/cifar10.py:variant=s" + (",runlocal" if smoke else "")
  cmd = [sys.executable, "-m", "ge2ms_jax.main", "--config", spec, "--workdir", workdir, "--mode", "train",
         f"--config.data.source={source}", "--config.evals.every_steps=100" if not smoke else
         "--config.evals.every_steps=10"]
  start = time.time()
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    proc.wait(timeout=seconds)
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGTERM)  # The trainer saves a checkpoint and exits.
    proc.wait(timeout=120)
  records = []
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      records = [json.loads(line) for line in f if line.strip()]
  evals = [{"step": r["step"], "seconds": r["time"] - start, "top1": r["eval/top1"]}
           for r in records if "eval/top1" in r]
  return {"config": spec, "source": source, "budget_seconds": seconds, "exit_code": proc.returncode,
          "evals": evals, "workdir": workdir}


def main(argv=None) -> dict:
  """Runs the rows (and the CIFAR-10 curve), saves the JSON; returns the result."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--smoke", "--quick", dest="smoke", action="store_true",
                      help="the same code on the runlocal networks, seconds")
  parser.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
  parser.add_argument("--steps", type=int, default=None, help="timed updates per row (default 20; smoke 2)")
  parser.add_argument("--cifar10", default=None, help="CIFAR-10 ImageFolder directory or .tar.gz")
  parser.add_argument("--cifar10_seconds", type=float, default=300.0)
  parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/accelerator.json)")
  args = parser.parse_args(argv)
  backend = jax.default_backend()
  if backend == "cpu" and not args.smoke:
    print("accelerator.py: no GPU or TPU here (backend cpu); nothing measured. --smoke runs the same "
          "code on small networks.")
    return {}
  steps = args.steps or (2 if args.smoke else 20)
  rows = []
  table = SMOKE_ROWS if args.smoke else ROWS
  names = args.rows.split(",") if args.rows else list(table)
  unknown = [n for n in names if n not in table]
  if unknown:
    parser.error(f"unknown rows {unknown}; choose from {list(table)}.")
  for name, row in ((n, table[n]) for n in names):
    rows.append(measure(name, row["spec"], row["per_device_batch"], steps))
    r = rows[-1]
    peak = r["peak_bytes_per_device"] or r["planned_bytes_per_device"]
    print(f"{name}: {r['images_per_second']:.1f} images/s on {r['devices']} {backend} device(s), "
          f"batch {r['global_batch']}, peak {peak / 2**30:.2f} GiB/device ({r['peak_source'] or 'planned'}), "
          f"compile {r['compile_seconds']:.1f} s", flush=True)
  result = {"machine": common.machine(), "smoke": args.smoke, "rows": rows}
  if args.cifar10:
    result["cifar10"] = cifar10_curve(args.cifar10, args.cifar10_seconds, args.smoke)
    evals = result["cifar10"]["evals"]
    print(f"cifar10: {len(evals)} evaluations; last top-1 "
          f"{evals[-1]['top1'] * 100:.2f}% at {evals[-1]['seconds']:.0f} s" if evals else "cifar10: no evaluation")
  path = common.save(result, args.out, "accelerator_smoke.json" if args.smoke else "accelerator.json")
  print(f"wrote {path}")
  return result


if __name__ == "__main__":
  main()
