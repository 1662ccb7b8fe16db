"""One run per workdir: a lock file that a second launch on the same workdir is refused by.

A run that writes into a workdir (training, the main job, convert, export) holds
`<workdir>/lock.json` from start-up to exit:

    {"host": ..., "pid": ..., "started": <unix time>, "heartbeat": <unix time>, "token": <random hex>}

A daemon thread of the holder rewrites `heartbeat` every `heartbeat_s` seconds. A second launch reads
the file and stops with `WorkdirInUseError` (the command line prints it in one line and exits 2)
before it touches anything else in the workdir; the running job never notices. A lock whose holder
is gone is *stale* and is taken over with a warning, so a killed run always resumes:

- the same host, and no process with that pid is alive, or
- the heartbeat is older than `stale_after_s` (the holder's host died or cannot be asked).

`force=True` (`--force_unlock`) takes over a live-looking lock too, for a holder known to be dead.

On a multi-process run only process 0 takes the lock, for the whole run; the others wait for its
verdict (a broadcast) so that every process of a refused run stops, and none of the run's own
processes is blocked by it. Local paths are created exclusively (`O_EXCL`) and taken over by an
atomic rename, so two launches racing for one workdir cannot both win. Remote paths (`gs://...`)
go through the same file API as the checkpoints (`etils.epath`): written, then read back after a
short settle time to confirm the token, which detects a concurrent writer but, as object stores
offer no exclusive create through that API, cannot rule out every race.

Nested holds of one workdir in one process (the command line around a `Trainer`) share the lock.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import errno
import json
import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

from etils import epath
import ml_collections

from ge2ms_jax.configs import common as configs_common

LOCK_FILE = "lock.json"
_log = logging.getLogger(__name__)

# Workdir (absolute) -> [WorkdirLock or None on non-primary processes, nesting depth].
_HELD: dict[str, list[Any]] = {}
_HELD_GUARD = threading.Lock()


class WorkdirInUseError(RuntimeError):
  """The workdir is held by another live run; the message names the holder and what to do."""


default_config = configs_common.workdir_lock_config


def check(config: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
  """Returns `config.workdir_lock` (defaults where the config predates it), checked.

  Raises:
    ValueError: naming a non-positive interval, or a stale timeout not above the heartbeat interval.
  """
  c = (config.get("workdir_lock") if config is not None else None) or default_config()
  heartbeat, stale = c.get("heartbeat_s", 30.0), c.get("stale_after_s", 300.0)
  for name, value in (("heartbeat_s", heartbeat), ("stale_after_s", stale)):
    if not isinstance(value, (int, float)) or not value > 0:
      raise ValueError(f"config.workdir_lock.{name}={value!r}; use a number of seconds > 0.")
  if stale <= heartbeat:
    raise ValueError(f"config.workdir_lock.stale_after_s={stale!r} must exceed heartbeat_s={heartbeat!r}, "
                     "or a live run's lock would look stale between two heartbeats.")
  return c


# ---------------------------------------------------------------------------------------------
# Workdir checks
# ---------------------------------------------------------------------------------------------
class WorkdirError(OSError):
  """A directory a run must write to that cannot be created, written, or is short of space."""


def _is_local(path: str) -> bool:
  return "://" not in path


def check_workdir(path: str | os.PathLike, min_free_bytes: int = 0, what: str = "workdir") -> None:
  """Fails early when `path` cannot be created, cannot be written, or has too little free space.

  Args:
    path: a directory a run writes to (created if missing). Remote paths (`gs://...`) are only
      created; their space and permissions are the storage service's business.
    min_free_bytes: the least free space (bytes) the filesystem must have.
    what: how the error names the directory (e.g. "workdir").

  Raises:
    WorkdirError: saying which of the three failed, with the path and what to do.
  """
  path = os.fspath(path)
  if not _is_local(path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)
    return
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise WorkdirError(e.errno or errno.EIO,
                       f"{what} {path!r} cannot be created ({e.strerror or e}); choose a "
                       "directory you can write to (--workdir).") from e
  if not os.path.isdir(path):
    raise WorkdirError(errno.ENOTDIR, f"{what} {path!r} exists but is not a directory.")
  if not os.access(path, os.W_OK | os.X_OK):
    raise WorkdirError(errno.EACCES, f"{what} {path!r} is not writable (permissions or a "
                       "read-only filesystem); fix its permissions or choose another --workdir.")
  probe = os.path.join(path, f".write-probe-{os.getpid()}")
  try:
    with open(probe, "wb") as f:
      f.write(b"ok")
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    raise WorkdirError(e.errno or errno.EIO,
                       f"{what} {path!r} is not writable ({e.strerror or e}); fix its permissions, "
                       "free space, or choose another --workdir.") from e
  finally:
    try:
      os.remove(probe)
    except OSError:
      pass
  require_free_space(path, min_free_bytes, what)


def require_free_space(path: str | os.PathLike, min_free_bytes: int, what: str = "workdir") -> None:
  """Fails when the filesystem of the local directory `path` has less than `min_free_bytes` free.

  Raises:
    WorkdirError: (ENOSPC) with the free and the needed space, and what to do.
  """
  path = os.fspath(path)
  if min_free_bytes <= 0 or not _is_local(path):
    return
  st = os.statvfs(path)
  free = st.f_bavail * st.f_frsize
  if free < min_free_bytes:
    raise WorkdirError(errno.ENOSPC,
                       f"{what} {path!r} has {free / 2**20:.1f} MiB free, less than the "
                       f"{min_free_bytes / 2**20:.1f} MiB this run needs for its checkpoints; free "
                       "space, choose another --workdir, or lower config.ckpt.min_free_mb.")


@dataclasses.dataclass(frozen=True)
class Holder:
  """What a lock file records about the run holding the workdir."""
  host: str
  pid: int
  started: float
  heartbeat: float
  token: str

  def describe(self, now: float) -> str:
    since = datetime.datetime.fromtimestamp(self.started).isoformat(sep=" ", timespec="seconds")
    return f"{self.host}:{self.pid} since {since} (last heartbeat {_age(now - self.heartbeat)} ago)"


def _age(seconds: float) -> str:
  seconds = max(0.0, seconds)
  if seconds < 120:
    return f"{seconds:.0f} s"
  if seconds < 7200:
    return f"{seconds / 60:.0f} min"
  return f"{seconds / 3600:.1f} h"


def _is_remote(path: str) -> bool:
  return "://" in path


def _lock_path(workdir: str) -> epath.Path:
  return epath.Path(workdir) / LOCK_FILE


def read(workdir: str | os.PathLike) -> Holder | None:
  """The holder recorded in `<workdir>/lock.json`, or None when there is no (readable) lock file."""
  path = _lock_path(os.fspath(workdir))
  try:
    data = json.loads(path.read_text())
    return Holder(host=str(data["host"]), pid=int(data["pid"]), started=float(data["started"]),
                  heartbeat=float(data["heartbeat"]), token=str(data["token"]))
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # Someone else's live process.
  return True


def stale_reason(holder: Holder, now: float, stale_after_s: float) -> str | None:
  """Why `holder`'s lock may be taken over (None while it looks alive).

  Args:
    holder: the recorded holder.
    now: the current unix time.
    stale_after_s: heartbeat age beyond which any holder counts as gone.
  """
  if holder.host == socket.gethostname() and not _pid_alive(holder.pid):
    return f"process {holder.pid} on this host ({holder.host}) is gone"
  if now - holder.heartbeat > stale_after_s:
    return f"its last heartbeat is {_age(now - holder.heartbeat)} old (> {stale_after_s:g} s)"
  return None


class WorkdirLock:
  """The lock of one workdir, held by this process (see the module docstring).

  Args:
    workdir: the run's directory (created if missing).
    heartbeat_s: how often the holder refreshes its heartbeat.
    stale_after_s: heartbeat age after which another launch may take the lock over.
    force: take the lock over even from a holder that looks alive.
  """

  def __init__(self, workdir: str | os.PathLike, heartbeat_s: float = 30.0, stale_after_s: float = 300.0,
               force: bool = False):
    workdir = os.fspath(workdir)
    self.workdir = workdir if _is_remote(workdir) else os.path.abspath(workdir)
    self.path = _lock_path(self.workdir)
    self.heartbeat_s, self.stale_after_s, self.force = float(heartbeat_s), float(stale_after_s), force
    self.token = secrets.token_hex(8)
    self.started = time.time()
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self.held = False

  def _record(self) -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": self.started,
                       "heartbeat": time.time(), "token": self.token}, indent=1)

  def acquire(self) -> "WorkdirLock":
    """Takes the lock (over from a stale or, with `force`, any holder) and starts the heartbeat.

    Raises:
      WorkdirInUseError: another live run holds the workdir.
    """
    epath.Path(self.workdir).mkdir(parents=True, exist_ok=True)
    for _ in range(20):  # Each pass either wins, refuses, or lost a race and looks again.
      if self._try_create():
        break
      holder = read(self.workdir)
      if holder is None:
        # Unreadable: a holder between create and write, or a torn file from a crash. Give a live
        # writer a moment; a file still unreadable after that is taken over.
        time.sleep(0.2)
        if read(self.workdir) is None and self._take_over():
          break
        continue
      now = time.time()
      reason = stale_reason(holder, now, self.stale_after_s)
      if reason is None and not self.force:
        raise WorkdirInUseError(
            f"workdir {self.workdir} is in use by {holder.describe(now)}; stop that run, or pass "
            "--force_unlock if it is dead")
      why = reason or "--force_unlock"
      _log.warning("taking over the lock of %s from %s: %s", self.workdir, holder.describe(now), why)
      if self._take_over():
        break
    else:
      raise WorkdirInUseError(f"workdir {self.workdir}: could not take its lock ({self.path}) after "
                              "repeated races with other launches; try again.")
    self.held = True
    self._thread = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
    self._thread.start()
    atexit.register(self.release)
    return self

  def _try_create(self) -> bool:
    """Creates the lock file if there is none; True if this process now holds it."""
    if _is_remote(self.workdir):
      if self.path.exists():
        return False
      self.path.write_text(self._record())
      time.sleep(0.5)  # Settle: a concurrent writer's token would show now.
      holder = read(self.workdir)
      return holder is not None and holder.token == self.token
    try:
      fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(self._record())
      f.flush()
      os.fsync(f.fileno())
    return True

  def _take_over(self) -> bool:
    """Moves the old lock aside (only one racer can) and creates ours; True if this process won."""
    if _is_remote(self.workdir):
      self.path.unlink(missing_ok=True)
      return self._try_create()
    aside = f"{os.fspath(self.path)}.stale-{self.token}"
    try:
      os.rename(os.fspath(self.path), aside)
    except FileNotFoundError:
      return self._try_create()  # Another launch moved it first; race for the new one.
    os.unlink(aside)
    return self._try_create()

  def _write_heartbeat(self) -> bool:
    """Refreshes the heartbeat if the lock is still ours; False if it was taken over."""
    holder = read(self.workdir)
    if holder is None or holder.token != self.token:
      return False
    text = self._record()
    if _is_remote(self.workdir):
      self.path.write_text(text)
    else:
      tmp = f"{os.fspath(self.path)}.{self.token}.tmp"
      with open(tmp, "w") as f:
        f.write(text)
      os.replace(tmp, os.fspath(self.path))  # Readers see the old or the new record, never half.
    return True

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        if not self._write_heartbeat():
          _log.error("the lock of %s was taken over by another launch; this run no longer owns the "
                     "workdir", self.workdir)
          return
      except OSError as e:  # A flaky filesystem: the next beat tries again.
        _log.warning("could not refresh the lock of %s: %s", self.workdir, e)

  def release(self) -> None:
    """Stops the heartbeat and removes the lock file if it is still ours (idempotent)."""
    if not self.held:
      return
    self.held = False
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    try:
      holder = read(self.workdir)
      if holder is not None and holder.token == self.token:
        self.path.unlink(missing_ok=True)
    except OSError as e:
      _log.warning("could not remove the lock of %s: %s", self.workdir, e)
    atexit.unregister(self.release)


def _key(workdir: str) -> str:
  return workdir if _is_remote(workdir) else os.path.abspath(workdir)


def _agree(refused: str | None) -> None:
  """On a multi-process run, every process learns process 0's verdict; the others raise if it was
  refused."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    if refused is not None:
      raise WorkdirInUseError(refused)
    return
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  verdict = int(multihost_utils.broadcast_one_to_all(np.int32(0 if refused is None else 1)))
  if refused is not None:
    raise WorkdirInUseError(refused)
  if verdict:
    raise WorkdirInUseError("the workdir lock was refused to process 0 of this run; see its message.")


