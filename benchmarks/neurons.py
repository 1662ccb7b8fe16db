"""Benchmark: the ExpG-IF neuron against per-time-step IF loops (JAX and SpikingJelly) and the floor.

One run, one process, the same data for every row:

* `expg_if(current, ...)` for each method (`scan`, `steps`, `closed`) on the aggregated current
  `[*shape]` of a window of `T` steps, for several `(base, groups)` codes with the same `T`;
* the per-time-step IF neuron `if_neuron` (a `lax.scan`) on the `T` per-step currents `[T, *shape]`
  whose sum is that aggregated current, with hard and soft reset;
* SpikingJelly's multi-step `IFNode` on PyTorch CPU on the same `[T, *shape]` currents (skipped,
  and recorded as skipped, when torch or SpikingJelly cannot be imported);
* the physical floor: one jitted elementwise pass that writes the same `[T, *shape]` output,
  `(x[None] >= thresholds[:, None, ...]).astype(out_dtype)`, i.e. a broadcast of the input
  compared with `T` thresholds.

Every output is `[T, *shape]` in float32 (plus bool rows for the floor and `closed`, to separate the
cost of writing 4-byte spikes from the cost of computing them). Measurements are interleaved:
rounds of one repetition of every JAX row, then rounds of every torch row, alternating, so that a
slow phase of a shared machine lands on all rows alike. The median over repetitions is reported.

  python benchmarks/neurons.py                      # full size, writes benchmarks/results/neurons.json
  python benchmarks/neurons.py --quick --out /tmp/neurons.json
Run it in the benchmark environment (`benchmarks/setup_torch_env.sh`) to include SpikingJelly.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

try:
  import resource
except ImportError:  # not on every platform; the fault counts are then left out
  resource = None

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "neurons.json"
# All T = 8 codes: b**G levels with G * (b - 1) = 8 steps. The first is the primary row.
CODES = ((2, 8), (3, 4), (5, 2), (9, 1))
FULL_SHAPE = (16, 384, 32, 32)
QUICK_SHAPE = (2, 8, 8, 16)
TARGET_SJ_OVER_EXPG = 5.0
TARGET_CLOSED_OVER_FLOOR = 1.5


def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _parse_codes(text: str) -> tuple[tuple[int, int], ...]:
  codes = []
  for item in text.split(","):
    try:
      b, g = item.split(":")
      codes.append((int(b), int(g)))
    except ValueError:
      raise argparse.ArgumentTypeError(
          f"--codes must be comma-separated base:groups pairs such as 2:8,3:4, got {text!r}") from None
  steps = {g * (b - 1) for b, g in codes}
  if len(steps) != 1:
    raise argparse.ArgumentTypeError(
        f"--codes must all have the same number of time steps T = groups*(base-1), got {sorted(steps)} "
        f"for {codes}.")
  return tuple(codes)


def _parse_shape(text: str) -> tuple[int, ...]:
  try:
    shape = tuple(int(s) for s in text.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"--shape must look like 16x384x32x32, got {text!r}") from None
  if not shape or min(shape) < 1:
    raise argparse.ArgumentTypeError(f"--shape needs positive sizes, got {text!r}")
  return shape


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true",
                 help=f"small shapes ({'x'.join(map(str, QUICK_SHAPE))}) and few repetitions, for a smoke test")
  p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON (default: %(default)s)")
  p.add_argument("--shape", type=_parse_shape, default=None,
                 help="per-step input shape; default 16x384x32x32 (quick: 2x8x8x16)")
  p.add_argument("--codes", type=_parse_codes, default=CODES,
                 help="base:groups codes with the same T, the first is the primary row (default: 2:8,3:4,5:2,9:1)")
  p.add_argument("--reps", type=int, default=None, help="timed repetitions per row (default 15, quick 3)")
  p.add_argument("--no-torch", action="store_true", help="skip SpikingJelly even if torch is importable")
  p.add_argument("--seed", type=int, default=0)
  return p


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
class _Row:
  """One timed function with its metadata; `run()` returns a result that is complete when it returns."""

  def __init__(self, name: str, framework: str, run: Callable[[], Any], **meta):
    self.name, self.framework, self.run, self.meta = name, framework, run, meta
    self.times_ms: list[float] = []
    self.faults: list[int] = []

  def time_once(self) -> None:
    f0 = _minor_faults()
    t0 = time.perf_counter()
    out = self.run()
    self.times_ms.append((time.perf_counter() - t0) * 1e3)
    f1 = _minor_faults()
    if f0 is not None:
      self.faults.append(f1 - f0)
    del out

  def summary(self) -> dict[str, Any]:
    return dict(name=self.name, framework=self.framework, **self.meta,
                median_ms=statistics.median(self.times_ms), min_ms=min(self.times_ms),
                times_ms=[round(t, 3) for t in self.times_ms],
                minor_page_faults_per_call=int(statistics.median(self.faults)) if self.faults else None)


def _minor_faults() -> int | None:
  """Minor page faults of this process so far: first touches of freshly mapped output memory."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else None


