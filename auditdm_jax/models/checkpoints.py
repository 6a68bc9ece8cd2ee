"""Checkpoint I/O: HF safetensors directories and big_vision `.npz` in, HF safetensors + config.json out.

A model's layout is a mapping {our param path "a/b/c": Rule(hf keys, to_ours, to_hf, layers)}: one or a few HF
tensors make one of our leaves; a stacked leaf (scanned layers) stacks `L` per-layer conversions on axis 0.
Loading walks our param shapes (from `jax.eval_shape`, nothing allocated) and builds every leaf with
`jax.make_array_from_callback`: each distinct shard is converted on demand from the memory-mapped safetensors
(one layer at a time for stacked leaves), so devices receive only their shard and the host never holds the model.
Export writes one safetensors shard at a time.
"""
import contextlib
import dataclasses
import glob
import json
import logging
import os
import re
import zipfile
from typing import Callable

import jax
import ml_dtypes
import numpy as np

from auditdm_jax import errors
from auditdm_jax import io
from auditdm_jax.models import gemma
from auditdm_jax.models import variants
from auditdm_jax.models import vit
from auditdm_jax.models import vlm
from auditdm_jax.tree_paths import flatten, unflatten

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
  """A checkpoint does not match the model: names the offending key."""


def _one(x):
  return x


@dataclasses.dataclass(frozen=True)
class Rule:
  """Our leaf <-> HF tensor(s).

  hf: HF key(s) feeding the leaf ("{i}" = layer index when `layers` is set); to_ours(*hf arrays) -> our array;
  to_hf(our array) -> one array per key. With `layers=L` the leaf stacks the L per-layer results on axis 0.
  """
  hf: tuple
  to_ours: Callable = _one
  to_hf: Callable = _one
  layers: int | None = None

  def keys(self, i=None):
    return [k.format(i=i) for k in self.hf] if i is not None else list(self.hf)

  def hf_arrays(self, value):
    out = self.to_hf(value)
    return out if isinstance(out, tuple) else (out,)


def rule(hf, to_ours=_one, to_hf=_one, layers=None):
  return Rule((hf,) if isinstance(hf, str) else tuple(hf), to_ours, to_hf, layers)


def T(x):
  return np.swapaxes(x, -1, -2)


def linear_in(*out_shape):
  """torch Linear weight [out, in] <-> ours [in, *out_shape]."""
  return dict(to_ours=lambda w: T(w).reshape(w.shape[1], *out_shape),
              to_hf=lambda k: T(k.reshape(k.shape[0], -1)))


def linear_out(*in_shape):
  """torch Linear weight [out, in] <-> ours [*in_shape, out] (in = prod(in_shape))."""
  return dict(to_ours=lambda w: T(w).reshape(*in_shape, w.shape[0]),
              to_hf=lambda k: T(k.reshape(-1, k.shape[-1])))


def reshape(*shape):
  return dict(to_ours=lambda b: b.reshape(*shape), to_hf=lambda b: b.reshape(-1))


def layer_rules(block, ours_fmt, hf_fmt, n, scan):
  """Per-layer rules {our suffix: (hf suffix, conversions)} for `n` layers.

  ours_fmt: e.g. "img/Transformer/encoderblock{i}": {i} becomes "" (scan: one stacked leaf) or "_3".
  """
  rules = {}
  for ours, (hf, conv) in block.items():
    if scan:
      rules[f"{ours_fmt.format(i='')}/{ours}"] = rule(f"{hf_fmt}.{hf}", layers=n, **conv)
    else:
      for i in range(n):
        rules[f"{ours_fmt.format(i=f'_{i}')}/{ours}"] = rule(f"{hf_fmt}.{hf}".format(i=i), **conv)
  return rules


