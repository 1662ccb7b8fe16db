"""The main job: train the QANN, convert it, simulate the SNN, and write a report.

    python -m ge2ms_jax.main --config experiments/fashion_mnist.py --workdir workdirs/fashion_mnist --mode all

`run_all` trains (resuming the workdir's run if there is one), loads the newest checkpoint, converts
it, evaluates the QANN and the spiking SNN on the evaluation split, checks them layer by layer on a
batch, and writes into `<workdir>/report/`:

* `report.json`: the evaluation metrics (accuracy, SOPs/image, ANN MACs/image, SOPs/MAC, ops/MAC, energy under
  every preset of `energy.ENERGY_PRESETS`, latency, `snn_check`), the latency path, energy per layer,
  the verification table, where things are;
* `report.md`: the same for people;
* `training.png` (loss, accuracy, evaluation top-1 over steps), `energy.png` (energy per layer and
  firing rate per neuron site), `raster.png` (spikes of a few neurons of several sites over the T
  steps of one image).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ge2ms_jax import cost as cost_lib
from ge2ms_jax import energy as energy_lib
from ge2ms_jax import evaluation
from ge2ms_jax import metrics as metrics_lib
from ge2ms_jax import model as models
from ge2ms_jax import neurons
from ge2ms_jax import snn

_log = logging.getLogger(__name__)


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_training(jsonl_path: str, out_path: str) -> bool:
  """Training loss/accuracy and evaluation top-1 over steps from `metrics.jsonl`; False if empty."""
  rows = metrics_lib.read_jsonl(jsonl_path) if os.path.exists(jsonl_path) else []
  train = [r for r in rows if "train/loss" in r]
  evals = [r for r in rows if "eval/top1" in r]
  if not train and not evals:
    return False
  plt = _plt()
  fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
  if train:
    a.plot([r["step"] for r in train], [r["train/loss"] for r in train], label="train loss")
    a.set_xlabel("step")
    a.set_ylabel("cross-entropy")
    a.legend()
    if "train/accuracy" in train[0]:
      b.plot([r["step"] for r in train], [r["train/accuracy"] for r in train], label="train accuracy (batch)")
  if evals:
    b.plot([r["step"] for r in evals], [r["eval/top1"] for r in evals], "o-", label="eval top-1 (QANN)")
  b.set_xlabel("step")
  b.set_ylabel("accuracy")
  b.legend()
  fig.tight_layout()
  fig.savefig(out_path, dpi=110)
  plt.close(fig)
  return True


def spike_trains(config: ml_collections.ConfigDict, snn_variables: Mapping[str, Any], image: jax.Array
                 ) -> dict[str, np.ndarray]:
  """The spikes `[T, H, W, C]` of every neuron site for one image `[1, H, W, C]`, in network order."""
  _, outputs = snn.neuron_site_outputs(models.build(config, "spike"), snn_variables, image)
  return {site: np.asarray(train.spikes[:, 0]) for site, train in outputs.items()}


def _distinct_patterns(s: np.ndarray, count: int) -> np.ndarray:
  """Indices of up to `count` neurons with distinct spike patterns `s[:, i]`, ordered by pattern.

  Silent and always-firing neurons are shown only when too few others exist: the interesting rows
  are those whose digits differ from step to step.
  """
  patterns, first = np.unique(s.T.astype(np.uint8), axis=0, return_index=True)
  counts = patterns.sum(1)
  inner = [i for i, c in zip(first, counts) if 0 < c < s.shape[0]]
  outer = [i for i, c in zip(first, counts) if not 0 < c < s.shape[0]]
  chosen = (inner + outer)[:count]
  return np.asarray(sorted(chosen, key=lambda i: tuple(s[:, i])), dtype=int)


def plot_raster(trains: Mapping[str, np.ndarray], config: ml_collections.ConfigDict, out_path: str,
                sites: int = 4, per_site: int = 12) -> list[str]:
  """Spike raster of neurons with distinct spike patterns at a few sites over their T steps.

  Returns:
    the names of the sites shown.
  """
  names = list(trains)
  chosen = [names[int(i)] for i in np.linspace(0, len(names) - 1, min(sites, len(names)))]
  codes = models.neuron_codes(config)
  plt = _plt()
  fig, axes = plt.subplots(1, len(chosen), figsize=(3.2 * len(chosen), 4), squeeze=False)
  for ax, site in zip(axes[0], chosen):
    s = trains[site].reshape(trains[site].shape[0], -1)
    active = _distinct_patterns(s, per_site)
    spec = codes.resolve(site)
    group, _, _ = neurons.step_layout(spec.base, spec.groups)
    for row, idx in enumerate(active):
      t = np.nonzero(s[:, idx])[0]
      ax.scatter(t, np.full_like(t, row), marker="|", s=120, color="black")
    for g in range(1, spec.groups):
      ax.axvline(np.searchsorted(group, g + 1) - 0.5, color="tab:red", lw=0.8, ls="--")
    ax.set_xlim(-0.5, s.shape[0] - 0.5)
    ax.set_ylim(-0.5, max(len(active), 1) - 0.5)
    ax.set_xlabel(f"time step (b={spec.base}, G={spec.groups})")
    ax.set_ylabel("neuron (by level encoded)")
    ax.set_title(site, fontsize=8)
  fig.tight_layout()
  fig.savefig(out_path, dpi=110)
  plt.close(fig)
  return chosen


def _preset_rows(m: Mapping[str, Any]) -> list[tuple[str, str]]:
  """(label, value) rows of the energy under every preset, the papers' convention first."""
  rows = []
  for name, e in m["energy_presets"].items():
    what = energy_lib.PRESET_DESCRIPTIONS.get(name, name)
    rows.append((f"energy per image, {name} ({what})",
                 f"SNN {e['snn_mj_per_image']:.6f} mJ, ANN {e['ann_mj_per_image']:.6f} mJ, "
                 f"ANN/SNN {e['ann_over_snn']:.2f}x"))
  return rows


