"""Device mesh (`data`, `fsdp`, `tensor`) and parameter/batch shardings chosen by parameter name.

- `data`: pure data parallelism (params replicated).
- `fsdp`: data parallelism with params and optimizer state sharded over the largest divisible dimension.
- `tensor`: Megatron-style tensor parallelism over attention heads and the MLP hidden dimension.
The batch is split over `data` x `fsdp`; single- and multi-host alike (host-local batches are assembled into global
arrays with `jax.make_array_from_process_local_data`).
"""
import logging
import math

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from auditdm_jax import tree_paths as paths

log = logging.getLogger(__name__)

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (regex on the "/"-joined param name, spec of the TRAILING dims). Leading dims not covered by the spec (e.g. the
# layer axis of `nn.scan`-stacked params) are never tensor-sharded. Only the `tensor` axis is named here: FSDP is
# added afterwards on the largest remaining divisible dim. First matching rule wins.
DEFAULT_RULES = (
    # Gemma (big_vision names). q: [N, D, H]; kv: [2, K, D, H]; qkv: [3, N, D, H]; out: [N, H, D].
    (r"attn/q_einsum/w$", ("tensor", None, None)),
    (r"attn/kv_einsum/w$", (None, "tensor", None, None)),
    (r"attn/qkv_einsum/w$", (None, "tensor", None, None)),
    (r"attn/attn_vec_einsum/w$", ("tensor", None, None)),
    # Gemma MLP. gating: [2, D, F]; linear: [F, D].
    (r"mlp/gating_einsum(/w)?$", (None, None, "tensor")),
    (r"mlp/linear(/w)?$", ("tensor", None)),
    # ViT (SigLIP) attention. q/k/v kernel: [D, N, H], bias [N, H]; out kernel: [N, H, D].
    (r"(query|key|value)/kernel$", (None, "tensor", None)),
    (r"(query|key|value)/bias$", ("tensor", None)),
    (r"MultiHeadDotProductAttention_\d+/out/kernel$", ("tensor", None, None)),
    # ViT MLP. Dense_0: [D, F] (+bias [F]); Dense_1: [F, D].
    (r"MlpBlock_\d+/Dense_0/kernel$", (None, "tensor")),
    (r"MlpBlock_\d+/Dense_0/bias$", ("tensor",)),
    (r"MlpBlock_\d+/Dense_1/kernel$", ("tensor", None)),
)


def mesh_shape(config, num_devices):
  """Resolves `{data, fsdp, tensor}` sizes (one may be -1 = all remaining devices) -> tuple of 3 ints.

  Missing axes default to 1, except that an entirely missing/None config means `fsdp=-1` (all devices).
  """
  if config is None:
    config = {"fsdp": -1}
  config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  unknown = set(config) - set(AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected a subset of {AXES}")
  sizes = [int(config.get(a, 1)) for a in AXES]
  if sum(s == -1 for s in sizes) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh axis sizes must be positive or -1, got {dict(zip(AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if num_devices % known:
    raise ValueError(f"mesh {dict(zip(AXES, sizes))} does not divide {num_devices} devices")
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh {dict(zip(AXES, sizes))} uses {math.prod(sizes)} devices, but {num_devices} exist")
  return tuple(sizes)


def make_mesh(config=None, devices=None):
  """Mesh over all (global) devices with axes `("data", "fsdp", "tensor")`.

  Args:
    config: dict/ConfigDict like `dict(data=1, fsdp=-1, tensor=1)`; -1 = the rest. None = all devices on `fsdp`.
    devices: optional explicit device list (default `jax.devices()`, all hosts).
  """
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(config, len(devices))
  # make_mesh orders devices so that `tensor` (last axis) stays within fast interconnect (ICI/NVLink) domains.
  return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES), devices=devices)


def _axis_size(mesh, axes):
  axes = (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes)


def spec_for(name, shape, mesh, rules=DEFAULT_RULES, fsdp_min_size=2**10):
  """PartitionSpec for one parameter: first matching rule for `tensor`, then FSDP over the largest free dim.

  A rule whose `tensor` dim does not divide evenly is dropped (replicated over `tensor`), and so is FSDP for
  params smaller than `fsdp_min_size` elements (norm scales, biases: not worth the all-gather).
  """
  shape = tuple(shape)
  spec = [None] * len(shape)
  for pattern, rule in rules:
    if paths.compile_regex(pattern).search(name):
      if len(rule) > len(shape):
        raise ValueError(f"rule {pattern!r} has {len(rule)} dims but param {name} has shape {shape}")
      for i, axis in enumerate(rule, start=len(shape) - len(rule)):
        if axis is None:
          continue
        if shape[i] % _axis_size(mesh, axis) == 0:
          spec[i] = axis
        else:
          log.debug("%s: dim %d (%d) not divisible by %s=%d; replicated", name, i, shape[i], axis,
                    _axis_size(mesh, axis))
      break
  fsdp = mesh.shape.get("fsdp", 1)
  if fsdp > 1 and math.prod(shape) >= fsdp_min_size:
    free = [i for i in range(len(shape)) if spec[i] is None and shape[i] % fsdp == 0]
    if free:
      spec[max(free, key=lambda i: (shape[i], -i))] = "fsdp"
  return P(*spec)


def param_specs(params_or_shapes, mesh, rules=DEFAULT_RULES, fsdp_min_size=2**10):
  """Tree of PartitionSpecs for a param tree (arrays or `jax.ShapeDtypeStruct`s, e.g. from `jax.eval_shape`)."""
  return paths.tree_map_with_names(
      lambda n, x: spec_for(n, np.shape(x), mesh, rules, fsdp_min_size), params_or_shapes)


def param_shardings(params_or_shapes, mesh, rules=DEFAULT_RULES, fsdp_min_size=2**10):
  """Tree of NamedShardings for a param tree (see `param_specs`)."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s),
                      param_specs(params_or_shapes, mesh, rules, fsdp_min_size),
                      is_leaf=lambda x: isinstance(x, P))


def _put(x, sharding):
  if isinstance(x, jax.Array) and x.is_fully_addressable == sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  # Host values (identical on every process) -> each process fills only its own shards; multi-host safe.
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def shard_params(params, mesh=None, rules=DEFAULT_RULES, shardings=None, fsdp_min_size=2**10):
  """Places a param tree (numpy or jax arrays, same values on all hosts) onto the mesh by `rules`/`shardings`."""
  if shardings is None:
    if mesh is None:
      raise ValueError("shard_params needs a mesh or explicit shardings")
    shardings = param_shardings(params, mesh, rules, fsdp_min_size)
  return jax.tree.map(_put, params, shardings)


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_spec(ndim=1):
  """Leading (batch) dim over `data` x `fsdp`, other dims replicated."""
  return P(BATCH_AXES, *([None] * (ndim - 1)))


def batch_sharding(mesh):
  """Sharding of batch arrays: leading dim split over `data` x `fsdp`; replicated over `tensor`."""
  return NamedSharding(mesh, P(BATCH_AXES))


def shard_batch(batch, mesh):
  """Host-local batch (numpy tree, leading dim = per-host batch) -> global jax arrays sharded over the batch axes.

  The global batch is the concatenation of all hosts' local batches (process order). Every host must pass the
  same structure and per-host batch size, divisible by its share of the batch axes.
  """
  sharding = batch_sharding(mesh)
  n = _axis_size(mesh, BATCH_AXES)
  local_shards = max(1, n // jax.process_count())

  def put(x):
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % local_shards:
      raise ValueError(f"per-host batch dim {x.shape[:1]} not divisible by the {local_shards} local batch shards")
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.tree.map(put, batch)


def constrain(x, mesh, spec):
  """`with_sharding_constraint` for activations; no-op without a mesh. `"batch"` in `spec` means `data` x `fsdp`.

  Example: `x = constrain(x, mesh, ("batch", None, "tensor"))` for `[B, T, F]` MLP activations.
  """
  if mesh is None or mesh.size == 1:
    return x
  spec = P(*(BATCH_AXES if a == "batch" else a for a in spec))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def describe(params, shardings):
  """Human-readable table `name shape spec` (for logs)."""
  rows = paths.tree_map_with_names(lambda n, x, s: f"{n} {tuple(np.shape(x))} {s.spec}", params, shardings)
  return "\n".join(jax.tree.leaves(rows))