def vit_rules(ours_prefix, hf_prefix, depth, num_heads, width, scan):
  """SigLIP vision tower: transformers SiglipVisionModel keys <-> big_vision ViT names."""
  hd = width // num_heads
  block = {
      "LayerNorm_0/scale": ("layer_norm1.weight", {}), "LayerNorm_0/bias": ("layer_norm1.bias", {}),
      "LayerNorm_1/scale": ("layer_norm2.weight", {}), "LayerNorm_1/bias": ("layer_norm2.bias", {}),
      "MlpBlock_0/Dense_0/kernel": ("mlp.fc1.weight", dict(to_ours=T, to_hf=T)),
      "MlpBlock_0/Dense_0/bias": ("mlp.fc1.bias", {}),
      "MlpBlock_0/Dense_1/kernel": ("mlp.fc2.weight", dict(to_ours=T, to_hf=T)),
      "MlpBlock_0/Dense_1/bias": ("mlp.fc2.bias", {}),
      "MultiHeadDotProductAttention_0/out/kernel": ("self_attn.out_proj.weight", linear_out(num_heads, hd)),
      "MultiHeadDotProductAttention_0/out/bias": ("self_attn.out_proj.bias", {}),
  }
  for ours, hf in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
    block[f"MultiHeadDotProductAttention_0/{ours}/kernel"] = (f"self_attn.{hf}.weight", linear_in(num_heads, hd))
    block[f"MultiHeadDotProductAttention_0/{ours}/bias"] = (f"self_attn.{hf}.bias", reshape(num_heads, hd))
  rules = {
      f"{ours_prefix}/embedding/kernel": rule(f"{hf_prefix}.embeddings.patch_embedding.weight",
                                             lambda w: w.transpose(2, 3, 1, 0), lambda k: k.transpose(3, 2, 0, 1)),
      f"{ours_prefix}/embedding/bias": rule(f"{hf_prefix}.embeddings.patch_embedding.bias"),
      f"{ours_prefix}/pos_embedding": rule(f"{hf_prefix}.embeddings.position_embedding.weight",
                                          lambda w: w[None], lambda p: p[0]),
      f"{ours_prefix}/Transformer/encoder_norm/scale": rule(f"{hf_prefix}.post_layernorm.weight"),
      f"{ours_prefix}/Transformer/encoder_norm/bias": rule(f"{hf_prefix}.post_layernorm.bias"),
  }
  rules.update(layer_rules(block, f"{ours_prefix}/Transformer/encoderblock{{i}}",
                           f"{hf_prefix}.encoder.layers.{{i}}", depth, scan))
  return rules


def gemma_rules(ours_prefix, hf_prefix, cfg):
  """Gemma2/Gemma3 text decoder (transformers Gemma2Model/Gemma3TextModel) <-> gemma.py names (stacked layers)."""
  n, k, h, d, L = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.width, cfg.depth
  lay = f"{hf_prefix}.layers.{{i}}"
  o = f"{ours_prefix}/layers"
  rules = {
      f"{ours_prefix}/embedder/input_embedding": rule(f"{hf_prefix}.embed_tokens.weight"),
      f"{ours_prefix}/final_norm/scale": rule(f"{hf_prefix}.norm.weight"),
      f"{o}/attn/q_einsum/w": rule(
          f"{lay}.self_attn.q_proj.weight", lambda w: w.reshape(n, h, d).transpose(0, 2, 1),
          lambda x: x.transpose(0, 2, 1).reshape(n * h, d), L),
      f"{o}/attn/kv_einsum/w": rule(
          (f"{lay}.self_attn.k_proj.weight", f"{lay}.self_attn.v_proj.weight"),
          lambda wk, wv: np.stack([w.reshape(k, h, d).transpose(0, 2, 1) for w in (wk, wv)]),
          lambda x: tuple(x[j].transpose(0, 2, 1).reshape(k * h, d) for j in range(2)), L),
      f"{o}/attn/attn_vec_einsum/w": rule(
          f"{lay}.self_attn.o_proj.weight", lambda w: T(w).reshape(n, h, d), lambda x: T(x.reshape(n * h, d)), L),
      f"{o}/mlp/gating_einsum": rule(
          (f"{lay}.mlp.gate_proj.weight", f"{lay}.mlp.up_proj.weight"), lambda g, u: np.stack([T(g), T(u)]),
          lambda x: (T(x[0]), T(x[1])), L),
      f"{o}/mlp/linear": rule(f"{lay}.mlp.down_proj.weight", T, T, L),
  }
  for ours, hf in (("pre_attention_norm", "input_layernorm"), ("post_attention_norm", "post_attention_layernorm"),
                   ("pre_ffw_norm", "pre_feedforward_layernorm"), ("post_ffw_norm", "post_feedforward_layernorm")):
    rules[f"{o}/{ours}/scale"] = rule(f"{lay}.{hf}.weight", layers=L)
  if cfg.qk_norm:
    rules[f"{o}/attn/_query_norm/scale"] = rule(f"{lay}.self_attn.q_norm.weight", layers=L)
    rules[f"{o}/attn/_key_norm/scale"] = rule(f"{lay}.self_attn.k_norm.weight", layers=L)
  return rules


