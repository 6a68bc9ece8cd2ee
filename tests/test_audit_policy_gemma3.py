"""The Gemma3 auditor policy (the paper's auditor family): chat-template prompts with an image block, sampler
logprobs == teacher-forced logprobs, and a GRPO gradient step."""
import jax
import numpy as np
import optax
import pytest

from auditdm_jax.audit import grpo
from auditdm_jax.audit import policy as policy_lib
from auditdm_jax.audit import prompts
from auditdm_jax.models import tokenizer as tokenizer_lib
from auditdm_jax.models import vlm


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  texts = ["a red circle in the top left", "how many stars are there?", "make the square blue"] * 20
  tok = tokenizer_lib.train(str(tmp_path_factory.mktemp("tok") / "t.model"),
                            texts + [prompts.get(k, b) for k in prompts.PROMPTS for b in (0, 1)], vocab_size=1400)
  # As in the released Gemma3: the image placeholder id lies outside the embedding table (never sampled), and
  # <start_of_image>/<end_of_image> are the tokenizer's own pieces.
  cfg = vlm.get_config("gemma3_tiny", res=32, llm=dict(vocab_size=tok.vocab_size),
                       image_token_id=tok.vocab_size, boi_token_id=tok.piece_id("<start_of_image>"),
                       eoi_token_id=tok.piece_id("<end_of_image>"))
  pol = policy_lib.VLMPolicy(cfg, tok, prompt_len=96, max_new_tokens=6)
  return cfg, tok, pol, pol.init(jax.random.PRNGKey(0), 32)


def test_gemma3_prompt_is_the_chat_template(tiny):
  cfg, tok, pol, _ = tiny
  tokens, mask = pol.encode_prompts([prompts.P_Q, "short"])
  assert mask[0].sum() > mask[1].sum() and not mask[:, 0].any() and mask[:, -1].all()  # Left-padded.
  ids = tokens[1][mask[1]].tolist()
  m = cfg.mm_tokens_per_image
  expect = ([tok.bos_id] + tok.encode("<start_of_turn>user\n\n\n<start_of_image>") + [cfg.image_token_id] * m +
            tok.encode("<end_of_image>\n\nshort<end_of_turn>\n<start_of_turn>model\n"))
  assert ids == expect
  assert pol.decoder.stop_tokens == (tok.eos_id, tok.piece_id("<end_of_turn>"))


@pytest.fixture(scope="module")
def rollout(tiny):
  """G=4 completions of each of 2 images (P_Q, P_E) and their teacher-forced logprobs."""
  _, _, pol, params = tiny
  images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype(np.uint8)
  comp = pol.sample(params, images, [prompts.P_Q, prompts.P_E], 4, jax.random.PRNGKey(1))
  logprobs = jax.jit(pol.logprobs)
  return comp, logprobs, np.asarray(logprobs(params, comp.batch))


def test_gemma3_sampler_logprobs_match_teacher_forcing(rollout):
  comp, logprobs, logp = rollout
  assert len(comp.texts) == 8 and comp.batch["tokens"].shape == (8, 6) and comp.batch["images"].shape[0] == 8
  mask = comp.batch["mask"]
  assert mask.sum() > 8
  np.testing.assert_allclose(logp * mask, comp.batch["old_logp"] * mask, atol=1e-4)


def test_gemma3_logprobs_depend_on_the_image(tiny, rollout):
  _, _, _, params = tiny
  comp, logprobs, logp = rollout
  other = dict(comp.batch, images=255 - comp.batch["images"])
  assert np.abs((np.asarray(logprobs(params, other)) - logp) * comp.batch["mask"]).max() > 1e-4


def test_gemma3_grpo_gradient_step(tiny, rollout):
  _, _, pol, params = tiny
  comp, _, _ = rollout
  advs = np.asarray([1.0, -1.0, 0.5, -0.5] * 2, np.float32)
  cfg = grpo.LossConfig(beta=0.0)
  loss_fn = lambda p: grpo.policy_loss(pol.logprobs(p, comp.batch), comp.batch["old_logp"], advs,
                                       comp.batch["mask"], config=cfg)
  step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (loss, m), grads = step(params)
  # On-policy: ratio 1, nothing clipped.
  assert np.isfinite(float(loss)) and float(m["clip_fraction"]) == 0.0 and abs(float(m["ratio_mean"]) - 1) < 1e-3
  gnorm = float(optax.tree.norm(grads))
  assert np.isfinite(gnorm) and gnorm > 0
  assert float(optax.tree.norm(grads["img"])) > 0  # The gradient reaches the vision tower through the image.
  (new_loss, _), _ = step(jax.tree.map(lambda p, g: p - 1e-2 * g, params, grads))
  assert np.isfinite(float(new_loss)) and float(new_loss) < float(loss)


def test_vlm_system_loads_a_gemma3_auditor_and_checks_init(tmp_path):
  from auditdm_jax.audit import answerers  # pylint: disable=g-import-not-at-top
  from auditdm_jax.models import loading  # pylint: disable=g-import-not-at-top
  cfg, params = loading.load_vlm(dict(variant="gemma3_tiny", res=32, init=""))
  assert cfg.family == "gemma3" and {"img", "llm", "mm_input_projection"} <= set(params)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    loading.load_vlm(dict(variant="gemma3_tiny", res=32, init=str(tmp_path / "missing")))
  with pytest.raises(ValueError, match="only tiny"):
    loading.load_vlm(dict(variant="gemma3_4b", res=896, init=""))
  # JAX answerers resize images to their own resolution (a 896px Gemma3 auditor, a 448px PaliGemma target).
  assert answerers.resize(np.zeros((64, 48, 3), np.uint8), 32).shape == (32, 32, 3)
