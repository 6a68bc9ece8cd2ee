"""Two real processes (jax.distributed on CPU): host-local batches, a sharded step, a collective checkpoint."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from auditdm_jax.train import toy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "sharding_multihost_worker.py")
sys.path.insert(0, os.path.dirname(WORKER))
import sharding_multihost_worker as worker  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_train_step_and_checkpoint(tmp_path):
  port = str(_free_port())
  procs = [subprocess.Popen([sys.executable, WORKER, str(i), port, str(tmp_path / "ckpt")], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=240)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [0, 0], outs
  results = [json.loads([l for l in out.splitlines() if l.startswith("{")][-1]) for out in outs]
  # The loss of the global batch (process 0's half + process 1's half) computed in one process.
  params = jax.device_get(jax.jit(lambda: toy.init_params(worker.MODEL, jax.random.key(0)))())
  expected, _ = toy.next_token_loss(worker.MODEL)(params, {"tokens": worker.BATCH}, None)
  for r in results:
    assert r["devices"] == 4 and r["restored_equal"] and r["data_state"] == {"pos": 8}
    np.testing.assert_allclose(r["loss"], float(expected), rtol=1e-5)
