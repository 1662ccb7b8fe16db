"""Loading a trained model: one resolver for every path a user may pass, one loaded type.

    loaded = loading.load(config, "checkpoints/fashion_mnist_tiny")   # an export directory
    loaded = loading.load(config, "runs/fm")                          # a workdir: its newest step
    loaded = loading.load(config, "runs/fm/checkpoints/1200")         # one Orbax step folder
    loaded = loading.load(config, workdir="runs/fm")                  # the run's own workdir
    loaded.variables, loaded.step, loaded.model                       # QANN variables, step, config

`resolve` decides once what a path is (an export, a workdir, an Orbax checkpoints directory or step
folder) and finds the model config recorded with it; `load` reads the variables. Every mode of the
command line, the report, fine-tuning (`config.init_from`), distillation (`config.distill.teacher`)
and the benchmarks load through here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Mapping

import jax
import ml_collections

from ge2ms_jax import checkpoint as ckpt_lib
from ge2ms_jax import config_utils
from ge2ms_jax import export
from ge2ms_jax import sharding as sharding_lib
from ge2ms_jax import state as state_lib

_log = logging.getLogger(__name__)

EXPORT, ORBAX = "export", "orbax"
# How convolutions and spikes are computed is the loading run's choice, not the checkpoint's: every
# conv_impl computes the same convolutions, every neuron.method fires the same spikes.
NOT_ADOPTED = ("conv_impl", "neuron.method")


@dataclasses.dataclass(frozen=True)
class Source:
  """What a path names, decided once.

  Attributes:
    path: the path as given.
    kind: "export" or "orbax".
    directory: the export directory, or the Orbax checkpoints directory.
    step: the Orbax step folder named (None: the newest readable step; an export's own step).
    recorded_model: the model config recorded with it (an export's `export.json`, or the
      `config.json` of the workdir a checkpoint belongs to), None if there is none.
  """
  path: str
  kind: str
  directory: str
  step: int | None
  recorded_model: Mapping[str, Any] | None


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A trained model, however it was stored.

  Attributes:
    variables: QANN `{"params": ..., "batch_stats": ...}` on the host (the EMA parameters when the run
      kept them).
    step: the training step it was taken at.
    model: the model config it is loaded with, frozen (hashable: `model.build` and the SNN's compiled
      functions are cached on it, so the network is built once per run).
    source: where it came from.
  """
  variables: dict
  step: int
  model: ml_collections.FrozenConfigDict
  source: Source


def _read_model(file: str) -> Mapping[str, Any] | None:
  try:
    with open(file) as f:
      recorded = json.load(f).get("model")
  except (OSError, ValueError, AttributeError):
    return None
  return recorded if isinstance(recorded, dict) else None


def resolve(path: str | os.PathLike, what: str = "--checkpoint") -> Source:
  """What `path` is: an export directory, a training workdir (its `checkpoints/`), an Orbax
  checkpoints directory, or one step folder (`.../checkpoints/1200`).

  Args:
    path: the path a user gave.
    what: how errors name it (`--checkpoint`, `config.init_from`, ...).

  Raises:
    FileNotFoundError: naming `what` and the kinds of path it takes, when `path` does not exist.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what}={path!r} does not exist; give an export directory, an Orbax "
                            "checkpoint (a checkpoints directory or one step folder) or a training workdir.")
  if export.is_export(path):
    return Source(path, EXPORT, path, None, _read_model(os.path.join(path, export.META)))
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return Source(path, ORBAX, os.path.join(path, "checkpoints"), None,
                  _read_model(os.path.join(path, "config.json")))
  directory, step = ckpt_lib.split_checkpoint_path(path)
  recorded = None
  for candidate in (directory, os.path.dirname(os.path.abspath(directory))):
    recorded = _read_model(os.path.join(candidate, "config.json"))
    if recorded is not None:
      break
  return Source(path, ORBAX, directory, step, recorded)


def adopt_model_config(config: ml_collections.ConfigDict, source: Source) -> list[str]:
  """Gives `config.model` the architecture `source` was trained with; returns the changed keys.

  A checkpoint's arrays fit only its own network, so `--config experiments/cifar10.py` (variant `s`)
  evaluates a `tiny` checkpoint as `tiny` instead of failing on the first mismatched shape.
  """
  if source.recorded_model is None:
    return []
  recorded = {k: v for k, v in config_utils.flatten(source.recorded_model).items() if k not in NOT_ADOPTED}
  before = config_utils.flatten(config.model)
  # As overrides, the recorded values get the config's types back (JSON turned tuples into lists).
  config_utils.apply_overrides(config, {"model." + k: v for k, v in recorded.items()})
  changed = sorted(config_utils.diff(before, config_utils.flatten(config.model)))
  if changed:
    _log.info("using the model config recorded with %s (variant %r; differs from --config in %s)",
              source.path, config.model.variant, ", ".join(changed))
  return changed


def _restore_orbax(config: ml_collections.ConfigDict, source: Source, devices=None) -> tuple[dict, int]:
  """The QANN variables and step of an Orbax checkpoint, restored onto the run's mesh and fetched.

  Only what inference reads is restored (parameters, model state, EMA parameters): the optimizer
  state is not, so the checkpoint loads under any optimizer config."""
  mesh = sharding_lib.make_mesh(config.mesh, devices)
  checkpointer = ckpt_lib.Checkpointer(source.directory, max_to_keep=None, async_save=False)
  try:
    restored = checkpointer.restore(state_lib.inference_abstract(config, mesh, with_ema=True),
                                    source.step, partial=True)
  finally:
    checkpointer.close()
  _log.info("loaded step %d from %s", restored.step, source.directory)
  return jax.device_get(state_lib.qann_variables(restored.state)), int(restored.step)


def load(config: ml_collections.ConfigDict, path: str | os.PathLike | None = None, *,
         workdir: str | os.PathLike | None = None, adopt: bool = True, what: str = "--checkpoint",
         devices=None) -> Loaded:
  """Loads a trained model from `path`, or from `workdir`'s newest checkpoint.

  Args:
    config: the run's config (model; for an Orbax checkpoint also the mesh and sharding rules its
      arrays are laid out by).
    path: an export, a training workdir, an Orbax checkpoints directory or step folder.
    workdir: instead of `path`, the run's own workdir (its config is the run's: nothing is adopted).
    adopt: with `path`, first give `config.model` the architecture recorded with it
      (`adopt_model_config`; `config` is changed in place). Fine-tuning passes False: it must
      load into the model it configures.
    what: how errors name `path`.
    devices: the devices of the mesh an Orbax checkpoint is restored onto (default: all).

  Returns:
    `Loaded(variables, step, model, source)`; `model` is `config.model` frozen.

  Raises:
    FileNotFoundError: no such path, or no checkpoint in it; `export.ExportError`: an export that is
    altered or does not fit `config.model`; `checkpoint.CheckpointMismatchError` /
    `CheckpointCorruptError`: an Orbax checkpoint that does not fit or cannot be read.
  """
  if (path is None) == (workdir is None):
    raise ValueError("loading.load takes a path or a workdir (one of them).")
  if path is None:
    directory = os.path.join(os.fspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
      raise FileNotFoundError(f"workdir {os.fspath(workdir)!r} has no checkpoints ({directory} does not "
                              "exist); train there first, or pass --checkpoint PATH.")
    source = resolve(directory)
  else:
    source = resolve(path, what)
    if adopt:
      adopt_model_config(config, source)
  if source.kind == EXPORT:
    read = export.load(source.directory, config.model)
    variables, step = dict(read.variables), read.step
  else:
    variables, step = _restore_orbax(config, source, devices)
  return Loaded(variables=variables, step=step, model=ml_collections.FrozenConfigDict(config.model),
                source=source)