# ---------------------------------------------------------------------------------------------- reading tensors

def _to_numpy(t):
  """torch tensor -> numpy, keeping bf16 as ml_dtypes.bfloat16 (numpy has no bf16)."""
  import torch  # pylint: disable=g-import-not-at-top
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


class SafetensorsDir:
  """Lazy reader over every *.safetensors file of a HF model directory."""

  def __init__(self, path):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
      raise CheckpointError(f"no *.safetensors files in {os.fspath(path)!r}")
    self._handles, self.where = {}, {}
    for f in files:
      h = safe_open(f, framework="pt")
      self._handles[f] = h
      for k in h.keys():
        self.where[k] = f

  def keys(self):
    return self.where.keys()

  def __getitem__(self, key):
    return _to_numpy(self._handles[self.where[key]].get_tensor(key))


class _FlatReader:
  """Lazy checkpoint reader keyed by param path ("a/b/c"): `_names` maps it to the stored name, `_read(name)` reads
  one array. Keeps the last array read, as per-layer leaves read one stacked array L times."""

  def __init__(self, names):
    self._names = names
    self._last = (None, None)

  def close(self):
    pass

  def __contains__(self, key):
    return key in self._names

  def __iter__(self):
    return iter(self._names)

  def __getitem__(self, key):
    if self._last[0] != key:
      self._last = (key, self._read(self._names[key]))
    return self._last[1]


class NpzFile(_FlatReader):
  """big_vision .npz ("params/" prefix dropped). bf16 is stored as raw 2-byte void ("|V2") and viewed back."""

  def __init__(self, path):
    self._z = np.load(path, allow_pickle=False)
    super().__init__({re.sub(r"^params/", "", k): k for k in self._z.files})

  def close(self):
    self._z.close()

  def _read(self, name):
    a = self._z[name]
    return a.view(ml_dtypes.bfloat16) if a.dtype.kind == "V" and a.dtype.itemsize == 2 else a


class TensorstoreCheckpoint(_FlatReader):
  """big_vision's `utils.save_checkpoint_ts` layout: a `<prefix>-<step>` directory with one zarr array per leaf
  named `params~llm~layers~0~...` ("/" written as "~"), or `<prefix>` itself, resolved through the `<prefix>-LAST`
  file big_vision writes. Only the "params" subtree is read."""

  def __init__(self, path):
    path = os.fspath(path)
    if os.path.isfile(path + "-LAST"):
      with open(path + "-LAST") as f:
        path = f"{path}-{f.read().strip()}"
    self.path = path
    super().__init__({n[len("params~"):].replace("~", "/"): n for n in os.listdir(path) if n.startswith("params~")})

  def _read(self, name):
    import tensorstore  # pylint: disable=g-import-not-at-top
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": os.path.join(self.path, name)}}
    return np.asarray(tensorstore.open(spec, open=True).result().read().result())


