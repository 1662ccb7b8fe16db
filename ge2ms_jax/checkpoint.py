"""Checkpoints: train state, data-iterator state and RNG together, saved by Orbax.

Layout under `directory` (one folder per step, written to a temporary name and renamed when
complete, so a checkpoint is never changed in place and a half-written one is never listed):

    <directory>/<step>/state/              the train state pytree (params, optimizer, EMA, rng, step)
    <directory>/<step>/data/process_<i>-of-<n>.json   each process's input-iterator state (JSON),
                                           written by grain's Orbax checkpoint handler
    <directory>/<step>/integrity.json      size and SHA-256 of every file above

The integrity manifest is written after every file of the step is complete and before the folder is
renamed to its step, so it is part of the same atomic commit. Restoring checks it first: a truncated,
extended, missing or bit-flipped file is reported by file and step (Orbax by itself notices only some
of these, e.g. through OCDBT's checksums, and never names the step's file; a changed input-iterator
JSON or a file it skips goes unseen). Restoring takes an abstract target
(`jax.ShapeDtypeStruct`s carrying the target shardings), so a checkpoint saved on one mesh restores
onto another (8 devices → 1, say). If the newest checkpoint cannot be read, the previous one is used
and the unreadable folder is renamed to `<step>.unreadable-<time>` (named in the log; its files are
kept), so training resumes and later saves do not collide with it. A checkpoint that is intact but
does not fit the run's state (the model or optimizer config changed) is an error, not set aside.

`check_workdir` (from `workdir_lock`) fails early when a directory cannot be created, written or is
short of space.
For tests, `GE2MS_FAULT_SAVE_DELAY=<seconds>` stretches every save (inside the input-state write
and between the manifest and the commit) so that a kill can be aimed at the middle of one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import signal
import threading
import time
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from etils import epath
from grain import checkpoint as grain_checkpoint
from jax.experimental import multihost_utils

from ge2ms_jax import workdir_lock

_log = logging.getLogger(__name__)

STATE = "state"
DATA = "data"
INTEGRITY = "integrity.json"
# Top-level files that Orbax rewrites while committing a step (after the manifest is written).
_NOT_HASHED = ("_CHECKPOINT_METADATA", "commit_success.txt")
# Fault injection for tests: seconds to sleep inside every save (while the input state is written,
# and between the manifest and the commit), so that a kill can be made to land in the middle of it.
FAULT_DELAY_ENV = "GE2MS_FAULT_SAVE_DELAY"
_TMP_SUFFIX = ".orbax-checkpoint-tmp"


class CheckpointCorruptError(RuntimeError):
  """A checkpoint step whose files do not match its integrity manifest."""


class CheckpointMismatchError(ValueError):
  """An intact checkpoint whose arrays do not fit the train state of this run."""


def _fault_delay() -> None:
  delay = os.environ.get(FAULT_DELAY_ENV)
  if delay:
    time.sleep(float(delay))


# ---------------------------------------------------------------------------------------------
# Integrity manifest
# ---------------------------------------------------------------------------------------------
def _sha256(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _files(step_dir: epath.Path) -> list[str]:
  """Relative paths (with "/") of the files of a step folder that the manifest covers, sorted."""
  out = []

  def walk(directory: epath.Path, prefix: str) -> None:
    for child in directory.iterdir():
      rel = prefix + child.name
      if child.is_dir():
        walk(child, rel + "/")
      elif rel not in _NOT_HASHED and rel != INTEGRITY and rel != INTEGRITY + ".tmp":
        out.append(rel)

  walk(epath.Path(step_dir), "")
  return sorted(out)


def write_manifest(step_dir: str | os.PathLike, step: int) -> dict[str, Any]:
  """Writes `<step_dir>/integrity.json`: `{"step", "files": {relpath: {"size", "sha256"}}}`.

  Called on the complete but not yet committed (renamed) folder of a step.
  """
  step_dir = epath.Path(step_dir)
  files = {}
  for rel in _files(step_dir):
    path = step_dir / rel
    files[rel] = {"size": path.stat().length, "sha256": _sha256(path)}
  manifest = {"format": 1, "step": int(step), "files": files}
  text = json.dumps(manifest, indent=1, sort_keys=True)
  if "://" in os.fspath(step_dir):  # Object stores write whole objects.
    (step_dir / INTEGRITY).write_text(text)
    return manifest
  tmp = step_dir / (INTEGRITY + ".tmp")
  with open(os.fspath(tmp), "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  tmp.rename(step_dir / INTEGRITY)
  return manifest


def verify_manifest(step_dir: str | os.PathLike, step: int | None = None) -> bool:
  """Checks every file of a committed step folder against its integrity manifest.

  Returns:
    True if the manifest is present and every file matches; False if the folder has no manifest
    (saved before manifests existed: it cannot be checked).

  Raises:
    CheckpointCorruptError: naming the step and the file that is missing, truncated, extended or
      changed, or the manifest itself when it is unreadable.
  """
  step_dir = epath.Path(step_dir)
  label = f"checkpoint step {step if step is not None else step_dir.name} ({step_dir})"
  manifest_path = step_dir / INTEGRITY
  if not manifest_path.exists():
    return False
  try:
    manifest = json.loads(manifest_path.read_text())
    files = manifest["files"]
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
        for v in files.values()):
      raise ValueError("entries are not {size, sha256} records")
  except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
    raise CheckpointCorruptError(f"{label}: its manifest {INTEGRITY} is unreadable "
                                 f"({type(e).__name__}: {e}).") from e
  if step is not None and manifest.get("step") not in (None, int(step)):
    raise CheckpointCorruptError(f"{label}: its manifest {INTEGRITY} is for step "
                                 f"{manifest.get('step')}.")
  for rel, want in sorted(files.items()):
    path = step_dir / rel
    if not path.exists():
      raise CheckpointCorruptError(f"{label}: file {rel} is missing.")
    size = path.stat().length
    if size != want["size"]:
      what = "truncated" if size < want["size"] else "extended"
      raise CheckpointCorruptError(f"{label}: file {rel} is {what} ({size} bytes, the manifest "
                                   f"says {want['size']}).")
    if _sha256(path) != want["sha256"]:
      raise CheckpointCorruptError(f"{label}: file {rel} does not match its SHA-256 (its bytes "
                                   "changed after the save).")
  return True


# The workdir checks live with the workdir's lock; these names stay importable from here.
check_workdir = workdir_lock.check_workdir
WorkdirError = workdir_lock.WorkdirError

# Orbax splits each replicated array among its replicas so that they write in parallel; the split
# compiles one slicing program per array shape on the first save, seconds for a model's hundreds of
# small leaves, which gain nothing from it. Only arrays whose per-replica slice reaches this size
# are split.
MIN_REPLICA_SLICE_BYTES = 4 * 2**20
_array_handler_configured = False


def _configure_array_handler() -> None:
  """Registers a jax.Array handler that splits only large arrays among replicas (once a process).

  The replacement must keep the per-array metadata store that Orbax's default handler has (it writes
  `state/array_metadatas/` and the write shapes in the tree metadata, as every earlier checkpoint
  has them). Orbax exposes that store publicly only as the default of its v1 saving options; where a
  release lacks that field or the handler option, Orbax's default handler stays: the checkpoints are
  the same, only the first save compiles its slicing programs.
  """
  global _array_handler_configured
  if _array_handler_configured:
    return
  _array_handler_configured = True
  try:
    store = ocp.v1.options.ArrayOptions.Saving().array_metadata_store
    if store is None:
      raise AttributeError("Orbax's v1 saving options have no default array-metadata store")
    handler = ocp.type_handlers.ArrayHandler(
        array_metadata_store=store, min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES)
  except (AttributeError, TypeError) as e:
    _log.info("keeping Orbax's default jax.Array handler (no public array-metadata store or "
              "min_slice_bytes_for_replica_parallel in this Orbax: %s).", e)
    return
  # Orbax warns on every override; replacing its default is the point here, so that warning is
  # dropped (the CLI shows absl warnings).
  absl_log = logging.getLogger("absl")
  quiet = lambda record: "overriding" not in record.getMessage()
  absl_log.addFilter(quiet)
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    absl_log.removeFilter(quiet)


# ---------------------------------------------------------------------------------------------
# Per-process input-iterator state, saved by grain's Orbax handler
# ---------------------------------------------------------------------------------------------
def _data_file_name() -> str:
  """The name grain's handler gives this process's state file (it names it from jax the same way)."""
  return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


class _IteratorState:
  """One process's input-iterator state, in the form grain's checkpoint handler saves and restores.

  Grain's handler takes an iterator, not a state: it writes `get_state()` (bytes, for iterators other
  than grain's own dataset iterators) to the process's file, and on restore gives the file's bytes
  to `set_state` and then calls `start_prefetch()`. The Checkpointer is handed the state rather than
  the iterator (`DataIterator.get_state()` wraps grain's state with the pipeline's fingerprint, and
  a test's or an embedded source's iterator need not be grain's at all), and it returns the restored
  state for the trainer to set, so this object stands in for the iterator. The file holds the
  state's JSON as before, so old and new checkpoints read alike.
  """

  def __init__(self, state: Any = None):
    self.state = state

  def get_state(self) -> bytes:
    # Grain's handler calls this inside the save, before the file is written: kills aimed at a save
    # through GE2MS_FAULT_SAVE_DELAY land here.
    _fault_delay()
    return json.dumps(self.state).encode()

  def set_state(self, state: bytes) -> None:
    self.state = json.loads(state)

  def start_prefetch(self) -> None:
    pass  # A state has nothing to prefetch; the trainer's iterator resumes when the state is set.


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
    # Orbax's array storage needs absolute local paths; a relative workdir (the usual
    # `--workdir runs/x`) is resolved against the current directory once, here.
    directory = os.fspath(directory)
    self.directory = epath.Path(directory if "://" in directory else os.path.abspath(directory))
    self._async = async_save
    self._saving: int | None = None  # The step whose save is in flight.
    _configure_array_handler()
    # Saves always go through Orbax's async checkpointer, whose post-finalization callback runs
    # after every file of the step is written and before the folder is renamed: that is where
    # the manifest goes. A synchronous save waits for it.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, keep_period=keep_period, create=True,
        enable_async_checkpointing=True, cleanup_tmp_directories=True,
        save_interval_steps=1,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._before_commit))
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def _before_commit(self) -> None:
    """Writes the integrity manifest into the step's temporary folder, just before its rename."""
    step = self._saving
    if step is None or jax.process_index() != 0:
      return
    candidates = sorted(p for p in self.directory.iterdir()
                        if p.name.startswith(f"{step}{_TMP_SUFFIX}"))
    if not candidates and (self.directory / str(step)).exists():
      # Storage without atomic renames (GCS): Orbax writes into the step folder itself and commits
      # it with a commit_success.txt, which comes after this manifest.
      candidates = [self.directory / str(step)]
    if len(candidates) != 1:
      raise RuntimeError(f"expected one temporary folder for step {step} in {self.directory}, "
                         f"found {[p.name for p in candidates]}.")
    write_manifest(candidates[0], step)
    _fault_delay()

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
                                 DATA: grain_checkpoint.CheckpointSave(_IteratorState(data_state))})
    self._manager.wait_until_finished()  # The callback reads `_saving`: one save at a time.
    self._saving = step
    started = bool(self._manager.save(step, args=args, force=True))
    if not self._async:
      self._manager.wait_until_finished()
    return started

  def wait(self) -> None:
    """Blocks until background saves have finished (call before exiting)."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

  # -- restore --------------------------------------------------------------------------------
  def _restore_partial(self, step: int, abstract_fields: Mapping[str, Any]) -> Restored:
    """Restores only the top-level fields of the state named in `abstract_fields` (a dict)."""
    path = self.directory / str(step) / STATE
    saved = ocp.PyTreeCheckpointHandler().metadata(path).tree
    missing = sorted(set(abstract_fields) - set(saved))
    if missing:
      raise ValueError(f"checkpoint step {step} has no state fields {missing}; it has {sorted(saved)}.")
    # A field saved empty (no EMA kept: `ema_params` is {}) has nothing to read and comes back empty.
    wanted = {k: v for k, v in abstract_fields.items() if jax.tree.leaves(saved[k])}
    args = ocp.args.PyTreeRestore(item=wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
                                  partial_restore=True)
    # Read by its own checkpointer: the manager's handler for the item is the one it saves with.
    with ocp.PyTreeCheckpointer() as reader:
      out = reader.restore(path, args=args)
    return Restored(state={k: out[k] if k in wanted else {} for k in abstract_fields}, data_state=None,
                    step=step)

  def _restore_step(self, step: int, abstract_state: Any, partial: bool = False) -> Restored:
    if partial:
      return self._restore_partial(step, abstract_state)
    args = {STATE: ocp.args.StandardRestore(abstract_state)}
    data_dir = self.directory / str(step) / DATA
    # Grain's handler fails on a missing state file; a process without one (e.g. the run was
    # restarted on more hosts) resumes with its iterator at the start, as it always has.
    if (data_dir / _data_file_name()).exists():
      args[DATA] = grain_checkpoint.CheckpointRestore(_IteratorState())
    else:
      present = sorted(p.name for p in data_dir.iterdir()) if data_dir.exists() else []
      _log.warning("no input-iterator state for process %d of %d in %s (found %s); the input "
                   "iterator starts from its beginning.", jax.process_index(), jax.process_count(),
                   data_dir, present)
    out = self._manager.restore(step, args=ocp.args.Composite(**args))
    data_state = out[DATA].state if DATA in args else None
    return Restored(state=out[STATE], data_state=data_state, step=step)

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

  def verify(self, step: int) -> bool:
    """Checks checkpoint `step` against its integrity manifest (see `verify_manifest`)."""
    return verify_manifest(self.directory / str(int(step)), int(step))

  def _checked_restore(self, step: int, abstract_state: Any, partial: bool) -> Restored:
    """Verifies, then restores one step; an intact step that fails to restore is a mismatch."""
    verified = self.verify(step)
    try:
      return self._restore_step(step, abstract_state, partial)
    except Exception as e:  # pylint: disable=broad-except
      if not verified:
        raise
      raise CheckpointMismatchError(
          f"checkpoint step {step} in {self.directory} is intact (its files match {INTEGRITY}) but "
          f"does not fit this run's train state: {type(e).__name__}: {str(e)[:500]}. Did the model "
          "or optimizer config change? Restore with the config it was saved with (the workdir's "
          "config.json), or train in a new --workdir.") from e

  def restore(self, abstract_state: Any, step: int | None = None, *, partial: bool = False) -> Restored:
    """Restores checkpoint `step` (default: the newest) onto the shardings in `abstract_state`.

    Every step is first checked against its integrity manifest. Without `step`, a corrupt or
    unreadable newest checkpoint is set aside (renamed `<step>.unreadable-<time>`, never deleted)
    and the previous one is tried.

    Args:
      abstract_state: a pytree of `jax.ShapeDtypeStruct` with `sharding=` set, the structure of the
        saved state (it may be on a different mesh than the one that saved it); with `partial`, a
        dict of some of the saved state's top-level fields (`state.inference_abstract`).
      step: a specific step; None for the newest readable one.
      partial: read only the fields in `abstract_state` (Orbax's partial restore: the optimizer
        state is not read, so it need not match) and no input-iterator state; the state comes back
        as a dict of those fields, a field saved empty as `{}`.

    Returns:
      `Restored(state, data_state, step)`; `data_state` is None if this process has none saved.

    Raises:
      FileNotFoundError: if there is no checkpoint (or not the named step).
      CheckpointCorruptError: if the named `step` fails its integrity check.
      CheckpointMismatchError: if an intact checkpoint does not fit `abstract_state`.
      RuntimeError: if no checkpoint could be read, listing each failure.
    """
    steps = self.all_steps()
    if step is not None:
      if int(step) not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                                f"available steps: {steps}.")
      return self._checked_restore(int(step), abstract_state, partial)
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}.")
    failures = []
    for candidate in reversed(steps):
      try:
        restored = self._checked_restore(candidate, abstract_state, partial)
      except CheckpointMismatchError:
        if failures:
          self._manager.reload()
        raise
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

  def step_path(self, step: int) -> str:
    """The folder of checkpoint `step`."""
    return os.fspath(self.directory / str(int(step)))


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
