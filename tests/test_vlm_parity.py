"""Parity with transformers (PyTorch, eager attention, fp32): tiny random PaliGemma2 and Gemma3 multimodal models
are saved as safetensors, loaded with checkpoints.py, and must give the same logits on an image+text batch with
padding and different prompt lengths, long enough for the sliding window; then ours -> export -> transformers."""
import numpy as np
import pytest
import torch
import transformers

from auditdm_jax.models import checkpoints
from auditdm_jax.models import vlm

ATOL = 1e-4


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


@pytest.mark.slow
def test_paligemma2_parity_and_roundtrip(tmp_path):
  # Window 24 < sequence (16 image + 28 text tokens) but > image + prefix: transformers lets a prefix longer than
  # the window attend across it (its block mask overrides the window), big_vision and we do not (see README).
  cfg = vlm.get_config("paligemma2_tiny", llm=dict(sliding_window=24))
  ref = _reference(transformers.PaliGemmaForConditionalGeneration, cfg, tmp_path / "hf")
  loaded_cfg, params = checkpoints.load_vlm_hf(tmp_path / "hf")
  assert loaded_cfg.llm == cfg.llm and loaded_cfg.variant == "paligemma2_tiny"

  rng = np.random.RandomState(0)
  b, t, n = 2, 28, 16
  images = rng.uniform(-1, 1, (b, 32, 32, 3)).astype(np.float32)
  input_mask = np.arange(t)[None] < np.array([[28], [15]])
  mask_ar = (np.arange(t)[None] >= np.array([[6], [3]])).astype(np.int32)  # prefixes of 6 and 3 tokens.
  tokens = np.where(input_mask, rng.randint(3, 120, (b, t)), 0).astype(np.int32)
  model = vlm.get_model(cfg)
  ours = np.asarray(model.apply({"params": params}, images, tokens, mask_ar, input_mask))

  hf_inputs = (np.concatenate([np.full((b, n), cfg.llm.vocab_size), tokens], 1), images,
               np.concatenate([np.ones((b, n), bool), input_mask], 1),
               np.concatenate([np.zeros((b, n), np.int32), mask_ar], 1))
  expected = _hf_logits(ref, *hf_inputs)[:, n:]
  assert np.abs(ours - expected)[input_mask].max() <= ATOL

  again = _roundtrip(transformers.PaliGemmaForConditionalGeneration, cfg, params, tmp_path / "out", *hf_inputs)
  assert np.abs(ours - again[:, n:])[input_mask].max() <= ATOL


@pytest.mark.slow
def test_gemma3_parity_and_roundtrip(tmp_path):
  cfg = vlm.get_config("gemma3_tiny")  # Window 8, 5 local : 1 global layers, 30 tokens.
  ref = _reference(transformers.Gemma3ForConditionalGeneration, cfg, tmp_path / "hf")
  loaded_cfg, params = checkpoints.load_vlm_hf(tmp_path / "hf")
  assert loaded_cfg.llm == cfg.llm and loaded_cfg.mm_tokens_per_image == 4

  rng = np.random.RandomState(0)
  b, t = 2, 30
  images = rng.uniform(-1, 1, (b, 32, 32, 3)).astype(np.float32)
  input_mask = np.arange(t)[None] < np.array([[30], [20]])
  tokens = rng.randint(3, 120, (b, t)).astype(np.int32)
  for row, start in enumerate((3, 9)):  # <start_of_image> 4 x <image_soft_token> <end_of_image>
    tokens[row, start:start + 6] = [cfg.boi_token_id] + [cfg.image_token_id] * 4 + [cfg.eoi_token_id]
  tokens = np.where(input_mask, tokens, 0)
  model = vlm.get_model(cfg)
  ours = np.asarray(model.apply({"params": params}, images, tokens, None, input_mask))

  hf_inputs = (tokens, images, input_mask, tokens == cfg.image_token_id)
  expected = _hf_logits(ref, *hf_inputs)
  assert np.abs(ours - expected)[input_mask].max() <= ATOL

  again = _roundtrip(transformers.Gemma3ForConditionalGeneration, cfg, params, tmp_path / "out", *hf_inputs)
  assert np.abs(ours - again)[input_mask].max() <= ATOL
