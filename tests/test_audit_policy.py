"""The VLM auditor policy: sampler logprobs == teacher-forced logprobs (ratio 1 on-policy); greedy answerer."""
import jax
import numpy as np
import pytest

from auditdm_jax.audit import answerers
from auditdm_jax.audit import grpo
from auditdm_jax.audit import policy as policy_lib
from auditdm_jax.audit import prompts
from auditdm_jax.models import tokenizer as tokenizer_lib
from auditdm_jax.models import vlm


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  texts = ["a red circle in the top left", "how many stars are there?", "make the square blue"] * 20
  # vocab_size covers the 1152 PaliGemma <loc>/<seg> pieces the tokenizer always adds.
  tok = tokenizer_lib.train(str(tmp_path_factory.mktemp("tok") / "t.model"),
                            texts + [prompts.get(k, b) for k in prompts.PROMPTS for b in (0, 1)], vocab_size=1400)
  cfg = vlm.get_config("paligemma2_tiny", res=32, llm=dict(vocab_size=tok.vocab_size))
  pol = policy_lib.VLMPolicy(cfg, tok, prompt_len=64, max_new_tokens=6)
  return cfg, tok, pol, pol.init(jax.random.PRNGKey(0), 32)


def test_sampler_logprobs_match_teacher_forcing(tiny):
  _, _, pol, params = tiny
  images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype(np.uint8)
  comp = pol.sample(params, images, [prompts.P_Q, "short"], 3, jax.random.PRNGKey(1))
  assert len(comp.texts) == 6 and comp.batch["tokens"].shape == (6, 6) and comp.batch["images"].shape[0] == 6
  logp = np.asarray(jax.jit(pol.logprobs)(params, comp.batch))
  mask = comp.batch["mask"]
  np.testing.assert_allclose(logp * mask, comp.batch["old_logp"] * mask, atol=1e-4)
  # Hence the on-policy GRPO ratio is 1 and no token is clipped.
  _, m = grpo.policy_loss(logp, comp.batch["old_logp"], np.ones(6, np.float32), mask,
                          config=grpo.LossConfig(beta=0.0))
  assert float(m["clip_fraction"]) == 0.0 and abs(float(m["ratio_mean"]) - 1.0) < 1e-3


def test_prompt_too_long_is_a_clear_error(tiny):
  _, _, pol, _ = tiny
  with pytest.raises(ValueError, match="prompt_len"):
    pol.encode_prompts(["word " * 200])


def test_vlm_answerer_is_greedy_and_deterministic(tiny):
  cfg, tok, _, params = tiny
  ans = answerers.VLMAnswerer("tiny", cfg, params, tok, max_new_tokens=3, batch_size=4)
  images = [np.full((32, 32, 3), v, np.uint8) for v in (0, 128, 255)]
  a = ans.answer(images, ["what color?"] * 3)
  assert len(a) == 3 and all(isinstance(x, str) for x in a)
  assert ans.answer(images, ["what color?"] * 3) == a
