"""`auditdm demo-pretrain` / `auditdm skills` with tiny budgets: roles, planted weakness data, cache, report."""
import json
import os
import re
import threading

import jax
import numpy as np
import pytest

from auditdm_jax import config as config_lib
from auditdm_jax.models import vlm
from auditdm_jax.worlds.shapes import language as lang
from auditdm_jax.worlds.shapes import tasks
from auditdm_jax.worlds.shapes import pretrain
from auditdm_jax.worlds.shapes import shipped
from auditdm_jax.worlds.shapes import skills
from auditdm_jax.worlds.shapes import system as shapes_system
from auditdm_jax.worlds.shapes import tokenizer_train

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
  other.skill_weights = {}  # The mix is recorded with the models (rectification's original data follows it).
  other.compare_present = 0.0
  pretrain.pretrain_all(other, str(tmp_path))
  meta = pretrain.read_meta(tmp_path / "pretrain" / "target")
  assert meta["skill_weights"] == {"spatial": 3.0} and meta["compare_present"] == 0.5  # The config's default.
  assert pretrain.recorded_mix(meta) == tasks.make_mix({"spatial": 3.0}, 0.5)
  meta = pretrain.read_meta(tmp_path / "pretrain" / "target_b")
  assert "skill_weights" not in meta and pretrain.recorded_mix(meta) == tasks.Mix()
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


def test_accuracy_table_splits_counting_by_true_count_and_spatial_by_relation():
  test = [(None, "How many circles are there?", "2", "counting", False),
          (None, "How many red objects are there?", "2", "counting", False),
          (None, "How many objects are there?", "10", "counting", False),
          (None, "How many squares are there?", "1", "counting", False),
          (None, "How many stars are there?", "4", "counting", True),  # In the slice: not in a count row.
          (None, "Is the circle under the square?", "yes", "spatial", False),
          (None, "Is the star below the circle?", "no", "spatial", False),
          (None, "Is the star to the left of the circle?", "no", "spatial", False)]
  acc, counts = skills.accuracy_table(["2", "1", "10", "1", "4", "yes", "yes", "no"], test, "counting:shape=star")
  assert (acc["counting=1"], acc["counting=2"], acc["counting=10"]) == (1.0, 0.5, 1.0) and "counting=4" not in acc
  assert counts["counting=2"] == 2
  assert (acc["spatial=below"], counts["spatial=below"], acc["spatial=left"]) == (0.5, 2, 1.0)
  assert "spatial=above" not in acc
  table = skills.format_table(dict(models={"t": dict(role="target", accuracy=acc)}, counts=counts)).splitlines()
  rows = [line.split(" | ")[0].strip("| ") for line in table[2:]]
  assert rows == ["counting", "counting=1", "counting=2", "counting=10", "spatial", "spatial=left", "spatial=below",
                  "weakness", "overall"]


def test_bad_weakness_fails_before_any_work(tmp_path):
  with pytest.raises(ValueError, match="weakness 'color:color=red': no color question"):
    pretrain.pretrain_all(_tiny("color:color=red"), str(tmp_path))
  assert not os.listdir(tmp_path)
  unplanted = _tiny("counting:shape=star")
  unplanted.target.planted_share = 0.0
  with pytest.raises(ValueError, match="planted_share must be > 0"):
    pretrain.pretrain_all(unplanted, str(tmp_path))
  assert not os.listdir(tmp_path)
  for arg, key in (("ground", "ground_weight"), ("pos", "position_weight")):
    with pytest.raises(ValueError, match=f"{key} is a loss weight >= 0, got -1"):
      pretrain.pretrain_all(config_lib.load(f"{CONFIG}:fast,{arg}=-1"), str(tmp_path))
    assert not os.listdir(tmp_path)
  for arg, message in (("skills=spatial:-1", "skill weights must be >= 0"),
                       ("skills=[spatial:2,colour:1]", "unknown skills"), ("compare=2", "compare_present is a share")):
    with pytest.raises(ValueError, match=message):
      pretrain.pretrain_all(config_lib.load(f"{CONFIG}:fast,{arg}"), str(tmp_path))
    assert not os.listdir(tmp_path)
  for override, message in (
      ("image_size=0", "config image_size must be an int >= 3, got 0"),
      ("image_size=7", "image size 7 is not a multiple of the patch size 2"),
      ("world.max_objects=0", "need 0 <= min_objects <= max_objects"),
      ("base.steps=0", "config base.steps must be an int >= 1, got 0"),
      ("target.batch_size=0", "config target.batch_size must be an int >= 1"),
      ("auditor.lr=-1.0", "config auditor.lr must be > 0"),
      ("target.planted_share=2.0", "config target.planted_share must be in [0, 1]"),
      ("vqa.per_scene=0", "config vqa.per_scene must be an int >= 1"),
      ("eval.per_skill=0", "config eval.per_skill must be an int >= 1"),
      ("base.heads=3", "width 128 must split into 3 heads"),
      ("references=[]", "config references must be a list of at least one model")):
    with pytest.raises(ValueError, match=re.escape(message)):
      pretrain.pretrain_all(config_lib.resolve(config_lib.find_spec(CONFIG), [override]), str(tmp_path))
    assert not os.listdir(tmp_path)
  sc = config_lib.load(f"{AUDIT_CONFIG}:weakness=[counting:shape=star,existence:relation=left]").system
  sc.models_dir = str(tmp_path / "missing")  # The spec is checked before any model is looked for.
  with pytest.raises(ValueError, match="weakness 'existence:relation=left'"):
    shapes_system.build(sc, str(tmp_path))


