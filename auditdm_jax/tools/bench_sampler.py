"""Benchmark: our KV-cache sampler vs transformers `generate` on the same small Gemma.

  python -m auditdm_jax.tools.bench_sampler [--batch 16 --prompt_len 32 --new_tokens 64 ...]

Prints one JSON line: decode throughput (generated tokens / s, wall clock of a warm call,
prefill included) for ours and for transformers (PyTorch eager, fp32, same weights, same
left-padded prompts, greedy, no early stop; best of --repeats calls each, the two sides alternating so a drifting
load hits both), their ratio, our compile time and count, whether the greedy tokens agree, the process's peak RSS,
and the load average and thread counts before and after (a ratio taken on a machine busier than its cores is not a
figure to quote: torch's threads suffer far more from load than XLA's; `--require_idle` refuses to run then).
"""
import argparse
import json
import resource
import time

import jax
import numpy as np
import torch
import transformers

from auditdm_jax import sampling
from auditdm_jax.models import gemma
from auditdm_jax.tools import machine


def build_models(args):
  """The same random Gemma3-style decoder in transformers and in ours."""
  cfg = gemma.get_config("gemma3_tiny", width=args.width, depth=args.depth, mlp_dim=4 * args.width,
                         num_heads=8, num_kv_heads=4, head_dim=args.width // 8,
                         vocab_size=args.vocab, sliding_window=1024)
  torch.manual_seed(args.seed)
  hf = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
      **gemma.hf_text_config(cfg), attn_implementation="eager")).eval()
  return cfg, hf, gemma.params_from_hf(hf.state_dict(), cfg)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--prompt_len", type=int, default=32)
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--width", type=int, default=512)
  parser.add_argument("--depth", type=int, default=4)
  parser.add_argument("--vocab", type=int, default=32_768)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per side; best is kept")
  parser.add_argument("--require_idle", action="store_true", help="refuse to run when load average > cores")
  args = parser.parse_args(argv)
  machine_before = machine.check_idle(args.require_idle)

  cfg, hf, params = build_models(args)
  rng = np.random.default_rng(args.seed)
  b, t, n = args.batch, args.prompt_len, args.new_tokens
  lengths = rng.integers(t // 2, t + 1, b)
  mask = np.arange(t)[None] >= (t - lengths)[:, None]  # Left padding, ragged lengths.
  tokens = np.where(mask, rng.integers(3, args.vocab, (b, t)), 0)

  sampler = sampling.Sampler(gemma.Model(cfg), jax.device_put(params))
  run = lambda: sampler.sample_tokens(tokens, mask, max_new_tokens=n, stop_tokens=())
  start = time.perf_counter()
  run()
  compile_s = time.perf_counter() - start

  with torch.no_grad():
    kw = dict(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
              do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0,
              eos_token_id=None)
    hf.generate(**{**kw, "max_new_tokens": 2, "min_new_tokens": 2})  # Warm-up.
    (ours, ours_s), (theirs, hf_s) = machine.best_of_alternating(
        [run, lambda: hf.generate(**kw)[:, t:].numpy()], args.repeats)

  print(json.dumps(dict(
      model=f"gemma3-style L={args.depth} D={args.width} V={args.vocab}", batch=b,
      prompt_len=t, new_tokens=n, devices=jax.device_count(), torch_threads=torch.get_num_threads(),
      ours_tokens_per_s=round(b * n / ours_s, 1), transformers_tokens_per_s=round(b * n / hf_s, 1),
      speedup=round(hf_s / ours_s, 2), ours_s=round(ours_s, 3), transformers_s=round(hf_s, 3),
      ours_first_call_s=round(compile_s, 2), compile_count=sampler.compile_count,
      greedy_tokens_equal_frac=float(np.mean(ours.tokens[:, 0] == theirs)),
      peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      machine_before=machine_before, machine_after=machine.load())))


if __name__ == "__main__":
  main()
