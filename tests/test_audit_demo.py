"""`auditdm demo --fast` end to end on the shapes world."""
import json
import os
import subprocess
import sys

import pytest

from auditdm_jax import main


@pytest.mark.slow
def test_demo_fast_end_to_end(tmp_path):
  if "demo-pretrain" not in main.discover() or not os.path.exists(
      os.path.join(main.REPO_ROOT, "configs", "demo", "shapes.py")):
    pytest.skip("auditdm demo-pretrain (shapes world pretraining) is not available")
  cmd = [sys.executable, "-m", "auditdm_jax.main", "demo", "--fast", "--workdir", str(tmp_path)]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1500).stdout
  assert "failure-search success rate" in out and "audit precision" in out
  summary = json.load(open(tmp_path / "summary.json"))
  for key in ("success_rate_trained", "success_rate_baseline", "precision_trained", "target_weakness_before",
              "target_weakness_after", "target_overall_before", "target_overall_after"):
    assert key in summary
  html = (tmp_path / "report.html").read_text()
  assert "data:image/png;base64," in html
  # Every stage resumes: a rerun redoes no stage and reproduces the summary.
  stages = ("pretrain", "train_auditor", "audit", "generate", "rectify")
  mtimes = {s: os.path.getmtime(tmp_path / s / "done.json") for s in stages}
  subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
  assert {s: os.path.getmtime(tmp_path / s / "done.json") for s in stages} == mtimes
  assert json.load(open(tmp_path / "summary.json")) == summary
  # The full demo in the fast run's workdir is refused (it used to skip every stage and print the fast numbers).
  full = subprocess.run(cmd[:-3] + ["--workdir", str(tmp_path)], capture_output=True, text=True, timeout=600)
  assert full.returncode == 2 and "was made by another config (" in full.stderr and "Traceback" not in full.stderr
  assert {s: os.path.getmtime(tmp_path / s / "done.json") for s in stages} == mtimes