def is_big_vision_ts(path):
  """Whether `path` is a big_vision tensorstore checkpoint (`save_checkpoint_ts`): a step directory or its prefix."""
  path = os.fspath(path)
  return os.path.isfile(path + "-LAST") or os.path.isdir(path) and any(
      n.startswith("params~") for n in os.listdir(path))


# ------------------------------------------------------------------------------------------------------ loading

def _default_sharding(sharding):
  return sharding if sharding is not None else jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _build(shape_dtype, sharding, get_shard):
  """A jax.Array from `get_shard(index) -> np.ndarray`, called once per distinct shard index (replicas reuse it)."""
  memo = {}

  def callback(index):
    key = tuple((s.start, s.stop, s.step) for s in index)
    if key not in memo:
      memo[key] = np.asarray(get_shard(index)).astype(shape_dtype.dtype, copy=False)
    return memo[key]

  return jax.make_array_from_callback(tuple(shape_dtype.shape), _default_sharding(sharding), callback)


def _resolve_key(reader_keys, key, aliases):
  """Finds `key` in the checkpoint trying each (canonical prefix, alternative prefix) alias of the HF layouts."""
  if key in reader_keys:
    return key
  for old, new in aliases:
    if key.startswith(old) and new + key[len(old):] in reader_keys:
      return new + key[len(old):]
  return None


def load_hf(path, mapping, abstract_params, shardings=None, aliases=(), ignore=()):
  """Loads a HF safetensors directory into our params.

  Each device's shard is converted from the (memory-mapped) safetensors on demand, one layer at a time for
  stacked leaves, so host memory stays around one shard rather than one model (or one stacked leaf).

  Args:
    path: directory with *.safetensors (sharded or not).
    mapping: {our path: Rule} (e.g. `vlm_rules(cfg)`), written for one canonical HF key layout.
    abstract_params: our param tree of jax.ShapeDtypeStruct (jax.eval_shape of init); dtypes taken from it.
    shardings: optional matching tree of jax.sharding.Sharding: leaves are built directly on their devices.
    aliases: (canonical prefix, alternative prefix) pairs for the other HF key layouts of the same model.
    ignore: regexes of checkpoint keys that are allowed to stay unused (e.g. an unused vision pooling head).
  Returns: our params (nested dict of jax.Array).
  """
  reader = SafetensorsDir(path)
  keys_avail = set(reader.keys())
  flat_abs = flatten(abstract_params)
  flat_sh = flatten(shardings) if shardings is not None else {}
  missing_rules = sorted(set(flat_abs) - set(mapping))
  if missing_rules:
    raise CheckpointError(f"no conversion rule for our params {missing_rules[:5]} (mapping and model disagree)")
  used, out = set(), {}

  def convert(ours, r, layer, want):
    keys = r.keys(layer)
    found = [_resolve_key(keys_avail, k, aliases) for k in keys]
    if None in found:
      raise CheckpointError(
          f"checkpoint {os.fspath(path)!r} is missing key {keys[found.index(None)]!r} (for {ours!r})")
    used.update(found)
    value = _fit_vocab(ours, r.to_ours(*[reader[k] for k in found]), want)
    if tuple(value.shape) != want:
      raise CheckpointError(f"shape mismatch for {found[0]!r} -> {ours!r}: checkpoint gives {tuple(value.shape)}, "
                            f"model expects {want}{' per layer' if layer is not None else ''}")
    return value

  for ours, sds in flat_abs.items():
    r = mapping[ours]
    if r.layers is None:
      get_shard = lambda idx, ours=ours, r=r, sds=sds: convert(ours, r, None, tuple(sds.shape))[idx]
    else:
      if sds.shape[0] != r.layers:
        raise CheckpointError(f"{ours!r} stacks {sds.shape[0]} layers, the mapping {r.layers}")
      get_shard = lambda idx, ours=ours, r=r, sds=sds: np.stack(
          [convert(ours, r, i, tuple(sds.shape[1:]))[idx[1:]] for i in range(r.layers)[idx[0]]])
    out[ours] = _build(sds, flat_sh.get(ours), get_shard)
  unused = sorted(k for k in keys_avail - used if not any(re.search(p, k) for p in ignore))
  if unused:
    more = " ..." if len(unused) > 8 else ""
    raise CheckpointError(f"unexpected keys in {os.fspath(path)!r}: {unused[:8]}{more}")
  return unflatten(out)


