"""Gemma 2 / Gemma 3 decoder: one implementation, a variant table, a KV cache.

Params (always stacked over layers, leading axis L, as big_vision's scanned layout):
  embedder/input_embedding [V, D]            final_norm/scale [D]
  layers/pre_attention_norm/scale [L, D]     layers/post_attention_norm/scale [L, D]
  layers/pre_ffw_norm/scale [L, D]           layers/post_ffw_norm/scale [L, D]
  layers/attn/q_einsum/w [L, N, D, H]        layers/attn/kv_einsum/w [L, 2, K, D, H]
  layers/attn/attn_vec_einsum/w [L, N, H, D]
  layers/attn/_query_norm/scale [L, H]       layers/attn/_key_norm/scale [L, H]   (Gemma3 only)
  layers/mlp/gating_einsum [L, 2, D, F]      layers/mlp/linear [L, F, D]

`scan_layers=True` runs the layers with `lax.scan` (the per-layer attention kind is a scanned
input); `False` unrolls them. The layout is the same either way. The KV cache keeps one
ring buffer of `min(sliding_window, max_len)` slots per sliding-window layer and `max_len`
slots per global layer, k/v as [B, K, S, H] (batch and kv-head leading, so attention reads the cache
as a batched matmul without a transpose copy); slots are addressed by position (slot = position % size).
`Model.prefill` fills a fresh cache from a prompt at the cost of a cache-free forward.

`dropout` > 0 is residual dropout as big_vision's Gemma: on the attention output (after the post-attention norm)
and on the MLP output (before the post-FFW norm), active only with `Model(...)(..., deterministic=False)` and a
"dropout" rng; each layer draws its own key (split from the one rng), scanned or unrolled.
"""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

_MASK = -2.3819763e38  # Logit of a masked key (as the reference Gemma code).

_FAMILIES = {
    "gemma2": dict(
        attn_pattern=("local", "global"), sliding_window=4096, attn_softcap=50.0,
        final_softcap=30.0, qk_norm=False, rope_local_base=10_000.0,
        rope_global_base=10_000.0, rope_global_scale=1.0),
    "gemma3": dict(
        attn_pattern=("local",) * 5 + ("global",), sliding_window=1024, attn_softcap=None,
        final_softcap=None, qk_norm=True, rope_local_base=10_000.0,
        rope_global_base=1_000_000.0, rope_global_scale=8.0),
}