def test_finetune_aux_false_fine_tunes_on_the_answers_alone(tmp_path, monkeypatch):
  calls = {}

  def fake_train(cfg, stream, steps, lr, seed, init=None, desc="", **losses):
    calls[desc] = losses
    return pretrain.init_params(cfg, next(stream), seed)

  monkeypatch.setattr(pretrain, "train", fake_train)
  cfg = config_lib.load(f"{CONFIG}:fast,ground=0.5,pos=1,ft_aux=True")
  cfg.vqa.num_scenes = cfg.auditor_data.num_scenes = cfg.tokenizer.num_scenes = 20
  cfg.references = cfg.references[:1]
  pretrain.pretrain_all(cfg, str(tmp_path / "with"))
  auxiliary = dict(aux_weight=1.0, ground_weight=0.5, position_weight=1.0)
  assert calls == dict(base=auxiliary, target=auxiliary, ref0=auxiliary, auditor=dict(aux_weight=1.0))
  digest = lambda w, name: pretrain.read_meta(tmp_path / w / "pretrain" / name)["digest"]
  cfg.finetune_aux = False
  calls.clear()
  pretrain.pretrain_all(cfg, str(tmp_path / "without"))
  assert calls == dict(base=auxiliary, target=dict(aux_weight=0.0), ref0=dict(aux_weight=0.0),
                       auditor=dict(aux_weight=1.0))
  for name, same in (("base", True), ("auditor", True), ("target", False), ("ref0", False)):
    assert (digest("with", name) == digest("without", name)) == same, name