def _fit_vocab(ours, value, shape):
  """HF checkpoints may pad the vocabulary (e.g. to a multiple of 64/128); extra rows are dropped."""
  if (ours.endswith("input_embedding") and value.ndim == 2 and value.shape[1:] == tuple(shape[1:])
      and value.shape[0] > shape[0]):
    log.info("dropping %d padded vocab rows of %s", value.shape[0] - shape[0], ours)
    return value[:shape[0]]
  return value


@contextlib.contextmanager
def reading(path):
  """Names `path` in the error of a checkpoint that cannot be read: truncated or foreign files fail deep in numpy,
  zipfile or safetensors with messages that do not (InputError "cannot read the checkpoint: ...")."""
  import safetensors  # pylint: disable=g-import-not-at-top
  try:
    yield
  except errors.InputError:
    raise
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, safetensors.SafetensorError) as e:
    raise errors.InputError(f"cannot read the checkpoint: {type(e).__name__}: {e}", path) from e


def load_npz(path, abstract_params, shardings=None):
  """Loads a big_vision .npz (names like ours, "params/" prefix optional, layers scanned or not) into our params;
  also a big_vision tensorstore checkpoint (`is_big_vision_ts`, see `TensorstoreCheckpoint`).

  A stacked checkpoint leaf `.../encoderblock/x` [L, ...] feeds unscanned leaves `.../encoderblock_{i}/x`
  and vice versa, so a checkpoint saved with either `scan` setting loads into a model with either; an unscanned
  big_vision Gemma's `llm/layers/{i}/x` stack into our `llm/layers/x`.
  """
  flat = TensorstoreCheckpoint(path) if is_big_vision_ts(path) else NpzFile(path)
  try:
    return _load_npz(flat, os.fspath(path), abstract_params, shardings)
  finally:
    flat.close()


def _load_npz(flat, path, abstract_params, shardings):
  flat_abs = flatten(abstract_params)
  flat_sh = flatten(shardings) if shardings is not None else {}
  used, out = set(), {}
  for ours, sds in flat_abs.items():
    value, src = _npz_value(flat, ours, sds.shape)
    if value is None:
      raise CheckpointError(f"{path!r} is missing {ours!r}")
    used.update(src)
    value = _fit_vocab(ours, value, sds.shape)
    if tuple(value.shape) != tuple(sds.shape):
      raise CheckpointError(f"shape mismatch for {ours!r}: checkpoint {value.shape}, model {tuple(sds.shape)}")
    out[ours] = _build(sds, flat_sh.get(ours), lambda idx, value=value: value[idx])
  unused = sorted(set(flat) - used)
  if unused:
    more = " ..." if len(unused) > 8 else ""
    raise CheckpointError(f"unexpected keys in {path!r}: {unused[:8]}{more}")
  return unflatten(out)


def _npz_value(flat, ours, shape):
  if ours in flat:
    return flat[ours], [ours]
  # Ours unscanned (".../name_3/..."), checkpoint stacked (".../name/...").
  for m in re.finditer(r"(^|/)([A-Za-z]\w*?)_(\d+)(?=/)", ours):
    stacked_key = ours[:m.start(2)] + m.group(2) + ours[m.end(3):]
    if stacked_key in flat:
      return flat[stacked_key][int(m.group(3))], [stacked_key]
  # Ours scanned (".../name/..." with a leading layer axis), checkpoint per layer: ".../name_{i}/..." (big_vision's
  # unscanned ViT) or ".../name/{i}/..." (its unscanned Gemma, `llm/layers/{i}/...`).
  for m in re.finditer(r"(^|/)([A-Za-z]\w*)(?=/)", ours):
    for sep in ("_", "/"):
      fmt = ours[:m.end(2)] + sep + "{}" + ours[m.end(2):]
      keys = [fmt.format(i) for i in range(shape[0])] if shape else []
      if keys and all(k in flat for k in keys):
        return np.stack([flat[k] for k in keys]), keys
  return None, []


