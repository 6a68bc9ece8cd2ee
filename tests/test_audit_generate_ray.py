"""`generate --ray` on a local Ray cluster: several workers, one killed mid-run, records identical to a
single-process run."""
import json
import os
import sys

import pytest

from auditdm_jax.audit import generate

ray = pytest.importorskip("ray")
TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)
import audit_toy  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="module")
def cluster():
  """One local cluster for the module (Ray start-up is the slow part); workers import the test systems."""
  path = os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])
  ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False,
           runtime_env={"env_vars": {"PYTHONPATH": path, "JAX_PLATFORMS": "cpu"}})
  yield
  ray.shutdown()


def _records(workdir):
  with open(os.path.join(workdir, "dataset", "data.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow  # Ray start-up and worker imports: ~30 s on 2 cores.
def test_generate_on_ray_with_a_killed_worker_equals_single_process(cluster, tmp_path):
  del cluster
  single = audit_toy.get_config(pool_size=6)
  generate.generate(single, str(tmp_path / "single"))
  marker = tmp_path / "crashed"
  distributed = audit_toy.get_config(pool_size=6)
  distributed.system.update(module="crashing_toy", crash_shard=2, crash_marker=str(marker))
  out = generate.generate(distributed, str(tmp_path / "ray"), use_ray=True)
  assert marker.exists()  # Shard 2's first worker died mid-shard; Ray reran the shard on another worker.
  assert out["shards"] == 6 and out["done_before"] == 0 and out["failures"]["answer_failures"] == 0
  got, want = _records(tmp_path / "ray"), _records(tmp_path / "single")
  assert len(got) == len(want) > 10 and got == want
  for r in got:
    assert (tmp_path / "ray" / "dataset" / r["image"]).exists()