def test_easy_pools_give_the_base_scenes_of_two_objects_first(tmp_path, monkeypatch):
  most = {}  # {model: [most objects in a scene of pool k]}

  def fake_train(cfg, stream, steps, lr, seed, init=None, desc="", **losses):
    seen = []
    while len(seen) < 3:  # Draws until the stream has built pools 0, 1 and 2.
      seen += [int((stream.pool["cells"][..., 0] > 0).sum(-1).max())] * (stream.k == len(seen))
      next(stream)
    most[desc] = seen
    return pretrain.init_params(cfg, next(stream), seed)

  monkeypatch.setattr(pretrain, "train", fake_train)
  cfg = config_lib.load(f"{CONFIG}:fast,easy=2")
  cfg.vqa.num_scenes, cfg.auditor_data.num_scenes, cfg.tokenizer.num_scenes = 40, 10, 20
  cfg.references = cfg.references[:1]
  pretrain.pretrain_all(cfg, str(tmp_path / "easy"))
  assert most["base"] == [2, 2, 4] and most["ref0"][:2] == [4, 4]  # The base's first two pools only.
  cfg.easy_pools = 0
  pretrain.pretrain_all(cfg, str(tmp_path / "plain"))
  digest = lambda w, name: pretrain.read_meta(tmp_path / w / "pretrain" / name)["digest"]
  assert digest("easy", "base") != digest("plain", "base") and most["base"][0] == 4
  with pytest.raises(ValueError, match="easy_pools is a number of pools >= 0, got -1"):
    pretrain.pretrain_all(config_lib.load(f"{CONFIG}:fast,easy=-1"), str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad" / "pretrain")


def test_competence_check_trains_the_base_more_until_the_references_pass(tmp_path, monkeypatch, caplog):
  cfg = _tiny("counting:shape=star")
  meta = lambda w, name: pretrain.read_meta(tmp_path / w / "pretrain" / name)
  params = lambda w, name: jax.tree.leaves(pretrain.load_model(tmp_path / w / "pretrain" / name)[1])
  pretrain.pretrain_all(cfg, str(tmp_path / "off"))  # The fast config has the check off (rounds=0).
  assert "competence" not in meta("off", "ref0") and pretrain.competence_record(str(tmp_path / "off")) is None

  cfg.competence = dict(bar=1.0, rounds=2, steps=2, lr=5e-4, per_skill=3, seed=7)  # Tiny models never pass.
  with caplog.at_level("WARNING"):
    manifest = pretrain.pretrain_all(cfg, str(tmp_path / "strict"))
  assert "below the bar after 2 extra rounds" in caplog.text
  record = pretrain.competence_record(str(tmp_path / "strict"))
  assert record["bar"] == 1.0 and record["base_round"] == 2 and [r["round"] for r in record["rounds"]] == [0, 1, 2]
  for r in record["rounds"]:
    assert set(r["validation"]["ref0"]) == set(lang.SKILLS) and r["lowest"] < 1.0
    assert r["lowest"] == min(r["validation"]["ref0"].values())
  assert manifest["models"][0] == {"name": "base", "role": "base", "dir": str(tmp_path / "strict/pretrain/base_r2")}
  assert meta("strict", "base_r1")["base_round"] == 1 and meta("strict", "base_r2")["steps"] == 2
  assert meta("strict", "target")["base"] == meta("strict", "ref0")["base"] == "base_r2"
  assert meta("strict", "base")["digest"] == meta("off", "base")["digest"]  # The base itself is unchanged.
  assert meta("strict", "target")["digest"] != meta("off", "target")["digest"]
  assert skills.evaluate(cfg, str(tmp_path / "strict"))["competence"] == record

  def no_training(*a, **k):
    raise AssertionError("retrained a cached model")

  with monkeypatch.context() as m:  # A rerun (or another weakness's target) finds the rounds and references.
    m.setattr(pretrain, "train", no_training)
    again = pretrain.pretrain_all(cfg, str(tmp_path / "strict"))
    assert again == manifest
    trained = []
    m.setattr(pretrain, "train", lambda *a, desc="", **k: trained.append(desc) or pretrain.load_model(
        tmp_path / "strict" / "pretrain" / "base_r2")[1])
    cfg.competence.rounds = 3  # A higher cap: the rounds done are reused, the references checked again.
    pretrain.pretrain_all(cfg, str(tmp_path / "strict"))
  assert trained == ["ref0 (round 0)", "ref0 (round 1)", "ref0 (round 2)", "base_r3", "ref0 (round 3)", "target"]
  assert pretrain.competence_record(str(tmp_path / "strict"))["base_round"] == 3

  cfg.competence.rounds, cfg.competence.bar = 2, 0.0  # Passed at once: the same references as with the check off.
  manifest = pretrain.pretrain_all(cfg, str(tmp_path / "easy"))
  assert manifest["models"][0]["dir"].endswith("pretrain/base") and meta("easy", "ref0")["base_round"] == 0
  assert not os.path.exists(tmp_path / "easy" / "pretrain" / "base_r1")
  for name in ("ref0", "target"):
    assert all(np.array_equal(a, b) for a, b in zip(params("easy", name), params("off", name)))

  cfg.competence.rounds = -1
  with pytest.raises(ValueError, match="config competence: bar in"):
    pretrain.pretrain_all(cfg, str(tmp_path / "bad"))
  cfg.competence = dict(bar=0.9, rounds=1)
  with pytest.raises(ValueError, match="competence needs exactly the keys"):
    pretrain.pretrain_all(cfg, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad" / "pretrain")


def test_shipped_models_are_copied_by_digest_not_trained(tmp_path, monkeypatch):
  cfg = _tiny("counting:shape=star")
  trained = pretrain.pretrain_all(cfg, str(tmp_path / "made"))
  monkeypatch.setattr(shipped, "ROOT", str(tmp_path / "made"))  # Its pretrain/ folder is a shipped set.

  def no_training(*a, **k):
    raise AssertionError("trained a model that is shipped")

  monkeypatch.setattr(pretrain, "train", no_training)
  monkeypatch.setattr(tokenizer_train, "train_tokenizer", no_training)
  copied = pretrain.pretrain_all(cfg, str(tmp_path / "user"))
  for old, new in zip(trained["models"], copied["models"]):
    assert new["dir"].startswith(str(tmp_path / "user"))
    (_, a, meta_a), (_, b, meta_b) = pretrain.load_model(old["dir"]), pretrain.load_model(new["dir"])
    assert meta_a == meta_b
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  with open(copied["tokenizer"], "rb") as f, open(trained["tokenizer"], "rb") as g:
    assert f.read() == g.read()
  # Another reference (a digest nobody shipped) is trained; the rest still come from the shipped set.
  reference = dict(cfg.references[0])
  cfg.references = [dict(reference, seed=99)]
  with pytest.raises(AssertionError, match="trained a model that is shipped"):
    pretrain.pretrain_all(cfg, str(tmp_path / "other"))
  assert pretrain.read_meta(tmp_path / "other" / "pretrain" / "target") is not None
  assert pretrain.read_meta(tmp_path / "other" / "pretrain" / "ref0") is None
  cfg.references, cfg.shipped = [reference], False  # Off: everything is trained, from the tokenizer on.
  with pytest.raises(AssertionError, match="trained a model that is shipped"):
    pretrain.pretrain_all(cfg, str(tmp_path / "off"))
  assert not os.path.exists(tmp_path / "off" / "pretrain" / "tokenizer.model")


@pytest.fixture(scope="module")
def world_tokenizer(tmp_path_factory):
  return tokenizer_train.train_tokenizer(str(tmp_path_factory.mktemp("tok") / "tok.model"), 600, 150, 0)


def test_grounding_labels_point_at_the_named_objects(world_tokenizer):
  tok = world_tokenizer
  scenes = pretrain.sample_scenes(200, 5)
  rows = pretrain.vqa_data(scenes, 3, 6, image_size=48)
  targets = nameable = 0
  for question, i in zip(rows["question"], rows["image_index"]):
    pos, cls = pretrain.grounding_labels(tok, question, scenes[i])
    full = tok.encode(pretrain.vqa_prefix(question), add_bos=True)
    for k, ref in enumerate(lang.parse_question(question).refs):
      found = ref.select(scenes[i])
      nameable += len(found) <= 1
      if pos[k] < 0:
        continue
      targets += 1
      assert len(found) <= 1, (question, ref)
      assert cls[k] == (found[0].row * 3 + found[0].col if found else pretrain.GROUND_CLASSES - 1)
      last = tok.decode(full[:pos[k] + 1]).split()[-1]  # The expression's last word ends at the position.
      assert last in {ref.phrase().split()[-1], ref.phrase(plural=True).split()[-1]}, (question, last)
    assert all(pos[len(lang.parse_question(question).refs):] == -1)
  assert targets >= 0.9 * nameable and nameable > 400


def test_grounded_losses_share_the_forward_pass_and_train(world_tokenizer):
  cfg = _tiny("counting:shape=star")
  cfg.ground_weight = 1.0
  pool = pretrain.vqa_pool(cfg, world_tokenizer, [0, 1, 0])
  assert pool["ground_pos"].shape == (len(pool["tokens"]), 2) and (pool["ground_pos"] >= 0).mean() > 0.3
  batch = next(pretrain.Stream(lambda k: pool, 16, 0))
  mcfg = pretrain.model_config(world_tokenizer.vocab_size, res=cfg.image_size, width=32, depth=1, img_width=32,
                               img_depth=1)
  model, params = vlm.get_model(mcfg), pretrain.init_params(mcfg, batch, 0)
  rng = np.random.default_rng(0)
  head = {"name": rng.normal(0, 0.5, (32, pretrain.GROUND_CLASSES)).astype(np.float32),
          "answer": rng.normal(0, 0.5, (2, 32, pretrain.GROUND_CLASSES)).astype(np.float32)}
  text, ground = pretrain.grounded_losses(model, params, head, batch)
  np.testing.assert_allclose(text, pretrain.suffix_loss(model, params, batch), rtol=1e-5)
  assert ground > 1.0  # Two targets per expression, each about ln(10) for random hidden states.
  unlabelled = dict(batch, ground_pos=np.full_like(batch["ground_pos"], -1))
  assert pretrain.grounded_losses(model, params, head, unlabelled)[1] == 0
  # The answer head predicts each expression by its slot: swapping the two slots changes the loss.
  swapped = dict(head, answer=head["answer"][::-1])
  assert abs(pretrain.grounded_losses(model, params, swapped, batch)[1] - ground) > 1e-3
  no_answer = dict(head, answer=np.zeros_like(head["answer"]))  # Uniform: ln(10) per labelled expression.
  name_only = pretrain.grounded_losses(model, params, no_answer, batch)[1] - np.log(pretrain.GROUND_CLASSES)
  hidden = model.apply({"params": params}, batch["images"], batch["tokens"], batch["mask_ar"], batch["input_mask"],
                       return_hidden=True)
  pos, cell = np.asarray(batch["ground_pos"]), np.asarray(batch["ground_cell"])
  logits = np.einsum("bkd,dc->bkc", np.take_along_axis(np.asarray(hidden), np.maximum(pos, 0)[..., None], 1),
                     head["name"])
  expected = -np.take_along_axis(jax.nn.log_softmax(logits), cell[..., None], -1)[..., 0][pos >= 0].mean()
  np.testing.assert_allclose(name_only, expected, rtol=1e-4)
  stream = pretrain.Stream(lambda k: pool, 16, 0)
  trained = pretrain.train(mcfg, stream, 2, 1e-3, 0, ground_weight=1.0)
  plain = pretrain.train(mcfg, pretrain.Stream(lambda k: pool, 16, 0), 2, 1e-3, 0)
  assert jax.tree.structure(trained) == jax.tree.structure(params)  # The grounding head is not kept.
  assert max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), trained, plain))) > 1e-6


