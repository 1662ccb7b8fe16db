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


def train_step(config, devices=None):
  """The trainer's own update step for `config` on a mesh of `devices`, ready to lower or run.

  Returns a dict: `step` (`train.jit_update_step`, state donated), `init` (jitted, `rng_data ->
  TrainState` laid out on the mesh), `shapes` / `abstract` (the state's shapes, and with shardings),
  `inputs` (a synthetic batch's `ShapeDtypeStruct`s with the batch sharding: `image` f32
  [B, S, S, C], `label` i32 [B], `target` f32 [B, K]), `mesh`, `net`.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ge2ms_jax import optim, sharding, state, train  # pylint: disable=g-import-not-at-top
  m = config.model
  mesh = sharding.make_mesh(config.mesh, devices)
  steps_per_epoch = 1000.0  # Only shapes the schedule's values, not the program.
  schedule = optim.make_schedule(config, max(1, config.total_steps or 100_000), steps_per_epoch)
  setup = state.make_setup(config, mesh, schedule)
  batch_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  b = config.batch_size
  inputs = {"image": jax.ShapeDtypeStruct((b, m.image_size, m.image_size, m.in_channels), jnp.float32,
                                          sharding=batch_sharding),
            "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch_sharding),
            "target": jax.ShapeDtypeStruct((b, m.num_classes), jnp.float32, sharding=batch_sharding)}
  return {"step": train.jit_update_step(setup.net, setup.tx, schedule, config, setup.shardings, batch_sharding,
                                        replicated),
          "init": jax.jit(setup.init, in_shardings=replicated, out_shardings=setup.shardings),
          "shapes": setup.shapes, "abstract": setup.abstract, "inputs": inputs, "mesh": mesh, "net": setup.net}
