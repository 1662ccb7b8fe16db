"""What a training run cost: FLOPs, wall time, and the fraction of the machine's peak it used.

    cost = training_cost(model.count(config.model)["macs"], config.batch_size, result)
    # result: the workdir's result.json (train.py)

* Training FLOPs are the fast-training records' convention, `6 x MACs per image x images seen` (a
  forward pass is 2 FLOPs per MAC, the backward pass twice that), with `MACs` the network's MACs per
  image as an ANN (`model.count`). Evaluation's forward passes during training are counted apart,
  `2 x MACs x images evaluated`.
* The achieved rate is training FLOPs over the seconds spent in training steps (evaluation and
  checkpoint saves excluded; compilation included), against the CPU's peak, `cores x clock x FLOPs
  per cycle` (`cpu_peak`), read from the machine.
"""

from __future__ import annotations

import json
import os
import platform
from typing import Any, Mapping

# Single-precision FLOPs per cycle and core by the widest vector FMA the CPU has, assuming two FMA
# units per core (server cores since Haswell / Skylake-SP; a one-unit core has half): a 512-bit FMA
# is 16 lanes x 2 FLOPs, a 256-bit one 8 x 2, SSE's 128-bit multiply and add 4 + 4 per unit.
FLOPS_PER_CYCLE = (("avx512f", 64), ("fma", 32), ("sse2", 16))


def read_result(workdir: str) -> dict[str, Any] | None:
  """The run's `result.json` (written when training finished or was preempted), or None."""
  path = os.path.join(workdir, "result.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _cpuinfo() -> dict[str, str]:
  """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
  out: dict[str, str] = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if not line.strip():
          break
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
  except OSError:
    pass
  return out


def _max_clock_ghz(info: Mapping[str, str]) -> tuple[float | None, str]:
  try:
    with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
      return int(f.read().strip()) / 1e6, "cpufreq cpuinfo_max_freq"
  except (OSError, ValueError):
    pass
  if info.get("cpu MHz"):
    return float(info["cpu MHz"]) / 1e3, "/proc/cpuinfo cpu MHz"
  return None, "unknown"


def cpu_peak() -> dict[str, Any]:
  """The CPU's single-precision peak as read from this machine.

  Returns:
    `{"model", "cores", "clock_ghz", "clock_source", "vector", "flops_per_cycle", "peak_gflops"}`;
    `peak_gflops = cores x clock_ghz x flops_per_cycle` (None where the clock is unknown). `cores`
    are the cores this process may run on.
  """
  info = _cpuinfo()
  flags = set(info.get("flags", "").split())
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count() or 1
  vector, per_cycle = next(((f, n) for f, n in FLOPS_PER_CYCLE if f in flags), ("scalar", 2))
  clock, source = _max_clock_ghz(info)
  return {"model": info.get("model name", platform.processor()), "cores": cores, "clock_ghz": clock,
          "clock_source": source, "vector": vector, "flops_per_cycle": per_cycle,
          "peak_gflops": cores * clock * per_cycle if clock else None}


def training_cost(macs_per_image: float, batch_size: int, result: Mapping[str, Any] | None,
                  peak: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
  """The cost of a run from its `result.json`.

  Args:
    macs_per_image: the network's MACs per image as an ANN (`model.count(config.model)["macs"]`).
    batch_size: the global batch of one training step.
    result: the workdir's `result.json` (`step`, `seconds`, and from runs that record them
      `train_seconds`, `eval_images`); None: no run.
    peak: `cpu_peak()` (default: this machine's).

  Returns:
    None without a run; else `{"images_seen", "train_flops", "train_pflops", "eval_images",
    "eval_flops", "seconds", "train_seconds", "train_gflops_per_s", "peak_gflops", "peak_fraction",
    "cpu"}` (the rate and fraction None when the run did not record its step time).
  """
  if not result or not result.get("step"):
    return None
  peak = cpu_peak() if peak is None else peak
  images = int(result["step"]) * int(batch_size)
  flops = 6.0 * float(macs_per_image) * images
  eval_images = result.get("eval_images")
  train_seconds = result.get("train_seconds")
  rate = flops / train_seconds / 1e9 if train_seconds else None
  return {"images_seen": images, "train_flops": flops, "train_pflops": flops / 1e15,
          "eval_images": eval_images,
          "eval_flops": 2.0 * float(macs_per_image) * eval_images if eval_images is not None else None,
          "seconds": result.get("seconds"), "train_seconds": train_seconds, "train_gflops_per_s": rate,
          "peak_gflops": peak.get("peak_gflops"),
          "peak_fraction": rate / peak["peak_gflops"] if rate and peak.get("peak_gflops") else None,
          "cpu": dict(peak)}


def format_cost(cost: Mapping[str, Any]) -> str:
  """One line: training PFLOP, images, wall time, achieved GFLOP/s and the fraction of peak."""
  line = (f"{cost['train_pflops']:.3f} PFLOP of training (6 x MACs x {cost['images_seen']:,} images)")
  if cost.get("eval_flops") is not None:
    line += f" + {cost['eval_flops'] / 1e15:.4f} PFLOP of evaluation during training"
  if cost.get("seconds"):
    line += f", {cost['seconds'] / 60:.0f} min"
  if cost.get("train_gflops_per_s"):
    line += f"; training steps at {cost['train_gflops_per_s']:.0f} GFLOP/s"
  if cost.get("peak_fraction"):
    cpu = cost["cpu"]
    line += (f", {100 * cost['peak_fraction']:.0f}% of the CPU's {cost['peak_gflops']:.0f} GFLOP/s peak "
             f"({cpu['cores']} cores x {cpu['clock_ghz']:.2f} GHz x {cpu['flops_per_cycle']} FLOPs/cycle, "
             f"{cpu['vector']})")
  return line
