"""Shared measurement helpers of the benchmark scripts: interleaved timing, machine facts, JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import jax

RESULTS = Path(__file__).resolve().parent / "results"


def cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def machine() -> dict[str, Any]:
  """What the numbers were measured on."""
  return {"cores": cores(), "platform": platform.platform(), "python": platform.python_version(),
          "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
          "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}


def time_interleaved(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, dict[str, float]]:
  """Median and spread of each function's wall time, measured in interleaved rounds.

  Every function is called once first (compilation, warm-up). Then each round calls every function
  once, so that a busy phase of a shared machine lands on all rows alike.

  Returns:
    `{name: {"median_s", "min_s", "max_s"}}`.
  """
  for fn in fns.values():
    jax.block_until_ready(fn())
  times: dict[str, list[float]] = {k: [] for k in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t)
  return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)} for k, v in times.items()}


def save(result: dict[str, Any], out: str | os.PathLike | None, default_name: str) -> Path:
  """Writes `result` as JSON to `out` (or `benchmarks/results/<default_name>`); returns the path."""
  path = Path(out) if out else RESULTS / default_name
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=1, default=str) + "\n")
  return path


def compiled_temp_bytes(fn: Callable, *args) -> int | None:
  """Temporary memory XLA plans for `jit(fn)(*args)` (its compiled memory analysis), in bytes."""
  analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
  return None if analysis is None else int(analysis.temp_size_in_bytes)
