"""Test-session setup: 8 simulated CPU devices (for sharding tests), one persistent compilation cache, and the
`slow` marker."""
import atexit
import os
import shutil
import tempfile

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One persistent XLA compilation cache per test session, inherited by the tests' subprocesses: tests that rebuild the
# same tiny models, and demo/sweep runs that re-create their jitted steps per run, compile each program once (the
# sweep's end-to-end test takes 40% less time).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="auditdm_test_jax_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: parity/end-to-end tests that take more than ~20 s (still run in CI)")