def test_position_loss_asks_each_image_token_for_its_cell(world_tokenizer):
  cfg = _tiny("counting:shape=star")
  pool = pretrain.vqa_pool(cfg, world_tokenizer, [0, 1, 0])
  batch = next(pretrain.Stream(lambda k: pool, 8, 0))
  mcfg = pretrain.model_config(world_tokenizer.vocab_size, res=cfg.image_size, width=32, depth=1, img_width=32,
                               img_depth=1)
  model, params = vlm.get_model(mcfg), pretrain.init_params(mcfg, batch, 0)
  rng = np.random.default_rng(0)
  cell_head = {name: rng.normal(0, 0.5, (32, k)).astype(np.float32) for name, k in pretrain.CELL_HEADS}
  position_head = {k: rng.normal(0, 0.5, (32, 3)).astype(np.float32) for k in ("row", "col")}
  attributes, none = pretrain.cell_loss(model, params, cell_head, batch["images"], batch["cells"])
  same, position = pretrain.cell_loss(model, params, cell_head, batch["images"], batch["cells"], position_head)
  assert none == 0 and same == attributes
  z = np.asarray(model.apply({"params": params}, batch["images"], method=model.embed_image))
  nll = lambda kernel, y: -np.asarray(jax.nn.log_softmax(z @ kernel))[:, np.arange(9), y]
  expected = (nll(position_head["row"], np.arange(9) // 3) + nll(position_head["col"], np.arange(9) % 3)).mean()
  np.testing.assert_allclose(position, expected, rtol=1e-5)
  swapped = {"row": position_head["col"], "col": position_head["row"]}  # Rows and columns are separate targets.
  _, crossed = pretrain.cell_loss(model, params, cell_head, batch["images"], batch["cells"], swapped)
  assert abs(crossed - position) > 1e-4
  trained = pretrain.train(mcfg, pretrain.Stream(lambda k: pool, 8, 0), 2, 1e-3, 0, position_weight=1.0)
  plain = pretrain.train(mcfg, pretrain.Stream(lambda k: pool, 8, 0), 2, 1e-3, 0)
  assert jax.tree.structure(trained) == jax.tree.structure(params)  # The position head is not kept.
  assert max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), trained, plain))) > 1e-6


