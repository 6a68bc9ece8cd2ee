"""KV-cache sampler: filters, transformers parity, padding, buckets, groups, stop tokens, masks, the decode HLO."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from auditdm_jax import sampling
from auditdm_jax.models import gemma


class FakeTokenizer:
  eos_id = 1

  def decode(self, ids):
    return " ".join(str(i) for i in ids)


def _prompts(cfg, lengths, t, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.arange(t)[None] >= (t - np.asarray(lengths))[:, None]  # Left padding.
  return np.where(mask, rng.integers(2, cfg.vocab_size, (len(lengths), t)), 0), mask


def _right(tokens, mask):
  rt, rm = np.zeros_like(tokens), np.zeros_like(mask)
  for i, n in enumerate(mask.sum(1)):
    rt[i, :n], rm[i, :n] = tokens[i, mask.shape[1] - n:], True
  return rt, rm


def test_filter_logits_hand_values():
  logits = jnp.array([[2.0, 1.0, 0.0, -1.0]])
  cand, ids = sampling.filter_logits(logits, 1.0, top_k=2)
  np.testing.assert_array_equal(ids, [[0, 1]])
  np.testing.assert_allclose(cand, [[2.0, 1.0]])
  # softmax = [.644, .237, .087, .032]: mass before each = [0, .644, .881, .968].
  cand, ids = sampling.filter_logits(logits, 1.0, top_p=0.7)
  np.testing.assert_array_equal(np.isfinite(cand), [[True, True, False, False]])
  cand, _ = sampling.filter_logits(logits, 1.0, top_p=0.5)
  np.testing.assert_array_equal(np.isfinite(cand), [[True, False, False, False]])
  cand, _ = sampling.filter_logits(logits, 0.5)
  np.testing.assert_allclose(cand, logits * 2)
  keys = jax.random.split(jax.random.key(0), 1)
  assert sampling.pick_tokens(logits, keys, 1.0, top_k=1)[0] == 0
  assert sampling.bucket(1) == 16 and sampling.bucket(17) == 32 and sampling.bucket(64) == 64


def test_first_argmax_is_argmax_with_ties_to_the_first():
  logits = jnp.array([[1.0, 3.0, 3.0, -2.0], [-jnp.inf, -5.0, -jnp.inf, -5.0], [0.0, 0.0, 0.0, 0.0]])
  np.testing.assert_array_equal(sampling.first_argmax(logits), [1, 1, 0])
  rand = jax.random.normal(jax.random.key(1), (64, 1000))
  np.testing.assert_array_equal(sampling.first_argmax(rand), jnp.argmax(rand, -1))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["gemma2_tiny", "gemma3_tiny"])
def test_greedy_matches_transformers_generate(variant):
  cfg = gemma.get_config(variant)
  params = gemma.random_params(cfg)
  hf = gemma.hf_text_model(cfg, params)
  tokens, mask = _prompts(cfg, [12, 7, 3], 12)
  n = 20  # Prompt + new tokens > window 8: the ring buffer wraps.
  with torch.no_grad():
    out = hf.generate(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(int)),
                      do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0,
                      eos_token_id=None, output_logits=True, return_dict_in_generate=True)
  want = out.sequences[:, 12:].numpy()
  want_lp = np.take_along_axis(torch.stack(out.logits, 1).log_softmax(-1).numpy(),
                               want[..., None], -1)[..., 0]

  sampler = sampling.Sampler(gemma.Model(cfg), params)
  got = sampler.sample_tokens(tokens, mask, max_new_tokens=n, stop_tokens=())
  np.testing.assert_array_equal(got.tokens[:, 0], want)
  np.testing.assert_allclose(got.logprobs[:, 0], want_lp, atol=1e-4)
  assert (got.lengths == n).all() and got.finish_reasons == [["length"]] * 3
  # Right padding gives the same continuations (and reuses the compiled functions).
  right = sampler.sample_tokens(*_right(tokens, mask), max_new_tokens=n, stop_tokens=())
  np.testing.assert_array_equal(right.tokens, got.tokens)
  np.testing.assert_allclose(right.logprobs, got.logprobs, atol=1e-5)
  assert sampler.compile_count == 2


@pytest.mark.parametrize("variant", ["gemma2_tiny", "gemma3_tiny"])
def test_sampled_logprobs_match_transformers_forward(variant):
  """Temperature/top-p samples: logprobs are the unmodified model's, checked by a HF forward."""
  cfg = gemma.get_config(variant)
  params = gemma.random_params(cfg)
  tokens, mask = _prompts(cfg, [9, 5], 9, seed=1)
  sampler = sampling.Sampler(gemma.Model(cfg), params)
  got = sampler.sample_tokens(tokens, mask, max_new_tokens=16, temperature=1.5, top_p=0.9,
                              top_k=50, rng=jax.random.key(3), stop_tokens=())
  seq = np.concatenate([tokens, got.tokens[:, 0]], 1)
  full_mask = np.concatenate([mask, np.ones((2, 16), bool)], 1)
  hf = gemma.hf_text_model(cfg, params)
  with torch.no_grad():
    pos = np.maximum(np.cumsum(full_mask, 1) - 1, 0)
    lp = hf(input_ids=torch.tensor(seq), attention_mask=torch.tensor(full_mask.astype(int)),
            position_ids=torch.tensor(pos)).logits.log_softmax(-1).numpy()
  want = np.take_along_axis(lp[:, 8:-1], got.tokens[:, 0, :, None], -1)[..., 0]
  assert len(np.unique(got.tokens)) > 8  # Diverse samples, not a repeated token.
  np.testing.assert_allclose(got.logprobs[:, 0], want, atol=1e-4)


