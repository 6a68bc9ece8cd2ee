"""Training FLOPs and Model FLOPs Utilisation (MFU).

MFU = model FLOPs per step / (step time x peak FLOP/s x devices); model FLOPs count the useful math only
(PaLM appendix B): `6 N` per token for the matmul params plus `12 L T D` per token for attention scores and values
(no causal halving, no rematerialisation).
"""
import jax
import numpy as np

from auditdm_jax import tree_paths as paths

# Dense bf16 peak FLOP/s per device (`device.device_kind` substring; first match wins, so specific names first).
PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("TPU v6 lite", 918e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
)


def peak_flops(device=None):
  """Peak dense bf16 FLOP/s of `device` (default: the first device), or None if unknown (e.g. CPU)."""
  device = jax.devices()[0] if device is None else device
  if device.platform == "cpu":
    return None
  for name, flops in PEAK_FLOPS:
    if name.lower() in device.device_kind.lower():
      return flops
  return None


def count_params(params, exclude=None):
  """Number of scalars in a param tree (leaves whose name matches `exclude` regex are skipped)."""
  rx = paths.compile_regex(exclude)
  sizes = paths.tree_map_with_names(lambda n, x: 0 if rx and rx.search(n) else int(np.prod(np.shape(x))), params)
  return int(sum(jax.tree.leaves(sizes)))


def transformer_train_flops(n_params, tokens, num_layers, seq_len, width):
  """Training FLOPs (forward + backward) for `tokens` tokens of sequences of length `seq_len`.

  Args:
    n_params: params taking part in matmuls (exclude the input-embedding lookup unless it is also the output
      projection, which then counts once).
    tokens: tokens processed per step (batch x seq_len).
    num_layers, seq_len, width: attention term `12 * L * T * D` per token (D = heads x head_dim).
  """
  return 6.0 * n_params * tokens + 12.0 * num_layers * seq_len * width * tokens


def mfu(flops_per_step, step_time, num_devices=None, device=None):
  """Model FLOPs utilisation in [0, 1], or None when the device's peak is unknown."""
  peak = peak_flops(device)
  if peak is None or not step_time:
    return None
  num_devices = jax.device_count() if num_devices is None else num_devices
  return flops_per_step / (step_time * peak * num_devices)
