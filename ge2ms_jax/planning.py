"""Spike-pattern planning (METHOD.md §1): choose `(base, groups)` per neuron site.

At a fixed level count `L = base**groups` a site computes the same quantized value whatever its code,
so the QANN, the conversion and the network's outputs are unchanged; only the spike pattern — how
many spikes over how many time steps — differs. `plan_codes` measures, on a calibration batch, the
spikes of every site under every code with the site's `L` and the allowed number of time steps, and
picks per site the code with the fewest spikes. Synaptic operations are spikes times fan-out, and a
neuron's fan-out does not depend on its code, so fewer spikes at a site means fewer synaptic
operations downstream (exactly so when the neurons of a site share one fan-out, as they do away from
borders). The energy before and after is measured by full simulations.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import ml_collections

from ge2ms_jax import conversion
from ge2ms_jax import energy as E
from ge2ms_jax import layers as L
from ge2ms_jax import model as models
from ge2ms_jax import neurons
from ge2ms_jax import snn


@dataclasses.dataclass
class Plan:
  """Result of `plan_codes`.

  Attributes:
    codes: chosen `(base, groups)` per site.
    overrides: the same as a `config.model.neuron_overrides` string.
    config: the model config with those overrides.
    spikes: measured spikes per site and candidate code, `{site: {(b, G): spikes}}`.
    before, after: energy reports of the original and the planned network on the calibration batch.
  """
  codes: dict[str, tuple[int, int]]
  overrides: str
  config: ml_collections.ConfigDict
  spikes: dict[str, dict[tuple[int, int], float]]
  before: E.EnergyReport
  after: E.EnergyReport


def _with_codes(config: ml_collections.ConfigDict, codes: Mapping[str, tuple[int, int]]) -> ml_collections.ConfigDict:
  out = ml_collections.ConfigDict(config.to_dict())
  out.neuron_overrides = L.format_overrides(dict(codes))
  return out


def plan_codes(config: ml_collections.ConfigDict, snn_variables: Mapping[str, Any], images: jax.Array,
               max_steps: int | None = None, energy_model: E.EnergyModel = E.EnergyModel()) -> Plan:
  """Chooses per-site codes that minimise measured spikes at unchanged levels.

  Args:
    config: the model config (its current codes define each site's `L`).
    snn_variables: converted variables (`conversion.convert`).
    images: calibration batch `[B, H, W, C]`.
    max_steps: largest time-step count `T` a site may use (None: no limit beyond `L`).
    energy_model: constants for the before/after reports.

  Returns:
    a `Plan`.

  Raises:
    ValueError: if `max_steps` leaves some site without any code of its level count.
  """
  codes_now = models.neuron_codes(config)
  sites = conversion.neuron_sites(snn_variables)
  current = {s: (codes_now.resolve(s).base, codes_now.resolve(s).groups) for s in sites}
  candidates = {}
  for site, (b, g) in current.items():
    options = [c for c in neurons.codes_for_levels(b**g) if max_steps is None or c[1] * (c[0] - 1) <= max_steps]
    if not options:
      raise ValueError(f"plan_codes: site {site!r} has L = {b**g} levels; no code of that level count fits "
                       f"max_steps={max_steps} (the fewest steps is {neurons.codes_for_levels(b**g)[0]}).")
    candidates[site] = options
  # One fused run per candidate rank: every site tries its k-th option at once (sites are independent).
  measured: dict[str, dict[tuple[int, int], float]] = {s: {} for s in sites}
  for rank in range(max(len(c) for c in candidates.values())):
    trial = {s: c[min(rank, len(c) - 1)] for s, c in candidates.items()}
    result = snn.simulate(snn_variables, images, "fused", config=_with_codes(config, trial))
    for row in result.layers:
      if row.kind == "neuron" and row.name in trial:
        measured[row.name][trial[row.name]] = row.spikes
  chosen = {s: min(measured[s], key=lambda c: (measured[s][c], c[1] * (c[0] - 1))) for s in sites}
  planned = _with_codes(config, chosen)
  ann_macs = models.count(config)["macs"]
  before = E.energy_report(snn.simulate(snn_variables, images, "fused", config=config), ann_macs,
                           model=energy_model)
  after = E.energy_report(snn.simulate(snn_variables, images, "fused", config=planned), ann_macs,
                          model=energy_model)
  return Plan(codes=chosen, overrides=planned.neuron_overrides, config=planned, spikes=measured,
              before=before, after=after)