def _markdown(summary: Mapping[str, Any], energy_table: str, verify_table: str) -> str:
  m = summary["metrics"]
  lat = summary.get("latency", {})
  lines = [
      f"# Ge2mS-T report: {summary['experiment']}", "",
      f"Checkpoint: `{summary['checkpoint']}` (step {summary['step']})", "",
      f"SNN simulation: **{m['snn_check']}**.", "",
      "| metric | value |", "|---|---|",
      f"| QANN top-1 | {100 * m['qann_top1']:.2f}% |",
      f"| SNN top-1 ({m['snn_check']}) | {100 * m['snn_top1']:.2f}% |",
      f"| prediction agreement | {100 * m['agreement']:.2f}% |",
      f"| examples | {m['num_examples']} ({m['eval_data']}) |",
      f"| time steps T (largest window of any site) | {m['time_steps']} |",
      f"| latency_steps (first input step to complete output) | {m['latency_steps']} |",
      f"| steps_per_image (a layer-pipelined network takes a new image every ... steps) | "
      f"{m['steps_per_image']} |",
      f"| spikes per neuron | {m['spikes_per_neuron']:.4f} |",
      f"| firing rate | {m['firing_rate']:.4f} |",
      f"| SNN synaptic operations (SOPs) per image | {m['sops_per_image']:.4g} |",
      f"| SNN encoding-layer MACs per image | {m['encoding_macs_per_image']:.4g} |",
      f"| ANN MACs per image (same network, all MACs) | {m['ann_macs_per_image']:.4g} |",
      f"| SOPs / MAC (SNN SOPs per ANN MAC, hardware-independent) | {m['sop_per_mac']:.3f} |",
      f"| SNN real multiplications per image besides the encoding MACs (scalings) | {m['scalings_per_image']:.4g} |",
      f"| **ops / MAC** (SNN SOPs + encoding MACs + scalings, per ANN MAC) | **{m['ops_per_mac']:.3f}** |",
      *([f"| training cost (this workdir's run, every invocation) | {summary['training']['step']} steps, "
         f"{summary['training']['seconds'] / 60:.0f} min |"] if (summary.get("training") or {}).get("seconds") else []),
      *([f"| training FLOPs and rate | {cost_lib.format_cost(summary['training_cost'])} |"]
        if summary.get("training_cost") else []),
      *(f"| {label} | {value} |" for label, value in _preset_rows(m)), "",
      "Energy presets (Horowitz, ISSCC 2014, 45 nm; definitions in docs/energy.md): `fp32_45nm` is the "
      "convention of the spiking-transformer papers; `int_45nm` prices both networks as integer "
      "hardware, where an addition saves less against a multiply-accumulate.", "",
  ]
  if lat.get("path"):
    lines += [f"Longest path ({len(lat['path'])} neuron sites, each waits for its whole input window): "
              + " -> ".join(f"`{p}`" for p in lat["path"]), ""]
  lines += [
      *((["![training](training.png)", ""]) if "training" in summary.get("files", {}) else []),
      "![energy](energy.png)", "", "![raster](raster.png)", "",
      "## Energy per layer", "", "```", energy_table, "```", "",
      f"## QANN vs SNN, layer by layer (one batch; {m['snn_check']})", "", "```", verify_table, "```", ""]
  return "\n".join(lines)


