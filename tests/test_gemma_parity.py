"""Parity of our Gemma2/Gemma3 decoders with transformers (fp32, eager attention) on tiny models."""
import jax
import numpy as np
import pytest
import torch

from auditdm_jax import sampling
from auditdm_jax.models import gemma


@pytest.mark.parametrize("variant", ["gemma2_tiny", "gemma3_tiny"])
def test_logits_match_transformers(variant):
  """Padded batch of unequal lengths, sequence 24 > window 8, Gemma2 softcaps, Gemma3 RoPE x8."""
  cfg = gemma.get_config(variant)
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
