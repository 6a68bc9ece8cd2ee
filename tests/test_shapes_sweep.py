"""`auditdm sweep`: per-run rows, mean +- std, the Markdown table; end to end on the demo's fast config."""
import json
import os

import pytest

from auditdm_jax import main
from auditdm_jax.worlds.shapes import sweep


def _row(seed, weakness, success, gap):
  r = {k: 0.5 for k, _, _ in sweep.COLUMNS}
  r.update(seed=seed, weakness=weakness, success_rate_trained=success, weakness_gap_closed=gap)
  return r


def test_aggregate_and_markdown():
  rows = [_row(0, "counting:shape=star", 0.2, 0.5), _row(1, "counting:shape=star", 0.4, None)]
  mean = sweep.aggregate(rows)
  assert mean["success_rate_trained"] == pytest.approx(dict(mean=0.3, std=0.1, n=2))
  assert mean["weakness_gap_closed"]["n"] == 1  # An undefined gap (references no better than the target) is skipped.
  table = sweep.markdown(dict(runs=rows, mean=mean, per_weakness={"counting:shape=star": mean}))
  lines = table.strip().split("\n")
  assert len(lines) == 2 + 2 + 2 and all(line.count("|") == lines[0].count("|") for line in lines)
  assert "| 1 | `counting:shape=star` | 40.0% |" in table and "30.0 ± 10.0%" in table and "n/a" in table
  ordered = sweep.markdown(dict(runs=rows, mean=mean, weaknesses=["b:x", "a:x"],
                                per_weakness={"a:x": mean, "b:x": mean}))
  assert ordered.index("`b:x`") < ordered.index("`a:x`")  # The sweep's order, not the JSON's sorted keys.
  short = sweep.markdown(dict(runs=rows, mean=mean, per_weakness={}), sweep.SUMMARY).strip().split("\n")
  assert len(short) == 2 + 2 + 1 and short[0].count("|") == len(sweep.SUMMARY) + 3
  assert short[2].endswith("| +50.0 pt |") and short[-1].endswith("| +50.0 ± 0.0 pt |")


def test_row_reports_the_change_outside_the_weakness():
  summary = dict(target_outside_weakness_before=0.96, target_outside_weakness_after=0.951,
                 stage_seconds={s: 1.0 for s in sweep.STAGES if s != "pretrain"})
  r = sweep.row(summary, 0, "counting:shape=star", 5.0)
  assert r["target_outside_weakness_change"] == pytest.approx(-0.009) and r["seconds_pretrain"] == 5.0
  assert sweep._cell(r["target_outside_weakness_change"], "pt") == "-0.9 pt"
  assert sweep._cell(-0.0004, "pt") == "+0.0 pt"
  del summary["target_outside_weakness_after"]  # A run without a rectification has no change.
  assert sweep.row(summary, 0, "counting:shape=star", 5.0)["target_outside_weakness_change"] is None


def test_parse_list_keeps_bracketed_weakness_lists():
  assert sweep.parse_list("0, 1,2", int) == [0, 1, 2]
  assert sweep.parse_list("[counting:shape=star,binding:color=red],spatial:relation=left") == [
      "[counting:shape=star,binding:color=red]", "spatial:relation=left"]
  assert sweep.slug("[counting:shape=star,binding:color=red]") == "counting_shape_star_binding_color_red"
  with pytest.raises(ValueError, match="comma-separated"):
    sweep.parse_list(" , ")


@pytest.mark.slow
def test_sweep_end_to_end(tmp_path):
  """2 seeds x 2 weaknesses on the fast demo config (tiny budgets); references pretrained once per seed."""
  weaknesses = ["counting:shape=star", "binding:color=red"]
  assert main.main(["sweep", "--workdir", str(tmp_path), "--config", "configs/audit/demo.py:fast",
                    "--seeds", "0,1", "--weaknesses", ",".join(weaknesses), "--config.total_steps=2",
                    "--config.rectify.steps=2", "--config.system.pool_batches=1",
                    "--config.system.test_questions=12", "--config.system.weakness_questions=6",
                    "--config.system.rectify_scenes=8"]) == 0
  result = json.load(open(tmp_path / "sweep.json"))
  assert [(r["seed"], r["weakness"]) for r in result["runs"]] == [(s, w) for s in (0, 1) for w in weaknesses]
  for r in result["runs"]:
    assert {k for k, _, _ in sweep.COLUMNS} <= set(r)
    assert all(isinstance(r[f"flagged_{c}"], int) for c in ("genuine", "reference_error", "unanswerable"))
  assert set(result["per_weakness"]) == set(weaknesses) and result["mean"]["success_rate_trained"]["n"] == 4
  for seed in (0, 1):
    models = tmp_path / f"seed{seed}" / "pretrain"
    assert {"auditor", "ref0", "ref1", "target_binding_color_red", "target_counting_shape_star"} <= set(
        os.listdir(models))
    # The references were trained with the first weakness and loaded (not retrained) for the second.
    assert os.path.getmtime(models / "ref0" / "meta.json") < os.path.getmtime(
        models / "target_binding_color_red" / "meta.json")
    summary = json.load(open(tmp_path / f"seed{seed}" / "binding_color_red" / "summary.json"))
    assert summary["weakness"] == "binding:color=red" and "skill/binding" in summary["target_before"]
  table = (tmp_path / "sweep.md").read_text()
  assert table.count("\n") == 2 + 4 + 3 and "`binding:color=red`" in table
  assert (tmp_path / "sweep_summary.md").read_text().count("\n") == 2 + 4 + 3
