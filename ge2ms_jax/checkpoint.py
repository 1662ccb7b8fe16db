"""Checkpoints: train state, data-iterator state and RNG together, saved by Orbax.

Layout under `directory` (one folder per step, written to a temporary name and renamed when
complete, so a checkpoint is never changed in place and a half-written one is never listed):

    <directory>/<step>/state/              the train state pytree (params, optimizer, EMA, rng, step)
    <directory>/<step>/data/process_<i>-of-<n>.json   each process's input-iterator state

Restoring takes an abstract target (`jax.ShapeDtypeStruct`s carrying the target shardings), so a
checkpoint saved on one mesh restores onto another (8 devices → 1, say). If the newest checkpoint
cannot be read, the previous one is used and the unreadable folder is set aside as
`<step>.unreadable-<time>` (named in the log), so training resumes and later saves do not collide
with it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import signal
import threading
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

_log = logging.getLogger(__name__)

STATE = "state"
DATA = "data"

# Orbax splits each replicated array among its replicas so that they write in parallel; the split
# compiles one slicing program per array shape on the first save, seconds for a model's hundreds of
# small leaves, which gain nothing from it. Only arrays whose per-replica slice reaches this size
# are split.
MIN_REPLICA_SLICE_BYTES = 4 * 2**20
_array_handler_configured = False


def _configure_array_handler() -> None:
  global _array_handler_configured
  if _array_handler_configured:
    return
  kwargs = dict(min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES)
  try:  # Keep the default handler's per-array metadata store.
    from orbax.checkpoint._src.metadata import array_metadata_store  # pylint: disable=g-import-not-at-top
    from orbax.checkpoint._src.serialization import type_handler_registry  # pylint: disable=g-import-not-at-top
    handler = ocp.type_handlers.ArrayHandler(array_metadata_store=array_metadata_store.Store(),
                                             **kwargs)
    type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(jax.Array, handler, override=True,
                                                           ignore_warnings=True)
  except (ImportError, AttributeError, TypeError):
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(**kwargs),
                                            override=True)
  _array_handler_configured = True


# ---------------------------------------------------------------------------------------------
# Per-process data-iterator state (an Orbax handler)
# ---------------------------------------------------------------------------------------------
def _data_file(directory: epath.Path) -> epath.Path:
  return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


class DataStateHandler(ocp.CheckpointHandler):
  """Writes each process's JSON-serialisable iterator state to its own file in the checkpoint."""

  def save(self, directory: epath.Path, args: "DataStateSave"):
    directory.mkdir(parents=True, exist_ok=True)
    _data_file(directory).write_text(json.dumps(args.state))

  def restore(self, directory: epath.Path, args: "DataStateRestore | None" = None) -> Any:
    file = _data_file(directory)
    if not file.exists():
      present = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
      _log.warning("no input-iterator state for process %d of %d in %s (found %s); the input "
                   "iterator starts from its beginning.", jax.process_index(), jax.process_count(),
                   directory, present)
      return None
    return json.loads(file.read_text())

  def metadata(self, directory: epath.Path) -> None:
    return None

  def finalize(self, directory: epath.Path) -> None:
    pass

  def close(self) -> None:
    pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


# ---------------------------------------------------------------------------------------------
# Preemption
# ---------------------------------------------------------------------------------------------
class PreemptionWatcher:
  """Says when to save and stop: on SIGTERM (one process) or at the multi-host sync point.

  With several processes JAX's preemption service receives the notice on one host and picks a step
  at which all hosts save (`reached_preemption_sync_point`); every process must then call `reached`
  at every step. With one process a SIGTERM handler sets a flag, checked at the next step.
  """

  def __init__(self, install_signal_handler: bool = True):
    self._flag = threading.Event()
    self._previous = None
    if (install_signal_handler and jax.process_count() == 1
        and threading.current_thread() is threading.main_thread()):
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def _on_signal(self, signum, frame):
    del frame
    _log.warning("received signal %d: saving a checkpoint after the current step, then stopping.",
                 signum)
    self._flag.set()

  def trigger(self) -> None:
    """Requests a save-and-stop at the next step (what SIGTERM does)."""
    self._flag.set()

  def reached(self, step: int) -> bool:
    """True if the run should save a checkpoint at `step` and stop."""
    if self._flag.is_set():
      return True
    if jax.process_count() > 1:
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # The preemption service is disabled.
        return False
    return False

  def close(self) -> None:
    """Puts back the SIGTERM handler that was there before."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


# ---------------------------------------------------------------------------------------------
# The checkpointer
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Restored:
  """What `Checkpointer.restore` returns: the state, this process's data state, and the step."""
  state: Any
  data_state: Any
  step: int


