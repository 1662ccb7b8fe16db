"""Two processes × 4 CPU devices on localhost train like one process with 8 devices.

The test launches this file twice as a script (`--worker I PORT WORKDIR`): each process starts JAX's
distributed runtime with gloo CPU collectives, builds its half of every global batch, trains the
stand-in net for 4 steps with a checkpoint at steps 2 and 4, and process 0 writes the loss curve.
The test then compares that curve with an 8-device single-process run, and restores the
two-process checkpoint in this single process.
"""

import json
import os
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = 4


def _config():
  from test_train_support import small_config
  return small_config(total_steps=STEPS, **{"ckpt.every_steps": 2, "ckpt.async_save": True})


def _worker(process_id: int, port: int, workdir: str) -> None:
  from ge2ms_jax import sharding
  sharding.initialize_distributed(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
  import jax
  from ge2ms_jax import train
  from test_train_support import ArrayData, TinyNet
  assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
  trainer = train.Trainer(_config(), workdir, net=TinyNet(), data_module=ArrayData())
  result = trainer.run()
  trainer.close()
  if process_id == 0:
    with open(os.path.join(workdir, "losses.json"), "w") as f:
      json.dump([h["loss"] for h in result.history], f)
  jax.distributed.shutdown()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process_and_checkpoint(tmp_path):
  import jax
  import numpy as np
  from ge2ms_jax import train
  from test_train_support import ArrayData, TinyNet, leaves_equal

  workdir = str(tmp_path / "two")
  port = _free_port()
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="4", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
  procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(i), str(port), workdir],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=240)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i} failed:\n{out[-4000:]}"
  with open(os.path.join(workdir, "losses.json")) as f:
    two = json.load(f)

  one = train.Trainer(_config(), str(tmp_path / "one"), net=TinyNet(), data_module=ArrayData())
  reference = one.run()
  one.close()
  np.testing.assert_allclose(two, [h["loss"] for h in reference.history], rtol=2e-5)
  # Each process saved its own input position beside the shared state.
  data_dir = os.path.join(workdir, "checkpoints", str(STEPS), "data")
  assert sorted(f for f in os.listdir(data_dir) if f.endswith(".json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]

  # The two-process checkpoint restores in this single 8-device process.
  resumed = train.Trainer(_config(), workdir, net=TinyNet(), data_module=ArrayData())
  assert resumed.step == STEPS
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(resumed.state.params), jax.device_get(reference.state.params))
  assert not leaves_equal(resumed.state.params, one.setup.state.init_on_mesh().params)
  resumed.close()


if __name__ == "__main__":
  if len(sys.argv) == 5 and sys.argv[1] == "--worker":
    sys.path.insert(0, HERE)
    _worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
  else:
    raise SystemExit(f"usage: {sys.argv[0]} --worker PROCESS_ID PORT WORKDIR")
