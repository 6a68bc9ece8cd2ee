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


def test_report_names_weakness_skills_and_ground_truth_categories(tmp_path):
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
  records = [dict(id=str(i), image="a.png", source_image="a.png", question=f"how many stars {i}?", target_answer="3",
                  reference_answers={"r": "2"}, label="2", failure=True, truth=truth, category=category)
             for i, (truth, category) in enumerate([("2", "genuine"), ("1", "reference_error")])]
  summary = dict(success_rate_trained=0.5, flagged_trained=dict(genuine=7), weakness="counting:shape=star,binding:color=red",
                 target_before={"skill/counting": 0.25, "weakness": 0.1, "weakness/binding:color=red": 0.2,
                                "outside_weakness": 0.9, "overall": 0.8},
                 target_after={"skill/counting": 0.5, "weakness": 0.6, "weakness/binding:color=red": 0.7,
                               "outside_weakness": 0.9, "overall": 0.85})
  text = report.render(records, summary=summary, root=str(tmp_path), k=1)
  assert "<code>counting:shape=star</code>, <code>binding:color=red</code>" in text
  assert "<tr><td>counting</td><td>25.0%</td><td>50.0%</td></tr>" in text
  assert "<tr><td>weakness/binding:color=red</td><td>20.0%</td><td>70.0%</td></tr>" in text
  assert "ground truth: <b>genuine target failure</b>" in text and "ground truth: <b>reference error</b>" in text
  summary_table = text.split("<h2>Summary</h2>")[1].split("</table>")[0]
  assert "{" not in summary_table and "skill/counting" not in summary_table  # Per-skill rows: their own section.
  assert "<td>flagged_trained/genuine</td><td>7</td>" in summary_table
