"""Resident-set readings of the current process (Linux `/proc`), for benchmarks that run one row per
process. Standard library only, so that PyTorch rows can use it without importing JAX."""

from __future__ import annotations


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
