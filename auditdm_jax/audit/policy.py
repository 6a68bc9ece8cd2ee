"""The auditor as an RL policy: a VLM (PaliGemma family or Gemma3 multimodal) that samples text from (image,
instruction) prompts.

`VLMPolicy` implements the rollout's Policy protocol:
  sample(params, images, instructions, num_samples, rng) -> rollout.Completions
      through the KV-cache sampler (`sampling.Sampler`), logprobs of the sampled tokens under the unmodified model
      (the GRPO "old policy");
  logprobs(params, batch) -> [N, L]
      one teacher-forced forward of image + instruction + completion (differentiable, jittable).
Prompt formats (`PROMPT_FORMATS`, chosen by `cfg.family`):
  paligemma: <bos> instruction "\n" after the image tokens; bidirectional prefix, causal completion, stop at <eos>;
  gemma3: the chat template, <bos><start_of_turn>user\n + image (<start_of_image>, mm_tokens_per_image placeholders,
      <end_of_image>) + instruction <end_of_turn>\n<start_of_turn>model\n; causal attention except bidirectional
      within the image, stop at <end_of_turn> or <eos>. The placeholder id must never be sampled: it lies outside
      the embedding table in the released Gemma3 (262144); tiny test models should put it there too.
Prompts are LEFT-padded to a fixed `prompt_len` so the logit that predicts completion token j sits at text index
`prompt_len - 1 + j` for every row, and shapes stay static (one compilation).
"""
import jax
import jax.numpy as jnp
import numpy as np

from auditdm_jax import sampling
from auditdm_jax.audit import rollout
from auditdm_jax.models import gemma
from auditdm_jax.models import tokenizer as tokenizer_lib
from auditdm_jax.models import vlm


def to_model_images(images):
  """uint8 [B, H, W, 3] -> float32 [-1, 1] (the `value_range(-1, 1)` convention)."""
  return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


def _paligemma_prompt(tok, cfg, text):
  del cfg  # The image tokens are prepended by the model.
  return tokenizer_lib.encode_paligemma(tok, text)[0].tolist()


