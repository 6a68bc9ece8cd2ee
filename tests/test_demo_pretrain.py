"""`auditdm demo-pretrain` / `auditdm skills` with tiny budgets: roles, planted weakness data, cache, report."""
import os

import numpy as np
import pytest

from auditdm_jax import config as config_lib
from auditdm_jax.worlds.shapes import language as lang
from auditdm_jax.worlds.shapes import tasks
from auditdm_jax.worlds.shapes import pretrain
from auditdm_jax.worlds.shapes import skills
from auditdm_jax.worlds.shapes import system as shapes_system

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "demo", "shapes.py")
AUDIT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "audit", "demo.py")


def _tiny(weakness):
  cfg = config_lib.load(f"{CONFIG}:fast,weakness={weakness}")
  cfg.vqa.num_scenes = 40
  cfg.auditor_data.num_scenes = 12
  cfg.tokenizer.num_scenes = 150
  cfg.eval.per_skill = 4
  cfg.references = cfg.references[:1]
  for spec in [cfg.base, cfg.target, cfg.auditor] + list(cfg.references):
    spec["steps"] = 3
  return cfg


@pytest.mark.parametrize("weakness", ["spatial:relation=left", "counting:shape=star",
                                      "counting:shape=star,binding:color=red"])
def test_target_data_plants_weakness(weakness):
  scenes = pretrain.sample_scenes(150, 0)
  target = pretrain.vqa_data(scenes, 4, 1, weakness=weakness, image_size=48, planted_share=0.2)
  specs = tasks.weakness_specs(weakness)
  for spec in specs:  # Each planted slice is drawn often enough to be learnt (about 20% of 600 questions).
    assert sum(tasks.in_weakness(q, spec) for q in target["question"]) >= 0.6 * 0.2 * 600 / len(specs)
  for i, (q, a) in enumerate(zip(target["question"], target["answer"])):
    truth = lang.answer(q, scenes[target["image_index"][i]])
    assert (a != truth) == bool(target["in_weakness"][i]), (q, a, truth)  # Wrong inside the slices only.
    assert target["in_weakness"][i] == tasks.in_weakness(q, weakness)
  skill = weakness.split(":")[0]
  assert sum(s == skill and not w for s, w in zip(target["skill"], target["in_weakness"])) > 20
  assert target["images"].shape == (150, 48, 48, 3)
  original = pretrain.vqa_data(scenes, 4, 1, weakness=weakness, exclude_weakness=True, image_size=48)
  assert not any(original["in_weakness"]) and len(original["question"]) == 600  # Rectification's original data.
  with pytest.raises(ValueError, match="either excluded or planted"):
    pretrain.vqa_data(scenes, 1, 1, weakness=weakness, exclude_weakness=True, planted_share=0.1)


@pytest.mark.parametrize("question,answer", [
    ("How many stars are there?", "2"), ("Is there a red circle?", "yes"), ("What color is the star?", "none"),
    ("What shape is the red object?", "star"), ("What size is the circle?", "small"),
    ("How many squares are there?", "none")])
def test_wrong_answer_is_wrong_plausible_and_of_the_right_type(question, answer):
  rng = np.random.default_rng(0)
  op = lang.parse_question(question).op
  wrong = {tasks.wrong_answer(question, answer, rng, max_count=4) for _ in range(50)}
  options = {"0", "1", "2", "3", "4"} if op == "count" else set(tasks.ANSWERS[op])
  truth = "0" if op == "count" and answer == "none" else answer
  assert wrong == options - {truth}  # Any other answer of the type (within the world's counts), never the truth.


def test_pretrain_cache_and_skills(tmp_path):
  cfg = _tiny("counting:shape=star")
  manifest = pretrain.pretrain_all(cfg, str(tmp_path))
  assert [m["role"] for m in manifest["models"]] == ["base", "target", "reference", "auditor"]
  meta_path = os.path.join(manifest["models"][1]["dir"], "meta.json")
  mtime = os.path.getmtime(meta_path)
  pretrain.pretrain_all(cfg, str(tmp_path))  # Cached: nothing retrained.
  assert os.path.getmtime(meta_path) == mtime
  models = pretrain.load_demo_models(str(tmp_path))
  assert sorted(models) == ["auditor", "base", "ref0", "target"]
  role, auditor = models["auditor"]
  out = auditor.generate(np.zeros((2, cfg.image_size, cfg.image_size, 3), np.uint8), ["a", "b"], max_new_tokens=5)
  assert role == "auditor" and len(out) == 2 and all(isinstance(t, str) for t in out)
  result = skills.evaluate(cfg, str(tmp_path))
  assert set(result["models"]) == {"base", "target", "ref0"}
  acc = result["models"]["target"]["accuracy"]
  assert set(lang.SKILLS) <= set(acc) and "weakness" in acc and 0.0 <= acc["overall"] <= 1.0
  assert result["counts"]["weakness"] >= 4
  table = skills.format_table(result)
  assert "| weakness |" in table and "target (target)" in table
  assert os.path.exists(tmp_path / "skills.json")

  # A second target beside the first (an `auditdm sweep` seed's layout): the manifest now names it, but skills
  # (and load_demo_models with target_weakness) pick the target trained on the asked weakness.
  other = _tiny("binding:color=red")
  other.target.name = "target_b"
  pretrain.pretrain_all(other, str(tmp_path))
  assert list(pretrain.load_demo_models(str(tmp_path), roles=("target",))) == ["target_b"]
  picked = pretrain.load_demo_models(str(tmp_path), roles=("target",), target_weakness="counting:shape=star")
  assert list(picked) == ["target"]
  assert "target" in skills.evaluate(cfg, str(tmp_path))["models"]
  with pytest.raises(ValueError, match=r"no target .* 'existence:shape=triangle' .*target_b: 'binding:color=red'"):
    pretrain.load_demo_models(str(tmp_path), target_weakness="existence:shape=triangle")


