"""Gemma decoder: variant table, parameter counts, scan/remat/cache consistency."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from auditdm_jax import sampling
from auditdm_jax.models import gemma


def _shape_params(cfg):
  model = gemma.Model(cfg)
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 1, cfg.width)), jnp.zeros((1, 1), jnp.int32),
      jnp.ones((1, 1, 1), bool)))["params"]


@pytest.mark.parametrize("variant,expected", [
    # By hand: V*D + L*(2*N*D*H + 2*K*D*H + 3*D*F + 4*D [+ 2*H qk-norm]) + D.
    ("gemma2_2b", 256_128 * 2304 + 26 * (2 * 8 * 2304 * 256 + 2 * 4 * 2304 * 256
                                         + 3 * 2304 * 9216 + 4 * 2304) + 2304),  # 2.61B
    ("gemma3_1b", 999_885_952),  # The published Gemma 3 1B count.
    ("gemma3_4b", 262_144 * 2560 + 34 * (2 * 8 * 2560 * 256 + 2 * 4 * 2560 * 256
                                         + 3 * 2560 * 10_240 + 4 * 2560 + 2 * 256) + 2560),  # 3.88B
])
def test_param_count_real_variants(variant, expected):
  cfg = gemma.get_config(variant, scan_layers=True)
  assert gemma.count_params(_shape_params(cfg)) == expected


def test_param_layout_and_shapes():
  cfg = gemma.get_config("gemma3_4b")
  p = _shape_params(cfg)
  assert p["embedder"]["input_embedding"].shape == (262_144, 2560)
  assert p["layers"]["attn"]["q_einsum"]["w"].shape == (34, 8, 2560, 256)
  assert p["layers"]["attn"]["kv_einsum"]["w"].shape == (34, 2, 4, 2560, 256)
  assert p["layers"]["attn"]["_query_norm"]["scale"].shape == (34, 256)
  assert p["layers"]["mlp"]["gating_einsum"].shape == (34, 2, 2560, 10_240)
  assert "_query_norm" not in _shape_params(gemma.get_config("gemma2_2b"))["layers"]["attn"]


def test_variant_table():
  assert gemma.get_config("gemma2_27b").query_pre_attn_scalar == 144
  assert gemma.get_config("gemma3_27b").query_pre_attn_scalar == 168
  assert gemma.get_config("gemma3_12b").query_pre_attn_scalar == 256
  kinds = gemma.attn_kinds(gemma.get_config("gemma3_4b"))
  assert kinds[:6] == ("local",) * 5 + ("global",) and kinds.count("global") == 5
  assert gemma.attn_kinds(gemma.get_config("gemma2_9b"))[:2] == ("local", "global")
  assert gemma.get_config("gemma3_1b").sliding_window == 512
  assert gemma.get_config("gemma3_1b").rope_global_scale == 1.0
  assert gemma.get_config("gemma3_4b").rope_global_scale == 8.0
  assert gemma.attn_kinds(gemma.get_config("gemma2_2b", sliding_window=None)) == ("global",) * 26
  # 0 is "no softcap", as big_vision's final_logits_softcap=0.0 (the PaliGemma2 transfers).
  assert gemma.get_config("gemma2_2b", final_softcap=0.0).final_softcap is None
  with pytest.raises(ValueError, match="Unknown Gemma variant"):
    gemma.get_config("gemma9_1b")
  with pytest.raises(ValueError, match="Unknown Gemma config fields"):
    gemma.get_config("gemma2_2b", widht=3)


def _inputs(cfg, b=2, t=20, seed=0):
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (b, t)))
  input_mask = np.ones((b, t), bool)
  input_mask[1, 13:] = False  # Right padding.
  attn_mask, positions = sampling.causal_prompt(input_mask)
  return tokens, attn_mask, positions, input_mask


@pytest.mark.parametrize("variant", ["gemma3_tiny"])  # Mixed local/global layers under scan.
def test_scan_remat_bf16_match_unrolled(variant):
  cfg = gemma.get_config(variant)
  params = gemma.random_params(cfg)
  tokens, attn_mask, positions, valid = _inputs(cfg)

  def logits(**overrides):
    c = gemma.get_config(variant, **overrides)
    m = gemma.Model(c)
    fwd = jax.jit(lambda p: m.apply(
        {"params": p}, m.apply({"params": p}, tokens, method=m.embed_tokens), positions, attn_mask)[0])
    return np.asarray(fwd(params))[valid]

  ref = logits()
  np.testing.assert_allclose(logits(scan_layers=True), ref, atol=1e-5)
  np.testing.assert_allclose(logits(scan_layers=True, remat_policy="nothing_saveable"), ref,
                             atol=1e-5)
  low = logits(dtype="bfloat16")
  assert np.isfinite(low).all() and np.abs(low - ref).max() < 0.25 * np.abs(ref).max()


def test_scan_remat_gradients_match():
  cfg = gemma.get_config("gemma2_tiny")
  params = gemma.random_params(cfg)
  tokens, attn_mask, positions, _ = _inputs(cfg)

  def grads(**overrides):
    m = gemma.Model(gemma.get_config("gemma2_tiny", **overrides))
    def loss(p):
      x = m.apply({"params": p}, tokens, method=m.embed_tokens)
      return jnp.mean(m.apply({"params": p}, x, positions, attn_mask)[0] ** 2)
    return jax.jit(jax.grad(loss))(params)

  ref, got = grads(), grads(scan_layers=True, remat_policy="dots_saveable")
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["gemma2_tiny", "gemma3_tiny"])
def test_cache_chunks_and_steps_match_full_forward(variant):
  """Prefill chunks longer than the ring buffer, then single steps, equal the cache-free pass."""
  cfg = gemma.get_config(variant)  # sliding_window 8
  params = gemma.random_params(cfg)
  model = gemma.Model(cfg)
  tokens, attn_mask, positions, valid = _inputs(cfg, t=24)
  x = model.apply({"params": params}, tokens, method=model.embed_tokens)
  apply = jax.jit(model.apply)
  full = np.asarray(apply({"params": params}, x, positions, attn_mask)[0])
  cache = gemma.init_cache(cfg, 2, 32)
  assert cache["layers"][0]["k"].shape == (2, cfg.num_kv_heads, 8, cfg.head_dim)  # Ring.
  assert cache["layers"][1]["k"].shape == (2, cfg.num_kv_heads, 32, cfg.head_dim) or (
      cfg.family == "gemma3")
  outs = []
  for start, end in [(0, 11), (11, 20)] + [(t, t + 1) for t in range(20, 24)]:
    out, cache = apply({"params": params}, x[:, start:end], positions[:, start:end],
                             attn_mask[:, start:end, start:end], cache)
    outs.append(np.asarray(out))
  np.testing.assert_allclose(np.concatenate(outs, 1)[valid], full[valid], atol=2e-5)


def test_hidden_and_unembed():
  cfg = gemma.get_config("gemma2_tiny")
  params = gemma.random_params(cfg)
  model = gemma.Model(cfg)
  tokens, attn_mask, positions, _ = _inputs(cfg)
  x = model.apply({"params": params}, tokens, method=model.embed_tokens)
  apply = jax.jit(model.apply, static_argnames="return_hidden")
  logits, _ = apply({"params": params}, x, positions, attn_mask)
  hidden, _ = apply({"params": params}, x, positions, attn_mask, return_hidden=True)
  assert hidden.shape == (2, 20, cfg.width)
  np.testing.assert_allclose(model.apply({"params": params}, hidden, method=model.unembed), logits,
                             atol=1e-6)
  assert np.abs(logits).max() <= cfg.final_softcap


def test_window_mask_is_a_symmetric_band():
  pos = jnp.arange(6)[None]
  band = np.asarray(gemma.window_mask(pos, pos, 3))[0]
  expected = np.abs(np.arange(6)[:, None] - np.arange(6)[None, :]) < 3
  np.testing.assert_array_equal(band, expected)
  # A bidirectional prefix longer than the window sees at most window-1 tokens ahead, as in big_vision.
  assert band[0, 2] and not band[0, 3]


@pytest.mark.parametrize("scan_layers", [False, True])
def test_dropout(scan_layers):
  """dropout > 0 acts only with deterministic=False; per-rng reproducible; a no-op otherwise (bitwise)."""
  variant = "gemma3_tiny"  # Mixed local/global layers.
  params = gemma.random_params(gemma.get_config(variant))
  tokens, attn_mask, positions, valid = _inputs(gemma.get_config(variant))

  def logits(rate, deterministic, seed=0, **overrides):
    m = gemma.Model(gemma.get_config(variant, dropout=rate, scan_layers=scan_layers, **overrides))
    fwd = jax.jit(lambda p, r: m.apply(
        {"params": p}, m.apply({"params": p}, tokens, method=m.embed_tokens), positions, attn_mask,
        deterministic=deterministic, rngs={"dropout": r})[0])
    return np.asarray(fwd(params, jax.random.key(seed)))[valid]

  ref = logits(0.0, True)
  np.testing.assert_array_equal(logits(0.1, True), ref)
  np.testing.assert_array_equal(logits(0.0, False), ref)  # Rate 0: no rng drawn, nothing dropped.
  a, b = logits(0.1, False, seed=0), logits(0.1, False, seed=1)
  np.testing.assert_array_equal(logits(0.1, False, seed=0), a)
  assert np.abs(a - ref).max() > 1e-3 and np.abs(a - b).max() > 1e-3
  assert np.isfinite(a).all()
  # Remat recomputes the same mask.
  np.testing.assert_allclose(logits(0.1, False, seed=0, remat_policy="nothing_saveable"), a, atol=1e-5)
  # Without a deterministic flag the model needs no dropout rng (inference, sampler).
  m = gemma.Model(gemma.get_config(variant, dropout=0.1, scan_layers=scan_layers))
  fwd = jax.jit(lambda p: m.apply({"params": p}, m.apply({"params": p}, tokens, method=m.embed_tokens),
                                  positions, attn_mask)[0])
  np.testing.assert_array_equal(np.asarray(fwd(params))[valid], ref)


def test_dropout_rate_and_scaling():
  with pytest.raises(ValueError, match="dropout must be in"):
    gemma.get_config("gemma2_tiny", dropout=1.0)
  x = jnp.ones((4000,))
  y = np.asarray(gemma.dropout(x, 0.25, jax.random.key(0)))
  assert set(np.unique(y).tolist()) == {0.0, np.float32(1 / 0.75)}
  assert abs(np.mean(y == 0) - 0.25) < 0.03


@pytest.mark.parametrize("scan_layers", [False, True])
def test_prefill_equals_a_call_on_an_empty_cache(scan_layers):
  """`Model.prefill` (cache-free forward, then k/v written) gives the logits and cache of `__call__` on an empty
  cache, also when the prompt is longer than the local ring buffer (window 8); then one step agrees too."""
  cfg = gemma.get_config("gemma3_tiny", scan_layers=scan_layers)
  params = gemma.random_params(cfg)
  model = gemma.Model(cfg)
  tokens, attn_mask, positions, valid = _inputs(cfg, t=12)
  x = model.apply({"params": params}, tokens, method=model.embed_tokens)
  want, want_cache = jax.jit(model.apply)({"params": params}, x, positions, attn_mask, gemma.init_cache(cfg, 2, 16))
  got, cache = jax.jit(model.apply, static_argnums=4, static_argnames="method")(
      {"params": params}, x, positions, attn_mask, 16, method=model.prefill)
  np.testing.assert_allclose(got[valid], want[valid], atol=2e-5)
  for a, b in zip(jax.tree.leaves(cache), jax.tree.leaves(want_cache)):
    np.testing.assert_allclose(a, b, atol=2e-5)
  assert (np.asarray(cache["pos_local"]) >= 0).sum() == 2 * 8  # Ring of 8 holds the last 8 positions.
  step = lambda c: jax.jit(model.apply)({"params": params}, x[:, -1:], positions[:, -1:] + 1,
                                        np.ones((2, 1, 1), bool), c)[0]
  np.testing.assert_allclose(step(cache), step(want_cache), atol=2e-5)


@pytest.mark.parametrize("variant,dtype", [("gemma2_tiny", "float32"), ("gemma3_tiny", "bfloat16")])
def test_decode_layers_give_the_checkpoint_layouts_logits(variant, dtype):
  """`decode_layers` (out-major matmul weights, made once before a decode loop) computes what the checkpoint
  layout computes: a prompt chunk and then one-token steps on the same cache."""
  cfg = gemma.get_config(variant, dtype=dtype)
  params = gemma.random_params(cfg)
  model = gemma.Model(cfg)
  tokens, attn_mask, positions, valid = _inputs(cfg, t=12)
  x = model.apply({"params": params}, tokens, method=model.embed_tokens)
  layers = gemma.decode_layers(params, cfg)
  assert layers[0]["attn"]["k"].shape == (cfg.num_kv_heads, cfg.head_dim, cfg.width)
  assert layers[0]["attn"]["out"].shape == (cfg.width, cfg.num_heads * cfg.head_dim)
  assert layers[0]["mlp"]["down"].shape == (cfg.width, cfg.mlp_dim)
  assert layers[0]["mlp"]["gate"].dtype == jnp.dtype(dtype) and "q_einsum" not in layers[0]["attn"]
  apply = jax.jit(model.apply)
  tol = 2e-5 if dtype == "float32" else 5e-2
  caches = {}
  for name, kw in (("checkpoint", {}), ("decode", dict(layers=layers))):
    cache = gemma.init_cache(cfg, 2, 16)
    outs = []
    for start, end in [(0, 9), (9, 10), (10, 11), (11, 12)]:
      out, cache = apply({"params": params}, x[:, start:end], positions[:, start:end],
                         attn_mask[:, start:end, start:end], cache, **kw)
      outs.append(np.asarray(out, np.float32))
    caches[name] = np.concatenate(outs, 1)[valid]
  assert np.abs(caches["checkpoint"]).max() > 0.1
  np.testing.assert_allclose(caches["decode"], caches["checkpoint"], atol=tol, rtol=tol)


@pytest.mark.parametrize("rows", [1, 7, gemma._WEIGHT_LEFT_MAX_ROWS + 1])  # Weight-left product on CPU; plain above.
def test_out_major_matmul(rows):
  rng = np.random.default_rng(rows)
  h = rng.standard_normal((rows, 1, 24)).astype(np.float32)
  w = rng.standard_normal((3, 5, 24)).astype(np.float32)  # [outputs..., D]
  out = jax.jit(gemma.out_major_matmul)(h, w)
  assert out.shape == (rows, 1, 3, 5)
  np.testing.assert_allclose(out, np.einsum("btd,nhd->btnh", h, w), rtol=1e-5, atol=1e-5)


def test_compute_params_casts_matmul_weights_only():
  cfg = gemma.get_config("gemma3_tiny", dtype="bfloat16")
  cast = gemma.compute_params(gemma.random_params(cfg), cfg)
  assert cast["layers"]["attn"]["q_einsum"]["w"].dtype == jnp.bfloat16
  assert cast["embedder"]["input_embedding"].dtype == jnp.bfloat16
  assert cast["layers"]["pre_ffw_norm"]["scale"].dtype == np.float32
  assert cast["layers"]["attn"]["_key_norm"]["scale"].dtype == np.float32
