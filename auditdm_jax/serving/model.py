"""AnswerModel: one loaded VLM (PaliGemma2 / Gemma3 multimodal) answering micro-batches of chat requests.

A batch runs as one `policy.VLMPolicy.sample` call (prompt embedding + KV-cache sampler) at the batch's largest
`max_tokens`; each answer is then cut to its own `max_tokens`, which equals decoding it alone (decoding is causal
and every row has its own PRNG stream). Prompts are formatted as the in-process `answerers.VLMAnswerer` formats
them (PaliGemma: "answer en {text}"; Gemma3: the chat template around the text), so an `HttpAnswerer` against this
server answers as the model would in-process.
"""
import dataclasses

import jax
import numpy as np

from auditdm_jax import images as images_lib
from auditdm_jax import sampling
from auditdm_jax.audit import answerers
from auditdm_jax.audit import policy as policy_lib
from auditdm_jax.httpserve import InvalidRequest
from auditdm_jax.models import tokenizer as tokenizer_lib

# family -> how the user's text becomes the model's instruction.
PROMPTS = {"paligemma": lambda text: tokenizer_lib.paligemma_prompt("answer", text), "gemma3": lambda text: text}


@dataclasses.dataclass
class Answer:
  text: str
  finish_reason: str  # "stop" | "length"
  prompt_tokens: int
  completion_tokens: int


class AnswerModel:
  """Args: cfg, params (vlm.get_config / loading.load_vlm), tokenizer; prompt_len: text prompt tokens (Gemma3:
  including the image placeholders); max_batch_size: the batcher's; seed: PRNG seed for temperature > 0."""

  def __init__(self, cfg, params, tokenizer, prompt_len=64, max_batch_size=8, seed=0):
    if cfg.family not in PROMPTS:
      raise ValueError(f"no answer prompt for the {cfg.family!r} family; known: {sorted(PROMPTS)}")
    self.cfg, self.params, self.tok = cfg, params, tokenizer
    self.prompt_fn, self.max_batch_size = PROMPTS[cfg.family], max_batch_size
    # Sampling settings come with each batch (policy.sample's overrides).
    self.policy = policy_lib.VLMPolicy(cfg, tokenizer, prompt_len=prompt_len)
    self._rng = jax.random.PRNGKey(seed)

  def prompt_tokens(self, text):
    """Tokens of the prompt of `text`; InvalidRequest when it does not fit prompt_len."""
    try:
      _, mask = self.policy.encode_prompts([self.prompt_fn(text)])
    except ValueError as e:
      raise InvalidRequest(f"the question is too long: {e}") from None
    return int(mask.sum())

  def run_jobs(self, jobs):
    """list[chat.ChatJob] (one batch_key) -> list[Answer]."""
    n = len(jobs)
    images = [answerers.resize(images_lib.to_uint8(j.image), self.cfg.res) for j in jobs]
    prompts = [self.prompt_fn(j.text) for j in jobs]
    # Padded to a power of two (repeating the last item): few compiled shapes of the image embedding.
    size = min(sampling.bucket(n, 1), max(n, self.max_batch_size))
    images += images[-1:] * (size - n)
    prompts += prompts[-1:] * (size - n)
    self._rng, rng = jax.random.split(self._rng)
    out = self.policy.sample(self.params, np.stack(images), prompts, 1, rng, temperature=jobs[0].temperature,
                             top_p=jobs[0].top_p, max_new_tokens=max(j.max_tokens for j in jobs))
    tokens, mask = out.batch["tokens"], out.batch["mask"]
    prompt_tokens = out.batch["prompt_mask"].sum(axis=1)
    stops = set(self.policy.decoder.stop_tokens)
    answers = []
    for i, job in enumerate(jobs):
      length = int(mask[i].sum())
      stopped = length > 0 and int(tokens[i, length - 1]) in stops
      if length <= job.max_tokens:
        text, used, reason = out.texts[i], length, "stop" if stopped else "length"
      else:
        text, used, reason = self.tok.decode(tokens[i, :job.max_tokens].tolist()), job.max_tokens, "length"
      answers.append(Answer(text, reason, int(prompt_tokens[i]), used))
    return answers
