"""VLM composition: masks (hand-computed), configs, parameter counts, embed_prompt contract."""
import jax
import numpy as np
import pytest

from auditdm_jax.models import vlm


def test_make_attn_mask_prefix_lm():
  input_mask = np.array([[1, 1, 1, 1, 1, 0]], bool)
  mask_ar = np.array([[0, 0, 0, 1, 1, 1]])
  expected = np.array([
      [1, 1, 1, 0, 0, 0],
      [1, 1, 1, 0, 0, 0],
      [1, 1, 1, 0, 0, 0],
      [1, 1, 1, 1, 0, 0],
      [1, 1, 1, 1, 1, 0],
      [0, 0, 0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(vlm.make_attn_mask(input_mask, mask_ar)[0], expected)
  causal = vlm.make_attn_mask(np.ones((1, 3), bool), np.ones((1, 3), np.int32))[0]
  np.testing.assert_array_equal(causal, np.tril(np.ones((3, 3), bool)))


def test_image_block_mask_and_positions():
  is_image = np.array([[0, 1, 1, 0, 1, 1, 0]], bool)
  m = np.asarray(vlm.image_block_mask(is_image, np.ones((1, 7), bool))[0])
  assert m[1, 2] and m[2, 1] and m[4, 5] and m[5, 4]
  assert not m[1, 4] and not m[4, 1] and not m[0, 0] and not m[3, 3]
  assert m.sum() == 8
  np.testing.assert_array_equal(vlm.positions_from_mask(np.array([[1, 1, 1, 0, 0]])), [[0, 1, 2, 2, 2]])


@pytest.mark.parametrize("variant,res,expected", [
    ("paligemma2_3b", 224, 3_032_094_960),
    ("paligemma2_3b", 448, 3_032_979_696),
    ("paligemma2_3b", 896, 3_036_518_640),
    ("paligemma2_10b", 224, 9_662_409_456),
    ("paligemma2_28b", 224, 27_650_192_112),
    ("gemma3_4b", 896, 4_299_915_632),  # transformers reports 4,300,079,472 = this + 64 padded vocab rows x 2560.
    ("gemma3_12b", 896, 12_187_079_280),
    ("gemma3_27b", 896, 27_432_062_576),
])
def test_param_counts(variant, res, expected):
  assert vlm.count_params(vlm.get_config(variant, res=res))["total"] == expected


def test_config_errors():
  with pytest.raises(ValueError, match="unknown VLM variant"):
    vlm.get_config("paligemma3_1b")
  with pytest.raises(ValueError, match="resolutions"):
    vlm.get_config("paligemma2_3b", res=300)
  cfg = vlm.get_config("paligemma2_3b", res=448)
  assert cfg.llm.vocab_size == 257_152 and cfg.llm.width == 2304 and cfg.img.variant == "So400m/14"
  # The tiny PaliGemma takes any multiple of its ViT's patch; Gemma3's image-token count fixes its resolution.
  assert vlm.get_config("paligemma2_tiny", res=48).res == 48
  assert vlm.get_config("paligemma2_tiny", res=48, img=dict(variant="mu/16")).res == 48
  with pytest.raises(ValueError, match=r"H, W divisible by 8, got \(1, 50, 50, 3\)"):
    vlm.abstract_params(vlm.get_config("paligemma2_tiny", res=50))
  with pytest.raises(ValueError, match=r"gemma3_tiny supports resolutions \(32,\), got 48"):
    vlm.get_config("gemma3_tiny", res=48)


def _random_params(cfg):
  """Random params from the abstract shapes (much cheaper than compiling `init` on a loaded CPU)."""
  rng = np.random.RandomState(0)
  return jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.1).astype(np.float32), vlm.abstract_params(cfg))


def test_paligemma_embed_prompt_contract():
  cfg = vlm.get_config("paligemma2_tiny")
  images = np.random.RandomState(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  tokens = np.array([[2, 5, 6, 7], [2, 5, 0, 0]], np.int32)
  input_mask = tokens != 0
  model, params = vlm.get_model(cfg), _random_params(cfg)
  assert params["img"]["head"]["kernel"].shape == (32, 64) and params["img"]["head"]["bias"].shape == (64,)

  @jax.jit
  def run(params):
    apply = lambda *a, **k: model.apply({"params": params}, *a, **k)
    return (apply(images, tokens, input_mask, method=model.embed_prompt),
            apply(images, method=model.embed_image),
            apply(images, tokens, np.array([[0, 0, 1, 1]] * 2), input_mask))

  (x, mask, pos), zimg, logits = run(params)
  assert x.shape == (2, 20, 64) and mask.shape == (2, 20, 20) and pos.shape == (2, 20)
  np.testing.assert_array_equal(pos[1], list(range(18)) + [17, 17])
  assert mask[1, :18, :18].all() and not mask[1, :, 18:].any()  # The whole prompt is the bidirectional prefix.
  # Image tokens enter unscaled; text tokens are scaled by sqrt(D).
  np.testing.assert_allclose(x[:, :16], zimg, atol=1e-6)
  emb = params["llm"]["embedder"]["input_embedding"]
  np.testing.assert_allclose(x[0, 17], emb[5] * 8.0, rtol=1e-6)
  assert logits.shape == (2, 4, cfg.llm.vocab_size)


def test_gemma3_embed_prompt_contract():
  cfg = vlm.get_config("gemma3_tiny")
  img_tok, boi, eoi = cfg.image_token_id, cfg.boi_token_id, cfg.eoi_token_id
  tokens = np.array([[2, boi] + [img_tok] * 4 + [eoi, 9, 10],
                     [2, 8, boi] + [img_tok] * 4 + [eoi, 0]], np.int32)
  images = np.random.RandomState(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  model, params = vlm.get_model(cfg), _random_params(cfg)

  @jax.jit
  def run(params):
    apply = lambda *a, **k: model.apply({"params": params}, *a, **k)
    return apply(images, tokens, tokens != 0, method=model.embed_prompt), apply(images, method=model.embed_image)

  (x, mask, _), soft = run(params)
  assert soft.shape == (2, 4, 64)
  np.testing.assert_allclose(x[0, 2:6], soft[0], atol=1e-6)
  np.testing.assert_allclose(x[1, 3:7], soft[1], atol=1e-6)
  assert mask[0, 2, 5] and not mask[0, 1, 2] and mask[0, 8, 2]  # Image tokens bidirectional, text causal.
  assert not mask[1, :, 8].any()
  bad = tokens.copy()
  bad[0, 2] = 5
  with pytest.raises(ValueError, match="placeholder"):
    model.apply({"params": params}, images, bad, method=model.embed_image_and_text)