def save_npz(path, params):
  """Writes params as a big_vision-style .npz (bf16 as "|V2" void, like big_vision), atomically."""
  path = os.fspath(path)
  flat = {}
  for k, v in flatten(params).items():
    v = np.asarray(jax.device_get(v))
    flat[k] = v.view("|V2") if v.dtype == ml_dtypes.bfloat16 else v
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:  # Streamed to disk: no in-memory copy of the whole archive.
    np.savez(f, **flat)
  os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------ export

def export_hf(path, params, mapping, hf_config, max_shard_bytes=4 << 30, dtype=None):
  """Writes our params as HF safetensors (+ index when sharded) and `hf_config` (a transformers config).

  Shards are converted and written one at a time, so the host holds about one shard (max_shard_bytes).
  dtype: optional numpy dtype for the written tensors (e.g. ml_dtypes.bfloat16); default keeps ours.
  """
  path = os.fspath(path)
  flat = flatten(params)
  missing = sorted(set(flat) - set(mapping))
  if missing:
    raise CheckpointError(f"no conversion rule for our params {missing[:5]}")
  absent = sorted(set(mapping) - set(flat))
  if absent:
    raise CheckpointError(f"params lack {absent[:5]}")
  os.makedirs(path, exist_ok=True)
  written, shard, size, total = [], {}, 0, 0
  for ours, r in mapping.items():
    value = np.asarray(jax.device_get(flat[ours]))
    if dtype is not None:
      value = value.astype(dtype)
    per_layer = [(r.keys(i), value[i]) for i in range(r.layers)] if r.layers else [(r.keys(), value)]
    for keys, v in per_layer:
      for key, part in zip(keys, r.hf_arrays(v)):
        if shard and size + part.nbytes > max_shard_bytes:
          written.append(_write_shard(path, len(written), shard))
          shard, size = {}, 0
        shard[key], size, total = _to_torch(part), size + part.nbytes, total + part.nbytes
  written.append(_write_shard(path, len(written), shard))
  if len(written) == 1:
    os.replace(written[0][0], os.path.join(path, "model.safetensors"))
  else:
    weight_map = {}
    for i, (tmp, keys) in enumerate(written):
      name = f"model-{i + 1:05d}-of-{len(written):05d}.safetensors"
      os.replace(tmp, os.path.join(path, name))
      weight_map.update({k: name for k in keys})
    io.write_json(os.path.join(path, "model.safetensors.index.json"),
                  {"metadata": {"total_size": total}, "weight_map": weight_map})
  io.write_text(os.path.join(path, "config.json"), hf_config.to_json_string())


def _to_torch(a):
  import torch  # pylint: disable=g-import-not-at-top
  a = np.array(a, order="C")  # A writable copy: torch.from_numpy shares memory.
  if a.dtype == ml_dtypes.bfloat16:
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
  return torch.from_numpy(a)


def _write_shard(path, i, tensors):
  """Writes a shard under a temporary name (renamed once the shard count is known); returns (file, keys)."""
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  tmp = os.path.join(path, f".shard-{i:05d}.safetensors.tmp")
  save_file(tensors, tmp, metadata={"format": "pt"})
  io.usual_permissions(tmp)
  return tmp, sorted(tensors)


def read_hf_config(path):
  """config.json of a HF model directory as a dict."""
  f = os.path.join(path, "config.json")
  if not os.path.exists(f):
    raise CheckpointError(f"{os.fspath(path)!r} has no config.json")
  with open(f, encoding="utf-8") as fh:
    return json.load(fh)


# ------------------------------------------------------------------------------------------------------ VLMs