class Checkpointer:
  """Saves and restores `(train state, data-iterator state)` at integer steps.

  Args:
    directory: where the step folders go (created if missing).
    max_to_keep: keep the newest N checkpoints (None: all).
    keep_period: additionally keep every checkpoint whose step is a multiple of this.
    async_save: write in a background thread; `save` returns once the arrays are copied to host.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3,
               keep_period: int | None = None, async_save: bool = True):
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1 or None (keep all), got {max_to_keep}.")
    self.directory = epath.Path(directory)
    _configure_array_handler()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, keep_period=keep_period, create=True,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True,
        save_interval_steps=1)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  # -- queries --------------------------------------------------------------------------------
  def all_steps(self) -> list[int]:
    """Steps of the complete checkpoints, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  # -- save -----------------------------------------------------------------------------------
  def save(self, step: int, state: Any, data_state: Any = None) -> bool:
    """Saves `state` and this process's `data_state` (JSON-serialisable) as checkpoint `step`.

    Must be called by every process. A step that already has a checkpoint is left as it is (never
    overwritten); returns False then, True when a save was started.
    """
    step = int(step)
    if step in self._manager.all_steps():
      _log.info("checkpoint for step %d already exists in %s; not overwriting it.", step,
                self.directory)
      return False
    args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                 DATA: DataStateSave(data_state)})
    return bool(self._manager.save(step, args=args, force=True))

  def wait(self) -> None:
    """Blocks until background saves have finished (call before exiting)."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

  # -- restore --------------------------------------------------------------------------------
  def _restore_step(self, step: int, abstract_state: Any) -> Restored:
    args = ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state),
                                 DATA: DataStateRestore()})
    out = self._manager.restore(step, args=args)
    return Restored(state=out[STATE], data_state=out[DATA], step=step)

  def _set_aside(self, step: int) -> None:
    if jax.process_index() != 0:
      return
    source = self.directory / str(step)
    target = self.directory / f"{step}.unreadable-{int(time.time())}"
    try:
      source.rename(target)
      _log.warning("moved the unreadable checkpoint %s to %s.", source, target)
    except OSError as e:
      _log.warning("could not move the unreadable checkpoint %s aside: %s", source, e)

  def restore(self, abstract_state: Any, step: int | None = None) -> Restored:
    """Restores checkpoint `step` (default: the newest) onto the shardings in `abstract_state`.

    Args:
      abstract_state: a pytree of `jax.ShapeDtypeStruct` with `sharding=` set, the structure of the
        saved state (it may be on a different mesh than the one that saved it).
      step: a specific step; None for the newest readable one.

    Returns:
      `Restored(state, data_state, step)`; `data_state` is None if this process has none saved.

    Raises:
      FileNotFoundError: if there is no checkpoint (or not the named step).
      RuntimeError: if no checkpoint could be read, listing each failure.
    """
    steps = self.all_steps()
    if step is not None:
      if int(step) not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                                f"available steps: {steps}.")
      return self._restore_step(int(step), abstract_state)
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}.")
    failures = []
    for candidate in reversed(steps):
      try:
        restored = self._restore_step(candidate, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        failures.append(f"step {candidate}: {type(e).__name__}: {str(e)[:500]}")
        older = [s for s in steps if s < candidate]
        _log.warning("checkpoint at step %d in %s is unreadable (%s: %s); %s", candidate,
                     self.directory, type(e).__name__, str(e)[:300],
                     f"falling back to step {older[-1]}." if older else "no older checkpoint.")
        self._set_aside(candidate)
        continue
      if failures:
        self._manager.reload()
      return restored
    self._manager.reload()
    raise RuntimeError(f"no readable checkpoint in {self.directory}:\n  " + "\n  ".join(failures))


def split_checkpoint_path(path: str | os.PathLike) -> tuple[str, int | None]:
  """Splits a named checkpoint path into (checkpoint directory, step or None for the newest).

  `.../checkpoints/1200` (a step folder) → (`.../checkpoints`, 1200); `.../checkpoints` → (it, None).
  """
  p = pathlib.Path(path)
  if p.name.isdigit() and (p / STATE).exists():
    return str(p.parent), int(p.name)
  if not p.exists():
    raise FileNotFoundError(f"checkpoint path {str(p)!r} does not exist.")
  return str(p), None
