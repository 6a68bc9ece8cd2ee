"""Parity with transformers (PyTorch, eager attention, fp32): tiny random PaliGemma2 and Gemma3 multimodal models
are saved as safetensors, loaded with checkpoints.py, and must give the same logits on an image+text batch with
padding and different prompt lengths, long enough for the sliding window; then ours -> export -> transformers.
Decoder widths 96 and 2560 catch a sqrt(D) embedding scale rounded through bf16 (64 is exact in bf16).

Tolerance: float32 summation order differs between XLA and torch and between CPUs, and its error grows with the
logits (at width 2560 they reach 30-116): 1e-4, or 2e-5 of the largest logit, whichever is larger. Measured:
float32 differences up to 1.5e-4 at width 2560 (1.3e-6 of the largest logit); a bf16-rounded sqrt(D) gives
2.4e-3 at width 96 and 0.024-0.079 at width 2560 (7e-4 of the largest logit), 20-40x over the tolerance."""
import numpy as np
import pytest
import torch
import transformers

from auditdm_jax.models import checkpoints
from auditdm_jax.models import gemma
from auditdm_jax.models import vlm

ATOL, RTOL = 1e-4, 2e-5


def _assert_close(ours, expected, mask):
  tol = max(ATOL, RTOL * np.abs(expected[mask]).max())
  err = np.abs(ours - expected)[mask].max()
  assert err <= tol, f"max |ours - expected| {err:.3g} > {tol:.3g}"


def _reference(cls, cfg, path):
  hf_cfg = checkpoints.hf_config(cfg)
  hf_cfg._attn_implementation = "eager"  # pylint: disable=protected-access
  torch.manual_seed(0)
  model = cls(hf_cfg).eval()
  with torch.no_grad():  # Norm scales start at 0 and the projection at 0: perturb everything.
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  model.save_pretrained(path)
  return model


def _hf_logits(model, ids, images, attention_mask, token_type_ids):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids, dtype=torch.long),
                 pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)),
                 attention_mask=torch.tensor(attention_mask, dtype=torch.long),
                 token_type_ids=torch.tensor(token_type_ids, dtype=torch.long)).logits.numpy()


