"""Kill tests: a training run killed with SIGKILL at random moments (also while a checkpoint is
being written) resumes from the newest complete checkpoint and ends bit-identical to an
uninterrupted run; SIGTERM saves and exits cleanly.

Each run is this file executed as a script (`python tests/test_reliability_kill.py WORKDIR OUT`):
a small net on in-memory data, one CPU device, a checkpoint every 2 steps, and
`GE2MS_FAULT_SAVE_DELAY` stretching every save so that kills often land inside one. It prints
`at N` after each step and writes the final state to OUT (`.npz`) when it finishes or is preempted.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOTAL_STEPS = 12
FAULT_DELAY = "0.15"


def worker(workdir: str, out: str) -> int:
  """Trains (or resumes) the tiny run in `workdir`; writes params and status to `out`."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["JAX_NUM_CPU_DEVICES"] = "1"
  sys.path.insert(0, HERE)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ge2ms_jax import train  # pylint: disable=g-import-not-at-top
  from test_train_support import ArrayData, TinyNet, small_config  # pylint: disable=g-import-not-at-top
  cache = os.environ.get("GE2MS_JAX_CACHE")
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  config = small_config(total_steps=TOTAL_STEPS, **{"ckpt.every_steps": 2, "ckpt.keep": 2,
                                                    "ckpt.async_save": True, "ckpt.min_free_mb": 1,
                                                    "log_every_steps": 1})
  trainer = train.Trainer(config, workdir, net=TinyNet(), data_module=ArrayData())
  print(f"start {trainer.step}", flush=True)
  try:
    result = trainer.run(lambda step, _: print(f"at {step}", flush=True))
  finally:
    trainer.close()
  leaves = {f"leaf{i}": np.asarray(x) for i, x in
            enumerate(jax.tree.leaves(jax.device_get(result.state)))}
  tmp = out + ".tmp.npz"
  np.savez(tmp, status=np.array(result.status), step=np.array(result.step),
           losses=np.array([h["loss"] for h in result.history]), **leaves)
  os.replace(tmp, out)
  print(f"end {result.status} {result.step}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(worker(sys.argv[1], sys.argv[2]))


# ---------------------------------------------------------------------------------------------
# Tests (run by pytest; everything above also runs in the child processes)
# ---------------------------------------------------------------------------------------------
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _env(tmp_root):
  env = dict(os.environ)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  env.update(JAX_PLATFORMS="cpu", GE2MS_FAULT_SAVE_DELAY=FAULT_DELAY, PYTHONUNBUFFERED="1",
             GE2MS_JAX_CACHE=env.get("GE2MS_JAX_CACHE", os.path.join(HERE, "..", ".jax_cache")))
  return env


class Run:
  """One worker process, started on `workdir`; `stream` of its stdout lines."""

  def __init__(self, workdir, out, env, log):
    self.out = out
    self.proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), str(workdir), str(out)], env=env,
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=os.path.join(HERE, ".."))
    self.lines = []

  def wait_for(self, prefix, timeout=120.0):
    """Reads lines until one starts with `prefix`; False if the process ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      line = self.proc.stdout.readline()
      if not line:
        return False
      self.lines.append(line.strip())
      if line.startswith(prefix):
        return True
    raise TimeoutError(f"no {prefix!r} line within {timeout}s; got {self.lines[-5:]}")

  def finish(self, timeout=300.0):
    rest, _ = self.proc.communicate(timeout=timeout)
    self.lines += [l for l in rest.splitlines() if l]
    return self.proc.returncode


def _load(out):
  with np.load(out) as f:
    return {k: f[k] for k in f.files}


def _tmp_folders(workdir):
  d = os.path.join(workdir, "checkpoints")
  return [p for p in os.listdir(d) if ".orbax-checkpoint-tmp" in p] if os.path.isdir(d) else []


def _steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(p) for p in os.listdir(d) if p.isdigit()) if os.path.isdir(d) else []


def _assert_same(got, want):
  assert str(got["status"]) == "done" and int(got["step"]) == TOTAL_STEPS
  leaves = sorted(k for k in want if k.startswith("leaf"))
  assert leaves and leaves == sorted(k for k in got if k.startswith("leaf"))
  for k in leaves:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run: (final npz contents, seconds from the first step to the end, env)."""
  root = tmp_path_factory.mktemp("kill_reference")
  env = _env(root)
  with open(root / "log.txt", "w") as log:
    run = Run(root / "work", root / "out.npz", env, log)
    assert run.wait_for("at "), run.lines
    t0 = time.time()
    code = run.finish()
    loop_seconds = time.time() - t0
  assert code == 0, (run.lines, (root / "log.txt").read_text()[-3000:])
  return _load(root / "out.npz"), loop_seconds, env


