"""GPU-speed tools on CPU at tiny sizes: machine load records, AOT compile timing, the one-command GPU check."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from auditdm_jax.tools import bench_matmul_layout
from auditdm_jax.tools import gpu_check
from auditdm_jax.tools import machine
from auditdm_jax.train import cross_entropy

REPO = __file__.rsplit("/tests/", 1)[0]


def test_machine_load_and_busy_refusal(monkeypatch):
  state = machine.load()
  assert len(state["load_avg"]) == 3 and state["cores"] >= 1 and state["process_threads"] >= 1
  monkeypatch.setattr(machine.os, "getloadavg", lambda: (1e6, 1e6, 1e6))
  assert machine.check_idle()["busy"]
  with pytest.raises(RuntimeError, match="busy"):
    machine.check_idle(require_idle=True)


def test_token_logprobs_equal_log_softmax_and_its_gradient():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(0, 3, (2, 5, 50)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 50, (2, 5)))
  want = lambda l: jnp.take_along_axis(jax.nn.log_softmax(l), targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(cross_entropy.token_logprobs(logits, targets), want(logits), atol=1e-5)
  np.testing.assert_allclose(cross_entropy.mean_logprob(logits), jnp.mean(jax.nn.log_softmax(logits), -1), atol=1e-5)
  grad = lambda f: jax.grad(lambda l: jnp.sum(f(l) * jnp.arange(5.0)))(logits)
  np.testing.assert_allclose(grad(lambda l: cross_entropy.token_logprobs(l, targets)), grad(want), atol=1e-5)
  # bf16 logits in, float32 out, close to the float32 computation.
  low = cross_entropy.token_logprobs(logits.astype(jnp.bfloat16), targets)
  assert low.dtype == jnp.float32
  np.testing.assert_allclose(low, want(logits), atol=0.1)


def test_bench_matmul_layout_times_each_form_per_row_count(capsys):
  bench_matmul_layout.main(["--rows", "2,3", "--width", "16", "--layers", "2", "--repeats", "1"])
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert set(result["ms"]) == {"2", "3"}
  assert result["weights_mb"] == pytest.approx(2 * 2 * 16 * 64 * 4 / 1e6, abs=0.05)  # 2 layers of 16x64 and 64x16.
  for rows, ms in result["ms"].items():
    assert set(ms) == {"in_major", "out_major", "weight_left"} and min(ms.values()) > 0
    assert result["ratio_to_in_major"][rows]["in_major"] == 1.0


@pytest.mark.slow
def test_bench_compile_prints_lower_and_compile_seconds():
  out = subprocess.run(
      [sys.executable, "-m", "auditdm_jax.tools.bench_compile", "--decoder", "gemma3_tiny", "--batch", "2",
       "--prompt_len", "8", "--new_tokens", "4", "--vlm", "paligemma2_tiny", "--res", "32", "--seq", "8",
       "--train_batch", "2"], capture_output=True, text=True, check=True, timeout=600, cwd=REPO)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  for key in ("lower_s", "prefill_compile_s", "decode_compile_s"):
    assert result["decode"][key] > 0
  assert result["train"]["compile_s"] > 0 and result["backend"] == "cpu"
  assert len(result["machine_before"]["load_avg"]) == 3


@pytest.mark.slow
def test_gpu_check_decode_section_on_tiny_model():
  """The decode figures of the GPU check, run on CPU: sensible values, one compile per function."""
  results = []
  gpu_check.decode_section(type("Args", (), {"small": True})(), 1e10, results.append)
  assert [(r["batch"], r["new_tokens"]) for r in results] == [(4, 8), (8, 4)]
  for r in results:
    # step_ms is a difference of two timings: finite, but noise on a loaded CPU may flip its sign.
    assert np.isfinite(r["step_ms"]) and r["total_s"] > 0 and r["first_call_s"] > 0
    assert set(r["compile_s"]) == {"prefill", "decode"}
    assert r["param_bytes"] > 0 and r["cache_bytes"] > 0 and r["roofline_frac"] is None  # CPU: no datasheet.
