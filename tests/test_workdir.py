"""Workdir identity (claim) and the config-keyed stage runner."""
import json
import os

import ml_collections
import pytest

from auditdm_jax import workdir
from auditdm_jax.errors import WorkdirMismatch


def _config(**kw):
  c = ml_collections.ConfigDict(dict(lr=2e-4, group_size=8, generate=dict(keep="consensus", shards=4)))
  c.update(kw)
  return c


def test_digest_and_diff():
  a, b = _config(), _config(lr=1e-3)
  assert workdir.digest(a) == workdir.digest(workdir.plain(a)) == workdir.digest(json.loads(a.to_json()))
  assert workdir.digest(a) != workdir.digest(b)
  b.generate.keep = "all"
  b.new = 1
  assert workdir.diff(a, b) == 'generate.keep "consensus" -> "all", lr 0.0002 -> 0.001, +new'
  many = ml_collections.ConfigDict({f"k{i}": i for i in range(12)})
  assert workdir.diff({}, many, limit=3) == "+k0, +k1, +k10, ... (9 more)"


def test_claim_records_identity_and_refuses_another_config(tmp_path):
  run = str(tmp_path / "run")
  workdir.claim(run, _config(), "train-auditor")
  ident = json.load(open(os.path.join(run, workdir.IDENTITY)))
  assert ident["config_digest"] == workdir.digest(_config()) and ident["command"] == "train-auditor"
  workdir.claim(run, _config(), "generate")  # Same config: fine.
  with pytest.raises(WorkdirMismatch, match=r"lr 0.0002 -> 0.001\); rerun with --resume-with-changes") as e:
    workdir.claim(run, _config(lr=1e-3))
  assert e.value.path == os.path.join(run, "config.json")
  with open(os.path.join(run, "config.json"), "w") as f:
    f.write("{truncated")
  with pytest.raises(ValueError, match="not valid JSON") as e:
    workdir.claim(run, _config())
  assert e.value.where() == os.path.join(run, "config.json") + ":1"


def test_stage_runs_once_per_config(tmp_path):
  path, calls = str(tmp_path / "stage"), []

  def fn():
    calls.append(1)
    return dict(records=len(calls))
  workdir.claim(str(tmp_path), _config())
  first = workdir.stage(path, _config(), fn)
  assert first["records"] == 1 and first["seconds"] >= 0
  assert workdir.stage(path, _config(), fn) == first and len(calls) == 1  # Recorded result, fn not called.
  done = json.load(open(os.path.join(path, "done.json")))
  assert done["config"] == workdir.plain(_config()) and done["result"] == first
  with pytest.raises(WorkdirMismatch, match=r"stage .* made by another config \(group_size 8 -> 4\)"):
    workdir.stage(path, _config(group_size=4), fn)
  assert len(calls) == 1
  # Under --resume-with-changes the stage runs again (resuming from its own checkpoints / shards).
  # Its wall time adds up both runs.
  workdir.claim(str(tmp_path), _config(group_size=4), on_change="resume")
  marker = os.path.join(path, "done.json")
  done["result"]["seconds"] = 100.0
  open(marker, "w").write(json.dumps(done))
  again = workdir.stage(path, _config(group_size=4), fn)
  assert again["records"] == 2 and 100.0 <= again["seconds"] < 110.0
  assert workdir.stage(path, _config(group_size=4), fn) == again
  workdir.claim(str(tmp_path), _config(group_size=4))  # Back to the default for the rest of the session.
