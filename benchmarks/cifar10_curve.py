"""CIFAR-10 accuracy against training FLOPs: the fast recipe's budgets, `cifar10_tiny`, and airbench.

Each `--run` is the workdir of one run of `experiments/cifar10.py:fast,epochs=N` (a separate run whose
schedule ends at that budget, not a checkpoint along a longer one). Its point is its accuracy on the
5,000 held-out images (the recipe's validation split): the converted SNN's in spike mode from
`report/report.json` when the run has a report (`--mode all` or `--mode report`), else the QANN's from
`result.json` (the column `measured` says which); its cost is `6 x MACs x images seen`
(`ge2ms_jax/cost.py`). `cifar10_tiny` comes from its shipped report, and the airbench records are
their published numbers (an ANN on a GPU, not measured here).

    python benchmarks/cifar10_curve.py --run runs/c10_fast_e2 runs/c10_fast_e4 runs/c10_fast_e8 runs/c10_fast
    python benchmarks/cifar10_curve.py --quick    # the shipped model and the published points only

Writes `benchmarks/results/cifar10_curve.json` (with `fit`: the power law `error = a x PFLOP^b`
through the fast runs and the budget at which it reaches 92%) and `cifar10_curve.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Published, from the records' own headers (METHOD.md §5): ANN recipes on one GPU.
AIRBENCH = [
    {"name": "airbench94_muon", "top1": 0.9401, "train_pflops": 0.29, "epochs": 8},
    {"name": "airbench95", "top1": 0.9501, "train_pflops": 1.4},
    {"name": "airbench96", "top1": 0.9603, "train_pflops": 4.9},
]


def _json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def run_point(workdir: str) -> dict:
  """The point of one run: `{"name", "top1", "measured", "train_pflops", "seconds", "epochs", ...}`."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from ge2ms_jax import cost  # pylint: disable=g-import-not-at-top
  from ge2ms_jax import model as models  # pylint: disable=g-import-not-at-top
  saved = _json(os.path.join(workdir, "config.json"))
  if not saved:
    raise SystemExit(f"error: {workdir} has no config.json; pass the workdir of a training run.")
  config = ml_collections.ConfigDict(saved)
  result = _json(os.path.join(workdir, "result.json"))
  if not result:
    raise SystemExit(f"error: {workdir} has no result.json (the run has not finished).")
  report = _json(os.path.join(workdir, "report", "report.json"))
  macs = models.count(config.model)["macs"]
  c = cost.training_cost(macs, config.batch_size, result)
  if report is not None:
    top1, measured = report["metrics"]["snn_top1"], "SNN, spike mode"
  else:
    top1, measured = result["eval_top1"], "QANN"
  return {"name": os.path.basename(os.path.normpath(workdir)), "top1": top1, "measured": measured,
          "train_pflops": c["train_pflops"], "seconds": result.get("seconds"),
          "epochs": float(config.total_epochs), "steps": result["step"], "macs_per_image": macs,
          "train_gflops_per_s": c["train_gflops_per_s"], "peak_fraction": c["peak_fraction"]}


