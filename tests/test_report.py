"""The HTML report renders from a synthetic results file with inlined images and plots."""
import base64
import json
import os

import numpy as np
import pytest
from PIL import Image

from auditdm_jax.audit import report


def test_failure_types_pick_k_by_silhouette_and_are_named_by_top_terms():
  topics = {
      "count": ["how many stars are there?", "how many red stars?", "how many blue stars?", "how many small stars?",
                "how many big stars?"],
      "color": ["what color is the circle?", "which color has the small circle?", "what color is the big circle?",
                "the circle color?", "color of the left circle?"],
      "relation": ["is the square left of the triangle?", "is the square right of the triangle?",
                   "is the triangle above the square?", "is the square below the triangle?"]}
  records = [dict(question=q, failure=True, topic=t) for t, qs in topics.items() for q in qs]
  types = report.failure_types(records + [dict(question="ignored", failure=False, topic="none")], k=6)
  # Three clusters (the silhouette's choice among k = 2..6), one per topic, named by its top terms.
  assert [c["count"] for c in types] == [5, 5, 4]
  assert [{m["topic"] for m in c["members"]} for c in types] == [{"color"}, {"count"}, {"relation"}]
  assert [c["name"].split(" / ")[:2] for c in types] == [["color", "circle"], ["stars", "many"],
                                                         ["square", "triangle"]]
  assert len(report.failure_types([dict(question="how many?", failure=True)] * 3)) == 1  # one distinct text


def test_default_cap_gives_each_of_eight_failure_kinds_its_own_type():
  # Eight kinds of failure with disjoint words: the default cap (10 types) leaves each its own type; a cap of 6
  # (the earlier default) has to merge some, which is how neighbouring failures diluted a weakness's type.
  kinds = ["circle", "square", "triangle", "star", "red", "green", "blue", "yellow"]
  templates = ["is there a {}?", "what is the {}?", "is there any {} in the image?", "the {} in this picture"]
  records = [dict(question=t.format(k), failure=True, kind=k) for k in kinds for t in templates]
  types = report.failure_types(records)
  assert sorted({m["kind"] for m in t["members"]}.pop() for t in types) == sorted(kinds)
  assert all(len({m["kind"] for m in t["members"]}) == 1 and t["count"] == 4 for t in types)
  assert len(report.failure_types(records, k=6)) == 6


def test_summary_is_formatted_and_checked_against_targets():
  s = dict(success_ratio=4.4, precision_trained=0.917, weakness_gap_closed=0.4, target_outside_weakness_before=0.743,
           target_outside_weakness_after=0.743, stage_seconds=dict(pretrain=1358.2, rectify=65.0))
  assert report.fmt("precision_trained", 0.917) == "91.7%" and report.fmt("success_ratio", 4.4) == "4.40x"
  assert report.fmt("stage_seconds", s["stage_seconds"]) == "pretrain 1358 s, rectify 65 s"
  assert report.fmt("generated_pairs", 444) == "444" and report.fmt("precision_baseline", None) == "n/a"
  checks = {c["name"]: (c["value"], c["passed"]) for c in report.check_targets(s)}
  assert checks["failure-search success, trained vs baseline"] == ("4.40x", True)
  assert checks["audit precision vs ground truth (trained)"] == ("91.7%", True)
  assert checks["weakness gap closed by rectification"] == ("40.0%", False)
  assert checks["target outside the weakness, after - before"] == ("+0.0 points", True)
  assert checks["wall time"] == ("23.7 min", True)
  assert report.check_targets({}) == []


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
                     summary=dict(precision_trained=0.9, success_ratio=3.2, generated_pairs=8), k=2)
  text = open(out).read()
  png = base64.b64encode((tmp_path / "images" / "1.png").read_bytes()).decode()
  assert png in text  # images inlined
  assert text.count('alt="mean reward" src="data:image/png;base64,') == 1  # plots inlined
  assert 'alt="failure-search success rate"' in text
  assert "Failure types (2 clusters" in text and "Legend" in text
  assert "<td>precision_trained</td><td>90.0%</td>" in text  # percentages
  assert "<td>3.20x</td><td>&gt;= 4x</td><td class=bad>FAIL" in text  # targets
  assert "<td>90.0%</td><td>&gt;= 85%</td><td class=pass>pass" in text
  assert "how many red circles" in text and "make the star blue" in text
  assert "<td>count</td><td>3</td>" in text  # failures by skill
  assert "6 failures" in text
  assert "src=\"images/" not in text  # nothing references external files


def test_an_audit_that_found_nothing_still_renders(tmp_path):
  (tmp_path / "data.jsonl").write_text("")
  out = report.write(str(tmp_path / "r.html"), report.read_records(str(tmp_path / "data.jsonl")))
  assert "0 audited pairs, 0 failures" in open(out).read()


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


def test_type_purity_measures_how_the_types_separate_the_world_labels():
  def rec(q, skill):
    return dict(question=q, failure=True, skill=skill)
  stars = [rec(f"how many {a} stars are there?", "counting (planted weakness counting:shape=star)")
           for a in ("red", "blue", "small", "large", "green")]
  reds = [rec(f"what shape is the red object in the {p}?", "binding (planted weakness binding:color=red)")
          for p in ("top left", "center", "bottom right", "top right")]
  types = report.failure_types(stars + reds + [rec("how many big stars can you see?", "counting")], k=4)
  purity = report.type_purity(types)
  star = purity["counting (planted weakness counting:shape=star)"]
  assert star["failures"] == 5 and star["in_type"] == 5
  assert star["purity"] == pytest.approx(5 / types[star["type"]]["count"])
  red = purity["binding (planted weakness binding:color=red)"]
  assert red["purity"] == 1.0 and red["type"] != star["type"] and purity["counting"]["failures"] == 1
  text = report.render(stars + reds, k=4)
  assert "Types vs the world's labels" in text and "100.0%" in text
  assert report.type_purity([]) == {}