def test_groups_prng_stop_tokens_text_and_buckets():
  cfg = gemma.get_config("gemma2_tiny")
  params = gemma.random_params(cfg)
  sampler = sampling.Sampler(gemma.Model(cfg), params, tokenizer=FakeTokenizer())
  tokens, mask = _prompts(cfg, [10, 6, 8], 10, seed=2)
  kw = dict(temperature=1.0, rng=jax.random.key(7))
  free = sampler.sample_tokens(tokens, mask, max_new_tokens=12, num_samples=4, stop_tokens=(),
                               **kw)
  assert len({tuple(r) for r in free.tokens[0]}) > 1  # Samples of a group differ.
  # Same PRNG streams with stop tokens: each sequence is cut right after its first stop token.
  stops = (int(free.tokens[0, 0, 3]), int(free.tokens[2, 1, 6]))
  kw["stop_tokens"] = stops
  out = sampler.sample_tokens(tokens, mask, max_new_tokens=12, num_samples=4, **kw)
  assert out.tokens.shape == (3, 4, 12) and out.logprobs.shape == (3, 4, 12)
  for i in range(3):
    for n in range(4):
      row, hits = free.tokens[i, n], np.flatnonzero(np.isin(free.tokens[i, n], stops))
      length = hits[0] + 1 if len(hits) else 12
      assert out.lengths[i, n] == length
      assert out.finish_reasons[i][n] == ("stop" if len(hits) else "length")
      np.testing.assert_array_equal(out.tokens[i, n, :length], row[:length])
      np.testing.assert_allclose(out.logprobs[i, n, :length], free.logprobs[i, n, :length])
      assert (out.tokens[i, n, length:] == 0).all() and (out.logprobs[i, n, length:] == 0).all()
      assert (out.logprobs[i, n, :length] < 0).all()
      assert out.text[i][n] == " ".join(map(str, row[:length - len(hits[:1])]))
  assert out.finish_reasons[0][0] == "stop" and out.lengths[0, 0] <= 4
  assert sampler.compile_count == 2  # Stop tokens and group sampling reuse the compiled code.
  # Per-sequence PRNG: a smaller batch (another compiled batch bucket) samples the same rows.
  same_rows = sampler.sample_tokens(tokens[:2], mask[:2], max_new_tokens=12, num_samples=4, **kw)
  np.testing.assert_array_equal(same_rows.tokens, out.tokens[:2])
  np.testing.assert_allclose(same_rows.logprobs, out.logprobs[:2], atol=1e-5)
  # Prompt length 10 -> 13 and 12 -> 9 new tokens stay in the same buckets: no recompilation.
  compiles = sampler.compile_count
  longer = np.concatenate([np.zeros((3, 3), int), tokens], 1)
  sampler.sample_tokens(longer, np.concatenate([np.zeros((3, 3), bool), mask], 1),
                        max_new_tokens=9, num_samples=4, **kw)
  assert sampler.compile_count == compiles


