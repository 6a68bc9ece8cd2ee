"""One of two processes for tests/test_sharding_multihost.py: jax.distributed on CPU (gloo), 2 devices each.

Each process feeds its half of the batch (host-local data), takes one FSDP train step over the 4 global devices,
then saves and restores a checkpoint collectively. Prints one JSON line.
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from auditdm_jax import sharding
from auditdm_jax.train import checkpoint, optim, step, toy

MODEL = toy.TinyLM(vocab_size=32, width=16, depth=1, num_heads=2, head_dim=8, mlp_dim=32)
BATCH = np.random.default_rng(0).integers(0, 32, (8, 9), dtype=np.int32)


def main():
  process_id, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
  # Read when the backend starts (first device use), so setting it here is early enough; not at import, so the
  # test can import MODEL/BATCH without changing its own environment.
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id)
  mesh = sharding.make_mesh(dict(fsdp=-1))
  params = jax.device_get(jax.jit(lambda: toy.init_params(MODEL, jax.random.key(0)))())
  shardings = sharding.param_shardings(params, mesh, fsdp_min_size=0)
  params = sharding.shard_params(params, shardings=shardings)
  tx, sched = optim.make_optimizer(dict(lr=1e-2))
  opt_state = step.init_opt_state(tx, params, mesh, shardings)
  train_step = step.make_train_step(toy.next_token_loss(MODEL), tx, mesh=mesh, param_shardings=shardings,
                                    schedule_fn=sched)
  local = BATCH[process_id * 4:(process_id + 1) * 4]
  params, opt_state, metrics = train_step(params, opt_state, sharding.shard_batch({"tokens": local}, mesh),
                                          jax.random.key(0))
  ckpt = checkpoint.Checkpointer(workdir, save_every_steps=1)
  ckpt.maybe_save(1, params=params, opt_state=opt_state, rng=jax.random.key(1), data_state={"pos": 8})
  ckpt.close()
  ckpt = checkpoint.Checkpointer(workdir)
  restored = ckpt.restore_latest(params=checkpoint.abstract(params))
  ckpt.close()
  same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), restored["params"], params)
  print(json.dumps({"process": process_id, "devices": jax.device_count(), "loss": float(metrics["loss"]),
                    "restored_equal": all(jax.tree.leaves(same)), "data_state": restored["data_state"]}))


if __name__ == "__main__":
  main()
