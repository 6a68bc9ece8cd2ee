"""Contract between vlm.embed_prompt, the gemma KV cache and sampling.Sampler: greedy decoding from a PaliGemma
prompt (image + right-padded prefixes of different lengths) matches teacher forcing with the prefix-LM mask."""
import jax
import numpy as np
import pytest

from auditdm_jax import sampling
from auditdm_jax.models import gemma
from auditdm_jax.models import vlm


@pytest.mark.slow
def test_greedy_sampling_matches_full_forward():
  cfg = vlm.get_config("paligemma2_tiny")  # Window 8 < prompt (16 image + text): ring-buffer caches in use.
  rng = np.random.RandomState(0)
  params = jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.1).astype(np.float32), vlm.abstract_params(cfg))
  model = vlm.get_model(cfg)
  images = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  prompts = np.array([[2, 11, 12, 13, 14], [2, 21, 22, 0, 0]], np.int32)
  prompt_mask = prompts != 0
  x, attn_mask, positions = model.apply({"params": params}, images, prompts, prompt_mask, method=model.embed_prompt)

  sampler = sampling.Sampler(gemma.Model(cfg.llm), params["llm"])
  new = 6
  out = sampler.sample(x, attn_mask, positions, max_new_tokens=new, stop_tokens=(cfg.llm.vocab_size + 1,))
  generated = np.asarray(out.tokens)[:, 0]
  assert generated.shape == (2, new)

  for row, length in enumerate(prompt_mask.sum(1)):
    tokens = np.concatenate([prompts[row, :length], generated[row]])[None]
    mask_ar = (np.arange(tokens.shape[1]) >= length)[None].astype(np.int32)
    logits = np.asarray(model.apply({"params": params}, images[row:row + 1], tokens, mask_ar))[0]
    steps = logits[length - 1:length - 1 + new]  # The logits that chose each generated token.
    np.testing.assert_array_equal(steps.argmax(-1), generated[row])
    logprobs = jax.nn.log_softmax(steps)[np.arange(new), generated[row]]
    np.testing.assert_allclose(np.asarray(out.logprobs)[row, 0], logprobs, atol=1e-4)
