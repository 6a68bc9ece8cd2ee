"""SigLIP ViT image encoder (big_vision `vit.py` layout, no pooling head: PaliGemma/Gemma3 use every patch token).

Param names follow big_vision: `embedding/{kernel,bias}`, `pos_embedding`,
`Transformer/encoderblock_{i}/{LayerNorm_0,MultiHeadDotProductAttention_0,LayerNorm_1,MlpBlock_0}/...`
(or `Transformer/encoderblock/...` with a leading layer axis when `scan=True`), `Transformer/encoder_norm`,
and an optional linear `head` (PaliGemma uses it as the image-to-LLM projection).
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

# name -> (width, depth, mlp_dim, num_heads). So400m is the shape-optimised SigLIP used by PaliGemma and Gemma3.
WIDTHS = {
    "mu": (32, 1, 128, 2), "Ti": (192, 12, 768, 3), "S": (384, 12, 1536, 6), "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16), "So400m": (1152, 27, 4304, 16),
}


def decode_variant(variant):
  """"So400m/14" -> dict(width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=14)."""
  m = re.fullmatch(r"(\w+)/(\d+)", variant or "")
  if not m or m.group(1) not in WIDTHS:
    raise ValueError(f"unknown ViT variant {variant!r}; expected one of {sorted(WIDTHS)} + '/<patch>'")
  width, depth, mlp_dim, num_heads = WIDTHS[m.group(1)]
  return dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads, patch_size=int(m.group(2)))


class MlpBlock(nn.Module):
  """Transformer MLP with tanh-approximated GELU (as SigLIP was trained)."""
  mlp_dim: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="Dense_0")(x)
    x = nn.gelu(x, approximate=True)
    return nn.Dense(d, dtype=self.dtype, param_dtype=self.param_dtype, name="Dense_1")(x)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block over patch tokens [B, N, D]; all tokens see each other."""
  mlp_dim: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, _=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = nn.LayerNorm(epsilon=1e-6, name="LayerNorm_0", **kw)(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="MultiHeadDotProductAttention_0",
                                        deterministic=True, **kw)(y, y)
    x = x + y
    y = nn.LayerNorm(epsilon=1e-6, name="LayerNorm_1", **kw)(x)
    x = x + MlpBlock(self.mlp_dim, name="MlpBlock_0", **kw)(y)
    return x, None


class Encoder(nn.Module):
  """Stack of `depth` blocks + final LayerNorm; `scan` stacks the block params on a leading layer axis."""
  depth: int
  mlp_dim: int
  num_heads: int
  scan: bool = False
  remat_policy: str = "none"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype)
    block = Encoder1DBlock
    if self.remat_policy != "none":
      policy = None if self.remat_policy == "full" else getattr(jax.checkpoint_policies, self.remat_policy)
      block = nn.remat(block, policy=policy, prevent_cse=not self.scan)
    if self.scan:
      x, _ = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                     length=self.depth)(name="encoderblock", **kw)(x, None)
    else:
      for i in range(self.depth):
        x, _ = block(name=f"encoderblock_{i}", **kw)(x)
    return nn.LayerNorm(epsilon=1e-6, name="encoder_norm", dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Model(nn.Module):
  """SigLIP ViT: images [B, H, W, 3] in [-1, 1] -> patch tokens [B, N, D] (or [B, N, head_dim] with a head).

  The learned position embedding has one row per patch of the image size seen at init, so a model is
  tied to its resolution (224 -> 256 tokens, 448 -> 1024, 896 -> 4096 for /14).
  """
  variant: str = "So400m/14"
  head_dim: int | None = None  # PaliGemma: a Dense (with bias) projecting to the LLM width.
  width: int | None = None  # Overrides of the variant's shape (tiny test models).
  depth: int | None = None
  mlp_dim: int | None = None
  num_heads: int | None = None
  scan: bool = False
  remat_policy: str = "none"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def shape(self):
    s = decode_variant(self.variant)
    for k in ("width", "depth", "mlp_dim", "num_heads"):
      if getattr(self, k) is not None:
        s[k] = getattr(self, k)
    return s

  @nn.compact
  def __call__(self, image):
    s = self.shape()
    p = s["patch_size"]
    if image.ndim != 4 or image.shape[-1] != 3 or image.shape[1] % p or image.shape[2] % p:
      raise ValueError(f"expected images [B, H, W, 3] with H, W divisible by {p}, got {image.shape}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Conv(s["width"], (p, p), strides=(p, p), padding="VALID", name="embedding", **kw)(image)
    b, h, w, d = x.shape
    x = x.reshape(b, h * w, d)
    posemb = self.param("pos_embedding", nn.initializers.normal(stddev=1 / d ** 0.5), (1, h * w, d),
                        self.param_dtype)
    x = x + posemb.astype(x.dtype)
    x = Encoder(s["depth"], s["mlp_dim"], s["num_heads"], scan=self.scan, remat_policy=self.remat_policy,
                name="Transformer", **kw)(x)
    if self.head_dim is not None:
      x = nn.Dense(self.head_dim, name="head", **kw)(x)
    return x
