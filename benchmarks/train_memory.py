"""Benchmark: training memory and step time over the number of time steps T, QANN against STBP.

The claim (METHOD.md §1, "constant training overhead"): the quantized ANN trains with the one-pass
quantizer, so its training memory and time do not depend on T, while the STBP baseline (the same
network with LIF neurons trained through T steps) grows with T.

One run measures, for T = 1, 2, 4, 8, 16, on the same `tiny` model and the same batch:

* `qann` rows: the Ge2mS-T quantized ANN with binary codes (b = 2, G = T, so T = G(b-1) = T);
* `stbp` rows: `neuron_kind = "lif"`, `time_steps = T`;

each in a fresh process (so the resident-set numbers do not mix), the full training step of the
trainer (`train.make_update_fn`: forward, cross-entropy, backward, AdamW with clipping, BatchNorm
statistics), jitted with the state donated. Per row:

* `compiled_peak_bytes`: XLA's memory analysis of the compiled step, arguments + outputs +
  temporaries - aliased (donated) bytes; `temp_bytes` alone is the activation memory;
* `rss_steps_peak_bytes`: the process's peak resident set while running the steps (the high-water
  mark is reset after compilation); `rss_process_peak_bytes`: over the whole process;
* `rss_steps_increase_bytes`: that peak minus the resident set just before the steps (what the
  steps allocate beyond the runtime, compiled code and state already resident);
* `step_ms`: median wall time of a step, `step_ms_min` the fastest (less disturbed by other load
  on a shared machine); `images_per_sec` from the median.

Ratios: max/min over T of the QANN's compiled peak (target <= 1.05) and the STBP's T=16 / T=1
(reported; it should exceed 1). A second table gives images/s of the `tiny` (28x28x1) and `s`
(32x32x3) QANN training steps.

  python benchmarks/train_memory.py                 # writes benchmarks/results/train_memory.json
  python benchmarks/train_memory.py --quick --out /tmp/train_memory.json   # small, for tests
"""

from __future__ import annotations

import argparse
import json
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
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "train_memory.json"
TIME_STEPS = (1, 2, 4, 8, 16)
QUICK_TIME_STEPS = (1, 4)
TARGET_QANN_RATIO = 1.05


# ---------------------------------------------------------------------------------------------
# One measurement (runs in a worker process)
# ---------------------------------------------------------------------------------------------
def _config(kind: str, t: int, variant: str, image_shape: tuple[int, int, int], quick: bool):
  sys.path.insert(0, str(ROOT))
  from ge2ms_jax.configs import common
  config = common.base_config()
  config.model = common.model_config(variant)
  config.model.image_size, config.model.in_channels = image_shape[0], image_shape[2]
  config.model.num_classes = 10
  if quick:  # The experiments' laptop-sized network.
    common.shrink_model_for_local(config.model)
  if kind == "qann":
    config.model.neuron_kind = "expg"
    config.model.neuron.base = 2
    config.model.neuron.groups = t      # T = groups * (base - 1) = t.
  elif kind == "stbp":
    config.model.neuron_kind = "lif"
    config.model.time_steps = t
  else:
    raise ValueError(f"kind must be 'qann' or 'stbp', got {kind!r}.")
  return config


