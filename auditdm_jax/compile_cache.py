"""JAX's persistent compilation cache, on for the command line: an XLA program compiled once (a train step, a
sampler's prefill and decode step) is read back from disk wherever it recurs: in later runs, in the other seeds and
weaknesses of a sweep, and for each model of a run that shares another's architecture and batch shapes (the
demo's references and target). The cached executable is the one XLA built, so results are unchanged.

Where: `$AUDITDM_JAX_COMPILE_CACHE` (a directory, or `off`), else `~/.cache/auditdm_jax/xla` (under
`$XDG_CACHE_HOME` when set): programs that compile in under `MIN_COMPILE_SECONDS` are not stored, and the directory
is kept under `MAX_BYTES` (least recently used first out). When JAX's own `JAX_COMPILATION_CACHE_DIR` is set, JAX's
environment variables decide everything.
"""
import importlib.util
import logging
import os

log = logging.getLogger(__name__)

ENV = "AUDITDM_JAX_COMPILE_CACHE"
MIN_COMPILE_SECONDS = 1.0
MAX_BYTES = 4 << 30


def default_dir():
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "auditdm_jax", "xla")


def resolve():
  """The cache directory the environment asks for, or None when it is off."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  chosen = os.environ.get(ENV, "").strip()
  if chosen.lower() in ("off", "0", "false", "none"):
    return None
  return chosen or default_dir()


def enable():
  """Turns the persistent cache on at `resolve()`'s directory (before anything compiles); returns it, or None."""
  import jax  # pylint: disable=import-outside-toplevel  (the CLI's listing does not import jax)
  directory = resolve()
  if directory is None or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return directory  # Off, or JAX configured by its own environment variables.
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    log.warning("compile cache off: cannot create %s (%s)", directory, e)
    return None
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  if importlib.util.find_spec("filelock"):  # JAX bounds the size with it (a dependency; an old install may lack it).
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  log.debug("compile cache: %s", directory)
  return directory