@pytest.mark.slow
def test_prefix_lm_mask_is_honoured():
  """Bidirectional prefix (as PaliGemma's image+prefix): logprobs equal a cache-free forward."""
  cfg = gemma.get_config("gemma3_tiny")
  params = gemma.random_params(cfg)
  model = gemma.Model(cfg)
  b, t, prefix, n = 2, 10, 6, 8
  tokens = np.random.default_rng(4).integers(2, cfg.vocab_size, (b, t))
  input_mask = np.ones((b, t), bool)
  input_mask[1, 7:] = False  # Right padding.
  mask_ar = (np.arange(t) >= prefix)[None].repeat(b, 0)  # Causal after the prefix.
  cums = np.cumsum(mask_ar, 1)
  attn = (cums[:, None, :] <= cums[:, :, None]) & input_mask[:, None] & input_mask[:, :, None]
  positions = np.maximum(np.cumsum(input_mask, 1) - 1, 0)
  x = model.apply({"params": params}, tokens, method=model.embed_tokens)
  out = sampling.Sampler(model, params).sample(x, attn, positions, max_new_tokens=n, stop_tokens=())

  # Cache-free check: the prompt (with its prefix-LM mask) followed by the generated tokens.
  for i in range(b):
    real = tokens[i, input_mask[i]]
    seq = np.concatenate([real, out.tokens[i, 0]])[None]
    s = seq.shape[1]
    m = np.tril(np.ones((s, s), bool))
    m[:prefix, :prefix] = True
    logits, _ = jax.jit(model.apply)({"params": params}, model.apply(
        {"params": params}, seq, method=model.embed_tokens), np.arange(s)[None], m[None])
    lp = jax.nn.log_softmax(logits[0, len(real) - 1:-1])
    np.testing.assert_allclose(out.logprobs[i, 0], lp[np.arange(n), out.tokens[i, 0]], atol=1e-4)


def test_bad_inputs():
  cfg = gemma.get_config("gemma2_tiny")
  sampler = sampling.Sampler(gemma.Model(cfg), gemma.random_params(cfg))
  x = np.zeros((2, 4, cfg.width), np.float32)
  with pytest.raises(ValueError, match="attn_mask"):
    sampler.sample(x, np.ones((2, 4, 3), bool), np.zeros((2, 4), int), max_new_tokens=2)
  with pytest.raises(ValueError, match="rng"):
    sampler.sample(x, np.ones((2, 4, 4), bool), np.zeros((2, 4), int), max_new_tokens=2,
                   temperature=1.0)
  with pytest.raises(ValueError, match="max_new_tokens"):
    sampler.sample(x, np.ones((2, 4, 4), bool), np.zeros((2, 4), int), max_new_tokens=0)


def test_scanned_model_samples_as_unrolled():
  """A `scan_layers` model prefills with its scan over the checkpoint layout (the unrolled model with the decode
  layout): both give the same greedy tokens and logprobs."""
  params = gemma.random_params(gemma.get_config("gemma3_tiny"))
  tokens, mask = _prompts(gemma.get_config("gemma3_tiny"), [11, 4, 9], 11)
  outs = [sampling.Sampler(gemma.Model(gemma.get_config("gemma3_tiny", scan_layers=scan)), params).sample_tokens(
      tokens, mask, max_new_tokens=6, stop_tokens=()) for scan in (False, True)]
  np.testing.assert_array_equal(outs[0].tokens, outs[1].tokens)
  np.testing.assert_allclose(outs[0].logprobs, outs[1].logprobs, atol=1e-5)