def kill_chain(root, reference, seed, kills, in_write_after=None):
  """Kills runs on one workdir `kills` times at seeded random moments, then lets one finish.

  With `in_write_after=K` the first kill lands within 0.2 s after step K's asynchronous save has
  started (the fault delay keeps that save open for 0.3 s), i.e. in the middle of its write.

  Returns the outcome of every kill: {"after_step", "during_write", "steps_on_disk"}.
  """
  want, loop_seconds, env = reference
  rng = random.Random(seed)
  work, out = root / f"work{seed}", root / f"out{seed}.npz"
  outcomes = []
  with open(root / f"log{seed}.txt", "w") as log:
    for i in range(kills):
      run = Run(work, out, env, log)
      if not run.wait_for("start "):
        raise AssertionError(f"worker ended before training: {run.lines}; see {root}/log{seed}.txt")
      if i == 0 and in_write_after is not None:
        assert run.wait_for(f"at {in_write_after}"), run.lines
        time.sleep(rng.uniform(0.0, 0.2))
      else:  # From the resumed step's start to a little past the end of the remaining steps.
        time.sleep(rng.uniform(0.0, 1.1 * loop_seconds))
      run.proc.send_signal(signal.SIGKILL)
      code = run.finish()
      if code == 0:  # It finished before the kill landed: the chain is over.
        break
      assert code == -signal.SIGKILL, (code, run.lines)
      steps = [int(l.split()[1]) for l in run.lines if l.startswith("at ")]
      outcomes.append({"after_step": steps[-1] if steps else None,
                       "during_write": bool(_tmp_folders(work)),
                       "steps_on_disk": _steps(work)})
    else:
      run = Run(work, out, env, log)
      assert run.finish() == 0, run.lines
  got = _load(out)
  _assert_same(got, want)
  return outcomes


def _report(name, outcomes):
  during = sum(o["during_write"] for o in outcomes)
  print(f"\n{name}: {len(outcomes)} SIGKILLs, {during} during a checkpoint write; every resumed "
        f"run ended bit-identical to the uninterrupted one. {json.dumps(outcomes)}")


def test_sigkill_at_random_points_resumes_bit_identical(tmp_path, reference):
  outcomes = kill_chain(tmp_path, reference, seed=0, kills=2, in_write_after=4)
  _report("default", outcomes)
  assert outcomes[0]["during_write"] and outcomes[0]["steps_on_disk"] == [2], outcomes


@pytest.mark.slow
def test_twenty_plus_sigkills_including_during_checkpoint_writes(tmp_path, reference):
  outcomes = []
  seed = 100
  while len(outcomes) < 24:
    print(f"chain {seed - 99}", flush=True)
    outcomes += kill_chain(tmp_path, reference, seed=seed, kills=4,
                           in_write_after=2 * (seed % 5 + 1) if seed % 2 else None)
    seed += 1
  _report(f"slow ({seed - 100} chains)", outcomes)
  assert len(outcomes) >= 20
  assert sum(o["during_write"] for o in outcomes) >= 3, outcomes


def test_sigterm_saves_and_exits_cleanly_then_resumes_identically(tmp_path, reference):
  want, _, env = reference
  with open(tmp_path / "log.txt", "w") as log:
    run = Run(tmp_path / "work", tmp_path / "out.npz", env, log)
    assert run.wait_for("at 3"), run.lines
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 0, run.lines
  first = _load(tmp_path / "out.npz")
  stopped = int(first["step"])
  assert str(first["status"]) == "preempted" and 3 <= stopped < TOTAL_STEPS
  assert stopped in _steps(tmp_path / "work") and not _tmp_folders(tmp_path / "work")
  with open(tmp_path / "log.txt", "a") as log:
    run = Run(tmp_path / "work", tmp_path / "out.npz", env, log)
    assert run.finish() == 0, run.lines
  assert f"start {stopped}" in run.lines
  _assert_same(_load(tmp_path / "out.npz"), want)
