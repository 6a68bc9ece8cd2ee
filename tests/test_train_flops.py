"""FLOPs / MFU accounting, the step meter, and the train benchmark (CPU, tiny)."""
import json
import os
import subprocess
import sys
import types

import jax.numpy as jnp
import pytest

from auditdm_jax.train import flops, meter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _device(kind, platform="gpu"):
  return types.SimpleNamespace(device_kind=kind, platform=platform)


def test_train_flops_formula():
  # 6 N T + 12 L S D T with N=1000, T=2*16 tokens, L=2, S=16, D=8.
  assert flops.transformer_train_flops(1000, 32, 2, 16, 8) == 6 * 1000 * 32 + 12 * 2 * 16 * 8 * 32


def test_peak_flops_table():
  assert flops.peak_flops(_device("NVIDIA H100 80GB HBM3")) == 989e12
  assert flops.peak_flops(_device("NVIDIA H100 PCIe")) == 756e12
  assert flops.peak_flops(_device("NVIDIA A100-SXM4-80GB")) == 312e12
  assert flops.peak_flops(_device("TPU v5 lite", "tpu")) == 197e12
  assert flops.peak_flops(_device("Mystery accelerator")) is None
  assert flops.peak_flops(_device("cpu", "cpu")) is None
  assert flops.mfu(1e12, 1.0) is None  # CPU in tests
  assert flops.mfu(989e12 / 2, 1.0, num_devices=1, device=_device("H100")) == pytest.approx(0.5)


def test_count_params():
  params = {"embedder": {"input_embedding": jnp.zeros((10, 4))}, "w": jnp.zeros((4, 3))}
  assert flops.count_params(params) == 52 and flops.count_params(params, exclude="embedder") == 12


def test_step_meter():
  m = meter.StepMeter(tokens_per_step=1000, flops_per_step=1e9)
  out = m.measure()
  assert out["step_time"] > 0 and out["tokens_per_s"] == pytest.approx(1000 / out["step_time"])
  assert "mfu" not in out  # unknown peak on CPU
  assert set(meter.StepMeter().measure()) == {"step_time"}


@pytest.mark.slow
def test_bench_train_prints_one_json_line():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  out = subprocess.run(
      [sys.executable, "-m", "auditdm_jax.tools.bench_train", "--width", "32", "--depth", "1", "--heads", "2",
       "--head_dim", "16", "--mlp_dim", "64", "--vocab", "64", "--seq", "16", "--batch", "4", "--steps", "2",
       "--meshes", "single;fsdp=-1"], capture_output=True, text=True, check=True, timeout=300, env=env, cwd=REPO)
  lines = [l for l in out.stdout.splitlines() if l.strip()]
  assert len(lines) == 1
  result = json.loads(lines[0])
  assert result["num_devices"] == 2 and result["baseline"] == "single"
  assert [r["name"] for r in result["runs"]] == ["single", "fsdp=-1"]
  for r in result["runs"]:
    assert r["step_time_s"] > 0 and r["mfu"] is None and r["tokens_per_s"] > 0
  # Same init, same batch: the sharded run computes the same loss.
  assert result["runs"][0]["loss"] == pytest.approx(result["runs"][1]["loss"], rel=1e-5)
  cores = result["machine_before"]["cores"]
  assert cores >= 1 and len(result["machine_after"]["load_avg"]) == 3 and "mfu_xla" not in result["runs"][0]
