"""Multi-host start-up: `jax.distributed.initialize()` when launched as one of several processes, else a no-op."""
import logging
import os

import jax

log = logging.getLogger(__name__)

_initialized = False


def is_multiprocess(env=None):
  """True when the environment says this process is one of several (explicit, SLURM, or a TPU pod)."""
  env = os.environ if env is None else env
  if env.get("AUDITDM_MULTIHOST", "").lower() in ("1", "true"):
    return True
  if env.get("JAX_COORDINATOR_ADDRESS") and int(env.get("JAX_NUM_PROCESSES", "1")) > 1:
    return True
  if int(env.get("SLURM_NTASKS", "1")) > 1:
    return True
  return len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def initialize():
  """Initialises jax.distributed once per process when multi-process; returns (process_index, process_count)."""
  global _initialized
  if not _initialized and is_multiprocess():
    kwargs = {}
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
      kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                    num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                    process_id=int(os.environ["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**kwargs)
    log.info("jax.distributed initialised: process %d of %d", jax.process_index(), jax.process_count())
  _initialized = True
  return jax.process_index(), jax.process_count()
