"""Training metrics: TensorBoard event files, a JSONL log, and a progress line.

TensorBoard event files are written with `tensorboardX` (no TensorFlow needed): its `RecordWriter`
frames and checksums the records, and its `event_pb2`/`summary_pb2` classes are the
`tensorflow.Event` and `Summary` protocol buffers. Every `MetricWriter.write` becomes one `Event`
holding all of that step's numeric scalars as `simple_value`s. `read_events` reads a file back,
checking each record's masked CRC-32C with tensorboardX's `masked_crc32c`. On a terminal the
progress bar is `tqdm`'s; output that is not a terminal gets one plain line per logged step.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import sys
import time
from typing import Any, Mapping, TextIO

import tqdm


def _import_tensorboardx():
  """The event-file pieces of tensorboardX, loaded without PyTorch.

  tensorboardX's package `__init__` imports torch whenever it is installed (only so that its
  `SummaryWriter` can recognise torch tensors). In a JAX process that costs about 230 MB of resident
  memory and seconds of start-up, for nothing the event files use; so torch is hidden while these
  modules load, unless the process has imported it already.
  """
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects
  try:
    from tensorboardX import record_writer as rw  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import event_pb2 as ev, summary_pb2 as su  # pylint: disable=g-import-not-at-top
  finally:
    if hide:
      del sys.modules["torch"]
  return rw, ev, su


record_writer, event_pb2, summary_pb2 = _import_tensorboardx()

# ---------------------------------------------------------------------------------------------
# Event files
# ---------------------------------------------------------------------------------------------
_FILE_VERSION = "brain.Event:2"


def _event_file_path(logdir: str) -> str:
  name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
  path, n = os.path.join(logdir, name), 0
  # RecordWriter truncates an existing file, so a second writer started by this process within the
  # same second gets a numbered name instead of erasing the first one's events.
  while os.path.exists(path):
    n += 1
    path = os.path.join(logdir, f"{name}.{n}")
  return path


class EventFileWriter:
  """Appends scalar summaries to a TensorBoard event file `events.out.tfevents.<time>.<host>.<pid>`.

  Writes are synchronous (unlike tensorboardX's `FileWriter`, which queues events for a thread), so
  after `flush` the file holds every event written so far.

  Args:
    logdir: the directory (created if missing); point `tensorboard --logdir` at it.
  """

  def __init__(self, logdir: str | os.PathLike):
    logdir = os.fspath(logdir)
    os.makedirs(logdir, exist_ok=True)
    self.path = _event_file_path(logdir)
    self._writer: record_writer.RecordWriter | None = record_writer.RecordWriter(self.path)
    self._write(event_pb2.Event(wall_time=time.time(), file_version=_FILE_VERSION))
    self._writer.flush()

  def _write(self, event: event_pb2.Event) -> None:
    self._writer.write(event.SerializeToString())

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """Writes one event holding `values` (non-finite values are written as they are)."""
    if not values:
      return
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(v))
                                         for tag, v in values.items()])
    self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def flush(self) -> None:
    """Writes buffered events to the file (and syncs it to disk)."""
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    """Flushes and closes the file; later calls do nothing."""
    if self._writer is not None:
      self._writer.flush()
      self._writer.close()
      self._writer = None


def _decode(event: event_pb2.Event) -> dict[str, Any]:
  decoded: dict[str, Any] = {"wall_time": event.wall_time, "step": event.step, "scalars": {}}
  what = event.WhichOneof("what")
  if what == "file_version":
    decoded["file_version"] = event.file_version
  elif what == "summary":
    for value in event.summary.value:
      if value.WhichOneof("value") == "simple_value":
        decoded["scalars"][value.tag] = value.simple_value
  return decoded


def read_events(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads an event file back, checking both CRCs of every record.

  Returns:
    One dict per event: `{"wall_time", "step", "file_version"?, "scalars": {tag: value}}`, where
    `scalars` holds the `simple_value` summaries and `file_version` is present on the header event.

  Raises:
    ValueError: on a CRC mismatch or a truncated record (naming the byte offset).
  """
  with open(path, "rb") as f:
    data = f.read()
  events, pos = [], 0
  # A record is: uint64 length | uint32 masked CRC of length | data | uint32 masked CRC of data.
  while pos < len(data):
    if pos + 12 > len(data):
      raise ValueError(f"{path}: truncated record header at byte {pos}.")
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    if header_crc != record_writer.masked_crc32c(header):
      raise ValueError(f"{path}: length CRC mismatch at byte {pos}.")
    end = pos + 12 + length
    if end + 4 > len(data):
      raise ValueError(f"{path}: truncated record at byte {pos}.")
    body = data[pos + 12:end]
    (body_crc,) = struct.unpack("<I", data[end:end + 4])
    if body_crc != record_writer.masked_crc32c(body):
      raise ValueError(f"{path}: data CRC mismatch at byte {pos}.")
    events.append(_decode(event_pb2.Event.FromString(body)))
    pos = end + 4
  return events


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------
def _format_scalars(scalars: Mapping[str, Any] | None) -> list[str]:
  return [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
          for k, v in (scalars or {}).items()]


class Progress:
  """Step rate, images/s and ETA; a `tqdm` bar on a terminal, plain lines otherwise.

  Args:
    total_steps: the step the run ends at.
    first_step: the step the run (re)started from (rates count from there).
    batch_size: global images per step, for images/s.
    stream: where to write (default stdout).
    interactive: force the bar on/off (default: `stream.isatty()`).
  """

  def __init__(self, total_steps: int, first_step: int = 0, batch_size: int = 0,
               stream: TextIO | None = None, interactive: bool | None = None):
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.stream = stream or sys.stdout
    self.interactive = self.stream.isatty() if interactive is None else interactive
    self._start_step = first_step
    self._start_time: float | None = None
    self._bar: tqdm.tqdm | None = None

  def rates(self, step: int, now: float | None = None) -> dict[str, float]:
    """`{"steps_per_sec", "images_per_sec", "eta_sec"}` since the first measured step."""
    now = time.perf_counter() if now is None else now
    if self._start_time is None:
      # The first step includes compilation; rates are measured from it on.
      self._start_time, self._start_step = now, step
      return {}
    done, elapsed = step - self._start_step, now - self._start_time
    if done <= 0 or elapsed <= 0:
      return {}
    rate = done / elapsed
    return {"steps_per_sec": rate, "images_per_sec": rate * self.batch_size,
            "eta_sec": (self.total_steps - step) / rate}

  def update(self, step: int, scalars: Mapping[str, float] | None = None,
             force: bool = False) -> dict[str, float]:
    """Shows step `step` with a few scalars (a redrawn bar, or a plain line when `force`d).

    Returns:
      The rates at this step (see `rates`).
    """
    parts = _format_scalars(scalars)
    started = False
    if self.interactive and self._bar is None:
      # Started here, right before `rates` starts its clock, so that tqdm's rate and ETA (an average
      # since its start: smoothing=0) leave out the first step's compilation as `rates` does and
      # agree with the images/s shown next to them. mininterval=0 and miniters=1 because updates
      # come only at logged steps, and each one should be drawn.
      self._bar = tqdm.tqdm(total=self.total_steps, initial=step, file=self.stream,
                            postfix=" ".join(parts) or None, smoothing=0, mininterval=0,
                            miniters=1, dynamic_ncols=True)
      started = True
    rates = self.rates(step)
    images = f"{rates['images_per_sec']:.0f} img/s" if rates and self.batch_size else None
    if self._bar is not None:
      if not started:
        self._bar.set_postfix_str(" ".join(parts + ([images] if images else [])), refresh=False)
        self._bar.update(step - self._bar.n)
      if step >= self.total_steps:
        self._bar.close()
        self._bar = None
    elif force and not self.interactive:
      line = [f"step {step}/{self.total_steps}"] + parts
      if rates:
        line.append(f"{rates['steps_per_sec']:.2f} it/s")
        if images:
          line.append(images)
        line.append(f"ETA {tqdm.tqdm.format_interval(rates['eta_sec'])}")
      self.stream.write(" ".join(line) + "\n")
      self.stream.flush()
    return rates

  def message(self, text: str) -> None:
    """Prints a line without breaking the bar."""
    if self._bar is not None:
      self._bar.write(text, file=self.stream)
    else:
      self.stream.write(text + "\n")
      self.stream.flush()


# ---------------------------------------------------------------------------------------------
# All together
# ---------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
  try:
    return float(value) if not isinstance(value, (int, str, bool)) else value
  except (TypeError, ValueError):
    return str(value)


class MetricWriter:
  """Writes scalars to TensorBoard (`<workdir>/tb`) and `<workdir>/metrics.jsonl`.

  Only the first process writes files; the others accept and drop the calls, so every process can
  run the same code.
  """

  def __init__(self, workdir: str | os.PathLike, enabled: bool = True):
    self.enabled = enabled
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._events = EventFileWriter(os.path.join(workdir, "tb")) if enabled else None
    self._jsonl: io.TextIOBase | None = open(self.jsonl_path, "a") if enabled else None

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Records `scalars` (numbers) at `step` in both outputs."""
    if not self.enabled:
      return
    values = {k: _plain(v) for k, v in scalars.items()}
    numeric = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    self._events.scalars(step, numeric)
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **values}) + "\n")

  def flush(self) -> None:
    """Writes both outputs' buffers to their files."""
    if self.enabled:
      self._events.flush()
      self._jsonl.flush()

  def close(self) -> None:
    """Closes both files."""
    if self.enabled:
      self._events.close()
      self._jsonl.close()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads a JSONL metrics log (skipping a torn last line left by a killed run)."""
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows
