"""Benchmark: GW-SSA (multi-scale windows) against global spiking self-attention as N grows.

One run, the same q, k, v spike values for every row at each grid size (14x14 ... 56x56 tokens):

* `gw_ssa`: heads split over windows of 2, 4 and 7 tokens a side (the order chosen per window);
* `global_qk_first`: plain spiking self-attention `(Q K^T) V` over all N tokens, the standard SSA;
* `global_kv_first`: the same product in the order `Q (K^T V)`, which a softmax-free attention also
  allows and which is linear in N as well (reported for completeness).

For each row: median forward time and the temporary memory XLA plans for it (compiled memory
analysis). The growth exponents are fitted on log(time) and log(memory) against log(N); the windowed
cost should grow ~N^1 and the global (QK^T first) ~N^2.

  python benchmarks/attention.py                 # writes benchmarks/results/attention.json
  python benchmarks/attention.py --quick --out /tmp/attention.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from ge2ms_jax import attention  # noqa: E402

WINDOWS = (2, 4, 7)


def _rows(grid: int, batch: int, heads: int, d: int, seed: int):
  n = grid * grid
  keys = jax.random.split(jax.random.key(seed), 3)
  q, k, v = (jax.random.randint(kk, (batch, n, heads, d), 0, 16).astype(jnp.float32) / 16 for kk in keys)
  per = heads // len(WINDOWS)
  fns = {
      "gw_ssa": jax.jit(lambda q, k, v: attention.gw_ssa(q, k, v, (grid, grid), WINDOWS, (per,) * len(WINDOWS), 6)),
      "global_qk_first": jax.jit(lambda q, k, v: attention.gw_ssa(q, k, v, (grid, grid), (0,), (heads,), 6,
                                                                  order="qk_first")),
      "global_kv_first": jax.jit(lambda q, k, v: attention.gw_ssa(q, k, v, (grid, grid), (0,), (heads,), 6,
                                                                  order="kv_first")),
  }
  return fns, (q, k, v)


def _exponent(ns, values) -> float:
  return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="small grids and few repetitions")
  p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/attention.json)")
  p.add_argument("--reps", type=int, default=None)
  args = p.parse_args(argv)
  grids = (7, 14) if args.quick else (14, 21, 28, 42, 56)
  batch, heads, d = (2, 3, 8) if args.quick else (8, 6, 32)
  reps = args.reps or (2 if args.quick else 7)
  rows = []
  for g in grids:
    fns, inputs = _rows(g, batch, heads, d, seed=g)
    timing = common.time_interleaved({k: (lambda f=f: f(*inputs)) for k, f in fns.items()}, reps)
    ref = fns["global_qk_first"](*inputs)
    np.testing.assert_allclose(fns["global_kv_first"](*inputs), ref, rtol=1e-4, atol=1e-3)
    for name, f in fns.items():
      rows.append({"grid": g, "tokens": g * g, "row": name, "median_ms": 1e3 * timing[name]["median_s"],
                   "temp_bytes": common.compiled_temp_bytes(f, *inputs)})
  summary = {}
  ns = [g * g for g in grids]
  for name in ("gw_ssa", "global_qk_first", "global_kv_first"):
    t = [r["median_ms"] for r in rows if r["row"] == name]
    m = [max(r["temp_bytes"] or 1, 1) for r in rows if r["row"] == name]
    summary[name] = {"time_exponent": _exponent(ns, t), "memory_exponent": _exponent(ns, m)}
  last = {r["row"]: r for r in rows if r["grid"] == grids[-1]}
  summary["global_over_gw_time_at_largest"] = last["global_qk_first"]["median_ms"] / last["gw_ssa"]["median_ms"]
  summary["global_over_gw_memory_at_largest"] = ((last["global_qk_first"]["temp_bytes"] or 0)
                                                 / max(last["gw_ssa"]["temp_bytes"] or 1, 1))
  result = {"benchmark": "attention", "quick": args.quick, "batch": batch, "heads": heads, "head_dim": d,
            "windows": WINDOWS, "rows": rows, "summary": summary, "machine": common.machine()}
  print(f"{'grid':>6} {'N':>6} {'row':<16} {'ms':>9} {'temp MiB':>9}")
  for r in rows:
    print(f"{r['grid']:>6} {r['tokens']:>6} {r['row']:<16} {r['median_ms']:>9.2f} "
          f"{(r['temp_bytes'] or 0) / 2**20:>9.2f}")
  for name in ("gw_ssa", "global_qk_first", "global_kv_first"):
    s = summary[name]
    print(f"{name:<16} time ~ N^{s['time_exponent']:.2f}   memory ~ N^{s['memory_exponent']:.2f}")
  print(f"at N = {ns[-1]}: global (QK^T first) / GW-SSA = {summary['global_over_gw_time_at_largest']:.1f}x time, "
        f"{summary['global_over_gw_memory_at_largest']:.1f}x memory")
  path = common.save(result, args.out, "attention.json")
  print(f"wrote {path}")
  return result


if __name__ == "__main__":
  main()
