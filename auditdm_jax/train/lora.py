"""LoRA as a param-tree transform: `W' = W + (alpha / rank) * A @ B`, merged at apply time.

Works with any linen model without touching it: the trained tree is `{"base": params, "lora": adapters}`, the base
is frozen (`trainable=TRAINABLE`), and the loss sees `merge(base, adapters)`.

  adapters = lora.init(rng, params, rank=8)
  train_params = {"base": params, "lora": adapters}
  loss = lora.wrap_loss(loss_fn, lora.scale(rank=8, alpha=16))
  tx, sched = optim.make_optimizer(config)            # with config.trainable = lora.TRAINABLE
  step = make_train_step(loss, tx, trainable=lora.TRAINABLE, ...)

A weight of any rank is viewed as a matrix [prod(in dims), prod(out dims)] per "batch" index (e.g. the layer axis
of scanned params, or the k/v axis of `kv_einsum`), so each layer (and k, v) gets its own A [.., in, r], B [.., r, out].
The merge materialises W' for the forward pass (one extra copy of the targeted weights in the step's memory).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from auditdm_jax import tree_paths as paths

TRAINABLE = r"^lora/"

# (regex, in_axes, out_axes) with negative axes (robust to a leading scan axis). First match wins.
AXES_RULES = (
    (r"attn/(q_einsum|kv_einsum)/w$", (-2,), (-3, -1)),   # q [N, D, H], kv [2, K, D, H]
    (r"attn/qkv_einsum/w$", (-2,), (-3, -1)),             # [3, N, D, H]
    (r"attn/attn_vec_einsum/w$", (-3, -2), (-1,)),        # [N, H, D]
    (r"mlp/(gating_einsum|linear)(/w)?$", (-2,), (-1,)),  # [2, D, F], [F, D]
    (r"(query|key|value)/kernel$", (-3,), (-2, -1)),      # ViT [D, N, H]
    (r"out/kernel$", (-3, -2), (-1,)),                    # ViT [N, H, D]
    (r"kernel$", (-2,), (-1,)),                           # Dense [..., in, out]
)
# Attention and MLP projections of Gemma and ViT (big_vision names).
DEFAULT_TARGETS = (r"attn/(q_einsum|kv_einsum|qkv_einsum|attn_vec_einsum)/w$|mlp/(gating_einsum|linear)(/w)?$|"
                   r"(query|key|value|out)/kernel$|MlpBlock_\d+/Dense_\d+/kernel$")


def scale(rank, alpha):
  return float(alpha) / float(rank)


def axes_for(name, ndim):
  """(batch_axes, in_axes, out_axes) as positive axis tuples for a targeted weight."""
  for pattern, in_axes, out_axes in AXES_RULES:
    if paths.compile_regex(pattern).search(name):
      if ndim < len(in_axes) + len(out_axes):
        break
      in_axes = tuple(a % ndim for a in in_axes)
      out_axes = tuple(a % ndim for a in out_axes)
      batch = tuple(a for a in range(ndim) if a not in in_axes + out_axes)
      return batch, in_axes, out_axes
  raise ValueError(f"LoRA target {name} (ndim {ndim}) matches no rule in lora.AXES_RULES")


def _flat_adapters(adapters):
  """{"x/w": {"a": A, "b": B}} from the nested adapter tree."""
  flat = {}
  for kp, leaf in jax.tree_util.tree_flatten_with_path(adapters)[0]:
    name = paths.path_name(kp)
    owner, ab = name.rsplit("/", 1)
    flat.setdefault(owner, {})[ab] = leaf
  return flat


def init(rng, params, rank, targets=DEFAULT_TARGETS, dtype=jnp.float32):
  """Adapters for every param whose name matches `targets`: A ~ U(+-1/sqrt(fan_in)), B = 0 (so W' = W at init).

  Returns a nested dict mirroring the targeted params' paths, each leaf replaced by `{"a": [.., in, r],
  "b": [.., r, out]}`.
  """
  if rank < 1:
    raise ValueError(f"LoRA rank must be >= 1, got {rank}")
  rx = paths.compile_regex(targets)
  flat = {}
  for i, (kp, w) in enumerate(jax.tree_util.tree_flatten_with_path(params)[0]):
    name = paths.path_name(kp)
    if rx is None or not rx.search(name):
      continue
    batch, in_axes, out_axes = axes_for(name, np.ndim(w))
    shape = np.shape(w)
    lead = tuple(shape[a] for a in batch)
    fan_in = math.prod(shape[a] for a in in_axes)
    fan_out = math.prod(shape[a] for a in out_axes)
    bound = 1.0 / math.sqrt(fan_in)
    a = jax.random.uniform(jax.random.fold_in(rng, i), lead + (fan_in, rank), dtype, -bound, bound)
    flat[name] = {"a": a, "b": jnp.zeros(lead + (rank, fan_out), dtype)}
  if not flat:
    raise ValueError(f"LoRA targets {targets!r} match no parameter")
  return paths.unflatten(flat)


def delta(shape, a, b, name):
  """Low-rank update `A @ B` laid out like the weight of `shape` (named `name`)."""
  batch, in_axes, out_axes = axes_for(name, len(shape))
  d = jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32))  # [*batch, in, out]
  d = d.reshape(tuple(shape[i] for i in batch + in_axes + out_axes))
  return jnp.transpose(d, np.argsort(batch + in_axes + out_axes))


def merge(params, adapters, lora_scale):
  """params with `W + lora_scale * A @ B` for every adapted weight (in W's dtype)."""
  flat = _flat_adapters(adapters)

  def merged(name, w):
    if name not in flat:
      return w
    return (w + lora_scale * delta(w.shape, flat[name]["a"], flat[name]["b"], name)).astype(w.dtype)
  return paths.tree_map_with_names(merged, params)


def wrap_loss(loss_fn, lora_scale):
  """`loss_fn(params, ...)` -> loss over `{"base": params, "lora": adapters}` (merged at apply time)."""
  def wrapped(tree, *args, **kwargs):
    return loss_fn(merge(tree["base"], tree["lora"], lora_scale), *args, **kwargs)
  return wrapped


def from_config(rng, params, config):
  """`config` = dict(rank=8, alpha=16, targets=DEFAULT_TARGETS) -> (train tree {"base", "lora"}, lora_scale)."""
  rank = int(config["rank"])
  targets = config.get("targets") or DEFAULT_TARGETS
  return {"base": params, "lora": init(rng, params, rank, targets)}, scale(rank, config.get("alpha", rank))
