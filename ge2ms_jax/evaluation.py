"""Evaluating a trained QANN and its spiking conversion side by side on a dataset.

`evaluate_snn` converts the QANN, runs both over one pass of an evaluation set, and returns top-1 of
each, their prediction agreement, the SNN's synaptic operations per image against the ANN's MACs,
its energy per image from the spikes it fired under each energy preset (with the ANN's energy beside
it), its latency, and which simulation produced it (`snn_check`). `--mode evaluate` of the command
line prints its JSON. docs/energy.md defines every number.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ge2ms_jax import conversion
from ge2ms_jax import energy as energy_lib
from ge2ms_jax import model as models
from ge2ms_jax import snn

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class SnnEvaluation:
  """Result of `evaluate_snn`.

  Attributes:
    metrics: JSON-ready summary: `qann_top1`, `snn_top1`, `agreement`, `num_examples`,
      `energy_mj_per_image`, `ann_energy_mj_per_image`, `ann_over_snn_energy` (under `energy_model`,
      by default the "fp32_45nm" preset), `energy_model`, `energy_presets` (`{preset:
      {"snn_mj_per_image", "ann_mj_per_image", "ann_over_snn"}}` for every preset),
      `sops_per_image`, `ann_macs_per_image`, `sop_per_mac`, `encoding_macs_per_image`,
      `scalings_per_image`, `ops_per_image` and `ops_per_mac` (SOPs + encoding MACs + real
      multiplications, per ANN MAC; `energy.EnergyReport.ops_per_mac`),
      `time_steps`, `latency_steps`, `steps_per_image`, `spikes_per_neuron`, `firing_rate`,
      `snn_mode`, `snn_check`, `eval_data`, `tta` and `views_per_image` (with `config.evals.tta`
      "flip" both networks average the logits of each image and its mirror; the SNN's operations
      and the ANN's MACs per image then cover both views), `seconds`.
    energy: the full per-layer `EnergyReport`.
    snn_variables: the converted variables.
  """
  metrics: dict[str, Any]
  energy: energy_lib.EnergyReport
  snn_variables: Any


TTA_MODES = ("", "flip")


def tta_views(images: jax.Array, tta: str) -> list[jax.Array]:
  """The views of `images [B, H, W, C]` whose logits test-time augmentation averages: the images
  alone (`tta=""`), or also their left-right mirror (`"flip"`).

  Raises:
    ValueError: for another mode, naming the allowed ones.
  """
  if tta not in TTA_MODES:
    raise ValueError(f"config.evals.tta={tta!r}; use one of {TTA_MODES} ('flip': average the logits of "
                     "each image and its mirror image).")
  return [images] + ([images[..., ::-1, :]] if tta == "flip" else [])


def evaluate_snn(config: ml_collections.ConfigDict, variables: Mapping[str, Any], *, data_module=None,
                 eval_data: str | None = None, split: str | None = None, batch_size: int | None = None,
                 max_examples: int | None = None, mode: str = "spike",
                 energy_model: energy_lib.EnergyModel = energy_lib.ENERGY_PRESETS[energy_lib.DEFAULT_PRESET]
                 ) -> SnnEvaluation:
  """Evaluates the QANN and the converted SNN over one pass of an evaluation set.

  Args:
    config: the experiment config (`model`, `data`, `pp_eval`, `evals`).
    variables: QANN `{"params", "batch_stats"}`.
    data_module: the input module (default `ge2ms_jax.data`).
    eval_data: a user dataset path instead of the configured split (see `data.build_iterator`).
    split: the split (default `config.evals.split` or `config.data.eval_split`).
    batch_size: images per batch (default `config.evals.batch_size`).
    max_examples: stop after this many real examples (None: the whole split).
    mode: the SNN simulation, "spike" (spike by spike, multiplication-free check) or "fused" (not
      simulated spike by spike, not checked; `metrics["snn_check"]` says which).
    energy_model: energy constants of the per-layer report and of the `energy_mj_per_image` keys;
      `energy_presets` always holds every preset.

  Returns:
    an `SnnEvaluation`.

  Raises:
    ValueError: if the evaluation set is empty; snn.MultiplicationFreeError from the simulation.
  """
  if data_module is None:
    from ge2ms_jax import data as data_module  # pylint: disable=g-import-not-at-top
  start = time.time()
  model_cfg = config.model
  snn_variables = conversion.convert(variables, model_cfg)
  evals = config.get("evals", ml_collections.ConfigDict())
  split = split or evals.get("split", None) or config.data.get("eval_split", "test")
  tta = evals.get("tta", "")
  num_views = len(tta_views(jnp.zeros((1, 1, 1, 1)), tta))  # checks the mode before any work
  it = data_module.build_iterator(config, split=split, global_batch_size=int(batch_size or evals.get("batch_size", 256)),
                                  sharding=None, seed=int(config.get("seed", 0)), train=False, num_epochs=1,
                                  eval_data=eval_data)
  try:
    counts, sims = _score(it, variables, snn_variables, model_cfg, tta, mode, max_examples)
  finally:
    close = getattr(it, "close", None)
    if close is not None:
      close()
  if not counts["n"]:
    raise ValueError(f"evaluate_snn: the evaluation set ({eval_data or split!r}) has no examples.")
  merged = snn.merge(sims)
  n = counts["n"]
  report = energy_lib.energy_report(merged.layers, num_views * models.count(model_cfg)["macs"], num_images=n,
                                    model=energy_model, snn_mode=merged.mode)
  lat = models.latency(model_cfg)
  metrics = {
      "qann_top1": counts["qann"] / n, "snn_top1": counts["snn"] / n, "agreement": counts["agree"] / n,
      "energy_mj_per_image": report.snn_mj, "ann_energy_mj_per_image": report.ann_mj,
      "ann_over_snn_energy": report.ratio, "energy_model": energy_model.label,
      "energy_presets": report.presets(), "num_examples": n, "time_steps": report.time_steps,
      "latency_steps": lat["latency_steps"], "steps_per_image": lat["steps_per_image"],
      "spikes_per_neuron": report.spikes_per_neuron, "firing_rate": report.firing_rate,
      "sops_per_image": report.sops, "ann_macs_per_image": report.ann_macs, "sop_per_mac": report.sop_per_mac,
      "encoding_macs_per_image": report.macs_first, "scalings_per_image": report.scalings,
      "ops_per_image": report.ops, "ops_per_mac": report.ops_per_mac, "snn_mode": mode, "snn_check": report.snn_check,
      "eval_data": eval_data or split, "tta": tta or "none", "views_per_image": num_views,
      "seconds": time.time() - start,
  }
  return SnnEvaluation(metrics=metrics, energy=report, snn_variables=snn_variables)


def _score(batches, variables: Mapping[str, Any], snn_variables: Mapping[str, Any],
           model_cfg: ml_collections.ConfigDict, tta: str, mode: str, max_examples: int | None
           ) -> tuple[dict[str, int], list]:
  """Runs the QANN and the SNN on every view of each batch's real images (at most `max_examples`).

  Returns:
    counts `{"n", "qann", "snn", "agree"}` (images, correct of each network, same predictions), and
    the SNN's simulations, one per batch and view.
  """
  net = models.build(model_cfg, "qann")
  qann_fn = jax.jit(lambda v, x: net.apply(v, x, train=False))
  counts = dict(n=0, qann=0, snn=0, agree=0)
  sims = []
  for batch in batches:
    mask = np.asarray(batch.get("mask", np.ones(len(batch["label"]))))
    real = int(mask.sum())
    if max_examples is not None:
      real = min(real, max_examples - counts["n"])
    if real <= 0:
      break
    # Padding sits at the end of the last batch; dropping it keeps it out of the spike counts.
    images = jnp.asarray(np.asarray(batch["image"])[:real])
    labels = np.asarray(batch["label"])[:real]
    # Test-time augmentation runs both networks on every view; the SNN's operations of all views
    # are counted (per image), as are the ANN's MACs.
    views = tta_views(images, tta)
    lq = np.mean([np.asarray(qann_fn(variables, v)) for v in views], axis=0)
    view_sims = [snn.simulate(snn_variables, v, mode, config=model_cfg) for v in views]
    ls = np.mean([np.asarray(s.logits) for s in view_sims], axis=0)
    sims.extend(view_sims)
    counts["n"] += real
    counts["qann"] += int(np.sum(lq.argmax(-1) == labels))
    counts["snn"] += int(np.sum(ls.argmax(-1) == labels))
    counts["agree"] += int(np.sum(lq.argmax(-1) == ls.argmax(-1)))
    if max_examples is not None and counts["n"] >= max_examples:
      break
  return counts, sims


def summary_line(metrics: Mapping[str, Any]) -> str:
  """The one-line JSON object the command line prints last."""
  return json.dumps({k: metrics[k] for k in metrics}, sort_keys=False)
