"""Vision-language models on the Gemma decoder: PaliGemma/PaliGemma2 (prefix-LM) and Gemma3 multimodal.

PaliGemma: SigLIP patch tokens -> Dense head (with bias) -> prepended to the text; attention is bidirectional
over image + prefix (+ the "\n" separator) and causal over the suffix (`make_attn_mask`). Only text token
embeddings are scaled by sqrt(D); image tokens enter the decoder as they come out of the head. Every PaliGemma2
layer attends globally by default, as big_vision's Gemma2 (which has no sliding window; PaliGemma2 is trained and
transferred with it); `llm=dict(sliding_window=4096)` gives transformers' PaliGemma2 instead. The two differ only
when a sequence is longer than the window (PaliGemma2 at 896px: 4096 image tokens + text).
Gemma3: SigLIP at 896px -> 4x4 average pool -> 256 soft tokens -> RMSNorm -> linear projection, written into the
text at the `<image_soft_token>` placeholders; attention is causal except bidirectional within each image.

Params: {"img": ViT (PaliGemma: incl. `head`), "llm": gemma.Model} and for Gemma3 also
`mm_soft_embedding_norm/scale` [Dv] and `mm_input_projection/w` [Dv, D].
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from auditdm_jax.models import gemma
from auditdm_jax.models import variants
from auditdm_jax.models import vit

PALIGEMMA_VOCAB = 257_152  # Gemma's 256000 + 1024 <loc> + 128 <seg>.
_TINY_VIT = dict(width=32, depth=2, mlp_dim=64, num_heads=4)


def get_config(variant, res=None, llm=None, img=None, **overrides):
  """ConfigDict of a VLM variant: family, res, img (ViT fields), llm (gemma config), Gemma3 image-token fields.

  llm / img: dicts of overrides for the decoder (gemma.get_config fields) and the ViT (vit.Model fields).
  """
  family, llm_variant, vit_variant, res = variants.lookup(variant, res)
  llm = dict(llm or {})
  if family == "paligemma":
    llm.setdefault("sliding_window", None)  # big_vision's attention (module docstring).
  if family == "paligemma" and not variant.endswith("tiny"):
    llm.setdefault("vocab_size", PALIGEMMA_VOCAB)
  img_cfg = dict(variant=vit_variant, scan=False, remat_policy="none", dtype="float32", param_dtype="float32")
  if variant.endswith("tiny"):
    img_cfg.update(_TINY_VIT)
  img_cfg.update(img or {})
  cfg = dict(variant=variant, family=family, res=res, img=img_cfg, llm=gemma.get_config(llm_variant, **llm))
  if family == "gemma3":
    cfg.update(variants.gemma3_image_tokens(variant, cfg["llm"].vocab_size))
  unknown = set(overrides) - set(cfg)
  if unknown:
    raise ValueError(f"unknown VLM config fields {sorted(unknown)}")
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def get_model(cfg):
  return {"paligemma": PaliGemma, "gemma3": Gemma3VLM}[cfg.family](cfg)


def make_attn_mask(input_mask, mask_ar):
  """Prefix-LM attention mask [B, T, T] from input_mask [B, T] (valid tokens) and mask_ar [B, T].

  mask_ar 0 marks tokens attending bidirectionally with everything of the same or earlier "segment", 1 marks
  autoregressive tokens: token i sees token j iff cumsum(mask_ar)[j] <= cumsum(mask_ar)[i]. So [0 0 0 1 1 1]
  is a 3-token prefix with full attention followed by a causal suffix; all ones is a causal LM.
  """
  cumsum = jnp.cumsum(mask_ar, axis=1)
  attn_mask = cumsum[:, None, :] <= cumsum[:, :, None]
  valid = jnp.logical_and(input_mask[:, None, :], input_mask[:, :, None])
  return jnp.logical_and(attn_mask, valid)


def image_block_mask(is_image, input_mask):
  """[B, T, T] True between tokens of the same contiguous image-token run (bidirectional attention per image)."""
  start = is_image & ~jnp.pad(is_image, ((0, 0), (1, 0)))[:, :-1]
  block = jnp.where(is_image, jnp.cumsum(start, axis=1), 0)
  same = (block[:, :, None] == block[:, None, :]) & is_image[:, :, None] & is_image[:, None, :]
  return same & input_mask[:, :, None] & input_mask[:, None, :]


def positions_from_mask(input_mask):
  """RoPE positions [B, T]: padding does not advance the position."""
  return jnp.cumsum(input_mask, axis=1) - 1


def _vit(cfg, **kw):
  return vit.Model(**cfg.img.to_dict(), **kw, name="img")


class PaliGemma(nn.Module):
  """PaliGemma / PaliGemma2: images [B, H, W, 3] in [-1, 1] + text tokens [B, T]."""
  config: ml_collections.ConfigDict

  def setup(self):
    self.img = _vit(self.config, head_dim=self.config.llm.width)
    self.llm = gemma.Model(self.config.llm)

  def embed_image(self, images):
    """[B, H, W, 3] -> [B, N, D] image tokens in the decoder's width (not scaled by sqrt(D))."""
    return self.img(images).astype(self.config.llm.dtype)

  def embed_image_and_text(self, images, tokens, input_mask, mask_ar):
    """-> x [B, N+T, D], input_mask [B, N+T], mask_ar [B, N+T] with image tokens as a valid, full-attention prefix."""
    zimg = self.embed_image(images)
    b, n = zimg.shape[:2]
    x = jnp.concatenate([zimg, self.llm.embed_tokens(tokens)], axis=1)
    input_mask = jnp.concatenate([jnp.ones((b, n), bool), input_mask.astype(bool)], axis=1)
    mask_ar = jnp.concatenate([jnp.zeros((b, n), jnp.int32), mask_ar.astype(jnp.int32)], axis=1)
    return x, input_mask, mask_ar

  def embed_prompt(self, images, tokens, input_mask, mask_ar=None):
    """Prompt for sampling: x [B, N+T, D], attn_mask [B, N+T, N+T], positions [B, N+T].

    tokens: [B, T] right-padded text prompt (<bos> prefix "\n"); input_mask [B, T]; mask_ar defaults to all 0
    (the whole prompt is the bidirectional prefix, as PaliGemma was trained).
    """
    if mask_ar is None:
      mask_ar = jnp.zeros_like(tokens, jnp.int32)
    x, full_mask, full_ar = self.embed_image_and_text(images, tokens, input_mask, mask_ar)
    return x, make_attn_mask(full_mask, full_ar), positions_from_mask(full_mask)

  def __call__(self, images, tokens, mask_ar, input_mask=None, deterministic=True, return_hidden=False):
    """Training forward: logits [B, T, V] for the text positions (next-token prediction at each text token); with
    `return_hidden` the final-normed hidden states [B, T, D] there instead (`unembed` maps them to logits).

    deterministic=False applies the decoder's `llm.dropout` (needs a "dropout" rng).
    """
    if input_mask is None:
      input_mask = jnp.ones_like(tokens, bool)
    x, attn_mask, positions = self.embed_prompt(images, tokens, input_mask, mask_ar)
    out, _ = self.llm(x, positions, attn_mask, deterministic=deterministic, return_hidden=return_hidden)
    return out[:, -tokens.shape[1]:]

  def unembed(self, hidden):
    return self.llm.unembed(hidden)