def _time_interleaved(rows: list[_Row], reps: int, block: int) -> None:
  """Times each row `reps` times: blocks of `block` rounds per framework, alternating.

  A pause at each switch of framework lets the idle thread pool (OpenMP or XLA's) stop spinning
  before the other one starts.
  """
  by_fw: dict[str, list[_Row]] = {}
  for r in rows:
    by_fw.setdefault(r.framework, []).append(r)
  done = 0
  while done < reps:
    n = min(block, reps - done)
    for fw_rows in by_fw.values():
      time.sleep(0.3)
      for _ in range(n):
        for r in fw_rows:
          r.time_once()
    done += n


# ---------------------------------------------------------------------------------------------
# The rows
# ---------------------------------------------------------------------------------------------
def _jax_rows(x_steps: np.ndarray, current: np.ndarray, theta: float, codes, out_checks: dict) -> list[_Row]:
  import jax
  import jax.numpy as jnp

  from ge2ms_jax import neurons as N

  T = x_steps.shape[0]
  dev = jax.devices()[0]
  xs = jax.device_put(x_steps, dev)
  cur = jax.device_put(current, dev)
  thresholds = jax.device_put(np.asarray((np.arange(T) + 1) / T * theta, np.float32), dev)
  rows = []

  def add(name, fn, *args, **meta):
    fn = jax.jit(fn)
    call = functools.partial(lambda f, a: f(*a).block_until_ready(), fn, args)
    call()  # compile
    call()  # first run after compilation (allocator, page faults)
    rows.append(_Row(name, "jax", call, **meta))
    return fn

  for out_dtype in (jnp.float32, jnp.bool_):
    dname = jnp.dtype(out_dtype).name
    add(f"floor[{dname}]",
        lambda x, t, d=out_dtype: (x[None] >= t.reshape((-1,) + (1,) * x.ndim)).astype(d),
        cur, thresholds, kind="floor", input_shape=list(current.shape), output_dtype=dname)

  checks = {}
  for base, groups in codes:
    outs = {}
    for method in N.EXPG_METHODS:
      fn = add(f"expg_if[{method}] b={base} G={groups}",
               lambda x, m=method, b=base, g=groups: N.expg_if(x, theta, b, g, m),
               cur, kind="expg_if", method=method, base=base, groups=groups,
               input_shape=list(current.shape), output_dtype="float32")
      outs[method] = np.asarray(fn(cur))
    add(f"expg_if[closed] b={base} G={groups} bool",
        lambda x, b=base, g=groups: N.expg_if(x, theta, b, g, "closed", dtype=jnp.bool_),
        cur, kind="expg_if_bool", method="closed", base=base, groups=groups,
        input_shape=list(current.shape), output_dtype="bool")
    checks[f"{base}:{groups}"] = all(np.array_equal(outs[m], outs["scan"]) for m in N.EXPG_METHODS)
    del outs
  out_checks["expg_methods_bit_identical"] = checks

  for reset in ("hard", "soft"):
    fn = add(f"if_neuron[{reset}]", lambda x, r=reset: N.if_neuron(x, 1.0, reset=r), xs,
             kind="if_jax", reset=reset, input_shape=list(x_steps.shape), output_dtype="float32")
    out_checks.setdefault("_if_jax_spikes", {})[reset] = np.asarray(fn(xs))
  return rows


