"""For benchmarks that run one row per process: the worker process itself, and the resident-set
readings of the current process (Linux `/proc`). Standard library only, so that PyTorch rows can
use it without importing JAX."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def status_bytes(field: str) -> int | None:
  """A `/proc/self/status` size field (`"VmRSS"`, `"VmHWM"`) in bytes; None where unavailable."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def reset_peak_rss(trim: bool = False) -> bool:
  """Restarts the high-water mark (`VmHWM`) from the current resident set; True if it could.

  `trim=True` first hands freed heap back to the system (`malloc_trim`): compilation and set-up
  leave much of it with the allocator, so that the mark then starts from what the process holds.
  """
  if trim:
    try:
      import ctypes  # pylint: disable=g-import-not-at-top
      ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
      pass
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")  # VmHWM := current RSS
    return True
  except OSError:
    return False


def run_worker(script: str, spec: dict[str, Any], env: dict[str, str], what: str) -> dict[str, Any]:
  """Runs `python script --worker JSON(spec)` in a fresh process; returns the JSON of its last line.

  Raises:
    RuntimeError: naming `what` with the end of the worker's stderr, if it exits non-zero.
  """
  proc = subprocess.run([sys.executable, script, "--worker", json.dumps(spec)], env=env,
                        capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f"{what} failed:\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])