class Gemma3VLM(nn.Module):
  """Gemma3 multimodal: text tokens [B, T] holding `mm_tokens_per_image` placeholders per image, images
  [B, K, H, W, 3] (or [B, H, W, 3] for K = 1) in [-1, 1]; the k-th image fills the k-th placeholder run."""
  config: ml_collections.ConfigDict

  def setup(self):
    cfg = self.config
    self.img = _vit(cfg)
    width, dt = vit.Model(**cfg.img.to_dict()).shape()["width"], jnp.dtype(cfg.llm.param_dtype)
    self.mm_soft_embedding_norm = self.param("mm_soft_embedding_norm", lambda k: {"scale": jnp.zeros(width, dt)})
    self.mm_input_projection = self.param("mm_input_projection", lambda k: {
        "w": nn.initializers.lecun_normal()(k, (width, cfg.llm.width), dt)})
    self.llm = gemma.Model(cfg.llm)

  def embed_image(self, images):
    """[B, H, W, 3] -> [B, M, D] soft tokens: patches average-pooled to M = mm_tokens_per_image, normed, projected."""
    cfg = self.config
    z = self.img(images)
    b, n, dv = z.shape
    side, per_side = int(round(n ** 0.5)), int(round(cfg.mm_tokens_per_image ** 0.5))
    if side * side != n or per_side ** 2 != cfg.mm_tokens_per_image or side % per_side:
      raise ValueError(f"cannot pool {n} patches into {cfg.mm_tokens_per_image} tokens")
    k = side // per_side
    z = z.reshape(b, per_side, k, per_side, k, dv).mean(axis=(2, 4)).reshape(b, cfg.mm_tokens_per_image, dv)
    z = gemma.rms_norm(z, self.mm_soft_embedding_norm["scale"], 1e-6)
    return (z @ self.mm_input_projection["w"].astype(z.dtype)).astype(cfg.llm.dtype)

  def embed_image_and_text(self, images, tokens):
    """x [B, T, D]: text embeddings (x sqrt(D)) with the placeholder positions replaced by image soft tokens."""
    cfg = self.config
    is_image = tokens == cfg.image_token_id
    # The placeholder id may lie outside the embedding table (real Gemma3); its row is replaced anyway.
    x = self.llm.embed_tokens(jnp.where(is_image, 0, tokens))
    if images is None:
      return x
    if images.ndim == 4:
      images = images[:, None]
    b, k = images.shape[:2]
    soft = self.embed_image(images.reshape(b * k, *images.shape[2:])).reshape(b, k * cfg.mm_tokens_per_image, -1)
    if not isinstance(tokens, jax.core.Tracer):  # Checkable when the tokens are concrete (not under jit).
      counts = np.sum(np.asarray(tokens) == cfg.image_token_id, axis=1)
      if not np.all(counts == soft.shape[1]):
        raise ValueError(f"each row needs {soft.shape[1]} image placeholder tokens (id {cfg.image_token_id}) for "
                         f"{k} image(s), got {counts.tolist()}")
    idx = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, soft.shape[1] - 1)
    gathered = jnp.take_along_axis(soft, idx[..., None], axis=1)
    return jnp.where(is_image[..., None], gathered, x)

  def _mask(self, tokens, input_mask, mask_ar):
    is_image = tokens == self.config.image_token_id
    return make_attn_mask(input_mask, mask_ar) | image_block_mask(is_image, input_mask)

  def embed_prompt(self, images, tokens, input_mask, mask_ar=None):
    """Prompt for sampling: x [B, T, D], attn_mask [B, T, T] (causal, bidirectional within images), positions."""
    input_mask = input_mask.astype(bool)
    if mask_ar is None:
      mask_ar = jnp.ones_like(tokens, jnp.int32)
    x = self.embed_image_and_text(images, tokens)
    return x, self._mask(tokens, input_mask, mask_ar), positions_from_mask(input_mask)

  def __call__(self, images, tokens, mask_ar=None, input_mask=None, deterministic=True):
    """Training forward: logits [B, T, V]. mask_ar defaults to all ones (causal LM, as Gemma3 is trained).

    deterministic=False applies the decoder's `llm.dropout` (needs a "dropout" rng).
    """
    if input_mask is None:
      input_mask = jnp.ones_like(tokens, bool)
    x, attn_mask, positions = self.embed_prompt(images, tokens, input_mask, mask_ar)
    logits, _ = self.llm(x, positions, attn_mask, deterministic=deterministic)
    return logits


def abstract_params(cfg, batch=1):
  """Param shapes (jax.ShapeDtypeStruct tree) of a VLM config, via jax.eval_shape: nothing is allocated."""
  model = get_model(cfg)
  images = jax.ShapeDtypeStruct((batch, cfg.res, cfg.res, 3), jnp.float32)
  if cfg.family == "paligemma":
    tokens = jax.ShapeDtypeStruct((batch, 4), jnp.int32)
    fn = lambda rng, im, tok: model.init(rng, im, tok, tok)
  else:
    tokens = jax.ShapeDtypeStruct((batch, cfg.mm_tokens_per_image), jnp.int32)
    fn = lambda rng, im, tok: model.init(rng, im, tok)
  return jax.eval_shape(fn, jax.random.PRNGKey(0), images, tokens)["params"]


def count_params(cfg):
  """{"img": n, "llm": n, ..., "total": n} parameter counts of a VLM config (no allocation)."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.img.scan, cfg.llm.scan_layers = True, True  # Same counts, much less to trace.
  params = abstract_params(cfg)
  counts = {k: sum(math.prod(x.shape) for x in jax.tree.leaves(v)) for k, v in params.items()}
  counts["total"] = sum(counts.values())
  return counts