def _torch_rows(x_steps: np.ndarray, threads: int, out_checks: dict) -> tuple[list[_Row], dict[str, Any]]:
  """SpikingJelly's multi-step IFNode on CPU, or ([], why it was skipped)."""
  try:
    import torch
    from spikingjelly.activation_based import neuron as sj_neuron
  except Exception as e:  # noqa: BLE001 - any import failure means: no torch rows
    return [], dict(status="skipped", reason=f"{type(e).__name__}: {e}")
  torch.set_num_threads(threads)
  x = torch.from_numpy(x_steps)
  rows = []
  for reset, v_reset in (("hard", 0.0), ("soft", None)):
    # SpikingJelly 2.x chooses the implementation by device (CPU: its torch implementation); it has no
    # `backend` argument any more. eval() and no_grad(): inference, as for the JAX rows.
    node = sj_neuron.IFNode(v_threshold=1.0, v_reset=v_reset, step_mode="m").eval()

    def call(node=node):
      with torch.no_grad():
        out = node(x)
      node.reset()
      return out

    spikes = call().numpy()
    call()
    ref = out_checks.get("_if_jax_spikes", {}).get(reset)
    if ref is not None:
      out_checks.setdefault("if_jax_vs_spikingjelly_mismatches", {})[reset] = int(np.sum(ref != spikes))
    del spikes
    rows.append(_Row(f"spikingjelly.IFNode[{reset}]", "torch", call, kind="if_spikingjelly",
                     reset=reset, input_shape=list(x_steps.shape), output_dtype="float32"))
  info = dict(status="ran", mode="in-process (same process and data as the JAX rows)",
              torch=torch.__version__, spikingjelly=importlib.metadata.version("spikingjelly"),
              torch_threads=torch.get_num_threads(), torch_interop_threads=torch.get_num_interop_threads(),
              node="IFNode(v_threshold=1.0, v_reset=0.0 (hard) or None (soft), step_mode='m').eval(), "
                   "under torch.no_grad()")
  return rows, info


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark, prints a table and the ratios, writes the JSON to `--out`, returns it."""
  args = build_parser().parse_args(argv)
  shape = args.shape or (QUICK_SHAPE if args.quick else FULL_SHAPE)
  reps = args.reps or (3 if args.quick else 15)
  if reps < 1:
    raise ValueError(f"--reps must be >= 1, got {reps}.")
  codes = args.codes
  T = codes[0][1] * (codes[0][0] - 1)
  theta = 2.0
  threads = _cores()

  import jax

  # Per-step currents with a mean of theta / (2T): the aggregated current spreads over the levels of
  # [0, theta) and the IF neuron (threshold 1) fires at a moderate rate.
  rng = np.random.default_rng(args.seed)
  x_steps = rng.uniform(-0.1, 0.35, size=(T,) + tuple(shape)).astype(np.float32)
  current = x_steps.sum(axis=0, dtype=np.float32)

  load_before = _load_average()
  checks: dict[str, Any] = {}
  rows = _jax_rows(x_steps, current, theta, codes, checks)
  if args.no_torch:
    torch_rows, sj = [], dict(status="skipped", reason="--no-torch")
  else:
    torch_rows, sj = _torch_rows(x_steps, threads, checks)
  checks.pop("_if_jax_spikes", None)
  del x_steps, current
  _time_interleaved(rows + torch_rows, reps, block=1 if args.quick else 5)

  table = [r.summary() for r in rows + torch_rows]
  ratios = _ratios({r["name"]: r["median_ms"] for r in table}, codes, sj["status"] == "ran")
  ratios_min = _ratios({r["name"]: r["min_ms"] for r in table}, codes, sj["status"] == "ran")
  targets = {"closed_over_floor_max": TARGET_CLOSED_OVER_FLOOR,
             "spikingjelly_over_fastest_expg_min": TARGET_SJ_OVER_EXPG}
  for stat, rat in (("median", ratios), ("min", ratios_min)):
    targets[f"closed_over_floor_met_{stat}"] = rat["closed_over_floor"] <= TARGET_CLOSED_OVER_FLOOR
    # IFNode's default is the hard reset (v_reset=0); the soft reset is reported beside it.
    targets[f"spikingjelly_over_fastest_expg_met_{stat}"] = (
        {r: v >= TARGET_SJ_OVER_EXPG for r, v in rat["spikingjelly_over_fastest_expg_same_T"].items()}
        if sj["status"] == "ran" else None)

  result = {
      "benchmark": "neurons",
      "quick": bool(args.quick),
      "machine": dict(cores=threads, cpu=_cpu_model(), platform=platform.platform(),
                      python=platform.python_version(), numpy=np.__version__, jax=jax.__version__,
                      jaxlib=getattr(jax.lib, "__version__", None) or _jaxlib_version(),
                      jax_backend=jax.default_backend(), jax_device=str(jax.devices()[0]),
                      jax_threads=f"{threads} (XLA CPU default: one intra-op thread per core)",
                      # Other processes' load widens the spread of the times (1-minute averages).
                      load_average_before=load_before, load_average_after=_load_average()),
      "config": dict(T=T, codes=[list(c) for c in codes], current_shape=list(shape),
                     per_step_shape=[T] + list(shape), dtype="float32", theta_expg=theta,
                     if_threshold=1.0, reps=reps, statistic="median",
                     data="per-step currents U(-0.1, 0.35) i.i.d.; the aggregated current is their sum",
                     floor="jit((x[None] >= thresholds[:, None, ...]).astype(out_dtype)), same [T, *shape] output"),
      "spikingjelly": sj,
      "checks": checks,
      # Ratios of the medians; the same ratios of the minima are less sensitive to other processes.
      "ratios": ratios,
      "ratios_from_min_times": ratios_min,
      "targets": targets,
      "rows": table,
  }
  _print(result)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=2) + "\n")
  print(f"\nwrote {args.out}")
  return result


def _ratios(ms: dict[str, float], codes, sj_ran: bool) -> dict[str, Any]:
  """The benchmark's ratios from one time per row (`ms`: row name -> milliseconds)."""
  (b0, g0), T = codes[0], codes[0][1] * (codes[0][0] - 1)
  methods = ("scan", "steps", "closed")
  expg = {m: ms[f"expg_if[{m}] b={b0} G={g0}"] for m in methods}
  fastest = min(expg, key=expg.get)
  ratios: dict[str, Any] = {
      "primary_code": f"{b0}:{g0}",
      "fastest_expg_method": fastest,
      "closed_over_floor": expg["closed"] / ms["floor[float32]"],
      "closed_bool_over_floor_bool": ms[f"expg_if[closed] b={b0} G={g0} bool"] / ms["floor[bool]"],
      "scan_over_closed": expg["scan"] / expg["closed"],
      "steps_over_closed": expg["steps"] / expg["closed"],
      "if_jax_over_fastest_expg": {r: ms[f"if_neuron[{r}]"] / expg[fastest] for r in ("hard", "soft")},
      "per_code": {
          f"{b}:{g}": dict(**{f"{m}_ms": ms[f"expg_if[{m}] b={b} G={g}"] for m in methods},
                           closed_over_floor=ms[f"expg_if[closed] b={b} G={g}"] / ms["floor[float32]"])
          for b, g in codes},
  }
  if sj_ran:
    sj_ms = {r: ms[f"spikingjelly.IFNode[{r}]"] for r in ("hard", "soft")}
    # Same T: both produce the spikes of T steps for the same neurons.
    ratios["spikingjelly_over_fastest_expg_same_T"] = {r: sj_ms[r] / expg[fastest] for r in sj_ms}
    # Per input tensor: IFNode consumes T input tensors, ExpG-IF one aggregated current.
    ratios["spikingjelly_per_input_over_fastest_expg"] = {r: sj_ms[r] / T / expg[fastest] for r in sj_ms}
    ratios["spikingjelly_over_if_jax"] = {r: sj_ms[r] / ms[f"if_neuron[{r}]"] for r in sj_ms}
    ratios["spikingjelly_over_floor"] = {r: sj_ms[r] / ms["floor[float32]"] for r in sj_ms}
    ratios["spikingjelly_over_expg_per_code"] = {
        f"{b}:{g}": {r: sj_ms[r] / min(ms[f"expg_if[{m}] b={b} G={g}"] for m in methods) for r in sj_ms}
        for b, g in codes}
  return ratios


