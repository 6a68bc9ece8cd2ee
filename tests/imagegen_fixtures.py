"""Tiny random FLUX / FLUX-Kontext pipelines built from configs, with tokenizers trained here (no downloads).

Sizes follow diffusers' own Flux tests: transformer patch 1, in_channels 4, 1+1 layers, head dim 16, 2 heads,
joint dim 32, rope axes [4, 4, 8]; a one-block AutoencoderKL with 1 latent channel (so the VAE does not downsample
and images are multiples of 2 pixels); tiny CLIP and T5 text encoders.
"""
import atexit
import functools
import json
import os
import shutil
import tempfile

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers import normalizers

import diffusers

CORPUS = [
    "a red circle above a blue square", "move the green triangle to the left", "a photo of two cats on a sofa",
    "make the sky purple", "replace the dog with a horse", "a small yellow star in the corner",
    "three people walking on a beach at sunset", "add a hat to the person", "a large white car parked outside",
] * 4
T5_MAX_LENGTH = 16  # max_sequence_length for the tiny pipelines (FLUX.1-dev uses 512)


def clip_tokenizer():
  """A CLIP BPE tokenizer (byte-level, `</w>` word ends) trained on CORPUS."""
  tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=600, special_tokens=["<|startoftext|>", "<|endoftext|>"], end_of_word_suffix="</w>",
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  model = json.loads(tok.to_str())["model"]
  merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
  return transformers.CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=77)


def t5_tokenizer():
  """A T5 Unigram tokenizer (pad=0, eos=1, unk=2 as in T5) trained on CORPUS."""
  tok = Tokenizer(models.Unigram())
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(
      vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
  vocab = [tuple(v) for v in json.loads(tok.to_str())["model"]["vocab"]]
  return transformers.T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def components(seed=0):
  """The modules of a tiny FLUX pipeline (random weights, deterministic for `seed`)."""
  tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
  torch.manual_seed(seed)
  transformer = diffusers.FluxTransformer2DModel(
      patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
      joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True)
  torch.manual_seed(seed)
  text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
      vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
      max_position_embeddings=77, projection_dim=32, hidden_act="gelu", layer_norm_eps=1e-5,
      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
  torch.manual_seed(seed)
  text_encoder_2 = transformers.T5EncoderModel(transformers.T5Config(
      vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
      relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
  torch.manual_seed(seed)
  vae = diffusers.AutoencoderKL(
      sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=1,
      norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
  return dict(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=vae, transformer=transformer,
              text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)


def save_flux(directory, seed=0):
  """Writes a tiny FluxPipeline to `directory` (save_pretrained layout); returns the directory."""
  diffusers.FluxPipeline(**components(seed)).save_pretrained(directory)
  return str(directory)


def save_kontext(directory, seed=1):
  """Writes a tiny FluxKontextPipeline to `directory`; returns the directory."""
  diffusers.FluxKontextPipeline(**components(seed), image_encoder=None, feature_extractor=None).save_pretrained(
      directory)
  return str(directory)


@functools.cache
def tiny_dirs():
  """(flux_dir, kontext_dir) of tiny pipelines saved once per process (removed at exit)."""
  root = tempfile.mkdtemp(prefix="imagegen_tiny_")
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  return save_flux(os.path.join(root, "flux")), save_kontext(os.path.join(root, "kontext"))