# width D, depth L, mlp_dim F, num_heads N, num_kv_heads K, head_dim H, vocab V.
VARIANTS = {
    "gemma2_2b": dict(family="gemma2", width=2304, depth=26, mlp_dim=9216, num_heads=8,
                      num_kv_heads=4, head_dim=256, vocab_size=256_128),
    "gemma2_9b": dict(family="gemma2", width=3584, depth=42, mlp_dim=14_336, num_heads=16,
                      num_kv_heads=8, head_dim=256, vocab_size=256_128),
    "gemma2_27b": dict(family="gemma2", width=4608, depth=46, mlp_dim=36_864, num_heads=32,
                       num_kv_heads=16, head_dim=128, vocab_size=256_128,
                       query_pre_attn_scalar=4608 // 32),
    "gemma3_1b": dict(family="gemma3", width=1152, depth=26, mlp_dim=6912, num_heads=4,
                      num_kv_heads=1, head_dim=256, vocab_size=262_144, sliding_window=512,
                      rope_global_scale=1.0),
    "gemma3_4b": dict(family="gemma3", width=2560, depth=34, mlp_dim=10_240, num_heads=8,
                      num_kv_heads=4, head_dim=256, vocab_size=262_144),
    "gemma3_12b": dict(family="gemma3", width=3840, depth=48, mlp_dim=15_360, num_heads=16,
                       num_kv_heads=8, head_dim=256, vocab_size=262_144),
    "gemma3_27b": dict(family="gemma3", width=5376, depth=62, mlp_dim=21_504, num_heads=32,
                       num_kv_heads=16, head_dim=128, vocab_size=262_144,
                       query_pre_attn_scalar=5376 // 32),
    # Tiny variants for tests and the shapes world (window 8 so short sequences exercise it).
    "gemma2_tiny": dict(family="gemma2", width=64, depth=4, mlp_dim=128, num_heads=4,
                        num_kv_heads=2, head_dim=16, vocab_size=128, sliding_window=8,
                        query_pre_attn_scalar=24),
    "gemma3_tiny": dict(family="gemma3", width=64, depth=7, mlp_dim=128, num_heads=4,
                        num_kv_heads=2, head_dim=16, vocab_size=128, sliding_window=8,
                        rope_global_scale=8.0),
}

_DEFAULTS = dict(
    query_pre_attn_scalar=None,  # None: head_dim.
    norm_eps=1e-6,
    scan_layers=False,
    remat_policy="none",
    dropout=0.0,  # Residual dropout rate (training only: `deterministic=False`).
    dtype="float32",
    param_dtype="float32",
)

_REMAT_POLICIES = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def get_config(variant, **overrides):
  """The ConfigDict of a variant from `VARIANTS`, with field overrides."""
  if variant not in VARIANTS:
    raise ValueError(f"Unknown Gemma variant {variant!r}; known: {sorted(VARIANTS)}")
  spec = dict(VARIANTS[variant])
  cfg = dict(variant=variant, **_DEFAULTS)
  cfg.update(_FAMILIES[spec["family"]])
  cfg.update(spec)
  unknown = set(overrides) - set(cfg)
  if unknown:
    raise ValueError(f"Unknown Gemma config fields {sorted(unknown)}; known: {sorted(cfg)}")
  cfg.update(overrides)
  for cap in ("attn_softcap", "final_softcap"):  # 0 means no softcap, as big_vision's `final_logits_softcap=0.0`.
    cfg[cap] = cfg[cap] or None
  if cfg["query_pre_attn_scalar"] is None:
    cfg["query_pre_attn_scalar"] = cfg["head_dim"]
  if cfg["remat_policy"] != "none" and cfg["remat_policy"] not in _REMAT_POLICIES:
    raise ValueError(f"Unknown remat_policy {cfg['remat_policy']!r}; "
                     f"known: {['none', *_REMAT_POLICIES]}")
  if not 0.0 <= cfg["dropout"] < 1.0:
    raise ValueError(f"dropout must be in [0, 1), got {cfg['dropout']}")
  if cfg["num_heads"] % cfg["num_kv_heads"]:
    raise ValueError("num_heads must be a multiple of num_kv_heads")
  cfg["attn_pattern"] = tuple(cfg["attn_pattern"])
  return ml_collections.ConfigDict(cfg)


def attn_kinds(cfg):
  """Per-layer attention kind, 'local' (sliding window) or 'global', as a tuple of length L."""
  pattern = cfg.attn_pattern if cfg.sliding_window else ("global",)
  return tuple(pattern[i % len(pattern)] for i in range(cfg.depth))


def count_params(params):
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


# ----------------------------------------------------------------------------- pure math


def rms_norm(x, scale, eps=1e-6):
  """Gemma RMSNorm over the last axis, in float32, with a (1 + scale) gain."""
  dtype = x.dtype
  x = x.astype(jnp.float32)
  x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
  return (x * (1.0 + scale.astype(jnp.float32))).astype(dtype)


def apply_rope(x, positions, base, scale=1.0):
  """Rotary embedding (split-halves convention) of x [B, T, N, H] at positions [B, T]."""
  half = x.shape[-1] // 2
  inv_freq = 1.0 / (base ** (2.0 * jnp.arange(half, dtype=jnp.float32) / x.shape[-1]))
  angle = positions.astype(jnp.float32)[..., None] * (inv_freq / scale)  # [B, T, H/2]
  sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def softcap(x, cap):
  return x if cap is None else jnp.tanh(x / cap) * cap


def attend(q, k, v, mask, attn_softcap=None):
  """Grouped-query attention. q [B, T, N, H] (pre-scaled), k/v [B, K, S, H], mask [B, T, S]."""
  b, t, n, h = q.shape
  kh = k.shape[1]
  q = q.reshape(b, t, kh, n // kh, h)  # Query head n uses key head n // (N / K).
  # Scores accumulate and stay in float32 (no bf16 round trip before the softmax).
  logits = jnp.einsum("btkgh,bksh->bkgts", q, k, preferred_element_type=jnp.float32)
  logits = softcap(logits, attn_softcap)
  logits = jnp.where(mask[:, None, None], logits, _MASK)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  if t == 1:  # A decode step: [B, K, G, 1, H] is [B, 1, N, H] as it lies, and keeps XLA's CPU backend on its fast
    return jnp.einsum("bkgts,bksh->bkgth", probs, v).reshape(b, t, n, h)  # matmul path ([B, 1, K, G, H] does not).
  return jnp.einsum("bkgts,bksh->btkgh", probs, v).reshape(b, t, n, h)


def heads_first(x):
  """[B, T, K, H] -> [B, K, T, H], the cache layout."""
  return jnp.swapaxes(x, 1, 2)


def window_mask(q_pos, k_pos, window):
  """[B, T, S] True where |q_pos - k_pos| < window.

  Under a causal mask this is transformers' sliding window. Pairs that look ahead (a bidirectional image or prefix
  block) are banded too, where transformers lets a block see across the window; the two agree whenever each
  bidirectional block fits in the window (Gemma3's 256-token images in its 1024 window). PaliGemma2 runs without a
  window by default, as big_vision (see models/vlm.py).
  """
  return jnp.abs(q_pos[:, :, None] - k_pos[:, None, :]) < window


def cache_slots(positions, valid, size):
  """Cache slot of each new token [B, T]; `size` (dropped on write) for tokens not written.

  Slots are position % size; when a chunk holds more than `size` valid tokens only the
  last `size` positions are kept, so no two written tokens share a slot.
  """
  last = jnp.max(jnp.where(valid, positions, -1), axis=1, keepdims=True)
  keep = valid & (positions >= 0) & (positions > last - size)
  return jnp.where(keep, positions % size, size)


def _write(buf, slots, new):
  """Writes new [B, T, ...] at slots [B, T] of buf [B, S, ...] (slot S: dropped)."""
  b = jnp.arange(buf.shape[0])[:, None]
  return buf.at[b, slots].set(new.astype(buf.dtype), mode="drop")


def _write_kv(buf, slots, new):
  """Writes new [B, T, K, H] at slots [B, T] of a cache buffer [B, K, S, H] (slot S: dropped), in place."""
  b = jnp.arange(buf.shape[0])[:, None]
  # Advanced indices split by a slice: the update is indexed [B, T, K, H], as `new` already is.
  return buf.at[b, :, slots].set(new.astype(buf.dtype), mode="drop")


def init_cache(cfg, batch, max_len, dtype=None):
  """Empty KV cache: per layer k/v [B, K, S_l, H] and the position held by each slot (-1: empty)."""
  dtype = jnp.dtype(dtype or cfg.dtype)
  kinds = attn_kinds(cfg)
  local_len = min(cfg.sliding_window, max_len) if cfg.sliding_window else max_len
  layers = []
  for kind in kinds:
    s = local_len if kind == "local" else max_len
    shape = (batch, cfg.num_kv_heads, s, cfg.head_dim)
    layers.append(dict(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype)))
  return dict(layers=layers,
              pos_global=jnp.full((batch, max_len), -1, jnp.int32),
              pos_local=jnp.full((batch, local_len), -1, jnp.int32))


def dropout(x, rate, rng):
  """Inverted dropout of every element (as flax `nn.Dropout`): kept values are scaled by 1 / (1 - rate)."""
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jax.lax.select(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


# Up to this many rows, CPU matmuls read an out-major weight fastest as the left operand (w [F, D] @ h.T [D, rows]).
# On a 2-core AVX2 CPU, with weights read from memory (`tools/bench_matmul_layout`, docs/gpu.md 2026-12-07): 1.9-3.4x
# faster than h @ w[D, F] from 8 to 32 rows, within the run-to-run noise of both other forms from 64 to 256, and a
# 512-row prefill ran 14% slower that way. On accelerators the plain product is used.
_WEIGHT_LEFT_MAX_ROWS = 128


def out_major_matmul(h, w):
  """h [..., D] times an out-major weight w [F..., D] -> [..., F...] (`decode_layers`' weights, the embedding table).

  On CPU with few rows (decode steps) it is computed as w @ h.T, the small [F, rows] product then
  transposed back; an optimization barrier keeps XLA from folding that transpose into the dot (which would turn it
  back into h @ w.T, the slower kernel for weights read from memory).
  """
  w2 = w.reshape(-1, w.shape[-1])
  rows = h.reshape(-1, h.shape[-1])
  if rows.shape[0] <= _WEIGHT_LEFT_MAX_ROWS and jax.default_backend() == "cpu":
    out = jax.lax.optimization_barrier(w2 @ rows.T).T
  else:
    out = jnp.einsum("rd,fd->rf", rows, w2)
  return out.reshape(*h.shape[:-1], *w.shape[:-1])


def _layer(p, x, positions, local, cfg, mask_fn, rng=None):
  """One decoder layer. `mask_fn(k, v) -> (k_all, v_all, mask)` says what the queries see: the new k/v
  [B, T, K, H] in, the keys/values attended [B, K, S, H] and mask [B, T, S] out.

  `local` may be a Python bool or a traced scalar (scan). x [B, T, D] -> [B, T, D]. `rng`: this layer's dropout
  key, or None for no dropout (then the computation is exactly the dropout-free one).
  """
  if rng is not None:
    rng_attn, rng_ffw = jax.random.split(rng)
    drop_attn = lambda a: dropout(a, cfg.dropout, rng_attn)
    drop_ffw = lambda a: dropout(a, cfg.dropout, rng_ffw)
  else:
    drop_attn = drop_ffw = lambda a: a
  dtype = jnp.dtype(cfg.dtype)
  w = lambda a: a.astype(dtype)
  decode_layout = "q" in p["attn"]  # `decode_layers`' weights, else the checkpoint layout.
  h = rms_norm(x, p["pre_attention_norm"]["scale"], cfg.norm_eps)
  if decode_layout:
    q, k, v = (out_major_matmul(h, p["attn"][name]) for name in ("q", "k", "v"))
  else:
    q = jnp.einsum("btd,ndh->btnh", h, w(p["attn"]["q_einsum"]["w"]))
    k, v = jnp.einsum("btd,ckdh->cbtkh", h, w(p["attn"]["kv_einsum"]["w"]))
  if cfg.qk_norm:
    q = rms_norm(q, p["attn"]["_query_norm"]["scale"], cfg.norm_eps)
    k = rms_norm(k, p["attn"]["_key_norm"]["scale"], cfg.norm_eps)
  base = jnp.where(local, cfg.rope_local_base, cfg.rope_global_base)
  scale = jnp.where(local, 1.0, cfg.rope_global_scale)
  q = apply_rope(q, positions, base, scale) * jnp.asarray(
      cfg.query_pre_attn_scalar ** -0.5, dtype)
  k = apply_rope(k, positions, base, scale)
  k_all, v_all, mask = mask_fn(k, v)
  o = attend(q, k_all, v_all, mask, cfg.attn_softcap)
  if decode_layout:
    o = out_major_matmul(o.reshape(*o.shape[:2], -1), p["attn"]["out"])
  else:
    o = jnp.einsum("btnh,nhd->btd", o, w(p["attn"]["attn_vec_einsum"]["w"]))
  x = x + drop_attn(rms_norm(o, p["post_attention_norm"]["scale"], cfg.norm_eps))

  h = rms_norm(x, p["pre_ffw_norm"]["scale"], cfg.norm_eps)
  if decode_layout:
    gate, up = out_major_matmul(h, p["mlp"]["gate"]), out_major_matmul(h, p["mlp"]["up"])
  else:
    gate, up = jnp.einsum("btd,cdf->cbtf", h, w(p["mlp"]["gating_einsum"]))
  h = jax.nn.gelu(gate, approximate=True) * up
  # Before the post-FFW norm, as big_vision.
  h = drop_ffw(out_major_matmul(h, p["mlp"]["down"]) if decode_layout else h @ w(p["mlp"]["linear"]))
  return x + rms_norm(h, p["post_ffw_norm"]["scale"], cfg.norm_eps)


def decode_layers(params, cfg):
  """Per-layer weights laid out for a decode loop (one token per row): a tuple of L trees, made once before it.

  Every matmul weight is split out and made out-major, [outputs..., D_in], in the compute dtype: attn/q [N, H, D],
  attn/k and attn/v [K, H, D], attn/out [D, N H], mlp/gate and mlp/up [F, D], mlp/down [D, F]. Each is read in
  place as one [outputs, D_in] matrix (`out_major_matmul`), the layout CPU kernels read fastest for few rows, with
  the sharded axis (heads, MLP) still the major one of q/k/v/gate/up, so tensor-sharded weights need no resharding
  in the loop. The price is one copy of the matmul weights for the loop's lifetime (in place of the compute-dtype
  cast when the params are wider). `_layer` takes either layout.
  """
  dtype = jnp.dtype(cfg.dtype)
  lay = lambda a, axes: jnp.transpose(a, axes).astype(dtype)

  def layer(p):
    a, m = p["attn"], p["mlp"]
    attn = {k: v for k, v in a.items() if k.startswith("_")}  # qk norms.
    kv = a["kv_einsum"]["w"]
    attn.update(q=lay(a["q_einsum"]["w"], (0, 2, 1)), k=lay(kv[0], (0, 2, 1)), v=lay(kv[1], (0, 2, 1)),
                out=lay(a["attn_vec_einsum"]["w"], (2, 0, 1)).reshape(cfg.width, -1))
    mlp = dict(gate=lay(m["gating_einsum"][0], (1, 0)), up=lay(m["gating_einsum"][1], (1, 0)),
               down=lay(m["linear"], (1, 0)))
    return {**p, "attn": attn, "mlp": mlp}

  layers = params["layers"]
  return tuple(layer(jax.tree.map(lambda a, i=i: a[i], layers)) for i in range(cfg.depth))


def compute_params(params, cfg):
  """params with every matmul weight cast to the compute dtype `cfg.dtype` (norm scales left as they are).

  The layers cast their weights at each use; a decode loop that runs them hundreds of times reads float32
  weights twice over unless they are cast once before the loop (the result is the same: casts are elementwise).
  """
  dtype = jnp.dtype(cfg.dtype)

  def cast(path, a):
    narrower = jnp.issubdtype(a.dtype, jnp.floating) and a.dtype.itemsize > dtype.itemsize
    return a.astype(dtype) if narrower and "scale" not in jax.tree_util.keystr(path) else a
  return jax.tree_util.tree_map_with_path(cast, params)


def _layer_params(layers, i):
  if isinstance(layers, tuple):
    return layers[i]
  return jax.tree.map(lambda a: a[i], layers)


def _init_layers(rng, cfg):
  """Stacked layer params [L, ...] (norm scales start at 0, i.e. gain 1)."""
  L, D, F = cfg.depth, cfg.width, cfg.mlp_dim
  N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  dt = jnp.dtype(cfg.param_dtype)
  r = iter(jax.random.split(rng, 5))
  normal = lambda shape, fan_in: (jax.random.normal(next(r), shape) / math.sqrt(fan_in)).astype(dt)
  zeros = lambda n: jnp.zeros((L, n), dt)
  attn = dict(q_einsum=dict(w=normal((L, N, D, H), D)),
              kv_einsum=dict(w=normal((L, 2, K, D, H), D)),
              attn_vec_einsum=dict(w=normal((L, N, H, D), N * H)))
  if cfg.qk_norm:
    attn["_query_norm"] = dict(scale=zeros(H))
    attn["_key_norm"] = dict(scale=zeros(H))
  return dict(
      pre_attention_norm=dict(scale=zeros(D)), post_attention_norm=dict(scale=zeros(D)),
      pre_ffw_norm=dict(scale=zeros(D)), post_ffw_norm=dict(scale=zeros(D)),
      attn=attn,
      mlp=dict(gating_einsum=normal((L, 2, D, F), D), linear=normal((L, F, D), F)))


# ----------------------------------------------------------------------------- modules


class Model(nn.Module):
  """Gemma decoder. `config` is a ConfigDict from `get_config`."""
  config: ml_collections.ConfigDict

  def setup(self):
    cfg = self.config
    dt = jnp.dtype(cfg.param_dtype)
    # std 1/sqrt(D): embeddings scaled by sqrt(D) enter the residual stream at unit scale.
    self.embedder = self.param("embedder", lambda rng: dict(input_embedding=(jax.random.normal(
        rng, (cfg.vocab_size, cfg.width)) / math.sqrt(cfg.width)).astype(dt)))
    self.layers = self.param("layers", functools.partial(_init_layers, cfg=cfg))
    self.final_norm = self.param("final_norm", lambda rng: dict(scale=jnp.zeros(cfg.width, dt)))

  def embed_tokens(self, tokens):
    """tokens [B, T] int -> [B, T, D], scaled by sqrt(D) in the compute dtype.

    As transformers (`torch.tensor(D ** 0.5, dtype=hidden.dtype)`) and big_vision / the Gemma reference
    (`jnp.sqrt(D).astype(x.dtype)`): exact in float32, rounded through bf16 only when computing in bf16.
    """
    cfg = self.config
    x = self.embedder["input_embedding"][tokens].astype(cfg.dtype)
    return x * jnp.asarray(math.sqrt(cfg.width), cfg.dtype)

  def unembed(self, x, out_major=False):
    """Final-normed hidden [B, T, D] -> float32 logits [B, T, V] (tied embedding, softcap). `out_major`: as the
    decode layout's matmuls (`out_major_matmul`), for the sampler's calls."""
    table = self.embedder["input_embedding"].astype(x.dtype)
    logits = out_major_matmul(x, table) if out_major else jnp.einsum("btd,vd->btv", x, table)
    logits = logits.astype(jnp.float32)
    return softcap(logits, self.config.final_softcap)

  def init_cache(self, batch, max_len, dtype=None):
    return init_cache(self.config, batch, max_len, dtype)

  def __call__(self, x, positions, attn_mask, cache=None, return_hidden=False, layers=None,
               deterministic=True):
    """Runs the decoder on input embeddings.

    Args:
      x: [B, T, D] input embeddings (e.g. from `embed_tokens` or a VLM's `embed_prompt`).
      positions: [B, T] int32 RoPE positions.
      attn_mask: [B, T, T] bool, which new tokens each new token attends to (padding rows and
        columns False). With a cache, new tokens also attend to every cached token at an
        earlier position (causal; within the window on local layers), and a new token is
        written to the cache iff it attends to itself (attn_mask[b, t, t]).
      cache: None, or a cache from `init_cache` (slot = position % slots).
      return_hidden: return the final-normed hidden states [B, T, D] instead of logits.
      layers: optional `decode_layers(params)` of these params (made once, before a decode loop).
      deterministic: False applies `config.dropout` (needs a "dropout" rng); True (default) disables it.

    Returns:
      (logits [B, T, V] float32 or hidden [B, T, D], new cache or None).
    """
    cfg = self.config
    x = x.astype(cfg.dtype)
    kinds = attn_kinds(cfg)
    decode = layers is not None  # The sampler's calls, with `decode_layers`.
    layers = self.layers if layers is None else layers
    rngs = None  # One dropout key per layer, or None: no dropout.
    if not deterministic and cfg.dropout > 0:
      rngs = jax.random.split(self.make_rng("dropout"), cfg.depth)
    if cache is None:
      x = self._run_layers(x, positions, attn_mask, kinds, layers, rngs)
      new_cache = None
    else:
      x, new_cache = self._run_layers_cached(x, positions, attn_mask, kinds, cache, layers, rngs)
    x = rms_norm(x, self.final_norm["scale"], cfg.norm_eps)
    if return_hidden:
      return x, new_cache
    return self.unembed(x, out_major=decode), new_cache

  def prefill(self, x, positions, attn_mask, cache_len, cache_dtype=None, return_hidden=False, layers=None):
    """A prompt's forward pass and the fresh cache it fills, for `cache_len` positions in all.

    Same result as `__call__` with an empty `init_cache(B, cache_len)`, at the cost of a cache-free forward:
    attention spans the T prompt tokens only (not the empty cache slots too), and each layer's k/v are then
    written into the cache. x [B, T, D], positions [B, T], attn_mask [B, T, T] and `layers` as `__call__`.

    Returns:
      (logits [B, T, V] float32 or hidden [B, T, D], cache).
    """
    cfg = self.config
    x = x.astype(cfg.dtype)
    kinds = attn_kinds(cfg)
    decode = layers is not None  # The sampler's calls, with `decode_layers`.
    layers = self.layers if layers is None else layers
    x, kv = self._run_layers(x, positions, attn_mask, kinds, layers, collect_kv=True)
    cache = init_cache(cfg, x.shape[0], cache_len, cache_dtype)
    valid = jnp.diagonal(attn_mask, axis1=1, axis2=2)
    slots = {}
    for kind, key in (("local", "pos_local"), ("global", "pos_global")):
      slots[kind] = cache_slots(positions, valid, cache[key].shape[1])
      cache[key] = _write(cache[key], slots[kind], positions)
    for i, kind in enumerate(kinds):
      entry = cache["layers"][i]
      k, v = kv[0][i], kv[1][i]
      cache["layers"][i] = dict(k=_write_kv(entry["k"], slots[kind], k),
                                v=_write_kv(entry["v"], slots[kind], v))
    x = rms_norm(x, self.final_norm["scale"], cfg.norm_eps)
    return (x if return_hidden else self.unembed(x, out_major=decode)), cache

  def _run_layers(self, x, positions, attn_mask, kinds, layers, rngs=None, collect_kv=False):
    """Cache-free layers -> x, or (x, (k [L][B, T, K, H], v [L][...])) with `collect_kv`."""
    cfg = self.config
    local_mask = attn_mask & window_mask(positions, positions, cfg.sliding_window or 1)

    def body(x, p_local_rng):
      p, local, rng = p_local_rng
      mask = jnp.where(local, local_mask, attn_mask)
      kv = {}

      def mask_fn(k, v):
        kv.update(k=k, v=v)
        return heads_first(k), heads_first(v), mask

      x = _layer(p, x, positions, local, cfg, mask_fn, rng)
      return x, ((kv["k"], kv["v"]) if collect_kv else None)

    if cfg.remat_policy != "none":
      body = jax.checkpoint(body, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
    is_local = np.array([k == "local" for k in kinds])
    if cfg.scan_layers and not isinstance(layers, tuple):
      x, kv = jax.lax.scan(body, x, (layers, jnp.asarray(is_local), rngs))
    else:
      kv = []
      for i, local in enumerate(is_local):
        x, kv_i = body(x, (_layer_params(layers, i), bool(local), None if rngs is None else rngs[i]))
        kv.append(kv_i)
      kv = (tuple(k for k, _ in kv), tuple(v for _, v in kv)) if collect_kv else None
    return (x, kv) if collect_kv else x

  def _run_layers_cached(self, x, positions, attn_mask, kinds, cache, layers, rngs=None):
    """Unrolled layers with a cache (each layer's cache has its own length)."""
    cfg = self.config
    t = x.shape[1]
    valid = jnp.diagonal(attn_mask, axis1=1, axis2=2)  # [B, T] tokens written to the cache.
    new_cache = dict(layers=[])
    views = {}
    for kind, key in (("local", "pos_local"), ("global", "pos_global")):
      old_pos = cache[key]
      slots = cache_slots(positions, valid, old_pos.shape[1])
      new_pos = _write(old_pos, slots, positions)
      new_cache[key] = new_pos
      window = cfg.sliding_window if kind == "local" else None
      if t == 1:
        # Decode step: write first, then attend over the cache alone (no concatenation copy).
        mask = (new_pos[:, None, :] >= 0) & (new_pos[:, None, :] <= positions[:, :, None])
        if window:
          mask &= window_mask(positions, new_pos, window)
      else:
        # Chunk: attend over [old cache; new tokens] with the caller's mask for the new tokens,
        # then write; this works even when the chunk is longer than a ring buffer.
        old = (old_pos[:, None, :] >= 0) & (old_pos[:, None, :] < positions[:, :, None])
        new = attn_mask
        if window:
          old &= window_mask(positions, old_pos, window)
          new = new & window_mask(positions, positions, window)
        mask = jnp.concatenate([old, new], axis=-1)
      views[kind] = (slots, mask)

    for i, kind in enumerate(kinds):
      entry = cache["layers"][i]
      slots, mask = views[kind]

      written = {}

      def mask_fn(k, v, entry=entry, slots=slots, mask=mask, written=written):
        written.update(k=_write_kv(entry["k"], slots, k), v=_write_kv(entry["v"], slots, v))
        if t == 1:
          return written["k"], written["v"], mask
        cat = lambda old, new: jnp.concatenate([old, heads_first(new).astype(old.dtype)], 2)
        return cat(entry["k"], k), cat(entry["v"], v), mask

      x = _layer(_layer_params(layers, i), x, positions, kind == "local", cfg, mask_fn,
                 None if rngs is None else rngs[i])
      new_cache["layers"].append(written)
    return x, new_cache


# ----------------------------------------------------------------------------- HF conversion

# Ours (per layer) <- transformers, with the transform from the HF tensor.
_HF_NORMS = {
    "pre_attention_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
    "pre_ffw_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
}


def _hf_layer_to_ours(get, cfg, i):
  N, K, H, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.width
  a = f"layers.{i}.self_attn."
  out = {ours: dict(scale=get(f"layers.{i}.{hf}.weight")) for ours, hf in _HF_NORMS.items()}
  kv = [get(a + f"{n}_proj.weight").reshape(K, H, D).transpose(0, 2, 1) for n in "kv"]
  out["attn"] = dict(
      q_einsum=dict(w=get(a + "q_proj.weight").reshape(N, H, D).transpose(0, 2, 1)),
      kv_einsum=dict(w=np.stack(kv)),
      attn_vec_einsum=dict(w=get(a + "o_proj.weight").T.reshape(N, H, D)))
  if cfg.qk_norm:
    out["attn"]["_query_norm"] = dict(scale=get(a + "q_norm.weight"))
    out["attn"]["_key_norm"] = dict(scale=get(a + "k_norm.weight"))
  m = f"layers.{i}.mlp."
  out["mlp"] = dict(
      gating_einsum=np.stack([get(m + "gate_proj.weight").T, get(m + "up_proj.weight").T]),
      linear=get(m + "down_proj.weight").T)
  return out


def params_from_hf(state_dict, cfg, prefix="model."):
  """transformers Gemma2/Gemma3 text-decoder tensors -> our params (numpy, stacked layers).

  Args:
    state_dict: mapping name -> array-like (torch tensors or numpy), e.g. a safetensors dict.
    cfg: our config (`get_config`), giving the shapes.
    prefix: prefix of the decoder keys: "model." (Gemma2/3ForCausalLM),
      "model.language_model." or "language_model.model." (VLM checkpoints).

  Extra vocabulary rows (padded vocab) beyond cfg.vocab_size are dropped. Raises KeyError
  naming a missing tensor, ValueError on a shape mismatch.
  """
  def get(name):
    key = prefix + name
    if key not in state_dict:
      raise KeyError(f"Missing tensor {key!r} in the checkpoint")
    t = state_dict[key]
    t = t.float().numpy() if hasattr(t, "numpy") and hasattr(t, "float") else np.asarray(t)
    return t

  expected = jax.eval_shape(
      lambda: Model(cfg).init(jax.random.key(0), jnp.zeros((1, 1, cfg.width)),
                              jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1, 1), bool)))["params"]

  def check(tree, want_tree, where, drop_axis=False):
    for (path, want), got in zip(jax.tree_util.tree_flatten_with_path(want_tree)[0],
                                 jax.tree.leaves(tree)):
      want = tuple(want.shape[1:] if drop_axis else want.shape)
      if want != got.shape:
        raise ValueError(f"Shape mismatch for {where}{jax.tree_util.keystr(path)}: checkpoint "
                         f"{got.shape}, model {want}")
    return tree

  layers = [check(_hf_layer_to_ours(get, cfg, i), expected["layers"], f"layer {i} ", True)
            for i in range(cfg.depth)]
  params = dict(
      embedder=dict(input_embedding=get("embed_tokens.weight")[:cfg.vocab_size]),
      layers=jax.tree.map(lambda *xs: np.stack(xs), *layers),
      final_norm=dict(scale=get("norm.weight")))
  return check(params, expected, "")


def params_to_hf(params, cfg, prefix="model."):
  """Inverse of `params_from_hf`: our params -> dict name -> numpy float32 array."""
  N, K, H, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.width
  p = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
  out = {prefix + "embed_tokens.weight": p["embedder"]["input_embedding"],
         prefix + "norm.weight": p["final_norm"]["scale"]}
  for i in range(cfg.depth):
    l = jax.tree.map(lambda a, i=i: a[i], p["layers"])
    for ours, hf in _HF_NORMS.items():
      out[f"{prefix}layers.{i}.{hf}.weight"] = l[ours]["scale"]
    a = f"{prefix}layers.{i}.self_attn."
    out[a + "q_proj.weight"] = l["attn"]["q_einsum"]["w"].transpose(0, 2, 1).reshape(N * H, D)
    for j, n in enumerate("kv"):
      out[a + f"{n}_proj.weight"] = l["attn"]["kv_einsum"]["w"][j].transpose(0, 2, 1).reshape(K * H, D)
    out[a + "o_proj.weight"] = l["attn"]["attn_vec_einsum"]["w"].reshape(N * H, D).T
    if cfg.qk_norm:
      out[a + "q_norm.weight"] = l["attn"]["_query_norm"]["scale"]
      out[a + "k_norm.weight"] = l["attn"]["_key_norm"]["scale"]
    m = f"{prefix}layers.{i}.mlp."
    out[m + "gate_proj.weight"] = l["mlp"]["gating_einsum"][0].T
    out[m + "up_proj.weight"] = l["mlp"]["gating_einsum"][1].T
    out[m + "down_proj.weight"] = l["mlp"]["linear"].T
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def hf_text_config(cfg):
  """kwargs for transformers Gemma2Config / Gemma3TextConfig matching our config."""
  if cfg.family == "gemma3" and cfg.attn_softcap:
    raise ValueError("transformers' Gemma3 ignores attn_logit_softcapping: a Gemma3 config with attn_softcap "
                     f"({cfg.attn_softcap}) has no transformers equivalent")
  kw = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.width, intermediate_size=cfg.mlp_dim,
            num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
            query_pre_attn_scalar=cfg.query_pre_attn_scalar, rms_norm_eps=cfg.norm_eps,
            # Without a window every layer is full attention; transformers still wants a positive one (unused).
            hidden_activation="gelu_pytorch_tanh", sliding_window=cfg.sliding_window or 4096,
            final_logit_softcapping=cfg.final_softcap, attn_logit_softcapping=cfg.attn_softcap,
            layer_types=[f"{'sliding' if k == 'local' else 'full'}_attention" for k in attn_kinds(cfg)])
  if cfg.family == "gemma3":
    kw["rope_parameters"] = dict(
        sliding_attention=dict(rope_type="default", rope_theta=cfg.rope_local_base),
        full_attention=(dict(rope_type="linear", factor=cfg.rope_global_scale,
                             rope_theta=cfg.rope_global_base) if cfg.rope_global_scale != 1.0
                        else dict(rope_type="default", rope_theta=cfg.rope_global_base)))
  else:
    kw["rope_parameters"] = dict(rope_type="default", rope_theta=cfg.rope_global_base)
  return kw


def random_params(cfg, seed=0, norm_std=0.1):
  """Random numpy params (std 1/sqrt(fan-in), non-zero norm gains) for tests and benchmarks.

  Drawn with numpy from `eval_shape`, so no XLA compilation is needed.
  """
  shapes = jax.eval_shape(lambda: Model(cfg).init(
      jax.random.key(0), jnp.zeros((1, 1, cfg.width)), jnp.zeros((1, 1), jnp.int32),
      jnp.ones((1, 1, 1), bool)))["params"]
  fan_in = dict(attn_vec_einsum=cfg.num_heads * cfg.head_dim, linear=cfg.mlp_dim)
  rng = np.random.default_rng(seed)

  def draw(path, a):
    name = jax.tree_util.keystr(path)
    std = norm_std if "scale" in name else 1 / math.sqrt(
        next((v for k, v in fan_in.items() if k in name), cfg.width))
    return rng.normal(0, std, a.shape).astype(a.dtype)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def hf_text_model(cfg, params):
  """A transformers Gemma2ForCausalLM / Gemma3ForCausalLM (fp32, eager, eval) holding `params`."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  if cfg.family == "gemma2":
    config, cls = transformers.Gemma2Config, transformers.Gemma2ForCausalLM
  else:
    config, cls = transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM
  model = cls(config(**hf_text_config(cfg), attn_implementation="eager")).eval()
  state = {k: torch.tensor(v) for k, v in params_to_hf(params, cfg).items()}
  state["lm_head.weight"] = state["model.embed_tokens.weight"]
  missing, unexpected = model.load_state_dict(state, strict=False)
  if missing or unexpected:
    raise ValueError(f"HF state mismatch: missing {missing}, unexpected {unexpected}")
  return model