def test_stream_builds_the_next_pool_in_the_background_and_draws_the_same_batches():
  built = []  # (k, thread name) of each pool built.

  def make_pool(k):
    built.append((k, threading.current_thread().name))
    rng = np.random.default_rng(k)
    n = 10  # Examples per pool: a pass is 3 draws of 4 (the last one starts at 8 and overflows to 12).
    return dict(tokens=np.full((n, 8), k), mask_ar=np.zeros((n, 8), int), mask_loss=np.ones((n, 8), int),
                input_mask=np.ones((n, 8), bool), images=rng.integers(0, 255, (n, 4, 4, 3), np.uint8),
                image_index=np.arange(n), cells=np.zeros((n, 9, 3), int))

  def draws(planned):
    built.clear()
    stream = pretrain.Stream(make_pool, 4, 0)
    if planned is not None:
      stream.plan(planned)
    return [next(stream) for _ in range(planned or 7)], list(built)

  plain, plain_built = draws(None)
  ahead, ahead_built = draws(7)  # Pools 0, 1 and 2 (draws 1-3, 4-6, 7).
  assert [k for k, _ in plain_built] == [k for k, _ in ahead_built] == [0, 1, 2]
  assert {name for _, name in plain_built} == {threading.current_thread().name}
  assert [name == "stream-pool" for _, name in ahead_built] == [False, True, True]
  for a, b in zip(plain, ahead):
    assert jax.tree.all(jax.tree.map(np.array_equal, a, b))
  assert [int(b["tokens"][0, 0]) for b in ahead] == [0, 0, 0, 1, 1, 1, 2]
  assert [k for k, _ in draws(6)[1]] == [0, 1]  # No pool is built that no draw needs.

  sizes = pretrain.Stream(lambda k: make_pool(k) if k == 0 else {a: v[:2] for a, v in make_pool(k).items()}, 4, 0)
  for _ in range(4):  # The fourth draw comes from pool 1, of 2 examples: its indices are drawn below 2.
    batch = next(sizes)
  assert batch["tokens"].shape[0] == 4 and int(batch["tokens"][0, 0]) == 1

  def failing(k):
    if k:
      raise ValueError(f"pool {k} failed")
    return make_pool(k)
  stream = pretrain.Stream(failing, 4, 0)
  stream.plan(4)
  with pytest.raises(ValueError, match="pool 1 failed"):  # A background failure surfaces at the draw needing it.
    [next(stream) for _ in range(4)]


