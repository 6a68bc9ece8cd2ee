"""Ahead-of-time compile times from abstract shapes (no weights, any backend): the sampler's prefill and decode of a
Gemma decoder, and a VLM train step.

  python -m auditdm_jax.tools.bench_compile                  # Gemma3-4B decode, PaliGemma2-3B@224 train step
  python -m auditdm_jax.tools.bench_compile --decoder gemma3_tiny --vlm paligemma2_tiny --res 32 --seq 8

Prints one JSON line: seconds to lower and to compile each function, the backend, and the machine's load before
and after (compiling is CPU work: a busy machine stretches it). Decode: bf16, greedy, batch/prompt/new tokens as
the GPU check's batch-64 case. Train step: `bench_train`'s loss and optimizer, bf16 compute, float32 params, layers
scanned as the transfer configs train them (`data/transfers.SCANNED`; `--unrolled`: one copy of the code per layer).
"""
import argparse
import json
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from auditdm_jax import sampling
from auditdm_jax.models import gemma
from auditdm_jax.tools import bench_train
from auditdm_jax.tools import machine
from auditdm_jax.train import optim
from auditdm_jax.train import step as step_lib


def _seconds_since(t):
  return round(time.perf_counter() - t, 2)


def decode_compile(variant, batch, prompt_len, new_tokens):
  """{"lower_s" (both functions), "prefill_compile_s", "decode_compile_s"}."""
  cfg = gemma.get_config(variant, dtype="bfloat16", param_dtype="bfloat16")
  model = gemma.Model(cfg)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 1, cfg.width)),
                                             jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1, 1), bool)))["params"]
  t = time.perf_counter()
  lowered = sampling.Sampler(model, params).lower(params, batch, prompt_len, new_tokens, greedy=True)
  out = dict(lower_s=_seconds_since(t))
  for name, fn in lowered.items():
    t = time.perf_counter()
    fn.compile()
    out[f"{name}_compile_s"] = _seconds_since(t)
  return out


def train_compile(variant, res, seq, batch, scan):
  ns = types.SimpleNamespace(res=res, seq=seq, batch=batch, dtype="bfloat16", remat=None, scan=scan)
  setup = bench_train.vlm_setup(ns, variant)
  tx, _ = optim.make_optimizer(dict(lr=1e-4, wd=1e-4, grad_clip_norm=1.0))
  rng = jax.random.key(0)
  params = jax.eval_shape(setup["init"], rng)
  opt_state = jax.eval_shape(tx.init, params)
  batch_shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), setup["batch"](np.random.default_rng(0)))
  t = time.perf_counter()
  lowered = step_lib.make_train_step(setup["loss"], tx).lower(params, opt_state, batch_shapes, rng)
  out = dict(lower_s=_seconds_since(t))
  t = time.perf_counter()
  lowered.compile()
  return dict(out, compile_s=_seconds_since(t))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--decoder", default="gemma3_4b")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--prompt_len", type=int, default=256)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--vlm", default="paligemma2_3b")
  parser.add_argument("--res", type=int, default=224)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--train_batch", type=int, default=16)
  parser.add_argument("--unrolled", action="store_true", help="train step: unroll the ViT and decoder layers")
  args = parser.parse_args(argv)
  before = machine.check_idle()
  result = dict(bench="compile", backend=jax.default_backend(), jax=jax.__version__,
                decode=dict(model=args.decoder, batch=args.batch, prompt_len=args.prompt_len,
                            new_tokens=args.new_tokens,
                            **decode_compile(args.decoder, args.batch, args.prompt_len, args.new_tokens)),
                train=dict(model=f"{args.vlm}@{args.res}px", seq=args.seq, batch=args.train_batch,
                           scan=not args.unrolled,
                           **train_compile(args.vlm, args.res, args.seq, args.train_batch, not args.unrolled)),
                machine_before=before, machine_after=machine.load())
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