def _gemma3_prompt(tok, cfg, text):
  chat = tokenizer_lib.gemma3_chat([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
                                   num_image_tokens=cfg.mm_tokens_per_image)
  return tokenizer_lib.encode_gemma3(tok, chat, image_token_id=cfg.image_token_id)


# family -> (encode(tok, cfg, instruction) -> prompt ids, mask_ar of the prompt tokens, extra stop pieces).
# mask_ar 0 = the PaliGemma bidirectional prefix; 1 = causal (Gemma3; its image block is bidirectional anyway).
PROMPT_FORMATS = {
    "paligemma": (_paligemma_prompt, 0, ()),
    "gemma3": (_gemma3_prompt, 1, ("<end_of_turn>",)),
}


class VLMPolicy:
  """A VLM auditor (PaliGemma or Gemma3). `temperature`/`top_p` apply to sampling only; logprobs are always at
  T = 1."""

  def __init__(self, cfg, tokenizer, prompt_len=64, max_new_tokens=32, temperature=1.0, top_p=1.0):
    if cfg.family not in PROMPT_FORMATS:
      raise ValueError(f"VLMPolicy supports the families {sorted(PROMPT_FORMATS)}, got {cfg.family!r}")
    self.cfg, self.tok = cfg, tokenizer
    self.prompt_len, self.max_new_tokens = prompt_len, max_new_tokens
    self.temperature, self.top_p = temperature, top_p
    self._encode, self._prompt_ar, stop_pieces = PROMPT_FORMATS[cfg.family]
    self.stop_tokens = (tokenizer.eos_id,) + tuple(tokenizer.piece_id(p) for p in stop_pieces)
    self.model = vlm.get_model(cfg)
    # The decoder as a standalone module over the VLM's params["llm"] subtree, for the sampler.
    self.sampler = sampling.Sampler(gemma.Model(cfg.llm), None, tokenizer=tokenizer, pad_id=tokenizer.pad_id)
    self._embed = jax.jit(lambda p, im, t, m: self.model.apply({"params": p}, to_model_images(im), t, m,
                                                               method=self.model.embed_prompt))

  def encode_prompts(self, instructions):
    """Left-padded instruction prompts: tokens int32 [B, P], mask bool [B, P]."""
    tokens = np.full((len(instructions), self.prompt_len), self.tok.pad_id, np.int32)
    mask = np.zeros((len(instructions), self.prompt_len), bool)
    for i, text in enumerate(instructions):
      ids = self._encode(self.tok, self.cfg, text)
      if len(ids) > self.prompt_len:
        raise ValueError(f"prompt of {len(ids)} tokens exceeds prompt_len={self.prompt_len}: {text[:60]!r}")
      tokens[i, self.prompt_len - len(ids):] = ids
      mask[i, self.prompt_len - len(ids):] = True
    return tokens, mask

  def sample(self, params, images, instructions, num_samples, rng, *, temperature=None, top_p=None,
             max_new_tokens=None):
    """temperature / top_p / max_new_tokens override the policy's for this call (the answer server's requests)."""
    images = np.asarray(images, np.uint8)
    prompt, prompt_mask = self.encode_prompts(instructions)
    x, attn, pos = self._embed(params, images, jnp.asarray(prompt), jnp.asarray(prompt_mask))
    self.sampler.params = params["llm"]
    out = self.sampler.sample(x, attn, pos, max_new_tokens=max_new_tokens or self.max_new_tokens, rng=rng,
                              temperature=self.temperature if temperature is None else temperature,
                              top_p=self.top_p if top_p is None else top_p, num_samples=num_samples,
                              stop_tokens=self.stop_tokens)
    b, g, length = out.tokens.shape
    rep = lambda a: np.repeat(a, g, axis=0)
    mask = (np.arange(length)[None, None, :] < out.lengths[..., None]).reshape(b * g, length)
    batch = {"images": rep(images), "prompt": rep(prompt), "prompt_mask": rep(prompt_mask),
             "tokens": out.tokens.reshape(b * g, length).astype(np.int32), "mask": mask.astype(np.float32),
             "old_logp": out.logprobs.reshape(b * g, length).astype(np.float32)}
    return rollout.Completions([t for row in out.text for t in row], batch)

  def logprobs(self, params, batch):
    """log p(completion token j | image, prompt, tokens < j): [N, L] (0 where mask is 0 is NOT enforced)."""
    p = batch["prompt"].shape[1]
    tokens = jnp.concatenate([batch["prompt"], batch["tokens"]], axis=1)
    input_mask = jnp.concatenate([batch["prompt_mask"], batch["mask"] > 0], axis=1)
    mask_ar = jnp.concatenate([jnp.full_like(batch["prompt"], self._prompt_ar), jnp.ones_like(batch["tokens"])],
                              axis=1)
    # Both families return logits at the text positions (PaliGemma drops its prepended image tokens).
    logits = self.model.apply({"params": params}, to_model_images(batch["images"]), tokens, mask_ar, input_mask)
    logp = jax.nn.log_softmax(logits[:, p - 1:-1].astype(jnp.float32))
    return jnp.take_along_axis(logp, batch["tokens"][..., None], axis=-1)[..., 0]

  def init(self, rng, image_size):
    """Random params (tests); real auditors come from SFT checkpoints."""
    tokens = jnp.zeros((1, self.prompt_len), jnp.int32)
    # Tokens are a traced argument: Gemma3's placeholder-count check only runs on concrete tokens.
    init = jax.jit(lambda r, t: self.model.init(r, jnp.zeros((1, image_size, image_size, 3)), t,
                                                jnp.zeros_like(t), jnp.ones_like(t, bool))["params"])
    return init(rng, tokens)
