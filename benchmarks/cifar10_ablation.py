"""The fast CIFAR-10 recipe's ablation: what each ingredient buys, from the sweep's finished runs.

Reads the runs of `experiments/sweeps/cifar10_fast_ablation.py` (each ingredient removed in turn, at
a reduced budget) and writes one row per run: its held-out top-1 (the QANN's on the 5,000 held-out
images, the recipe's validation split; the converted SNN equals it up to float32 rounding), the
difference from the whole recipe in points, and its cost (`6 x MACs x images seen`, wall time).

    python -m ge2ms_jax.sweep --sweep experiments/sweeps/cifar10_fast_ablation.py:epochs=2 \\
        --workdir runs/c10_fast_ablation --config.data.source=cifar10-train-jpeg.tar.gz
    python benchmarks/cifar10_ablation.py --sweep_workdir runs/c10_fast_ablation --epochs 2

Writes `benchmarks/results/cifar10_ablation.json` (docs/training.md renders its table). A run that
has not finished is listed with `status` "missing", so a partial sweep is visible as such.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cifar10_curve  # noqa: E402  pylint: disable=g-import-not-at-top
import common  # noqa: E402  pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = "experiments/sweeps/cifar10_fast_ablation.py"


def rows(sweep_workdir: str, epochs: float) -> list[dict]:
  """One row per entry of the sweep's `ABLATIONS`, the whole recipe first: `{"name", "overrides",
  "status", "top1", "points", "train_pflops", "seconds", "steps", "epochs"}` (`points`: top-1
  difference from the whole recipe, in percentage points)."""
  from ge2ms_jax import config_utils  # pylint: disable=g-import-not-at-top
  from ge2ms_jax import sweep  # pylint: disable=g-import-not-at-top
  module = config_utils.load_module(os.path.join(ROOT, SWEEP), "ge2ms_ablation")
  runs, _ = sweep.load_sweep(os.path.join(ROOT, SWEEP) + f":epochs={epochs:g}")
  out = []
  for i, (name, overrides) in enumerate(zip(module.ABLATIONS, runs)):
    workdir = os.path.join(sweep_workdir, sweep.run_name(i, overrides))
    row = {"name": name, "overrides": {k: sweep.format_value(v) for k, v in overrides.items()}}
    if not os.path.exists(os.path.join(workdir, "result.json")):
      out.append(dict(row, status="missing"))
      continue
    point = cifar10_curve.run_point(workdir)
    if point["epochs"] != epochs:
      raise SystemExit(f"error: {workdir} ran {point['epochs']:g} epochs, not --epochs {epochs:g}.")
    out.append(dict(row, status="done", top1=point["top1"], train_pflops=point["train_pflops"],
                    seconds=point["seconds"], steps=point["steps"], epochs=point["epochs"]))
  full = out[0].get("top1")
  for row in out:
    if full is not None and row["status"] == "done":
      row["points"] = 100 * (row["top1"] - full)
  return out


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--sweep_workdir", required=True, help="the ablation sweep's --workdir")
  p.add_argument("--epochs", type=float, default=2.0, help="the sweep's epochs (its config string item)")
  p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/cifar10_ablation.json)")
  args = p.parse_args(argv)
  table = rows(args.sweep_workdir, args.epochs)
  result = {"machine": common.machine(), "sweep": f"{SWEEP}:epochs={args.epochs:g}", "epochs": args.epochs,
            "measured": "QANN top-1 on the 5,000 held-out images (validation split)", "rows": table}
  print(f"{'run':<22} {'top-1':>7} {'points':>7} {'PFLOP':>7} {'minutes':>8}")
  for r in table:
    if r["status"] != "done":
      print(f"{r['name']:<22} {'missing':>7}")
      continue
    print(f"{r['name']:<22} {100 * r['top1']:>6.2f}% {r.get('points', 0):>+7.2f} {r['train_pflops']:>7.3f} "
          f"{r['seconds'] / 60:>8.1f}")
  path = common.save(result, args.out, "cifar10_ablation.json")
  print("saved", path)
  return result


if __name__ == "__main__":
  main()
