"""Accuracy against synaptic operations: the rows of a spike-aware fine-tuning sweep, chosen on the tune
split and measured once on the test images.

    python -m ge2ms_jax.sweep --sweep experiments/sweeps/fashion_mnist_sparsity.py --workdir runs/sparsity_fm
    python benchmarks/sparsity.py --dataset fashion_mnist --sweep_workdir runs/sparsity_fm \
        --reference checkpoints/fashion_mnist_tiny_sparse

For every run of the sweep (and the shipped model it starts from) this measures, on the "tune" split
carved from the training set, QANN top-1 and SOPs/MAC (fused simulation: exact operation counts), and
picks the sparsest run whose tune top-1 is within `--tolerance` of the weight-0 run's (the same
fine-tuning without the loss term). Then every row is evaluated once on the test images (Fashion-MNIST
"test", CIFAR-10 the 5,000 "validation" images the shipped model is reported on) with the spiking
simulation (`--test_mode spike`; also the sparse candidate, the best tune top-1 at or below
`--target_ratio` SOPs/MAC; `--other_rows_mode fused` measures the runs that were not chosen
with the fused path, which counts the same operations and gives the same QANN top-1 in a fifth of
the time, labelled as not simulated spike by spike): QANN top-1, SNN top-1, agreement, SOPs/MAC,
spikes per neuron, energy under both presets, and what the row cost (fine-tuning steps and minutes). With `--ship DIR`
the sparse candidate (the sparse reference model: chosen on the tune split, like every choice here) is
written as an export with its report (the test measurement, training curves, energy, raster) to DIR.
`--reference DIR` adds a shipped sparse model trained outside the sweep (the `sparse` config string, on
the whole training split) as its own row, from its report: it was measured once, in spike mode. A
reference that replaces an earlier one (a new recipe written over the same export) keeps the earlier
row in `earlier_references`, so a result that missed a goal stays on record.

Results: `benchmarks/results/sparsity.json` (one entry per dataset; other datasets' entries are kept)
and `benchmarks/results/pareto.png` (test top-1 against SOPs/MAC, one panel per dataset).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  pylint: disable=wrong-import-position

from ge2ms_jax import config_utils  # noqa: E402
from ge2ms_jax import evaluation  # noqa: E402
from ge2ms_jax import export  # noqa: E402
from ge2ms_jax import model as models  # noqa: E402
from ge2ms_jax import report  # noqa: E402
from ge2ms_jax import sweep  # noqa: E402
from ge2ms_jax import loading  # noqa: E402

DATASETS = {
    "fashion_mnist": dict(sweep="experiments/sweeps/fashion_mnist_sparsity.py", test_split="test",
                          shipped="checkpoints/fashion_mnist_tiny"),
    "cifar10": dict(sweep="experiments/sweeps/cifar10_sparsity.py", test_split="validation",
                    shipped="checkpoints/cifar10_tiny"),
}
ROW_FIELDS = ("qann_top1", "snn_top1", "agreement", "sop_per_mac", "sops_per_image", "ann_macs_per_image",
              "spikes_per_neuron", "firing_rate", "energy_mj_per_image", "ann_energy_mj_per_image",
              "energy_presets", "latency_steps", "steps_per_image", "num_examples", "snn_mode", "snn_check")


def _variables(config, run_dir: str | None, shipped: str):
  if run_dir is None:
    return loading.load(config, shipped, adopt=False).variables
  return loading.load(config, workdir=run_dir).variables


def _measure(config, variables, split: str, mode: str, max_examples: int | None) -> dict:
  start = time.time()
  result = evaluation.evaluate_snn(config, variables, split=split, mode=mode, max_examples=max_examples)
  out = {k: result.metrics[k] for k in ROW_FIELDS}
  out["seconds"] = time.time() - start
  return out


def reference_row(directory: str, test_split: str) -> dict:
  """The row of a shipped sparse model (an export with its `report/`, e.g. from the `sparse` config
  string): its report's measurement on the test images, its recipe and what its training cost. It is
  no candidate of the choice: trained on the whole training split, it has no unseen tune images.

  Raises:
    SystemExit: naming the file that is missing, or a report measured on other images.
  """
  d = Path(directory)
  for f in (d / "export.json", d / "report" / "report.json"):
    if not f.exists():
      raise SystemExit(f"error: --reference {directory}: no {f}; give an export with its report/ "
                       "(what --mode all writes, or --mode report).")
  meta = json.loads((d / "export.json").read_text())
  rep = json.loads((d / "report" / "report.json").read_text())
  if rep["metrics"]["eval_data"] != test_split or rep["metrics"]["snn_mode"] != "spike":
    raise SystemExit(f"error: --reference {directory}: its report measured {rep['metrics']['eval_data']!r} "
                     f"in {rep['metrics']['snn_mode']} mode; the rows are on {test_split!r} in spike mode "
                     "(refresh it with --mode report).")
  notes = meta.get("notes", {})
  config = config_utils.load_config(notes["config"], {k: config_utils.CliValue(str(v))
                                                      for k, v in notes.get("overrides", {}).items()})
  training = rep.get("training") or {}
  return {"run": str(directory), "label": f"sparse reference: w={config.sparsity.weight:g}, target "
          f"{config.sparsity.target:g}, {config.total_epochs:g} epochs", "config": notes["config"],
          "weight": config.sparsity.weight, "target": config.sparsity.target, "epochs": config.total_epochs,
          "steps": training.get("step", meta["step"]), "minutes": training.get("seconds", 0.0) / 60,
          "tune": None, "test": {k: rep["metrics"][k] for k in ROW_FIELDS}}


def _earlier_references(before: dict, new: dict | None) -> list[dict]:
  """The replaced reference rows: a shipped sparse model whose export was overwritten by a new recipe
  keeps its measurement here, so a result that missed a goal stays on record beside the one that
  replaced it. `new` is this invocation's reference row (None when it names none)."""
  earlier = list(before.get("earlier_references", []))
  old = before.get("reference")
  if new and old and (old["label"], old["steps"], old["test"]) != (new["label"], new["steps"], new["test"]):
    earlier.append(old)
  return earlier


