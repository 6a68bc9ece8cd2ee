"""The auditor as an RL policy: a VLM (PaliGemma family or Gemma3 multimodal) that samples text from (image,
instruction) prompts.

`VLMPolicy` implements the rollout's Policy protocol (`audit.system.Policy`):
  sample(params, images, instructions, num_samples, rng) -> rollout.Completions
      through `decode.Decoder` (the prompt formats live there), logprobs of the sampled tokens under the
      unmodified model (the GRPO "old policy");
  logprobs(params, batch) -> [N, L]
      one teacher-forced forward of image + instruction + completion (differentiable, jittable).
Prompts are left-padded to a fixed `prompt_len`, so the logit that predicts completion token j sits at text index
`prompt_len - 1 + j` for every row, and shapes stay static (one compilation). Gemma3's image placeholder id must
never be sampled: it lies outside the embedding table in the released Gemma3 (262144); tiny test models should put
it there too.
"""
import jax
import jax.numpy as jnp
import numpy as np

from auditdm_jax import decode
from auditdm_jax.audit import rollout


class VLMPolicy:
  """A VLM auditor (PaliGemma or Gemma3). `temperature`/`top_p` apply to sampling only; logprobs are always at
  T = 1."""

  def __init__(self, cfg, tokenizer, prompt_len=64, max_new_tokens=32, temperature=1.0, top_p=1.0):
    self.decoder = decode.shared(cfg, tokenizer)
    self.cfg, self.model = cfg, self.decoder.model
    self.prompt_len, self.max_new_tokens = prompt_len, max_new_tokens
    self.temperature, self.top_p = temperature, top_p

  def encode_prompts(self, instructions):
    """Left-padded instruction prompts: tokens int32 [B, P], mask bool [B, P]."""
    return self.decoder.encode(instructions, self.prompt_len)

  def sample(self, params, images, instructions, num_samples, rng, *, temperature=None, top_p=None,
             max_new_tokens=None):
    """temperature / top_p / max_new_tokens override the policy's for this call (e.g. an answer server's requests)."""
    images = np.asarray(images, np.uint8)
    prompt, prompt_mask = self.encode_prompts(instructions)
    out = self.decoder.sample(params, decode.to_model_images(images), prompt, prompt_mask,
                              max_new_tokens=max_new_tokens or self.max_new_tokens, num_samples=num_samples, rng=rng,
                              temperature=self.temperature if temperature is None else temperature,
                              top_p=self.top_p if top_p is None else top_p)
    b, g, length = out.tokens.shape
    rep = lambda a: np.repeat(a, g, axis=0)
    mask = (np.arange(length)[None, None, :] < out.lengths[..., None]).reshape(b * g, length)
    batch = {"images": rep(images), "prompt": rep(prompt), "prompt_mask": rep(prompt_mask),
             "tokens": out.tokens.reshape(b * g, length).astype(np.int32), "mask": mask.astype(np.float32),
             "old_logp": out.logprobs.reshape(b * g, length).astype(np.float32)}
    return rollout.Completions([t for row in self.decoder.texts(out) for t in row], batch)

  def logprobs(self, params, batch):
    """log p(completion token j | image, prompt, tokens < j): [N, L] (0 where mask is 0 is NOT enforced)."""
    p = batch["prompt"].shape[1]
    tokens = jnp.concatenate([batch["prompt"], batch["tokens"]], axis=1)
    input_mask = jnp.concatenate([batch["prompt_mask"], batch["mask"] > 0], axis=1)
    mask_ar = jnp.concatenate([jnp.full_like(batch["prompt"], self.decoder.prompt_ar), jnp.ones_like(batch["tokens"])],
                              axis=1)
    # Both families return logits at the text positions (PaliGemma drops its prepended image tokens).
    logits = self.model.apply({"params": params}, decode.to_model_images(batch["images"]), tokens, mask_ar, input_mask)
    logp = jax.nn.log_softmax(logits[:, p - 1:-1].astype(jnp.float32))
    return jnp.take_along_axis(logp, batch["tokens"][..., None], axis=-1)[..., 0]

  def init(self, rng, image_size):
    """Random params (tests); real auditors come from SFT checkpoints."""
    tokens = jnp.zeros((1, self.prompt_len), jnp.int32)
    # Tokens are a traced argument: Gemma3's placeholder-count check only runs on concrete tokens.
    init = jax.jit(lambda r, t: self.model.init(r, jnp.zeros((1, image_size, image_size, 3)), t,
                                                jnp.zeros_like(t), jnp.ones_like(t, bool))["params"])
    return init(rng, tokens)