def power_law_budget(points: list[dict], goal: float = 0.92) -> dict | None:
  """Least-squares fit of `error = a * PFLOP**b` in log space through the fast recipe's points, and
  the training budget at which that law reaches top-1 `goal`.

  Args:
    points: `run_point` dicts (`name`, `top1`, `train_pflops`, `epochs`, `train_gflops_per_s`);
      at least two distinct budgets.
  Returns:
    `{"exponent", "coefficient", "goal", "pflops", "epochs", "hours", "gflops_per_s", "points"}`:
    `epochs` at the runs' images per epoch, `hours` at the fastest measured training rate; None
    with fewer than two budgets. An extrapolation: it holds only while the slope does.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  pts = sorted(points, key=lambda r: r["train_pflops"])
  if len({r["train_pflops"] for r in pts}) < 2:
    return None
  x = np.log([r["train_pflops"] for r in pts])
  y = np.log([1.0 - r["top1"] for r in pts])
  b, log_a = np.polyfit(x, y, 1)
  pflops = float(np.exp((np.log(1.0 - goal) - log_a) / b))
  last = pts[-1]
  pflops_per_epoch = last["train_pflops"] / last["epochs"]
  rate = max(r["train_gflops_per_s"] for r in pts if r.get("train_gflops_per_s"))
  return {"exponent": float(b), "coefficient": float(np.exp(log_a)), "goal": goal, "pflops": pflops,
          "epochs": pflops / pflops_per_epoch, "hours": pflops * 1e6 / rate / 3600, "gflops_per_s": rate,
          "points": [r["name"] for r in pts]}


def tiny_point() -> dict:
  """`checkpoints/cifar10_tiny`: its report's spike-mode accuracy at the `cpu` budget's cost."""
  from ge2ms_jax import config_utils  # pylint: disable=g-import-not-at-top
  from ge2ms_jax import model as models  # pylint: disable=g-import-not-at-top
  export = os.path.join(ROOT, "checkpoints", "cifar10_tiny")
  report = _json(os.path.join(export, "report", "report.json"))
  steps = _json(os.path.join(export, "export.json"))["step"]
  config = config_utils.load_config("experiments/cifar10.py:variant=tiny,cpu")
  macs = models.count(config.model)["macs"]
  return {"name": "cifar10_tiny", "top1": report["metrics"]["snn_top1"], "measured": "SNN, spike mode",
          "train_pflops": 6.0 * macs * steps * config.batch_size / 1e15, "seconds": 77 * 60,
          "epochs": float(config.total_epochs), "steps": steps, "macs_per_image": macs}


def plot(result: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5))
  runs = sorted(result["fast"], key=lambda r: r["train_pflops"])
  if runs:
    ax.plot([r["train_pflops"] for r in runs], [100 * r["top1"] for r in runs], "o-", color="tab:blue",
            label="fast recipe (Ge²mS-T; separate runs, schedule ended at each budget; 2 CPU cores)")
  fit = result.get("fit")
  if fit:
    xs = np.geomspace(runs[0]["train_pflops"], fit["pflops"], 41)
    ax.plot(xs, [100 * (1 - fit["coefficient"] * x ** fit["exponent"]) for x in xs], ":", color="tab:blue",
            label=f"fit error ∝ PFLOP^{fit['exponent']:.2f}: {100 * fit['goal']:.0f}% at {fit['pflops']:.1f} PFLOP "
                  "(extrapolated)")
  t = result["cifar10_tiny"]
  ax.plot([t["train_pflops"]], [100 * t["top1"]], "s", color="tab:green", label="cifar10_tiny (cpu budget)")
  ax.plot([a["train_pflops"] for a in AIRBENCH], [100 * a["top1"] for a in AIRBENCH], "^--", color="tab:gray",
          label="airbench (published, GPU, ANN)")
  for a in AIRBENCH:
    ax.annotate(a["name"], (a["train_pflops"], 100 * a["top1"]), fontsize=7, xytext=(4, -10),
                textcoords="offset points")
  ax.set_xscale("log")
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel("training PFLOP (6 x MACs x images seen)")
  ax.set_ylabel("top-1 on the 5,000 held-out images (%)")
  ax.set_title("CIFAR-10: accuracy against training compute", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--run", nargs="*", default=[], help="workdirs of fast-recipe runs")
  p.add_argument("--quick", action="store_true", help="no runs: the shipped model and the published points")
  p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/cifar10_curve.json)")
  args = p.parse_args(argv)
  runs = [] if args.quick else [run_point(w) for w in args.run]
  result = {"machine": common.machine(), "fast": runs, "cifar10_tiny": tiny_point(), "airbench": AIRBENCH,
            "fit": power_law_budget(runs)}
  print(f"{'point':<28} {'top-1':>7} {'PFLOP':>7} {'minutes':>8}  measured")
  for r in sorted(runs, key=lambda r: r["train_pflops"]) + [result["cifar10_tiny"]]:
    minutes = f"{r['seconds'] / 60:.0f}" if r.get("seconds") else ""
    print(f"{r['name']:<28} {100 * r['top1']:>6.2f}% {r['train_pflops']:>7.3f} {minutes:>8}  {r['measured']}")
  for a in AIRBENCH:
    print(f"{a['name']:<28} {100 * a['top1']:>6.2f}% {a['train_pflops']:>7.3f} {'':>8}  published, GPU, ANN")
  fit = result["fit"]
  if fit:
    print(f"fit through {len(fit['points'])} budgets: error = {fit['coefficient']:.3f} x PFLOP^{fit['exponent']:.3f}; "
          f"{100 * fit['goal']:.0f}% at {fit['pflops']:.2f} PFLOP ({fit['epochs']:.0f} epochs, {fit['hours']:.1f} h at "
          f"{fit['gflops_per_s']:.0f} GFLOP/s)")
  if args.quick and not args.out:
    return result
  path = common.save(result, args.out, "cifar10_curve.json")
  plot(result, str(path.with_suffix(".png")))
  print("saved", path, "and", path.with_suffix(".png"))
  return result


if __name__ == "__main__":
  main()
