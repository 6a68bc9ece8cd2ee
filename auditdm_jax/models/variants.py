"""The VLM variant table and Gemma3's image-token fields: plain data, so configs read them without importing jax."""

# name -> (family, llm variant, vit variant, resolutions; the first is the default). Tiny variants: tiny SigLIP +
# tiny Gemma, for tests and the shapes world; the PaliGemma one takes any resolution (a multiple of its ViT's patch, which
# the ViT checks), Gemma3's image-token count fixes its own.
VARIANTS = {
    "paligemma2_3b": ("paligemma", "gemma2_2b", "So400m/14", (224, 448, 896)),
    "paligemma2_10b": ("paligemma", "gemma2_9b", "So400m/14", (224, 448, 896)),
    "paligemma2_28b": ("paligemma", "gemma2_27b", "So400m/14", (224, 448, 896)),
    "paligemma2_tiny": ("paligemma", "gemma2_tiny", "mu/8", (32, 64, 96, 128)),
    "gemma3_4b": ("gemma3", "gemma3_4b", "So400m/14", (896,)),
    "gemma3_12b": ("gemma3", "gemma3_12b", "So400m/14", (896,)),
    "gemma3_27b": ("gemma3", "gemma3_27b", "So400m/14", (896,)),
    "gemma3_tiny": ("gemma3", "gemma3_tiny", "mu/8", (32,)),
}
GEMMA3_IMAGE_TOKEN = 262_144  # <image_soft_token>: outside the sentencepiece vocab, as in transformers.


def lookup(variant, res=None):
  """(family, llm variant, vit variant, res): `res` defaults to the variant's first resolution and is checked."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown VLM variant {variant!r}; known: {sorted(VARIANTS)}")
  family, llm_variant, vit_variant, resolutions = VARIANTS[variant]
  res = res or resolutions[0]
  any_res = family == "paligemma" and variant.endswith("_tiny")
  if not (res >= 1 if any_res else res in resolutions):
    raise ValueError(f"{variant} supports resolutions {'>= 1' if any_res else resolutions}, got {res!r}")
  return family, llm_variant, vit_variant, res


def gemma3_image_tokens(variant, vocab_size):
  """mm_tokens_per_image, image_token_id, boi_token_id, eoi_token_id of a Gemma3 variant with this vocabulary."""
  if variant.endswith("tiny"):  # Special tokens at the end of a tiny vocabulary.
    return dict(mm_tokens_per_image=4, image_token_id=vocab_size - 1, boi_token_id=vocab_size - 3,
                eoi_token_id=vocab_size - 2)
  return dict(mm_tokens_per_image=256, image_token_id=GEMMA3_IMAGE_TOKEN, boi_token_id=255_999,
              eoi_token_id=256_000)
