"""The one place that embeds an (image, text) prompt and decodes it with the KV-cache sampler.

  decoder = decode.Decoder(cfg, tokenizer)                  # a PaliGemma-family or Gemma3 VLM config
  tokens, mask = decoder.encode(["answer en how many stars?"], prompt_len=48)  # default: a bucket
  out = decoder.sample(params, decode.to_model_images(images), tokens, mask, max_new_tokens=8)
  decoder.texts(out)                                        # [B][N] strings, stop tokens cut

Params are an argument of every call and nothing is mutated, so one `Decoder` (one compiled prefill / decode)
serves every model of its architecture: the RL policy, SFT evaluation, the answerers and the demo models.
Prompt formats (`PROMPT_FORMATS`, chosen by `cfg.family`):
  paligemma: <bos> text "\n" after the image tokens; bidirectional prefix, causal completion, stop at <eos>;
  gemma3: the chat template, <bos><start_of_turn>user\n + image (<start_of_image>, mm_tokens_per_image placeholders,
      <end_of_image>) + text <end_of_turn>\n<start_of_turn>model\n; causal attention except bidirectional within
      the image, stop at <end_of_turn> or <eos>.
`encode` LEFT-pads prompts to a fixed length so the logit that predicts completion token j sits at text index
`prompt_len - 1 + j` for every row (what the policy's logprobs rely on) and shapes stay static.
"""
import jax
import jax.numpy as jnp
import numpy as np

from auditdm_jax import sampling
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


# family -> (encode(tok, cfg, text) -> prompt ids, mask_ar of the prompt tokens, extra stop pieces).
# mask_ar 0 = the PaliGemma bidirectional prefix; 1 = causal (Gemma3; its image block is bidirectional anyway).
PROMPT_FORMATS = {
    "paligemma": (_paligemma_prompt, 0, ()),
    "gemma3": (_gemma3_prompt, 1, ("<end_of_turn>",)),
}


class Decoder:
  """Prompt encoding, prompt embedding and sampling for one VLM architecture (`cfg`) and tokenizer."""

  def __init__(self, cfg, tokenizer):
    if cfg.family not in PROMPT_FORMATS:
      raise ValueError(f"decoding supports the families {sorted(PROMPT_FORMATS)}, got {cfg.family!r}")
    self.cfg, self.tok = cfg, tokenizer
    self._encode, self.prompt_ar, stop_pieces = PROMPT_FORMATS[cfg.family]
    self.stop_tokens = (tokenizer.eos_id,) + tuple(tokenizer.piece_id(p) for p in stop_pieces)
    self.model = vlm.get_model(cfg)
    # The decoder as a standalone module over the VLM's params["llm"] subtree.
    self.sampler = sampling.Sampler(gemma.Model(cfg.llm), None, pad_id=tokenizer.pad_id)
    self._embed = jax.jit(lambda p, im, t, m: self.model.apply({"params": p}, im, t, m,
                                                               method=self.model.embed_prompt))

  def encode(self, texts, prompt_len=None):
    """Left-padded prompts in the family's format: tokens int32 [B, P], mask bool [B, P]. P is `prompt_len`, or
    by default the longest prompt's length rounded up to a power of two (few compiled shapes)."""
    encoded = [self._encode(self.tok, self.cfg, text) for text in texts]
    prompt_len = prompt_len or sampling.bucket(max(map(len, encoded)), 8)
    tokens = np.full((len(texts), prompt_len), self.tok.pad_id, np.int32)
    mask = np.zeros((len(texts), prompt_len), bool)
    for i, (text, ids) in enumerate(zip(texts, encoded)):
      if len(ids) > prompt_len:
        raise ValueError(f"prompt of {len(ids)} tokens exceeds prompt_len={prompt_len}: {text[:60]!r}")
      tokens[i, prompt_len - len(ids):] = ids
      mask[i, prompt_len - len(ids):] = True
    return tokens, mask

  def sample(self, params, images, tokens, mask, *, max_new_tokens, num_samples=1, rng=None, temperature=0.0,
             top_p=1.0):
    """Samples continuations of the prompts: images float [B, H, W, 3] in [-1, 1], tokens [B, T] and their mask
    [B, T] (left or right padded) -> `sampling.SampleOutput` [B, num_samples, L]. temperature 0 is greedy."""
    x, attn, pos = self._embed(params, jnp.asarray(images, jnp.float32), jnp.asarray(tokens, jnp.int32),
                               jnp.asarray(mask, bool))
    return self.sampler.sample(x, attn, pos, max_new_tokens=max_new_tokens, rng=rng, temperature=temperature,
                               top_p=top_p, num_samples=num_samples, stop_tokens=self.stop_tokens,
                               params=params["llm"])

  def texts(self, out):
    """[B][N] decoded completions of a SampleOutput, cut at the first stop token."""
    def text(ids, length):
      ids = ids[:length].tolist()
      ids = ids[:min([ids.index(t) for t in self.stop_tokens if t in ids] + [len(ids)])]
      return self.tok.decode(ids)  # Drops ids beyond the tokenizer (a model table padded past it).
    return [[text(ids, n) for ids, n in zip(row, lens)] for row, lens in zip(out.tokens, out.lengths)]

  def generate(self, params, images, prompts, *, max_new_tokens, prompt_len=None, **kw):
    """uint8 images [B, H, W, 3] and prompt texts -> the first completion of each, stripped (greedy by default)."""
    tokens, mask = self.encode(prompts, prompt_len)
    out = self.sample(params, to_model_images(images), tokens, mask, max_new_tokens=max_new_tokens, **kw)
    return [row[0].strip() for row in self.texts(out)]


_SHARED = {}


def shared(cfg, tokenizer):
  """The Decoder of (architecture, tokenizer), created once per process: models of one architecture (a target and
  its same-size references, successive SFT evaluations) reuse its compiled prefill and decode."""
  # A Decoder holds its tokenizer, so an id in the key is never reused by another object.
  key = (cfg.to_json_best_effort(sort_keys=True), getattr(tokenizer, "path", None) or id(tokenizer))
  if key not in _SHARED:
    _SHARED[key] = Decoder(cfg, tokenizer)
  return _SHARED[key]