def test_skill_weights_reach_the_training_questions(tmp_path):
  cfg = _tiny("counting:shape=star")
  assert pretrain.training_mix(cfg) == {"skill_weights": {"spatial": 3.0}, "compare_present": 0.5}  # The default.
  cfg.skill_weights, cfg.compare_present = {}, 0.0
  assert pretrain.training_mix(cfg) == {}  # Skills drawn uniformly.
  scenes = pretrain.sample_scenes(150, 2, 2, 4)
  share = lambda rows: np.mean([s == "spatial" for s in rows["skill"]])
  assert share(pretrain.vqa_data(scenes, 2, 0, image_size=48)) < 0.3
  cfg.skill_weights = {"spatial": 9.0}
  rows = pretrain.vqa_data(scenes, 2, 0, image_size=48, mix=tasks.make_mix(**pretrain.training_mix(cfg)))
  assert share(rows) > 0.55
  assert pretrain.training_mix(cfg) == {"skill_weights": {"spatial": 9.0}}  # Skills left out weigh 1: not uniform.
  cfg.skill_weights = dict.fromkeys(lang.SKILLS, 2.0)
  assert pretrain.training_mix(cfg) == {}
  # Rectification's sample of the target's training data draws skills as the target was trained.
  def original_share(weights):
    path = tmp_path / str(weights) / "train.jsonl"
    shapes_system.write_original_jsonl(str(path), 0, 150, 2, "counting:shape=star", 48, tasks.make_mix(weights))
    questions = [json.loads(line)["question"] for line in path.read_text().splitlines()]
    return np.mean([lang.parse_question(q).skill == "spatial" for q in questions])
  assert original_share(None) < 0.25 and original_share({"spatial": 9.0}) > 0.4  # Some scenes have one object.
