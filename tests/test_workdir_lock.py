"""One run per workdir: the lock file, its heartbeat, stale take-over, and two launches of one command."""

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from ge2ms_jax import train
from ge2ms_jax import workdir_lock as L

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_USE = re.compile(r"workdir (\S+) is in use by (\S+):(\d+) since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
                    r"\(last heartbeat \d+ s ago\); stop that run, or pass --force_unlock if it is dead")


def _write_lock(workdir, host, pid, heartbeat_age_s=0.0):
  os.makedirs(workdir, exist_ok=True)
  now = time.time()
  with open(os.path.join(workdir, L.LOCK_FILE), "w") as f:
    json.dump({"host": host, "pid": pid, "started": now - 3600, "heartbeat": now - heartbeat_age_s,
               "token": "someone"}, f)


def _dead_pid():
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def test_a_held_workdir_is_refused_with_the_holder_named(tmp_path):
  first = L.WorkdirLock(tmp_path / "w").acquire()
  try:
    holder = L.read(tmp_path / "w")
    assert (holder.host, holder.pid, holder.token) == (socket.gethostname(), os.getpid(), first.token)
    with pytest.raises(L.WorkdirInUseError) as e:
      L.WorkdirLock(tmp_path / "w").acquire()
    m = IN_USE.fullmatch(str(e.value))
    assert m, str(e.value)
    assert (m.group(1), m.group(2), int(m.group(3))) == (str(tmp_path / "w"), socket.gethostname(), os.getpid())
    assert L.read(tmp_path / "w").token == first.token  # the refused launch changed nothing
  finally:
    first.release()
  assert not os.path.exists(tmp_path / "w" / L.LOCK_FILE)


def test_the_heartbeat_is_refreshed_and_a_taken_over_lock_is_noticed(tmp_path, caplog):
  first = L.WorkdirLock(tmp_path, heartbeat_s=0.05, stale_after_s=60).acquire()
  try:
    beat = L.read(tmp_path).heartbeat
    time.sleep(0.4)
    assert L.read(tmp_path).heartbeat > beat
    with caplog.at_level(logging.WARNING, logger=L.__name__):
      second = L.WorkdirLock(tmp_path, force=True).acquire()
    assert "--force_unlock" in caplog.text
    time.sleep(0.4)
    assert "was taken over by another launch" in caplog.text
    assert L.read(tmp_path).token == second.token  # the first no longer writes its heartbeat
    first.release()
    assert L.read(tmp_path).token == second.token  # nor removes the new holder's lock
    second.release()
  finally:
    first.release()


def test_stale_locks_are_taken_over_and_live_ones_are_not(tmp_path, caplog):
  dead = str(tmp_path / "dead")
  _write_lock(dead, socket.gethostname(), _dead_pid())
  with caplog.at_level(logging.WARNING, logger=L.__name__):
    lock = L.WorkdirLock(dead).acquire()
  assert re.search(r"taking over the lock .* process \d+ on this host .* is gone", caplog.text)
  lock.release()

  old = str(tmp_path / "old")
  _write_lock(old, "another-host", 1, heartbeat_age_s=400)
  lock = L.WorkdirLock(old, stale_after_s=300).acquire()
  assert L.read(old).token == lock.token
  lock.release()

  alive = str(tmp_path / "alive")
  _write_lock(alive, "another-host", 1, heartbeat_age_s=5)
  with pytest.raises(L.WorkdirInUseError, match=r"in use by another-host:1 since"):
    L.WorkdirLock(alive, stale_after_s=300).acquire()
  _write_lock(alive, socket.gethostname(), os.getppid())  # a live process on this host
  with pytest.raises(L.WorkdirInUseError):
    L.WorkdirLock(alive).acquire()


def test_nested_holds_share_one_lock(tmp_path):
  with L.hold(tmp_path):
    token = L.read(tmp_path).token
    with L.hold(tmp_path):
      assert L.read(tmp_path).token == token
    assert L.read(tmp_path).token == token  # the inner exit leaves the outer hold in place
  assert L.read(tmp_path) is None


def test_bad_lock_settings_are_named():
  config = train.base_config()
  config.workdir_lock.stale_after_s = 10.0
  config.workdir_lock.heartbeat_s = 30.0
  with pytest.raises(ValueError, match=r"stale_after_s=10.0 must exceed heartbeat_s=30.0"):
    L.check(config)
  config.workdir_lock.heartbeat_s = 0
  with pytest.raises(ValueError, match=r"config.workdir_lock.heartbeat_s=0.0; use a number of seconds > 0"):
    L.check(config)


def _launch(workdir, *extra):
  cmd = [sys.executable, "-m", "ge2ms_jax.main", "--config", "experiments/fashion_mnist.py:runlocal",
         "--workdir", str(workdir), "--config.total_steps=40", "--config.ckpt.every_steps=7", *extra]
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))


# Three command-line runs and two exports in fresh processes, about a minute; the refusal and the
# holder's message are checked in-process above.
@pytest.mark.slow
def test_a_second_launch_is_refused_and_the_first_ends_as_if_alone(tmp_path):
  shared, alone = tmp_path / "shared", tmp_path / "alone"
  first, reference = _launch(shared), _launch(alone)
  try:
    deadline = time.time() + 300
    # Launch again once the first is training: it holds the lock and has written its config.
    while not (os.path.exists(shared / L.LOCK_FILE) and os.path.exists(shared / "config.json")):
      assert first.poll() is None and time.time() < deadline, first.communicate()[1][-3000:]
      time.sleep(0.2)
    second = _launch(shared)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    m = IN_USE.fullmatch(lines[0][len("error: "):])
    assert m and int(m.group(3)) == first.pid, lines[0]
    assert out == ""
    assert first.poll() is None  # still training: the refused launch ended first
    for p in (first, reference):
      _, err = p.communicate(timeout=600)
      assert p.returncode == 0, err[-3000:]
  finally:
    for p in (first, reference):
      if p.poll() is None:
        p.kill()
  assert "taking over" not in err
  assert not os.path.exists(shared / L.LOCK_FILE)
  exports = []
  for workdir in (shared, alone):
    done = subprocess.run([sys.executable, "-m", "ge2ms_jax.main", "--config",
                           "experiments/fashion_mnist.py:runlocal", "--workdir", str(workdir), "--mode", "export"],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 0, done.stderr[-3000:]
    with open(workdir / "export" / "variables.msgpack", "rb") as f:
      exports.append(f.read())
  assert exports[0] == exports[1]
