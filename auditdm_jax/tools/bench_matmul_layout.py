"""Benchmark: the three ways to multiply few rows by weights read from memory, per row count (the evidence for
`gemma.out_major_matmul`'s rule on CPU).

  python -m auditdm_jax.tools.bench_matmul_layout [--rows 1,8,16,32,64,128,256,512 --width 512 --layers 32]

A stack of `--layers` MLP blocks (x + tanh(x W1) W2, W1 [D, 4D], W2 [4D, D]; 32 x 8 MB of float32 weights by
default, more than a CPU's caches, so each weight comes from memory as in a decode step) is timed three ways:
`in_major` h @ w[D, F] (the decode layout before 2026-12-07), `out_major` h @ w.T with w [F, D], and
`weight_left` (w @ h.T).T behind an optimization barrier, what `out_major_matmul` does on CPU up to
`gemma._WEIGHT_LEFT_MAX_ROWS` rows. Prints one JSON line: best-of-`--repeats` milliseconds per form and row count
(the forms timed in turn each round, `machine.best_of_alternating`), each form's ratio to `in_major`, and the
machine's load.
"""
import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from auditdm_jax.tools import machine


def _forms():
  weight_left = lambda h, w: jax.lax.optimization_barrier(w @ h.T).T
  return dict(in_major=lambda h, w: h @ w, out_major=lambda h, w: h @ w.T, weight_left=weight_left)


def _stack(mm):
  def run(x, w1s, w2s):
    for w1, w2 in zip(w1s, w2s):
      x = x + mm(jnp.tanh(mm(x, w1)), w2)
    return x
  return jax.jit(run)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", default="1,8,16,32,64,128,256,512")
  parser.add_argument("--width", type=int, default=512)
  parser.add_argument("--layers", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--require_idle", action="store_true", help="refuse to run when load average > cores")
  args = parser.parse_args(argv)
  machine_before = machine.check_idle(args.require_idle)
  rng = np.random.default_rng(args.seed)
  d, f = args.width, 4 * args.width
  w1 = [rng.standard_normal((d, f), np.float32) / np.sqrt(d) for _ in range(args.layers)]
  w2 = [rng.standard_normal((f, d), np.float32) / np.sqrt(f) / 4 for _ in range(args.layers)]
  weights = dict(in_major=(w1, w2), out_major=([w.T.copy() for w in w1], [w.T.copy() for w in w2]))
  weights["weight_left"] = weights["out_major"]
  weights = {k: jax.device_put(v) for k, v in weights.items()}
  fns = {name: _stack(mm) for name, mm in _forms().items()}
  ms = {}
  for rows in (int(r) for r in args.rows.split(",")):
    x = jnp.asarray(rng.standard_normal((rows, d), np.float32))
    calls = [lambda fn=fn, a=(x, *weights[name]): jax.block_until_ready(fn(*a)) for name, fn in fns.items()]
    for call in calls:  # Compile and warm up.
      call()
    best = machine.best_of_alternating(calls, args.repeats)
    ms[rows] = {name: round(1e3 * seconds, 2) for name, (_, seconds) in zip(fns, best)}
  print(json.dumps(dict(
      width=d, layers=args.layers, weights_mb=round(2 * args.layers * d * f * 4 / 1e6, 1),
      backend=jax.default_backend(), ms=ms,
      ratio_to_in_major={r: {k: round(t["in_major"] / v, 2) for k, v in t.items()} for r, t in ms.items()},
      machine_before=machine_before, machine_after=machine.load())))


if __name__ == "__main__":
  main()