def write_report(config: ml_collections.ConfigDict, workdir: str, loaded: Any, *,
                 max_examples: int | None = None, mode: str = "spike",
                 checkpoint: str | None = None) -> dict[str, Any]:
  """Evaluates a loaded model (`loading.load`) and writes `<workdir>/report/`; returns the summary.

  `checkpoint` names what was loaded (default: the workdir's checkpoint of `loaded.step`). The
  training curve comes from `<workdir>/metrics.jsonl`; without one, a `training.png` already in
  `<workdir>/report/` is kept (refreshing the report of an export), else the report has none.

  The summary (= report.json) holds `metrics` (`evaluation.evaluate_snn`), `training` (status, step
  and seconds of the workdir's `result.json`, or None), `training_cost` (`cost.training_cost`:
  training FLOPs, evaluation FLOPs during training and of this report's QANN pass, achieved GFLOP/s
  against the CPU's peak; None without a run), `latency`
  (`model.latency`), `energy` (`EnergyReport.to_json`), `verify`, `raster_sites` and `files`. Every
  output carries `metrics["snn_check"]`: only `mode="spike"` is checked multiplication-free.
  """
  out_dir = os.path.join(workdir, "report")
  os.makedirs(out_dir, exist_ok=True)
  variables = loaded.variables
  result = evaluation.evaluate_snn(config, variables, max_examples=max_examples, mode=mode)
  from ge2ms_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  it = data_lib.build_iterator(config, split=result.metrics["eval_data"], global_batch_size=8, sharding=None,
                               train=False, num_epochs=1)
  try:
    batch = next(iter(it))
  finally:
    getattr(it, "close", lambda: None)()
  images = jnp.asarray(batch["image"])
  rows = snn.verify(variables, result.snn_variables, images, config=config.model, mode=mode)
  verify_table = snn.format_verify(rows)
  energy_table = result.energy.format_table()
  result.energy.plot(os.path.join(out_dir, "energy.png"))
  training_png = os.path.join(out_dir, "training.png")
  has_training = (plot_training(os.path.join(workdir, "metrics.jsonl"), training_png)
                  or os.path.exists(training_png))
  trains = spike_trains(config.model, result.snn_variables, images[:1])
  raster_sites = plot_raster(trains, config.model, os.path.join(out_dir, "raster.png"))
  run_result = cost_lib.read_result(workdir)
  training = ({k: v for k, v in run_result.items() if k in ("status", "step", "seconds")}
              if run_result else None)
  macs = models.count(config.model)["macs"]
  training_cost = cost_lib.training_cost(macs, config.batch_size, run_result)
  if training_cost is not None:
    # This report's own QANN pass over the evaluation images (the SNN's operations are in `metrics`).
    training_cost["report_eval_flops"] = 2.0 * macs * result.metrics["num_examples"]
  summary = {
      "experiment": config.get("name", "") or config.data.get("name", ""),
      "training": training,
      "training_cost": training_cost,
      "checkpoint": checkpoint or os.path.join(workdir, "checkpoints", str(loaded.step)), "step": loaded.step,
      "metrics": result.metrics, "latency": models.latency(config.model), "energy": result.energy.to_json(),
      "verify": rows, "raster_sites": raster_sites,
      "files": {k: os.path.join(out_dir, f) for k, f in (("json", "report.json"), ("markdown", "report.md"),
                                                          ("training", "training.png"),
                                                          ("energy", "energy.png"), ("raster", "raster.png"))
                if k != "training" or has_training},
  }
  with open(summary["files"]["json"], "w") as f:
    json.dump(summary, f, indent=1, default=str)
  with open(summary["files"]["markdown"], "w") as f:
    f.write(_markdown(summary, energy_table, verify_table))
  return summary


def format_summary(summary: Mapping[str, Any]) -> str:
  """The lines the main job prints at its end."""
  m = summary["metrics"]
  lines = [
      f"QANN top-1            {100 * m['qann_top1']:.2f}%   ({m['num_examples']} examples of {m['eval_data']})",
      f"SNN top-1             {100 * m['snn_top1']:.2f}%   ({m['snn_check']})",
      f"prediction agreement  {100 * m['agreement']:.2f}%",
      f"time steps            T = {m['time_steps']}   (the largest window of one neuron site)",
      f"latency               latency_steps {m['latency_steps']} (first input step to complete output)   "
      f"steps_per_image {m['steps_per_image']} (layer-pipelined: a new image every {m['steps_per_image']} steps)",
      f"spikes per neuron     {m['spikes_per_neuron']:.4f}   (firing rate {m['firing_rate']:.4f})",
      f"operations per image  SNN {m['sops_per_image']:.4g} SOPs + {m['encoding_macs_per_image']:.4g} encoding "
      f"MACs + {m['scalings_per_image']:.4g} scalings   ANN {m['ann_macs_per_image']:.4g} MACs",
      f"operations per MAC    ops/MAC {m['ops_per_mac']:.3f}   (SOPs/MAC {m['sop_per_mac']:.3f})",
      *([f"training cost         {cost_lib.format_cost(summary['training_cost'])}"]
        if summary.get("training_cost") else []),
  ]
  for name, e in m["energy_presets"].items():
    lines.append(f"energy per image      {name:<9}  SNN {e['snn_mj_per_image']:.6f} mJ   ANN "
                 f"{e['ann_mj_per_image']:.6f} mJ   ({e['ann_over_snn']:.1f}x; "
                 f"{energy_lib.PRESET_DESCRIPTIONS.get(name, name)})")
  lines += [
      f"checkpoint            {summary['checkpoint']}",
      f"report                {summary['files']['markdown']}  (+ "
      + ", ".join(os.path.basename(f) for k, f in summary["files"].items() if k != "markdown") + ")",
  ]
  return "\n".join(lines)