def test_params_passed_per_call():
  """`params=` replaces the construction-time params for one call, reusing the compiled code; the decode layout
  of the construction's params is made once."""
  cfg = gemma.get_config("gemma2_tiny")
  p0, p1 = gemma.random_params(cfg, seed=0), gemma.random_params(cfg, seed=1)
  tokens, mask = _prompts(cfg, [5, 3], 5)
  kw = dict(max_new_tokens=6, stop_tokens=())
  sampler = sampling.Sampler(gemma.Model(cfg), p0)
  own = sampler.sample_tokens(tokens, mask, **kw).tokens
  other = sampler.sample_tokens(tokens, mask, params=p1, **kw).tokens
  np.testing.assert_array_equal(other, sampling.Sampler(gemma.Model(cfg), p1).sample_tokens(tokens, mask, **kw).tokens)
  assert not np.array_equal(own, other) and sampler.compile_count == 2
  assert [name for name, _ in sampler.compile_seconds] == ["prefill", "decode"]
  made, layout = [], sampler._layout  # The decode layout of the construction's params is kept between calls...
  sampler._layout = lambda p: made.append(p) or layout(p)
  np.testing.assert_array_equal(sampler.sample_tokens(tokens, mask, **kw).tokens, own)
  assert not made
  sampler.params = p1  # ... and made again for params that replace them.
  np.testing.assert_array_equal(sampler.sample_tokens(tokens, mask, **kw).tokens, other)
  assert len(made) == 1 and made[0] is p1
  with pytest.raises(ValueError, match="params"):
    sampling.Sampler(gemma.Model(cfg), None).sample_tokens(tokens, mask, **kw)


def _loop_body(hlo_text):
  """The text of the (first) while body of an optimised HLO module."""
  body = re.findall(r"body=%?([\w.\-]+)", hlo_text)[0]
  start = hlo_text.index(body + " ")
  return hlo_text[start:hlo_text.index("\n}\n", start)]


def _loop_body_arrays(hlo_text):
  """(dtype, shape) of every array an instruction of the (first) while body materialises."""
  out = []
  for line in _loop_body(hlo_text).splitlines()[1:]:
    m = re.match(r"\s*(?:ROOT )?%?[\w.\-]+ = (\(.*?\)|\S+) ([\w\-]+)\(", line)
    if m and m.group(2) not in ("parameter", "get-tuple-element", "bitcast", "tuple", "constant"):
      for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", m.group(1)):  # A multi-output op has several.
        out.append((dtype, tuple(int(d) for d in dims.split(",") if d)))
  return out


def test_decode_step_copies_no_weight_and_no_cache():
  """The compiled decode step materialises no copy of a layer weight (XLA transposed or sliced q, kv, gating and
  attn_vec weights every step before) and no cache array outside its [B, K, S, H] layout (the score matmul
  transposed every layer's cache every step with the old [B, S, K, H] layout). docs/gpu.md has the 4B figures."""
  cfg = gemma.get_config("gemma3_tiny")
  model = gemma.Model(cfg)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 1, cfg.width)),
                                             jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1, 1), bool)))["params"]
  hlo = sampling.Sampler(model, params).lower(params, 2, 16, 16, greedy=True)["decode"].compile().as_text()
  arrays = _loop_body_arrays(hlo)
  cache = (2, cfg.num_kv_heads, 32, cfg.head_dim)
  smallest_weight = min(np.prod(a.shape[1:]) for a in jax.tree.leaves(params["layers"]) if a.ndim > 2)
  assert arrays and max(np.prod(s) for _, s in arrays) < smallest_weight, sorted(arrays, key=lambda a: np.prod(a[1]))[-3:]
  assert all(s == cache for _, s in arrays if np.prod(s) == np.prod(cache)), arrays