def _roundtrip(cls, cfg, params, path, *inputs):
  checkpoints.export_vlm_hf(path, cfg, params)
  model, info = cls.from_pretrained(path, attn_implementation="eager", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
  return _hf_logits(model.eval(), *inputs)


# Decoders at widths whose sqrt is not exact in bf16 (96; 2560 = Gemma3-4B's width), real head counts (8 q / 4 kv
# heads: Gemma2-2B of PaliGemma2-3B and Gemma3-4B), shrunk depth / MLP / vocabulary.
_WIDE = dict(depth=2, mlp_dim=256, num_heads=8, num_kv_heads=4, vocab_size=256)
LLM = {"tiny": {}, "w96": dict(_WIDE, width=96, head_dim=16), "w2560": dict(_WIDE, width=2560, head_dim=256)}
_slow_if_wide = lambda names: [pytest.param(n, marks=pytest.mark.slow) if n == "w2560" else n for n in names]


@pytest.mark.slow
@pytest.mark.parametrize("window", [None, 24])
@pytest.mark.parametrize("width", _slow_if_wide(["tiny", "w96", "w2560"]))
def test_paligemma2_parity_and_roundtrip(tmp_path, width, window):
  """window None: PaliGemma2's default, big_vision's global attention on every layer (transformers with all layers
  "full_attention"). window 24 (`llm.sliding_window`, transformers' PaliGemma2): shorter than the sequence (16
  image + 28 text tokens) but longer than image + prefix: transformers lets a prefix longer than the window attend
  across it (its block mask overrides the window), our band does not (models/gemma.py `window_mask`)."""
  cfg = vlm.get_config("paligemma2_tiny", llm=dict(LLM[width], sliding_window=window))
  ref = _reference(transformers.PaliGemmaForConditionalGeneration, cfg, tmp_path / "hf")
  # A HF PaliGemma2 loads with big_vision's attention unless the config asks for the window.
  from_hf = checkpoints.config_from_hf(tmp_path / "hf").llm
  assert gemma.attn_kinds(from_hf) == ("global",) * cfg.llm.depth
  drop = lambda c: {k: v for k, v in c.items() if k not in ("sliding_window", "attn_pattern")}
  assert drop(from_hf) == drop(cfg.llm)
  loaded_cfg, params = checkpoints.load_vlm_hf(tmp_path / "hf", cfg)

  rng = np.random.RandomState(0)
  b, t, n = 2, 28, 16
  images = rng.uniform(-1, 1, (b, 32, 32, 3)).astype(np.float32)
  input_mask = np.arange(t)[None] < np.array([[28], [15]])
  mask_ar = (np.arange(t)[None] >= np.array([[6], [3]])).astype(np.int32)  # prefixes of 6 and 3 tokens.
  tokens = np.where(input_mask, rng.randint(3, cfg.llm.vocab_size - 8, (b, t)), 0).astype(np.int32)
  model = vlm.get_model(loaded_cfg)
  ours = np.asarray(model.apply({"params": params}, images, tokens, mask_ar, input_mask))

  hf_inputs = (np.concatenate([np.full((b, n), cfg.llm.vocab_size), tokens], 1), images,
               np.concatenate([np.ones((b, n), bool), input_mask], 1),
               np.concatenate([np.zeros((b, n), np.int32), mask_ar], 1))
  expected = _hf_logits(ref, *hf_inputs)[:, n:]
  assert np.abs(expected[input_mask]).max() > 1.0  # Non-trivial logits.
  _assert_close(ours, expected, input_mask)

  again = _roundtrip(transformers.PaliGemmaForConditionalGeneration, cfg, params, tmp_path / "out", *hf_inputs)
  _assert_close(ours, again[:, n:], input_mask)


@pytest.mark.slow
@pytest.mark.parametrize("width", _slow_if_wide(["tiny", "w96", "w2560"]))
def test_gemma3_parity_and_roundtrip(tmp_path, width):
  # Window 8 < 30 tokens; the tiny decoder has 5 local : 1 global layers, the wide ones local + global.
  llm = LLM[width] | (dict(attn_pattern=("local", "global")) if LLM[width] else {})
  cfg = vlm.get_config("gemma3_tiny", llm=llm)
  ref = _reference(transformers.Gemma3ForConditionalGeneration, cfg, tmp_path / "hf")
  loaded_cfg, params = checkpoints.load_vlm_hf(tmp_path / "hf")
  assert loaded_cfg.llm == cfg.llm and loaded_cfg.mm_tokens_per_image == 4

  rng = np.random.RandomState(0)
  b, t = 2, 30
  images = rng.uniform(-1, 1, (b, 32, 32, 3)).astype(np.float32)
  input_mask = np.arange(t)[None] < np.array([[30], [20]])
  tokens = rng.randint(3, cfg.llm.vocab_size - 8, (b, t)).astype(np.int32)
  for row, start in enumerate((3, 9)):  # <start_of_image> 4 x <image_soft_token> <end_of_image>
    tokens[row, start:start + 6] = [cfg.boi_token_id] + [cfg.image_token_id] * 4 + [cfg.eoi_token_id]
  tokens = np.where(input_mask, tokens, 0)
  model = vlm.get_model(cfg)
  ours = np.asarray(model.apply({"params": params}, images, tokens, None, input_mask))

  hf_inputs = (tokens, images, input_mask, tokens == cfg.image_token_id)
  expected = _hf_logits(ref, *hf_inputs)
  assert np.abs(expected[input_mask]).max() > 1.0  # Non-trivial logits.
  _assert_close(ours, expected, input_mask)

  again = _roundtrip(transformers.Gemma3ForConditionalGeneration, cfg, params, tmp_path / "out", *hf_inputs)
  _assert_close(ours, again, input_mask)