def acquire(workdir: str | os.PathLike, config: ml_collections.ConfigDict | None = None,
            force: bool = False, min_free_bytes: int = 0) -> None:
  """Checks `workdir` (`check_workdir`) and holds it for this run; nested calls in one process share
  one lock, and only the first checks.

  Args:
    workdir: the run's directory.
    config: the experiment config, for `config.workdir_lock` (defaults if None).
    force: take the lock over from a holder that looks alive.
    min_free_bytes: the free space the check requires.

  Raises:
    WorkdirError: when the directory cannot be created or written, or lacks the space.
    WorkdirInUseError: on every process of the run, when another live run holds the workdir.
  """
  import jax  # pylint: disable=g-import-not-at-top
  key = _key(os.fspath(workdir))
  with _HELD_GUARD:
    if key in _HELD:
      _HELD[key][1] += 1
      return
  # An uncreatable or full workdir is named here, not by a failure to write the lock file.
  check_workdir(workdir, min_free_bytes)
  settings = check(config)
  lock, refused = None, None
  if jax.process_index() == 0:
    lock = WorkdirLock(key, settings.heartbeat_s, settings.stale_after_s, force)
    try:
      lock.acquire()
    except WorkdirInUseError as e:
      lock, refused = None, str(e)
  try:
    _agree(refused)
  except WorkdirInUseError:
    if lock is not None:
      lock.release()
    raise
  with _HELD_GUARD:
    _HELD[key] = [lock, 1]


def release(workdir: str | os.PathLike) -> None:
  """Ends one `acquire` of `workdir`; the last one removes the lock file (no-op if not held)."""
  key = _key(os.fspath(workdir))
  with _HELD_GUARD:
    entry = _HELD.get(key)
    if entry is None:
      return
    entry[1] -= 1
    if entry[1] > 0:
      return
    del _HELD[key]
  if entry[0] is not None:
    entry[0].release()


class hold:  # pylint: disable=invalid-name
  """`with workdir_lock.hold(workdir, config, force):` — `acquire` on entry, `release` on exit."""

  def __init__(self, workdir: str | os.PathLike, config: ml_collections.ConfigDict | None = None,
               force: bool = False):
    self.workdir, self.config, self.force = workdir, config, force

  def __enter__(self) -> "hold":
    acquire(self.workdir, self.config, self.force)
    return self

  def __exit__(self, *exc) -> None:
    release(self.workdir)
