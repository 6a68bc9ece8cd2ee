"""Compile time per jitted function, in the log: every XLA compilation that takes at least `MIN_SECONDS` is logged
with the function's name ("compiled jit(step) in 12.3 s"), and `totals()` sums them all per name.

It listens to JAX's own compile-duration event, so it sees every compilation (train steps, samplers, evaluators)
without wrapping them. `install()` is idempotent; the modules that build the big jitted functions
(`train/step.py`, `sampling.py`) call it when imported.
"""
import collections
import logging
import threading

from jax import monitoring

log = logging.getLogger(__name__)

EVENT = "/jax/core/compile/backend_compile_duration"  # Recorded by JAX around each backend compilation.
MIN_SECONDS = 1.0
_lock = threading.Lock()
_totals = collections.defaultdict(lambda: [0, 0.0])
_installed = False


def _listener(event, duration, **kwargs):
  if event != EVENT:
    return
  name = kwargs.get("fun_name", "?")
  with _lock:
    _totals[name][0] += 1
    _totals[name][1] += duration
  if duration >= MIN_SECONDS:
    log.info("compiled %s in %.1f s", name, duration)


def install():
  global _installed
  with _lock:
    if not _installed:
      monitoring.register_event_duration_secs_listener(_listener)
      _installed = True


def totals():
  """{function name: (compilations, seconds)} since the process started listening."""
  with _lock:
    return {name: (n, round(s, 3)) for name, (n, s) in _totals.items()}
