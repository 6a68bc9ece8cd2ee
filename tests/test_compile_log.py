"""compile_log: each XLA compilation is counted under its function's name and logged when slow enough."""
import logging

import jax
import jax.numpy as jnp

from auditdm_jax import compile_log


def test_compilations_are_counted_and_logged_per_function(monkeypatch, caplog):
  compile_log.install()
  compile_log.install()  # Idempotent: one listener, each compilation counted once.
  monkeypatch.setattr(compile_log, "MIN_SECONDS", 0.0)

  def uniquely_named_square(x):
    return x * x

  f = jax.jit(uniquely_named_square)
  with caplog.at_level(logging.INFO, logger=compile_log.__name__):
    f(jnp.ones(3))
    f(jnp.ones(3))  # Cached: no compilation.
    f(jnp.ones(4))  # New shape: compiled again.
  (name,) = [n for n in compile_log.totals() if "uniquely_named_square" in n]
  count, seconds = compile_log.totals()[name]
  assert count == 2 and seconds > 0
  assert sum(f"compiled {name} in" in r.getMessage() for r in caplog.records) == 2
