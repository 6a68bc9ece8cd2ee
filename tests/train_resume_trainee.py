"""Trainee for the exact-resume tests (run as a subprocess by tests/test_train_checkpoint.py).

Trains a toy LM on 8 simulated CPU devices (FSDP) with AdamW + cosine schedule, random data from a numpy
generator whose state is checkpointed, and a per-step RNG used by the loss. Resumes from the latest checkpoint in
--workdir; writes final params to --out (npz). With --slow, sleeps between steps and prints `CHECKPOINTED <step>`
after each durable checkpoint so a test can kill it mid-run.
"""
import argparse
import os
import sys
import time

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from auditdm_jax import sharding  # noqa: E402
from auditdm_jax import tree_paths as paths
from auditdm_jax.train import checkpoint, optim, step, toy  # noqa: E402


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--total_steps", type=int, default=10)
  parser.add_argument("--save_every", type=int, default=5)
  parser.add_argument("--slow", action="store_true")
  args = parser.parse_args()

  model = toy.TinyLM(vocab_size=64, width=32, depth=2, num_heads=4, head_dim=8, mlp_dim=64)
  config = dict(lr=1e-2, wd=1e-4, grad_clip_norm=1.0, total_steps=args.total_steps,
                schedule=dict(decay_type="cosine", warmup_steps=2, min_lr=1e-3))
  tx, sched = optim.make_optimizer(config)
  mesh = sharding.make_mesh(dict(fsdp=-1))
  shapes = jax.eval_shape(lambda: toy.init_params(model, jax.random.key(0)))
  p_sh = sharding.param_shardings(shapes, mesh, fsdp_min_size=0)
  o_sh = step.opt_state_shardings(tx, shapes, mesh, p_sh)

  def loss_fn(params, batch, rng):
    logits = model.apply({"params": params}, batch["tokens"][:, :-1])
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["tokens"][:, 1:, None], -1)[..., 0]
    keep = jax.random.bernoulli(rng, 0.7, nll.shape)  # the RNG matters: resume must restore it exactly
    return jnp.sum(nll * keep) / jnp.maximum(1, jnp.sum(keep)), {}
  train_step = step.make_train_step(loss_fn, tx, mesh=mesh, param_shardings=p_sh, opt_shardings=o_sh,
                                    schedule_fn=sched)

  ckpt = checkpoint.Checkpointer(args.workdir, save_every_steps=args.save_every, keep=2)
  data_rng = np.random.default_rng(123)
  restored = ckpt.restore_latest(params=checkpoint.abstract(shapes, p_sh),
                                 opt_state=checkpoint.abstract(jax.eval_shape(tx.init, shapes), o_sh))
  if restored is None:
    start, rng = 0, jax.random.key(7)
    params = sharding.shard_params(toy.init_params(model, jax.random.key(0)), shardings=p_sh)
    opt_state = step.init_opt_state(tx, params, mesh, p_sh)
  else:
    start, rng = restored["step"], restored["rng"]
    params, opt_state = restored["params"], restored["opt_state"]
    data_rng.bit_generator.state = restored["data_state"]["bit_generator"]
    print(f"RESUMED {start}", flush=True)

  for s in range(start, args.total_steps):
    batch = {"tokens": data_rng.integers(0, 64, size=(16, 9), dtype=np.int32)}
    rng, step_rng = jax.random.split(rng)
    params, opt_state, metrics = train_step(params, opt_state, sharding.shard_batch(batch, mesh), step_rng)
    jax.block_until_ready(metrics)
    saved = ckpt.maybe_save(s + 1, params=params, opt_state=opt_state, rng=rng,
                            data_state={"bit_generator": data_rng.bit_generator.state})
    if args.slow:
      if saved:
        ckpt.wait()
        print(f"CHECKPOINTED {s + 1}", flush=True)
      time.sleep(0.5)
    if ckpt.preempted:
      print(f"PREEMPTED {s + 1}", flush=True)
      try:
        ckpt.close()
      except checkpoint.Preempted as e:
        return 128 + e.signum
  ckpt.close()
  flat = paths.tree_map_with_names(lambda n, x: (n, np.asarray(x)), params)
  np.savez(args.out, **dict(jax.tree.leaves(flat, is_leaf=lambda x: isinstance(x, tuple))))
  print("DONE", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