def measure(kind: str, t: int, *, variant: str = "tiny", image_shape=(28, 28, 1), batch: int = 16,
            steps: int = 3, quick: bool = False) -> dict[str, Any]:
  """Compiles and runs the training step of one configuration; returns its row."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from ge2ms_jax import state as state_lib
  from ge2ms_jax import train

  config = _config(kind, t, variant, tuple(image_shape), quick)
  setup = state_lib.make_setup(config, None, optax.constant_schedule(1e-3),
                               images=jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32))
  net, tx = setup.net, setup.tx
  state = setup.init_on_mesh()
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, size=batch).astype(np.int32)
  batch_arrays = {"image": jnp.asarray(rng.normal(size=(batch, *image_shape)).astype(np.float32)),
                  "label": jnp.asarray(labels),
                  "target": jnp.asarray(np.eye(10, dtype=np.float32)[labels])}
  update = jax.jit(train.make_update_fn(net, tx, optax.constant_schedule(1e-3), config),
                   donate_argnums=(0,))
  start = time.perf_counter()
  compiled = update.lower(state, batch_arrays).compile()
  compile_s = time.perf_counter() - start
  ma = compiled.memory_analysis()
  mem = {name: int(getattr(ma, f"{name}_size_in_bytes", 0) or 0)
         for name in ("argument", "output", "temp", "alias", "generated_code")}

  state, m = compiled(state, batch_arrays)  # Warm-up.
  jax.block_until_ready(m)
  rss_before = procmem.status_bytes("VmRSS")
  reset = procmem.reset_peak_rss()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = compiled(state, batch_arrays)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)
  return {
      "kind": kind, "T": t, "variant": variant, "image_shape": list(image_shape), "batch": batch,
      "neuron_kind": config.model.neuron_kind, "base": config.model.neuron.base,
      "groups": config.model.neuron.groups, "time_steps": config.model.time_steps,
      "compiled_peak_bytes": mem["argument"] + mem["output"] + mem["temp"] - mem["alias"],
      "temp_bytes": mem["temp"], "argument_bytes": mem["argument"], "output_bytes": mem["output"],
      "alias_bytes": mem["alias"],
      "rss_before_steps_bytes": rss_before,
      "rss_steps_peak_bytes": procmem.status_bytes("VmHWM") if reset else None,
      "rss_steps_increase_bytes": (procmem.status_bytes("VmHWM") - rss_before) if reset and rss_before
                                  else None,
      "rss_process_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      "compile_s": compile_s, "step_times_s": times, "step_ms": 1e3 * step_s,
      "step_ms_min": 1e3 * min(times),
      "images_per_sec": batch / step_s, "loss": float(m["loss"]),
  }


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def _run_worker(spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
  return procmem.run_worker(__file__, spec, env, f"worker {spec}")


def _ratio(rows, key) -> float:
  values = [r[key] for r in rows if r[key]]
  return max(values) / min(values) if values else float("nan")


def _machine() -> dict[str, Any]:
  import jax
  import jaxlib
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count()
  return {"cores": cores, "cpu": platform.processor() or platform.machine(),
          "python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "jax_backend": jax.default_backend()}


def main(argv=None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="the laptop-sized network, T in (1, 4), fewer steps (for tests)")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--throughput_batch", type=int, default=64)
  parser.add_argument("--out", default=str(DEFAULT_OUT))
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    spec = json.loads(args.worker)
    print(json.dumps(measure(**spec)))
    return {}

  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  env.setdefault("JAX_PLATFORMS", "cpu")
  env.pop("JAX_NUM_CPU_DEVICES", None)  # One device per worker.
  time_steps = QUICK_TIME_STEPS if args.quick else TIME_STEPS
  steps = 2 if args.quick else args.steps
  rows = []
  for kind in ("qann", "stbp"):
    for t in time_steps:
      row = _run_worker(dict(kind=kind, t=t, batch=args.batch, steps=steps, quick=args.quick), env)
      rows.append(row)
      print(f"{kind:5s} T={t:2d}: compiled peak {row['compiled_peak_bytes'] / 2**20:8.1f} MiB "
            f"(temp {row['temp_bytes'] / 2**20:8.1f}), steps RSS peak "
            f"{(row['rss_steps_peak_bytes'] or 0) / 2**20:8.1f} MiB (+"
            f"{(row['rss_steps_increase_bytes'] or 0) / 2**20:7.1f}), step {row['step_ms']:8.1f} ms "
            f"(fastest {row['step_ms_min']:8.1f})",
            flush=True)
  throughput = []
  for variant, shape in (("tiny", (28, 28, 1)), ("s", (32, 32, 3))):
    row = _run_worker(dict(kind="qann", t=4, variant=variant, image_shape=shape,
                           batch=args.throughput_batch, steps=steps, quick=args.quick), env)
    throughput.append({k: row[k] for k in ("variant", "image_shape", "batch", "step_ms",
                                           "images_per_sec", "compiled_peak_bytes")})
    print(f"{variant:4s} {shape}: {row['images_per_sec']:.1f} images/s "
          f"(batch {row['batch']}, {row['step_ms']:.1f} ms/step)", flush=True)

  qann = [r for r in rows if r["kind"] == "qann"]
  stbp = [r for r in rows if r["kind"] == "stbp"]
  first, last = min(time_steps), max(time_steps)
  def over(rs, key, a, b):
    num = next(r[key] for r in rs if r["T"] == a)
    den = next(r[key] for r in rs if r["T"] == b)
    return num / den if num is not None and den else None
  ratios = {
      "qann_compiled_peak_max_over_min": _ratio(qann, "compiled_peak_bytes"),
      "qann_temp_max_over_min": _ratio(qann, "temp_bytes"),
      "qann_rss_steps_peak_max_over_min": _ratio(qann, "rss_steps_peak_bytes"),
      "qann_rss_steps_increase_max_over_min": _ratio(qann, "rss_steps_increase_bytes"),
      "qann_step_time_max_over_min": _ratio(qann, "step_ms"),
      "qann_fastest_step_time_max_over_min": _ratio(qann, "step_ms_min"),
      f"stbp_compiled_peak_T{last}_over_T{first}": over(stbp, "compiled_peak_bytes", last, first),
      f"stbp_temp_T{last}_over_T{first}": over(stbp, "temp_bytes", last, first),
      f"stbp_rss_steps_peak_T{last}_over_T{first}": over(stbp, "rss_steps_peak_bytes", last, first),
      f"stbp_rss_steps_increase_T{last}_over_T{first}":
          over(stbp, "rss_steps_increase_bytes", last, first),
      f"stbp_step_time_T{last}_over_T{first}": over(stbp, "step_ms", last, first),
      f"stbp_fastest_step_time_T{last}_over_T{first}": over(stbp, "step_ms_min", last, first),
      f"stbp_over_qann_compiled_peak_at_T{last}":
          next(r["compiled_peak_bytes"] for r in stbp if r["T"] == last)
          / next(r["compiled_peak_bytes"] for r in qann if r["T"] == last),
  }
  result = {
      "benchmark": "train_memory", "quick": args.quick, "machine": _machine(),
      "config": {"time_steps": list(time_steps), "batch": args.batch, "steps": steps,
                 "model": "tiny (laptop-sized)" if args.quick else "tiny",
                 "image_shape": [28, 28, 1], "throughput_batch": args.throughput_batch},
      "rows": rows, "throughput": throughput, "ratios": ratios,
      "targets": {"qann_compiled_peak_max_over_min_le": TARGET_QANN_RATIO,
                  "qann_met": ratios["qann_compiled_peak_max_over_min"] <= TARGET_QANN_RATIO,
                  "stbp_grows_with_T": ratios[f"stbp_compiled_peak_T{last}_over_T{first}"] > 1.0},
  }
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps(ratios, indent=2))
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
