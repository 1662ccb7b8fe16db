"""Training metrics: TensorBoard event files, a JSONL log, and a progress line.

TensorBoard's event files are TFRecord files of `tensorflow.Event` protocol buffers. They are written
here directly (no TensorFlow, no tensorboard package): each record is

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

(little-endian), where `data` is an `Event {double wall_time = 1; int64 step = 2; string
file_version = 3; Summary summary = 5}` and `Summary {repeated Value value = 1}`, `Value {string tag
= 1; float simple_value = 2}`, encoded by hand in the protobuf wire format. `read_events` reads them
back (checking both CRCs).
"""

from __future__ import annotations

import io
import json
import math
import os
import socket
import struct
import sys
import time
from typing import Any, Iterator, Mapping, TextIO

# ---------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli), as TFRecord uses it
# ---------------------------------------------------------------------------------------------
def _crc32c_table() -> list[int]:
  poly = 0x82F63B78  # Reversed Castagnoli polynomial.
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ poly if c & 1 else c >> 1
    table.append(c)
  return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C of `data` (e.g. `crc32c(b"123456789") == 0xE3069283`)."""
  crc = 0xFFFFFFFF
  table = _CRC_TABLE
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC: rotate right by 15 and add a constant."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Protobuf wire format (the few field kinds an Event needs)
# ---------------------------------------------------------------------------------------------
def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # int64 negatives are ten-byte varints.
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
  return _varint((field << 3) | wire_type)


def _bytes_field(field: int, payload: bytes) -> bytes:
  return _key(field, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int = 0, scalars: Mapping[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
  """The serialized `Event` proto with the given scalar summaries (or a file-version header)."""
  out = _key(1, 1) + struct.pack("<d", wall_time)
  if step:
    out += _key(2, 0) + _varint(int(step))
  if file_version is not None:
    out += _bytes_field(3, file_version.encode())
  if scalars:
    summary = b"".join(
        _bytes_field(1, _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", float(v)))
        for tag, v in scalars.items())
    out += _bytes_field(5, summary)
  return out


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
  result = shift = 0
  while True:
    byte = buf[pos]
    pos += 1
    result |= (byte & 0x7F) << shift
    shift += 7
    if not byte & 0x80:
      return result, pos


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
  pos = 0
  while pos < len(buf):
    key, pos = _read_varint(buf, pos)
    field, wire_type = key >> 3, key & 7
    if wire_type == 0:
      value, pos = _read_varint(buf, pos)
    elif wire_type == 1:
      value, pos = buf[pos:pos + 8], pos + 8
    elif wire_type == 2:
      n, pos = _read_varint(buf, pos)
      value, pos = buf[pos:pos + n], pos + n
    elif wire_type == 5:
      value, pos = buf[pos:pos + 4], pos + 4
    else:
      raise ValueError(f"unsupported protobuf wire type {wire_type} in field {field}.")
    yield field, wire_type, value


def decode_event(data: bytes) -> dict[str, Any]:
  """Decodes an `Event` into `{"wall_time", "step", "file_version"?, "scalars": {tag: value}}`."""
  event: dict[str, Any] = {"wall_time": 0.0, "step": 0, "scalars": {}}
  for field, _, value in _fields(data):
    if field == 1:
      event["wall_time"] = struct.unpack("<d", value)[0]
    elif field == 2:
      event["step"] = value - (1 << 64) if value >= 1 << 63 else value
    elif field == 3:
      event["file_version"] = value.decode()
    elif field == 5:
      for f, _, v in _fields(value):
        if f != 1:
          continue
        tag, simple = None, None
        for vf, _, vv in _fields(v):
          if vf == 1:
            tag = vv.decode()
          elif vf == 2:
            simple = struct.unpack("<f", vv)[0]
        if tag is not None and simple is not None:
          event["scalars"][tag] = simple
  return event


# ---------------------------------------------------------------------------------------------
# Event files
# ---------------------------------------------------------------------------------------------
def _record(data: bytes) -> bytes:
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", masked_crc32c(header)) + data
          + struct.pack("<I", masked_crc32c(data)))


class EventFileWriter:
  """Appends scalar summaries to a TensorBoard event file `events.out.tfevents.<time>.<host>`.

  Args:
    logdir: the directory (created if missing); point `tensorboard --logdir` at it.
  """

  def __init__(self, logdir: str | os.PathLike):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, "ab")
    self._file.write(_record(encode_event(time.time(), file_version="brain.Event:2")))
    self._file.flush()

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """Writes one event holding `values` (non-finite values are written as they are)."""
    if values:
      self._file.write(_record(encode_event(time.time(), step, dict(values))))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()


def read_events(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads an event file back into decoded events, checking both CRCs of every record.

  Raises:
    ValueError: on a CRC mismatch or a truncated record (naming the byte offset).
  """
  events = []
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    if pos + 12 > len(data):
      raise ValueError(f"{path}: truncated record header at byte {pos}.")
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    if header_crc != masked_crc32c(header):
      raise ValueError(f"{path}: length CRC mismatch at byte {pos}.")
    body = data[pos + 12:pos + 12 + length]
    if len(body) != length or pos + 16 + length > len(data):
      raise ValueError(f"{path}: truncated record at byte {pos}.")
    (body_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
    if body_crc != masked_crc32c(body):
      raise ValueError(f"{path}: data CRC mismatch at byte {pos}.")
    events.append(decode_event(body))
    pos += 16 + length
  return events


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
  """Step rate, images/s and ETA; a redrawn bar on a terminal, plain lines otherwise.

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
    self._last_len = 0

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
    rates = self.rates(step)
    parts = [f"step {step}/{self.total_steps}"]
    for k, v in (scalars or {}).items():
      parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    if rates:
      parts.append(f"{rates['steps_per_sec']:.2f} it/s")
      if self.batch_size:
        parts.append(f"{rates['images_per_sec']:.0f} img/s")
      parts.append(f"ETA {_duration(rates['eta_sec'])}")
    if self.interactive:
      frac = min(1.0, step / max(1, self.total_steps))
      bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
      line = f"[{bar}] " + " ".join(parts)
      self.stream.write("\r" + line + " " * max(0, self._last_len - len(line)))
      self._last_len = len(line)
      if step >= self.total_steps:
        self.stream.write("\n")
    elif force:
      self.stream.write(" ".join(parts) + "\n")
    self.stream.flush()
    return rates

  def message(self, text: str) -> None:
    """Prints a line without breaking the bar."""
    if self.interactive and self._last_len:
      self.stream.write("\n")
      self._last_len = 0
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
    if self.enabled:
      self._events.flush()
      self._jsonl.flush()

  def close(self) -> None:
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