def markdown_table(entry: dict) -> str:
  """The rows of one dataset's entry as a Markdown table (the README's)."""
  lines = ["| run | cost | tune top-1 | tune SOPs/MAC | test QANN top-1 | test SNN top-1 | agreement | "
           "**SOPs/MAC** | spikes / neuron | ANN/SNN energy `fp32_45nm` | `int_45nm` | simulation |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  earlier = entry.get("earlier_references", [])
  for r in entry["rows"] + ([entry["reference"]] if entry.get("reference") else []) + earlier:
    t, e = r["test"], r["test"]["energy_presets"]
    cost = f"{r['steps']} steps, {r['minutes']:.0f} min" if r["steps"] else "shipped"
    name = (f"**{r['label']}** (chosen)" if r["run"] == entry.get("selected") else
            f"**{r['label']}** (sparse candidate)" if r["run"] == entry.get("candidate") else
            f"**{r['label']}** (shipped)" if r is entry.get("reference") else
            f"{r['label']} (earlier recipe, replaced)" if any(r is e for e in earlier) else r["label"])
    tune = (f"{100 * r['tune']['qann_top1']:.2f}% | {r['tune']['sop_per_mac']:.3f}" if r["tune"] else
            "(trained on it) | (trained on it)")
    lines.append(f"| {name} | {cost} | {tune} | "
                 f"{100 * t['qann_top1']:.2f}% | {100 * t['snn_top1']:.2f}% | {100 * t['agreement']:.2f}% | "
                 f"{t['sop_per_mac']:.3f} | {t['spikes_per_neuron']:.3f} | {e['fp32_45nm']['ann_over_snn']:.1f}x | "
                 f"{e['int_45nm']['ann_over_snn']:.1f}x | {t['snn_mode']} |")
  return "\n".join(lines)


def plot_pareto(results: dict, path: Path) -> None:
  """Test top-1 (QANN and SNN) against SOPs/MAC, one panel per dataset; the chosen run ringed."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  names = [d for d in DATASETS if d in results]
  fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), squeeze=False)
  for ax, name in zip(axes[0], names):
    rows = results[name]["rows"]
    x = [r["test"]["sop_per_mac"] for r in rows]
    for mode, style in (("spike", dict(color="tab:purple")), ("fused", dict(color="tab:purple", mfc="none"))):
      pts = [(xi, 100 * r["test"]["snn_top1"]) for r, xi in zip(rows, x) if r["test"]["snn_mode"] == mode]
      if pts:
        ax.plot(*zip(*pts), "o", **style, label=f"SNN ({mode} mode)")
    ax.plot(x, [100 * r["test"]["qann_top1"] for r in rows], "x", color="tab:gray", label="QANN")
    for r, xi in zip(rows, x):
      ax.annotate(r["label"], (xi, 100 * r["test"]["snn_top1"]), fontsize=7, xytext=(4, -10),
                  textcoords="offset points")
      if r["run"] == results[name].get("selected"):
        ax.plot([xi], [100 * r["test"]["snn_top1"]], "o", ms=14, mfc="none", color="tab:red", label="chosen on tune")
    ref = results[name].get("reference")
    if ref:
      ax.plot([ref["test"]["sop_per_mac"]], [100 * ref["test"]["snn_top1"]], "*", ms=13, color="tab:orange",
              label="shipped sparse model")
      ax.annotate("sparse reference", (ref["test"]["sop_per_mac"], 100 * ref["test"]["snn_top1"]), fontsize=7,
                  xytext=(6, 4), textcoords="offset points")
    for i, old in enumerate(results[name].get("earlier_references", [])):
      # One legend entry however many recipes were replaced.
      ax.plot([old["test"]["sop_per_mac"]], [100 * old["test"]["snn_top1"]], "*", ms=11, mfc="none",
              color="tab:orange", label=None if i else "replaced sparse recipe")
    ax.axvline(0.30, color="tab:green", ls="--", lw=0.8, label="0.30 x ANN MACs")
    ax.axvline(1.0, color="k", ls=":", lw=0.8, label="as many SOPs as ANN MACs")
    ax.set_xlabel("SNN synaptic operations / ANN MACs (per image)")
    ax.set_ylabel(f"top-1 on {results[name]['test_split']} (%)")
    ax.set_title(f"{name}: {rows[0]['test']['num_examples']} test images", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _text(value) -> str:
  """An override as typed on the command line (a `CliValue` keeps its text)."""
  return value.text if isinstance(value, config_utils.CliValue) else str(value)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
  parser.add_argument("--sweep_workdir", required=True)
  parser.add_argument("--sweep", default=None, help="the sweep file (default: the dataset's)")
  parser.add_argument("--config", default=None, help="the experiment (default: the sweep file's CONFIG)")
  parser.add_argument("--tolerance", type=float, default=0.005,
                      help="largest tune top-1 loss against the weight-0 run that the choice accepts")
  parser.add_argument("--test_mode", default="spike", choices=("spike", "fused"),
                      help="the simulation of the chosen run and the shipped model on the test images")
  parser.add_argument("--other_rows_mode", default="spike", choices=("spike", "fused"),
                      help="the simulation of the other runs on the test images (fused: the same "
                           "operation counts and QANN top-1, SNN top-1 not simulated spike by spike)")
  parser.add_argument("--max_examples", type=int, default=None, help="cap on tune and test images (smoke runs)")
  parser.add_argument("--ship", default=None, help="write the sparse candidate's export and report here")
  parser.add_argument("--target_ratio", type=float, default=0.30,
                      help="the sparse candidate: the best tune top-1 among runs at or below this tune "
                           "SOPs/MAC, also simulated spike by spike on the test images")
  parser.add_argument("--reference", default=None,
                      help="a shipped sparse model (export with report/, e.g. checkpoints/fashion_mnist_tiny_sparse): "
                           "its report's test row is added beside the sweep's, outside the choice")
  parser.add_argument("--out", default=None)
  args, rest = parser.parse_known_args(argv)
  common_overrides = config_utils.parse_override_flags(rest)
  spec = DATASETS[args.dataset]
  runs, config_spec = sweep.load_sweep(args.sweep or spec["sweep"], args.config)
  configs = sweep.build_configs(config_spec, runs, common_overrides)

  out = Path(args.out) if args.out else common.RESULTS / "sparsity.json"
  results = json.loads(out.read_text()) if out.exists() else {}
  # Measurements of an earlier invocation are reused for the same run, step and image count (a sweep
  # that gained a run measures only that one); the selection is always made afresh.
  before = results.get(args.dataset, {})
  earlier = {r["run"]: r for r in before.get("rows", []) if before.get("max_examples", 0) == args.max_examples}

  def measure(row, config, variables, split, mode):
    old = earlier.get(row["run"])
    key = "tune" if split == "tune" else "test"
    if old and old["steps"] == row["steps"] and key in old and old[key]["snn_mode"] == mode:
      return old[key]
    return _measure(config, variables, split, mode, args.max_examples)

  rows = []
  base_config = configs[0]
  entries = [("shipped", None, base_config, {})] + [
      (sweep.run_name(i, run), os.path.join(args.sweep_workdir, sweep.run_name(i, run)), config, run)
      for i, (run, config) in enumerate(zip(runs, configs))]
  for name, run_dir, config, overrides in entries:
    result = {} if run_dir is None else (sweep.read_result(run_dir) or {})
    if run_dir is not None and result.get("status") != "done":
      print(f"skipping {name}: not finished ({result.get('status', 'missing')})")
      continue
    variables = _variables(config, run_dir, spec["shipped"])
    weight, target = overrides.get("sparsity.weight"), overrides.get("sparsity.target", 0.0)
    label = "shipped" if run_dir is None else f"w={weight:g}" + (f", target {target:g}" if target else "")
    if overrides.get("distill.teacher"):
      label += f", distilled, lr {overrides.get('optax.lr', config.optax.lr):g}"
    row = {"run": name, "label": label, "weight": weight, "target": target,
           "epochs": overrides.get("total_epochs", 0.0),
           "steps": result.get("step", 0), "minutes": result.get("seconds", 0.0) / 60}
    row["tune"] = measure(row, config, variables, "tune", "fused")
    print(f"{name}: tune top-1 {row['tune']['qann_top1']:.4f}, SOPs/MAC {row['tune']['sop_per_mac']:.3f}")
    rows.append((row, config, variables, run_dir, overrides))

  fine_tuned = [r for r, *_ in rows if r["weight"] is not None]
  if not fine_tuned:
    raise SystemExit(f"error: no finished run in {args.sweep_workdir}; run the sweep first.")
  control = next((r for r in fine_tuned if r["weight"] == 0), None)
  if control is None:
    raise SystemExit("error: the sweep has no finished weight-0 run to compare against.")
  floor = control["tune"]["qann_top1"] - args.tolerance
  eligible = [r for r in fine_tuned if r["weight"] > 0 and r["tune"]["qann_top1"] >= floor]
  chosen = min(eligible, key=lambda r: r["tune"]["sop_per_mac"]) if eligible else None
  print(f"chosen on tune (top-1 >= {floor:.4f}, fewest SOPs/MAC): {chosen['run'] if chosen else 'none'}")
  sparse = [r for r in fine_tuned if r["weight"] > 0 and r["tune"]["sop_per_mac"] <= args.target_ratio]
  candidate = max(sparse, key=lambda r: r["tune"]["qann_top1"]) if sparse else None
  print(f"sparse candidate (tune SOPs/MAC <= {args.target_ratio}, best tune top-1): "
        f"{candidate['run'] if candidate else 'none'}")

  for row, config, variables, run_dir, overrides in rows:
    if args.ship and candidate is row:
      # The sparse candidate's test evaluation is its report's: measured once, written with the export.
      test_config = config_utils.load_config(config_spec, {**common_overrides, **overrides,
                                                           "data.eval_split": spec["test_split"]})
      run = loading.load(test_config, workdir=run_dir)
      start = time.time()
      summary = report.write_report(test_config, run_dir, run, max_examples=args.max_examples, mode=args.test_mode)
      row["test"] = {k: summary["metrics"][k] for k in ROW_FIELDS} | {"seconds": time.time() - start}
      ship = Path(args.ship)
      if ship.exists():
        shutil.rmtree(ship)
      export.save(ship, variables, step=run.step, model_config=config.model,
                  notes=dict(config=config_spec, chosen_on="tune split: best top-1 at or below "
                             f"{args.target_ratio} SOPs/MAC", test_split=spec["test_split"],
                             overrides={k: _text(v) for k, v in {**common_overrides, **overrides}.items()}))
      shutil.copytree(os.path.join(run_dir, "report"), ship / "report")
      row["shipped_to"] = str(ship)
    else:
      mode = args.test_mode if row is chosen or row is candidate or run_dir is None else args.other_rows_mode
      row["test"] = measure(row, config, variables, spec["test_split"], mode)
    print(f"{row['run']}: test QANN {row['test']['qann_top1']:.4f} SNN {row['test']['snn_top1']:.4f} "
          f"agreement {row['test']['agreement']:.4f} SOPs/MAC {row['test']['sop_per_mac']:.3f}")

  reference = reference_row(args.reference, spec["test_split"]) if args.reference else None
  results[args.dataset] = {
      "sweep": args.sweep or spec["sweep"], "config": config_spec, "overrides": {k: _text(v) for k, v in common_overrides.items()},
      "test_split": spec["test_split"], "tune_tolerance": args.tolerance, "max_examples": args.max_examples,
      "selection": "fewest tune SOPs/MAC among weight > 0 runs with tune QANN top-1 >= weight-0 run's - tolerance",
      "selected": chosen["run"] if chosen else None, "target_ratio": args.target_ratio,
      "candidate": candidate["run"] if candidate else None, "ann_macs_per_image": float(models.count(base_config.model)["macs"]),
      "rows": [r for r, *_ in rows], "machine": common.machine(),
      # A reference measured earlier is kept when this invocation names none.
      "reference": reference or before.get("reference"),
      "earlier_references": _earlier_references(before, reference)}
  path = common.save(results, out, "sparsity.json")
  # The plot sits beside the JSON (benchmarks/results/pareto.png by default).
  plot_pareto(results, path.with_name("pareto.png"))
  print(markdown_table(results[args.dataset]))
  print(f"wrote {path} and {path.with_name('pareto.png')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