# Canonical names are the official hub layout (what the published PaliGemma2/Gemma3 checkpoints use and what
# `export_vlm_hf` writes); the aliases are the other layouts transformers has used (4.5x in-memory names, 5.x saves).
HF_ALIASES = (
    ("language_model.model.", "model.language_model."),
    ("vision_tower.vision_model.", "vision_tower."),
    ("vision_tower.vision_model.", "model.vision_tower.vision_model."),
    ("vision_tower.vision_model.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)
# Tied unembedding; SigLIP's attention-pooling head (transformers adds it by default, PaliGemma/Gemma3 never use it).
HF_IGNORE = (r"^lm_head\.weight$", r"vision_tower\.(vision_model\.)?head\.")
_PADDED_VOCAB = {("paligemma", 257_216): 257_152, ("gemma3", 262_208): 262_144}


def vlm_rules(cfg):
  """{our path: Rule} for a VLM config (`vlm.get_config`), in the official HF key layout."""
  s = vit.Model(**cfg.img.to_dict()).shape()
  rules = vit_rules("img", "vision_tower.vision_model", s["depth"], s["num_heads"], s["width"], cfg.img.scan)
  rules.update(gemma_rules("llm", "language_model.model", cfg.llm))
  if cfg.family == "paligemma":
    rules["img/head/kernel"] = rule("multi_modal_projector.linear.weight", T, T)
    rules["img/head/bias"] = rule("multi_modal_projector.linear.bias")
  else:
    rules["mm_input_projection/w"] = rule("multi_modal_projector.mm_input_projection_weight")
    rules["mm_soft_embedding_norm/scale"] = rule("multi_modal_projector.mm_soft_emb_norm.weight")
  return rules


def config_from_hf(hf, **img_overrides):
  """Our VLM config from a HF config.json (dict or directory): PaliGemma(2) with Gemma2, or Gemma3 multimodal.

  img_overrides: ViT runtime fields (scan, remat_policy, dtype). Padded vocabularies map to the real size.
  PaliGemma2 gets big_vision's global attention (no sliding window, see models/vlm.py) whatever the HF config says;
  give `load_vlm_hf` a cfg with `llm.sliding_window` set for transformers' windowed layers.
  """
  if isinstance(hf, (str, os.PathLike)):
    hf = read_hf_config(hf)
  family = hf.get("model_type")
  if family not in ("paligemma", "gemma3"):
    raise CheckpointError(f"unsupported model_type {family!r}; expected 'paligemma' or 'gemma3'")
  t, v = hf["text_config"], hf["vision_config"]
  if family == "paligemma" and t.get("model_type") != "gemma2":
    raise CheckpointError(f"PaliGemma with a {t.get('model_type')!r} decoder is not supported (only Gemma2)")
  vocab = _PADDED_VOCAB.get((family, t["vocab_size"]), t["vocab_size"])
  kinds = t.get("layer_types") or []
  llm = dict(width=t["hidden_size"], depth=t["num_hidden_layers"], mlp_dim=t["intermediate_size"],
             num_heads=t["num_attention_heads"], num_kv_heads=t["num_key_value_heads"], head_dim=t["head_dim"],
             vocab_size=vocab, query_pre_attn_scalar=t["query_pre_attn_scalar"], norm_eps=t["rms_norm_eps"],
             sliding_window=t.get("sliding_window") if family == "gemma3" else None,
             attn_softcap=t.get("attn_logit_softcapping"),
             final_softcap=t.get("final_logit_softcapping"))
  if kinds and family == "gemma3":  # PaliGemma2 has no window: its layer kinds do not matter.
    period = next((p for p in range(1, len(kinds) + 1)
                   if all(kinds[i] == kinds[i % p] for i in range(len(kinds)))), len(kinds))
    llm["attn_pattern"] = tuple("local" if k == "sliding_attention" else "global" for k in kinds[:period])
  rope = t.get("rope_parameters") or {}
  if family == "gemma3":
    local, full = rope.get("sliding_attention", {}), rope.get("full_attention", {})
    llm.update(rope_local_base=local.get("rope_theta", 10_000.0), rope_global_base=full.get("rope_theta", 1e6),
               rope_global_scale=full.get("factor", 1.0) if full.get("rope_type") == "linear" else 1.0)
  else:
    theta = rope.get("rope_theta", t.get("rope_theta", 10_000.0))
    llm.update(rope_local_base=theta, rope_global_base=theta)
  img = dict(variant=f"So400m/{v['patch_size']}", width=v["hidden_size"], depth=v["num_hidden_layers"],
             mlp_dim=v["intermediate_size"], num_heads=v["num_attention_heads"], **img_overrides)
  base = "paligemma2_tiny" if family == "paligemma" else "gemma3_tiny"
  extra = {}
  if family == "gemma3":
    extra = dict(mm_tokens_per_image=hf["mm_tokens_per_image"], image_token_id=hf["image_token_index"],
                 boi_token_id=hf["boi_token_index"], eoi_token_id=hf["eoi_token_index"])
  cfg = vlm.get_config(base, llm=llm, img=img, **extra)
  cfg.res = v["image_size"]
  cfg.variant = _name_variant(cfg) or f"{family}_custom"
  return cfg


def _name_variant(cfg):
  """The VARIANTS name whose decoder has this config's shape (for logs and parameter tables)."""
  for name, (family, llm_variant, _, _) in variants.VARIANTS.items():
    ref = gemma.get_config(llm_variant)
    if family == cfg.family and all(ref[k] == cfg.llm[k] for k in ("width", "depth", "num_heads", "mlp_dim")):
      cfg.llm.variant = llm_variant
      return name
  return None


def hf_config(cfg):
  """transformers config (PaliGemmaConfig / Gemma3Config) describing a VLM config, for export."""
  import transformers  # pylint: disable=g-import-not-at-top
  s = vit.Model(**cfg.img.to_dict()).shape()
  vision = dict(hidden_size=s["width"], intermediate_size=s["mlp_dim"], num_hidden_layers=s["depth"],
                num_attention_heads=s["num_heads"], image_size=cfg.res, patch_size=s["patch_size"],
                layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh", vision_use_head=False)
  text = gemma.hf_text_config(cfg.llm)
  if cfg.family == "paligemma":
    text.update(num_image_tokens=(cfg.res // s["patch_size"]) ** 2)
    vision.update(projection_dim=cfg.llm.width)
    return transformers.PaliGemmaConfig(
        vision_config=vision, text_config=transformers.Gemma2Config(**text).to_dict(),
        image_token_index=cfg.llm.vocab_size, projection_dim=cfg.llm.width, hidden_size=cfg.llm.width,
        vocab_size=cfg.llm.vocab_size)
  return transformers.Gemma3Config(
      vision_config=vision, text_config=transformers.Gemma3TextConfig(**text).to_dict(),
      mm_tokens_per_image=cfg.mm_tokens_per_image, image_token_index=cfg.image_token_id,
      boi_token_index=cfg.boi_token_id, eoi_token_index=cfg.eoi_token_id)


def load_vlm_hf(path, cfg=None, shardings=None, dtype=None):
  """Loads a HF PaliGemma2 / Gemma3 directory. cfg defaults to `config_from_hf(path)`. Returns (cfg, params).

  dtype: param dtype override (e.g. "bfloat16"); defaults to cfg's param_dtype (float32).
  shardings: optional tree (like the params) of jax.sharding.Sharding to build each leaf directly on the mesh.
  """
  cfg = cfg or config_from_hf(path)
  abstract = vlm.abstract_params(cfg)
  if dtype is not None:
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, np.dtype(dtype)), abstract)
  return cfg, load_hf(path, vlm_rules(cfg), abstract, shardings, HF_ALIASES, HF_IGNORE)


def export_vlm_hf(path, cfg, params, dtype=None):
  """Writes a VLM as a HF directory (official key layout) that transformers' from_pretrained loads."""
  export_hf(path, params, vlm_rules(cfg), hf_config(cfg), dtype=dtype)
