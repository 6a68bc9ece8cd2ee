"""Test-session setup: 8 simulated CPU devices (for sharding tests), one persistent compilation cache, the `slow`
marker, and the files with slow tests scheduled first."""
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
  # Under `-n 2 --dist loadfile` (the README's command) files go to the workers in collection order, not xdist's
  # default of the files with the most tests first: that put the one-test end-to-end files last.
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
  """Files with `slow` tests first, so that the long ones start on both workers at once instead of one of them
  ending the run alone (a stable sort: the order within each group is kept)."""
  slow = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in slow)
