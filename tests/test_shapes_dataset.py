"""Shapes-world JSONL + PNG dataset: splits, per-skill test breakdown, weakness exclusion, input pipeline."""
import json
import os

import numpy as np

from auditdm_jax.worlds.shapes import scenes as shapes
from auditdm_jax.worlds.shapes import language as lang
from auditdm_jax.worlds.shapes import tasks
from auditdm_jax.worlds.shapes import dataset as builder


def test_build_splits_and_weakness(tmp_path):
  spec = "counting:shape=star"
  info = builder.build(str(tmp_path), num_train=60, per_skill=5, weakness=spec, exclude_weakness=True)
  rows = {s: [json.loads(l) for l in open(tmp_path / f"{s}.jsonl")] for s in ("train", "test")}
  assert info["train"] == len(rows["train"]) == 240 and info["test"] == len(rows["test"])
  assert not any(tasks.in_weakness(r["question"], spec) for r in rows["train"])
  test_skills = [r["skill"] for r in rows["test"] if not r["in_weakness"]]
  assert all(test_skills.count(s) >= 4 for s in lang.SKILLS)
  assert sum(r["in_weakness"] for r in rows["test"]) >= 5
  for r in rows["test"][:20]:  # Answers are ground truth on the stored scene, and the PNG shows that scene.
    scene = shapes.Scene.from_json(r["scene"])
    assert lang.answer(r["question"], scene) == r["answer"]
    from PIL import Image
    assert shapes.parse_image(np.asarray(Image.open(os.path.join(tmp_path, r["image"])))) == scene
  again = builder.build(str(tmp_path / "again"), num_train=60, per_skill=5, weakness=spec, exclude_weakness=True)
  assert again == info and open(tmp_path / "again" / "test.jsonl").read() == open(tmp_path / "test.jsonl").read()


def test_rows_flow_through_input_pipeline(tmp_path):
  from auditdm_jax.data import tfds_input
  builder.build(str(tmp_path), num_train=10, per_skill=2)
  batches = list(tfds_input.eval_batches({"jsonl": str(tmp_path / "test.jsonl")}, "decode", 4))
  batch, _ = batches[0]
  assert batch["image"].shape[1:] == (64, 64, 3)
