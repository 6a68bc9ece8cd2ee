"""`auditdm generate` survives SIGKILL: the rerun completes with no lost and no duplicated records; its records
become rectification rows with balanced answers."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from auditdm_jax.audit import generate
from auditdm_jax.audit import rectify
from auditdm_jax.audit import rollout

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)
import audit_toy  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _cmd(cfg, workdir):
  return [sys.executable, "-m", "auditdm_jax.main", "generate", "--config", cfg, "--workdir", str(workdir),
          "--log-level", "WARNING"]


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = TESTS + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _records(workdir):
  with open(os.path.join(workdir, "dataset", "data.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_generate_resume_after_sigkill(tmp_path):
  cfg = tmp_path / "toy_cfg.py"
  cfg.write_text("import audit_toy\n\ndef get_config(arg=None):\n"
                 "  return audit_toy.get_config(pool_size=8, delay=0.25)\n")
  killed, clean = tmp_path / "killed", tmp_path / "clean"
  proc = subprocess.Popen(_cmd(str(cfg), killed), env=_env())
  shards = lambda: [f for f in os.listdir(killed / "dataset") if f.startswith("shard-")] \
      if (killed / "dataset").exists() else []
  deadline = time.time() + 120
  while len(shards()) < 3 and time.time() < deadline and proc.poll() is None:
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  partial = len(shards())
  assert 3 <= partial < 8, partial
  assert not (killed / "dataset" / "data.jsonl").exists()
  subprocess.run(_cmd(str(cfg), killed), env=_env(), check=True)
  subprocess.run(_cmd(str(cfg), clean), env=_env(), check=True)
  got, want = _records(killed), _records(clean)
  assert len(got) == len(want) > 10
  assert got == want  # no loss, same order
  assert len({r["id"] for r in got}) == len(got)  # no duplicates
  for r in got[:3]:
    assert os.path.exists(killed / "dataset" / r["image"])
    assert r["answer"] == r["label"] and r["question"]


def test_shard_records_dedup_and_keep(tmp_path):
  img = np.zeros((4, 4, 3), np.uint8)
  base = rollout.Sample(valid=True, well_formed=True, consensus=True, failure=False, source_id="s", source_index=0,
                        mode="question", instruction=None, question="", image=None, source_image=img,
                        target_answer="a", reference_answers={"r": "a"}, label="a", agreement=1.0, reward=0.0,
                        truth=None, judged=False)
  samples = [dataclasses.replace(base, question="What color?"), dataclasses.replace(base, question="what color"),
             dataclasses.replace(base, question="how many?", failure=True),
             dataclasses.replace(base, question="x?", consensus=False)]
  assert [r["question"] for r in generate.shard_records(samples, 0, str(tmp_path))] == ["What color?", "how many?"]
  assert [r["question"] for r in generate.shard_records(samples, 0, str(tmp_path), "failures")] == ["how many?"]
  assert len(generate.shard_records(samples, 0, str(tmp_path), "all")) == 3
  with pytest.raises(ValueError, match="keep"):
    generate.shard_records(samples, 0, str(tmp_path), "some")


def test_flagged_records_carry_their_ground_truth_category(tmp_path):
  img = np.zeros((4, 4, 3), np.uint8)
  base = rollout.Sample(valid=True, well_formed=True, consensus=True, failure=True, source_id="s", source_index=0,
                        mode="question", instruction=None, question="", image=None, source_image=img,
                        target_answer="3", reference_answers={"r": "2"}, label="2", agreement=1.0, reward=1.0,
                        truth="2", judged=True)
  samples = [dataclasses.replace(base, question="q1?"), dataclasses.replace(base, question="q2?", truth="3"),
             dataclasses.replace(base, question="q3?", truth=None),
             dataclasses.replace(base, question="q4?", failure=False, target_answer="2"),
             dataclasses.replace(base, question="q5?", judged=False)]
  records = generate.shard_records(samples, 0, str(tmp_path), "all")
  assert [r["category"] for r in records] == ["genuine", "reference_error", "unanswerable", None, None]
  assert rollout.flag_breakdown(samples) == dict(genuine=1, reference_error=1, unanswerable=1)


def test_ray_missing_is_a_clear_error(tmp_path):
  pytest.importorskip("jax")
  try:
    import ray  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    pytest.skip("ray is installed")
  except ImportError:
    pass
  with pytest.raises(ImportError, match="--ray needs Ray"):
    generate.generate(audit_toy.get_config(), str(tmp_path), use_ray=True)


def test_rectification_rows_balance_answers_within_each_question_type(tmp_path):
  """8 "no" vs 2 "yes" spatial pairs: each "yes" is written 4 times; the color type (3 red, 1 blue) is balanced
  on its own; the cap bounds the copies; 1 leaves the data as it is; a bad setting is a clear error."""
  qa = [("is the circle left of the square?", "no")] * 8 + [("is the star left of the square?", "Yes")] * 2
  qa += [("what color is the star?", "red")] * 3 + [("what color is the circle?", "blue")]
  records = [dict(id=f"r{i}", image=f"images/{i}.png", question=q, answer=a) for i, (q, a) in enumerate(qa)]
  kind = lambda q: q.split()[0]
  assert rectify.answer_repeats(records, kind, 10) == [1] * 8 + [4] * 2 + [1] * 3 + [3]
  assert rectify.answer_repeats(records, kind, 2) == [1] * 8 + [2] * 2 + [1] * 3 + [2]
  assert rectify.answer_repeats(records, None, 10) == [1] * 8 + [4] * 2 + [3] * 3 + [8]  # One type.
  assert rectify.answer_repeats(records, kind, 1) == [1] * len(records)
  for bad in (0, 2.5, True, "3"):
    with pytest.raises(ValueError, match="balance_answers must be an int >= 1"):
      rectify.answer_repeats(records, kind, bad)
  data = tmp_path / "dataset" / "data.jsonl"
  data.parent.mkdir()
  data.write_text("".join(json.dumps(r) + "\n" for r in records))
  out = tmp_path / "rect" / "generated.jsonl"
  read = rectify.read_generated(str(data))
  assert read == records
  assert rectify.write_training_jsonl(read, str(data), str(out), kind, 10) == 8 + 8 + 3 + 3
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert sum(r["answer"] == "Yes" for r in rows) == 8 and {r["image"] for r in rows} == {
      os.path.join("..", "dataset", "images", f"{i}.png") for i in range(len(records))}
