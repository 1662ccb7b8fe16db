"""TensorBoard event files without TensorFlow, the JSONL log, and the progress line."""

import io
import math
import struct

import pytest

from ge2ms_jax import metrics


def test_crc32c_known_values():
  assert metrics.crc32c(b"123456789") == 0xE3069283  # The CRC-32C check value.
  assert metrics.crc32c(b"") == 0
  assert metrics.crc32c(bytes(32)) == 0x8A9136AA   # RFC 3720, B.4: 32 bytes of zeros.


def test_event_file_round_trip(tmp_path):
  writer = metrics.EventFileWriter(tmp_path)
  writer.scalars(1, {"train/loss": 2.5, "train/lr": 1e-3})
  writer.scalars(2**40, {"eval/top1": 0.75})
  writer.close()
  events = metrics.read_events(writer.path)
  assert events[0]["file_version"] == "brain.Event:2"
  assert events[1]["step"] == 1 and events[1]["scalars"]["train/loss"] == 2.5
  assert events[1]["scalars"]["train/lr"] == pytest.approx(1e-3)
  assert events[2]["step"] == 2**40 and events[2]["scalars"] == {"eval/top1": 0.75}
  assert all(e["wall_time"] > 1e9 for e in events)


def test_event_file_is_a_valid_tensorflow_event_proto(tmp_path):
  """Decodes our bytes with the protobuf library against the tensorflow.Event schema."""
  descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")
  from google.protobuf import descriptor_pool, message_factory
  f = descriptor_pb2.FileDescriptorProto(name="event_check.proto", package="tensorflow",
                                          syntax="proto3")
  F = descriptor_pb2.FieldDescriptorProto
  value = f.message_type.add(name="Value")
  value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
  value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
  summary = f.message_type.add(name="Summary")
  summary.field.add(name="value", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                    type_name=".tensorflow.Value")
  event = f.message_type.add(name="Event")
  event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
  event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
  event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
  event.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                  type_name=".tensorflow.Summary")
  pool = descriptor_pool.DescriptorPool()
  pool.Add(f)
  Event = message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Event"))

  writer = metrics.EventFileWriter(tmp_path)
  writer.scalars(7, {"train/loss": 0.5})
  writer.close()
  data = open(writer.path, "rb").read()
  records, pos = [], 0
  while pos < len(data):
    (n,) = struct.unpack("<Q", data[pos:pos + 8])
    records.append(data[pos + 12:pos + 12 + n])
    pos += 16 + n
  header, scalar = Event.FromString(records[0]), Event.FromString(records[1])
  assert header.file_version == "brain.Event:2"
  assert scalar.step == 7 and scalar.summary.value[0].tag == "train/loss"
  assert scalar.summary.value[0].simple_value == 0.5


def test_corrupt_event_files_are_reported(tmp_path):
  writer = metrics.EventFileWriter(tmp_path)
  writer.scalars(1, {"x": 1.0})
  writer.close()
  data = bytearray(open(writer.path, "rb").read())
  data[-6] ^= 0xFF
  bad = tmp_path / "bad"
  bad.write_bytes(bytes(data))
  with pytest.raises(ValueError, match="data CRC mismatch"):
    metrics.read_events(bad)
  bad.write_bytes(bytes(data[:-3]))
  with pytest.raises(ValueError, match="truncated"):
    metrics.read_events(bad)


def test_metric_writer_jsonl_and_events(tmp_path):
  writer = metrics.MetricWriter(tmp_path)
  writer.write(3, {"train/loss": 1.25, "note": "x", "nan": float("nan")})
  writer.close()
  (row,) = metrics.read_jsonl(tmp_path / "metrics.jsonl")
  assert row["step"] == 3 and row["train/loss"] == 1.25 and row["note"] == "x"
  assert math.isnan(row["nan"])
  (path,) = (tmp_path / "tb").iterdir()
  assert metrics.read_events(path)[1]["scalars"]["train/loss"] == 1.25
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "torn')  # A run killed mid-line.
  assert len(metrics.read_jsonl(tmp_path / "metrics.jsonl")) == 1


def test_disabled_writer_writes_nothing(tmp_path):
  writer = metrics.MetricWriter(tmp_path, enabled=False)
  writer.write(1, {"x": 1.0})
  writer.close()
  assert list(tmp_path.iterdir()) == []


def test_progress_plain_lines_with_rate_and_eta():
  out = io.StringIO()
  progress = metrics.Progress(total_steps=100, first_step=0, batch_size=32, stream=out)
  assert not progress.interactive  # A StringIO is no terminal.
  assert progress.rates(10, now=0.0) == {}  # The first call starts the clock.
  rates = progress.rates(30, now=4.0)
  assert rates == {"steps_per_sec": 5.0, "images_per_sec": 160.0, "eta_sec": 14.0}
  progress.update(40, {"loss": 0.5}, force=True)
  line = out.getvalue().splitlines()[-1]
  assert line.startswith("step 40/100 loss=0.5") and "it/s" in line and "ETA" in line


def test_progress_bar_redraws_on_a_terminal():
  out = io.StringIO()
  progress = metrics.Progress(total_steps=4, stream=out, interactive=True)
  for step in range(1, 5):
    progress.update(step, {"loss": 1.0 / step})
  text = out.getvalue()
  assert text.count("\r") == 4 and text.endswith("\n") and "[####" in text