def _load_average() -> float | None:
  try:
    return round(os.getloadavg()[0], 2)
  except (AttributeError, OSError):
    return None


def _jaxlib_version() -> str:
  import jaxlib
  return jaxlib.__version__


def _print(result: dict[str, Any]) -> None:
  m, c = result["machine"], result["config"]
  print(f"ExpG-IF neuron benchmark: T={c['T']}, current {c['current_shape']}, per-step {c['per_step_shape']}, "
        f"{c['reps']} reps (median)")
  print(f"  {m['cpu']}, {m['cores']} cores, load {m['load_average_before']} -> {m['load_average_after']}, "
        f"jax {m['jax']}"
        + (f", torch {result['spikingjelly']['torch']}" if result["spikingjelly"]["status"] == "ran" else ""))
  print(f"  {'row':40s} {'input':>16s} {'out':>8s} {'median ms':>10s} {'min ms':>9s} {'faults':>8s}")
  for r in result["rows"]:
    faults = r["minor_page_faults_per_call"]
    print(f"  {r['name']:40s} {'x'.join(map(str, r['input_shape'])):>16s} {r['output_dtype']:>8s} "
          f"{r['median_ms']:10.2f} {r['min_ms']:9.2f} {'' if faults is None else faults:>8}")
  print("ratios (of the medians):")
  print(json.dumps(result["ratios"], indent=2))
  print("ratios (of the minima):")
  print(json.dumps(result["ratios_from_min_times"], indent=2))
  print("targets:", json.dumps(result["targets"]))
  print("checks:", json.dumps(result["checks"]))
  if result["spikingjelly"]["status"] != "ran":
    print(f"SpikingJelly skipped: {result['spikingjelly']['reason']}")


if __name__ == "__main__":
  main(sys.argv[1:])
