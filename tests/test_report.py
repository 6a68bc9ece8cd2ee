"""The HTML report renders from a synthetic results file with inlined images and plots."""
import base64
import json
import os

import numpy as np
from PIL import Image

from auditdm_jax.audit import report


def test_kmeans_separates_obvious_clusters():
  x = np.concatenate([np.zeros((5, 2)), np.ones((5, 2)) * 10])
  assign, _ = report.kmeans(x, 2)
  assert len(set(assign[:5])) == 1 and len(set(assign[5:])) == 1 and assign[0] != assign[5]


def test_report_renders(tmp_path):
  os.makedirs(tmp_path / "images")
  records = []
  for i in range(8):
    Image.fromarray(np.full((16, 16, 3), i * 30, np.uint8)).save(tmp_path / "images" / f"{i}.png")
    counting = i % 2 == 0
    records.append(dict(
        id=str(i), source_image=f"images/{i}.png", image=f"images/{i}.png" if i % 3 else None,
        question="how many red circles are there?" if counting else "what color is the star?",
        instruction="make the star blue" if not counting else None,
        target_answer="3" if counting else "red", reference_answers={"ref0": "2", "ref1": "2"},
        label="2", failure=i < 6, skill="count" if counting else "color", truth="2"))
  path = tmp_path / "results.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  metrics = [dict(step=s, reward=0.1 * s, success_rate=0.05 * s, reward_baseline=0.1) for s in range(5)]
  out = report.write(str(tmp_path / "report.html"), report.read_records(path), metrics,
                     summary=dict(precision=0.9, success_vs_baseline=3.2), k=2)
  text = open(out).read()
  png = base64.b64encode((tmp_path / "images" / "1.png").read_bytes()).decode()
  assert png in text  # images inlined
  assert text.count('alt="mean reward" src="data:image/png;base64,') == 1  # plots inlined
  assert 'alt="failure-search success rate"' in text
  assert "Failure types (2 clusters" in text
  assert "how many red circles" in text and "make the star blue" in text
  assert "<td>count</td><td>3</td>" in text  # failures by skill
  assert "precision" in text and "6 failures" in text
  assert "src=\"images/" not in text  # nothing references external files


def test_report_command(tmp_path):
  from auditdm_jax import main  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
  rec = dict(id="0", image="a.png", source_image="a.png", counterfactual=False, question="is there a star?",
             target_answer="no", reference_answers={"r": "yes"}, label="yes", failure=True)
  (tmp_path / "data.jsonl").write_text(json.dumps(rec) + "\n")
  (tmp_path / "metrics.jsonl").write_text(json.dumps(dict(step=1, time=0.0, reward=0.5, success_rate=0.5)) + "\n")
  out = tmp_path / "r.html"
  assert main.main(["report", "--records", str(tmp_path / "data.jsonl"), "--metrics", str(tmp_path / "metrics.jsonl"),
                    "--out", str(out)]) == 0
  text = out.read_text()
  assert "is there a star?" in text and "(original image)" in text and 'alt="mean reward"' in text
