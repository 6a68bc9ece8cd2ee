"""`auditdm info`: what this process sees (JAX backend, devices, processes, the compile cache, huge pages, library
versions)."""
import importlib.metadata
import json

import jax

from auditdm_jax import distributed
from auditdm_jax import hugepages

HELP = "print the JAX backend, devices, process layout, compile cache, huge pages and library versions as JSON"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "ml-collections", "tensorflow-cpu",
            "tensorflow-datasets", "torch", "transformers", "diffusers")


def _version(name):
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def run(args):
  process_index, process_count = distributed.initialize()
  print(json.dumps({
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "local_device_count": jax.local_device_count(),
      "process_index": process_index,
      "process_count": process_count,
      "compile_cache": jax.config.jax_compilation_cache_dir,  # None: off (auditdm_jax/compile_cache.py).
      "huge_pages": hugepages.status(),  # auditdm_jax/hugepages.py.
      "versions": {p: _version(p) for p in PACKAGES},
  }, indent=2))
