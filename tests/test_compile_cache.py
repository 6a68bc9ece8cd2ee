"""The command line's persistent compilation cache: where it goes, how it is turned off, and that a second process
reads a program back instead of compiling it."""
import json
import os
import subprocess
import sys

import pytest

from auditdm_jax import compile_cache


@pytest.fixture
def env(monkeypatch):
  for k in ("JAX_COMPILATION_CACHE_DIR", compile_cache.ENV, "XDG_CACHE_HOME"):
    monkeypatch.delenv(k, raising=False)
  return monkeypatch


def test_the_default_is_under_the_user_cache(env, tmp_path):
  env.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compile_cache.resolve() == str(tmp_path / "auditdm_jax" / "xla")
  env.delenv("XDG_CACHE_HOME")
  assert compile_cache.resolve() == os.path.join(os.path.expanduser("~"), ".cache", "auditdm_jax", "xla")


def test_the_environment_chooses_or_turns_it_off(env, tmp_path):
  env.setenv(compile_cache.ENV, str(tmp_path / "mine"))
  assert compile_cache.resolve() == str(tmp_path / "mine")
  for off in ("off", "OFF", "0", "false"):
    env.setenv(compile_cache.ENV, off)
    assert compile_cache.resolve() is None
  env.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))  # JAX's own setting wins.
  assert compile_cache.resolve() == str(tmp_path / "jax")


_PROGRAM = """
import json, jax, jax.numpy as jnp
from jax import monitoring
from auditdm_jax import compile_cache
events = []
monitoring.register_event_listener(lambda event, **kw: events.append(event))
directory = compile_cache.enable()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # The test's program compiles fast.
out = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.arange(64.0).reshape(8, 8))
print(json.dumps({"dir": directory, "hits": events.count("/jax/compilation_cache/cache_hits"), "out": float(out)}))
"""


def _run(env_vars):
  out = subprocess.run([sys.executable, "-c", _PROGRAM], env=env_vars, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_reads_the_program_back(tmp_path):
  env_vars = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env_vars[compile_cache.ENV] = str(tmp_path / "cache")
  first = _run(env_vars)
  assert first["dir"] == str(tmp_path / "cache") and first["hits"] == 0
  assert os.listdir(tmp_path / "cache")
  second = _run(env_vars)
  assert second["hits"] >= 1 and second["out"] == first["out"]
  env_vars[compile_cache.ENV] = "off"
  assert _run(env_vars) == {"dir": None, "hits": 0, "out": first["out"]}


def test_the_command_line_turns_it_on(tmp_path):
  env_vars = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  info = lambda: json.loads(subprocess.run([sys.executable, "-m", "auditdm_jax.main", "info"], env=env_vars,
                                           capture_output=True, text=True, check=True).stdout)
  env_vars[compile_cache.ENV] = str(tmp_path / "cli")
  assert info()["compile_cache"] == str(tmp_path / "cli") and os.path.isdir(tmp_path / "cli")
  env_vars[compile_cache.ENV] = "off"
  assert info()["compile_cache"] is None