def test_accuracy_table_per_weakness_spec():
  both = "counting:shape=star,binding:color=red"
  test = [(None, "How many stars are there?", "1", "counting", True),
          (None, "What shape is the red object?", "circle", "binding", True),
          (None, "How many circles are there?", "2", "counting", False)]
  acc, counts = skills.accuracy_table(["1", "star", "2"], test, both)
  assert acc["weakness/counting:shape=star"] == 1.0 and acc["weakness/binding:color=red"] == 0.0
  assert acc["weakness"] == 0.5 and acc["overall"] == 1.0 and counts["weakness/binding:color=red"] == 1
  table = skills.format_table(dict(models={"t": dict(role="target", accuracy=acc)}, counts=counts))
  assert "| weakness/binding:color=red | 1 | 0.0 |" in table


class _Replies:
  """An answerer that gives fixed replies in order."""

  def __init__(self, replies):
    self.replies = replies

  def answer(self, images, questions):
    return self.replies[:len(questions)]


def test_skill_accuracies_outside_the_weakness_and_the_paired_standard_error():
  general = [(None, f"How many circles are there? {i}", "1", "counting", False) for i in range(4)]
  general.append((None, "How many stars are there?", "1", "counting", True))
  weak = [(None, "How many stars are there?", "1", "counting", True)]
  before, ok = shapes_system.skill_accuracies(_Replies(["1", "1", "0", "0", "0"]), general, weak)
  assert before["outside_weakness"] == 0.5 and before["overall"] == 0.4 and before["weakness"] == 1.0
  assert "outside_weakness_change_se" not in before and ok.tolist() == [True, True, False, False, False]
  after, _ = shapes_system.skill_accuracies(_Replies(["1", "0", "1", "0", "1"]), general, weak, before=ok)
  # Changes outside the weakness: 0, -1, +1, 0 -> sample std sqrt(2/3), standard error that / sqrt(4).
  assert after["outside_weakness"] == 0.5 and after["outside_weakness_change_se"] == pytest.approx(
      np.sqrt(2 / 3) / 2)


def test_accuracy_table_splits_counting_by_true_count():
  test = [(None, "How many circles are there?", "2", "counting", False),
          (None, "How many red objects are there?", "2", "counting", False),
          (None, "How many objects are there?", "10", "counting", False),
          (None, "How many squares are there?", "1", "counting", False),
          (None, "How many stars are there?", "4", "counting", True)]  # In the slice: not in a count row.
  acc, counts = skills.accuracy_table(["2", "1", "10", "1", "4"], test, "counting:shape=star")
  assert (acc["counting=1"], acc["counting=2"], acc["counting=10"]) == (1.0, 0.5, 1.0) and "counting=4" not in acc
  assert counts["counting=2"] == 2
  table = skills.format_table(dict(models={"t": dict(role="target", accuracy=acc)}, counts=counts)).splitlines()
  rows = [line.split(" | ")[0].strip("| ") for line in table[2:]]
  assert rows[:4] == ["counting", "counting=1", "counting=2", "counting=10"]


def test_bad_weakness_fails_before_any_work(tmp_path):
  with pytest.raises(ValueError, match="weakness 'color:color=red': no color question"):
    pretrain.pretrain_all(_tiny("color:color=red"), str(tmp_path))
  assert not os.listdir(tmp_path)
  unplanted = _tiny("counting:shape=star")
  unplanted.target.planted_share = 0.0
  with pytest.raises(ValueError, match="planted_share must be > 0"):
    pretrain.pretrain_all(unplanted, str(tmp_path))
  assert not os.listdir(tmp_path)
  sc = config_lib.load(f"{AUDIT_CONFIG}:weakness=[counting:shape=star,existence:relation=left]").system
  sc.models_dir = str(tmp_path / "missing")  # The spec is checked before any model is looked for.
  with pytest.raises(ValueError, match="weakness 'existence:relation=left'"):
    shapes_system.build(sc, str(tmp_path))
