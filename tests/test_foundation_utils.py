"""Atomic writes, the metric writer and the multi-host detection."""
import os

import pytest

from auditdm_jax import distributed, io as io_lib, metrics


def test_write_json_is_atomic_and_round_trips(tmp_path):
  path = tmp_path / "sub" / "x.json"
  io_lib.write_json(str(path), {"a": [1, 2]})
  assert io_lib.read_json(str(path)) == {"a": [1, 2]}
  assert os.listdir(path.parent) == ["x.json"]  # no temporary left behind


def test_failed_write_keeps_old_file(tmp_path):
  path = tmp_path / "x.json"
  io_lib.write_json(str(path), {"v": 1})
  with pytest.raises(TypeError):
    io_lib.write_bytes(str(path), "not bytes")
  assert io_lib.read_json(str(path)) == {"v": 1}
  assert os.listdir(tmp_path) == ["x.json"]


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
  import numpy as np
  with metrics.MetricWriter(str(tmp_path)) as w:
    w.write(1, loss=np.float32(2.5), lr=1e-3)
    w.write(2, loss=1.5)
    with pytest.raises(ValueError, match="scalars"):
      w.write(3, loss=np.zeros(3))
  rows = metrics.read(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2]
  assert rows[0]["loss"] == 2.5 and rows[0]["lr"] == 1e-3
  assert os.listdir(tmp_path / "tensorboard")
  # Resumed from step 1's checkpoint after a kill that tore a line: rows past step 1 are dropped, then appended.
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 3, "lo')
  with metrics.MetricWriter(str(tmp_path), after_step=1) as w:
    w.write(2, loss=1.0)
  rows = metrics.read(str(tmp_path / "metrics.jsonl"))
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 2.5), (2, 1.0)]


@pytest.mark.parametrize("env, expected", [
    ({}, False),
    ({"SLURM_NTASKS": "1"}, False),
    ({"SLURM_NTASKS": "16"}, True),
    ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}, True),
    ({"TPU_WORKER_HOSTNAMES": "w0"}, False),
    ({"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "2"}, True),
    ({"AUDITDM_MULTIHOST": "1"}, True),
])
def test_is_multiprocess(env, expected):
  assert distributed.is_multiprocess(env) is expected


def test_initialize_is_a_noop_locally():
  assert distributed.initialize() == (0, 1)


def test_written_files_get_umask_permissions(tmp_path):
  path = tmp_path / "x.bin"
  io_lib.write_bytes(str(path), b"1")
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~io_lib._UMASK


def test_cli_logs_info_lines(tmp_path):
  import subprocess
  import sys
  proc = subprocess.run([sys.executable, "-m", "auditdm_jax.main", "show-config", "--config",
                         "configs/examples/toy.py", "--workdir", str(tmp_path)], capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == 0
  assert "I auditdm] resolved config written to" in proc.stderr
