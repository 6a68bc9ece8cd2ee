"""Parity of our Gemma2/Gemma3 decoders with transformers (fp32, eager attention) on tiny models."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from auditdm_jax import sampling
from auditdm_jax.models import gemma


# Real head counts (Gemma2-9B: 16 q / 8 kv heads; Gemma3-4B: 8 / 4) at widths whose sqrt is not exact in bf16 (96;
# 2560 is Gemma3-4B's own width), with shrunk depth, MLP and vocabulary, and a window (8) shorter than the sequence.
_SHRUNK = dict(depth=2, mlp_dim=256, vocab_size=256, sliding_window=8, attn_pattern=("local", "global"))
PARITY_CONFIGS = {
    "gemma2_tiny": ("gemma2_tiny", {}),
    "gemma3_tiny": ("gemma3_tiny", {}),
    "gemma2_w96": ("gemma2_9b", dict(_SHRUNK, width=96, head_dim=16)),
    "gemma3_w96": ("gemma3_4b", dict(_SHRUNK, width=96, head_dim=16)),
    "gemma2_w2560": ("gemma2_9b", dict(_SHRUNK, width=2560)),
    "gemma3_w2560": ("gemma3_4b", dict(_SHRUNK, width=2560)),
    # No window at all (every layer global); odd head counts and sizes, a pattern that does not divide the depth.
    "gemma2_nowindow": ("gemma2_tiny", dict(sliding_window=None, depth=3)),
    "gemma3_nowindow": ("gemma3_tiny", dict(sliding_window=None, depth=3)),
    "gemma3_odd": ("gemma3_tiny", dict(width=48, num_heads=3, num_kv_heads=1, head_dim=24, depth=7, vocab_size=203,
                                       attn_pattern=("local", "local", "global"), sliding_window=5,
                                       query_pre_attn_scalar=32)),
}


def test_parity_widths_are_not_bf16_exact():
  """The widths above would hide a sqrt(D) rounded through bf16 if they were exact in bf16 (as 64 is)."""
  for name in ("gemma2_w96", "gemma3_w2560"):
    variant, overrides = PARITY_CONFIGS[name]
    d = gemma.get_config(variant, **overrides).width
    assert float(jnp.asarray(np.sqrt(d), jnp.bfloat16)) != np.float32(np.sqrt(d)), d


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if "2560" in n else n
                                  for n in sorted(PARITY_CONFIGS)])
def test_logits_match_transformers(name):
  """Padded batch of unequal lengths, sequence 24 > window 8, Gemma2 softcaps, Gemma3 RoPE x8."""
  variant, overrides = PARITY_CONFIGS[name]
  cfg = gemma.get_config(variant, **overrides)
  params = gemma.random_params(cfg)
  hf = gemma.hf_text_model(cfg, params)
  # Round trip: the HF weights convert back to exactly our params.
  back = gemma.params_from_hf(hf.state_dict(), cfg)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)

  b, t = 3, 24
  rng = np.random.default_rng(1)
  lengths = np.array([24, 17, 9])
  input_mask = np.arange(t)[None] >= (t - lengths)[:, None]  # Left padding.
  tokens = np.where(input_mask, rng.integers(0, cfg.vocab_size, (b, t)), 0)
  attn_mask, positions = sampling.causal_prompt(input_mask)
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(input_mask.astype(int)),
              position_ids=torch.tensor(np.asarray(positions))).logits.numpy()

  model = gemma.Model(cfg)
  fwd = jax.jit(lambda p: model.apply(
      {"params": p}, model.apply({"params": p}, tokens, method=model.embed_tokens), positions,
      attn_mask)[0])
  got = np.asarray(fwd(params))
  assert np.abs(want[input_mask]).max() > 1.0  # Non-trivial logits.
  np.testing.assert_allclose(got[input_mask], want[input_mask], atol=1e-4, rtol=0)


def test_embedding_scale_follows_the_compute_dtype():
  """sqrt(D) in the compute dtype, as transformers and big_vision: exact in float32, bf16-rounded in bf16."""
  for dtype in ("float32", "bfloat16"):
    cfg = gemma.get_config("gemma2_tiny", width=96, head_dim=16, dtype=dtype)
    params = gemma.random_params(cfg)
    model = gemma.Model(cfg)
    x = model.apply({"params": params}, jnp.array([[3]]), method=model.embed_tokens)
    row = jnp.asarray(params["embedder"]["input_embedding"][3], dtype)
    np.testing.assert_array_equal(x[0, 0], row * jnp.asarray(np.sqrt(96.0), dtype))
    assert x.dtype == jnp.dtype(dtype)


def test_params_from_hf_errors():
  cfg = gemma.get_config("gemma2_tiny")
  state = gemma.params_to_hf(gemma.random_params(cfg), cfg, prefix="model.language_model.")
  gemma.params_from_hf(state, cfg, prefix="model.language_model.")
  with pytest.raises(KeyError, match="Missing tensor 'model.layers.0"):
    gemma.params_from_hf(state, cfg)  # Wrong prefix.
  bad = dict(state)
  bad["model.language_model.layers.1.mlp.down_proj.weight"] = np.zeros((3, 3), np.float32)
  with pytest.raises(ValueError, match=r"Shape mismatch for layer 1 \['mlp'\]\['linear'\]"):
    gemma.params_from_hf(bad, cfg, prefix="model.language_model.")
  # Padded vocabulary rows are dropped.
  big = dict(state)
  emb = state["model.language_model.embed_tokens.weight"]
  big["model.language_model.embed_tokens.weight"] = np.concatenate([emb, emb[:64]])
  got = gemma.params_from_hf(big, cfg, prefix="model.language_model.")
  np.testing.assert_array_equal(got["embedder"]["input_embedding"], emb)


def test_gemma3_attention_softcap_has_no_transformers_equivalent():
  """transformers' Gemma3 drops attn_logit_softcapping: exporting such a config would change its outputs."""
  with pytest.raises(ValueError, match="ignores attn_logit_softcapping"):
    gemma.hf_text_config(gemma.get_config("gemma3_tiny", attn_softcap=20.0))
