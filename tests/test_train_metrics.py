"""TensorBoard event files (tensorboardX, no TensorFlow), the JSONL log, and the progress line."""

import io
import math
import struct

import pytest
from tensorboardX import crc32c
from tensorboardX.proto import event_pb2

from ge2ms_jax import metrics


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


def _masked_crc(data):
  crc = crc32c.crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_event_file_is_read_by_tensorboardx_protobuf_parser(tmp_path):
  """Frames the records here and parses them with tensorboardX's `tensorflow.Event` class."""
  writer = metrics.EventFileWriter(tmp_path)
  writer.scalars(7, {"train/loss": 0.5, "train/lr": 0.25})
  writer.scalars(8, {"eval/top1": float("nan")})
  writer.close()
  data = open(writer.path, "rb").read()
  records, pos = [], 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (n,) = struct.unpack("<Q", header)
    body = data[pos + 12:pos + 12 + n]
    assert struct.unpack("<II", data[pos + 8:pos + 12] + data[pos + 12 + n:pos + 16 + n]) == (
        _masked_crc(header), _masked_crc(body))
    records.append(event_pb2.Event.FromString(body))
    pos += 16 + n
  header, scalar, nan = records
  assert header.file_version == "brain.Event:2" and header.wall_time > 1e9
  assert scalar.step == 7
  assert [(v.tag, v.simple_value) for v in scalar.summary.value] == [("train/loss", 0.5),
                                                                     ("train/lr", 0.25)]
  assert nan.step == 8 and math.isnan(nan.summary.value[0].simple_value)


def test_writers_started_in_the_same_second_keep_separate_files(tmp_path):
  first = metrics.EventFileWriter(tmp_path)
  first.scalars(1, {"x": 1.0})
  first.flush()
  second = metrics.EventFileWriter(tmp_path)  # Same host, process and (most likely) second.
  second.scalars(2, {"x": 2.0})
  first.close()
  second.close()
  assert first.path != second.path
  assert metrics.read_events(first.path)[1]["scalars"] == {"x": 1.0}
  assert metrics.read_events(second.path)[1]["scalars"] == {"x": 2.0}


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
  data = bytearray(open(writer.path, "rb").read())
  data[0] ^= 0x01  # The header event's length.
  bad.write_bytes(bytes(data))
  with pytest.raises(ValueError, match="length CRC mismatch at byte 0"):
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
  progress = metrics.Progress(total_steps=4, batch_size=8, stream=out, interactive=True)
  for step in range(1, 5):
    progress.update(step, {"loss": 1.0 / step})
    if step == 2:
      progress.message("eval at step 2: top1=0.5")
  progress.message("done")
  text = out.getvalue()
  draws = [d for d in text.split("\r") if d.strip()]
  assert draws[0].startswith(" 25%") and "1/4" in draws[0] and "loss=1" in draws[0]
  assert "it/s" in draws[-1] and "img/s" in draws[-1] and "loss=0.25" in draws[-1]
  assert "2/4 [" in draws[1] and "<00:00" in draws[1]  # Step/total and ETA, once a rate is known.
  # A message clears the bar, takes its own line, and the bar is drawn again below it.
  assert "\reval at step 2: top1=0.5\n\r" in text
  last_draw, after = text.rsplit("\r", 1)[1].split("\n", 1)
  assert "4/4" in last_draw and after == "done\n"  # The finished bar ends its line.


def test_progress_plain_lines_ignore_unforced_updates():
  out = io.StringIO()
  progress = metrics.Progress(total_steps=4, stream=out, interactive=False)
  progress.update(1, {"loss": 1.0})
  progress.message("eval")
  assert out.getvalue() == "eval\n"


def test_importing_the_trainer_does_not_import_torch(tmp_path):
  # An installed torch (faked here: importing it leaves a mark) must not be loaded by the package:
  # tensorboardX's own __init__ would import it, costing a JAX process about 230 MB.
  import os
  import subprocess
  import sys
  fake = tmp_path / "torch"
  fake.mkdir()
  (fake / "__init__.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
  code = ("import sys\nfrom ge2ms_jax import train, metrics\n"
          "assert 'torch' not in sys.modules\nimport torch\nprint('torch importable')\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "torch importable" in out.stdout  # a later `import torch` of the user still works
  # The mark exists only because the user's own import ran after the package's.
  assert (tmp_path / "imported").exists()
