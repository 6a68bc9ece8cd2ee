"""Shapes-world VQA dataset as JSONL + PNG, read by `tfds_input` like any other `{"jsonl": path}` source.

  <out>/train.jsonl, <out>/test.jsonl, <out>/images/<split>/<scene>.png, <out>/info.json

Rows: `{"image": "images/test/000012.png", "question", "answer", "skill", "in_weakness", "scene" (JSON),
"id"}`. Several questions share one scene image. `test` is balanced over skills (`per_skill` questions each), so
per-skill accuracy is read off by grouping rows on `skill`; `in_weakness` marks the weakness slice. With
`exclude_weakness`, the train split has no question of the weakness slice (the target's training data).
Deterministic in `seed`; train and test scenes come from disjoint seeds.
"""
import json
import os

import numpy as np
from auditdm_jax import images as images_lib
from auditdm_jax import io
from auditdm_jax.worlds.shapes import scenes as shapes
from auditdm_jax.worlds.shapes import language as lang
from auditdm_jax.worlds.shapes import tasks


def _rows(split, scenes, questions, out_dir, image_size):
  """questions: [(scene index, text, answer, skill, in_weakness)] -> JSONL rows; writes the scene PNGs."""
  used = sorted({q[0] for q in questions})
  for i in used:
    png = images_lib.png_bytes(shapes.render(scenes[i], image_size))
    io.write_bytes(os.path.join(out_dir, "images", split, f"{i:06d}.png"), png)
  return [{"image": f"images/{split}/{i:06d}.png", "question": q, "answer": a, "skill": s, "in_weakness": bool(w),
           "scene": scenes[i].to_json(), "id": f"{split}-{k}"} for k, (i, q, a, s, w) in enumerate(questions)]


def build(out_dir, num_train=2000, per_scene=4, per_skill=200, seed=0, image_size=64, weakness=None,
          exclude_weakness=False, min_objects=1, max_objects=4):
  """Writes the dataset; returns info {split: num rows, "test_per_skill": {skill: n}, ...}."""
  tasks.check_weakness(weakness)
  rng = np.random.default_rng([seed, 0])
  train_scenes = [shapes.sample_scene(rng, min_objects, max_objects) for _ in range(num_train)]
  train_q = []
  for i, scene in enumerate(train_scenes):
    for _ in range(per_scene):
      drawn = tasks.sample_training_question(scene, rng, weakness, exclude_weakness)
      if drawn is not None:
        train_q.append((i,) + drawn)

  test = tasks.balanced_test(np.random.default_rng([seed, 1]), per_skill, weakness, min_objects, max_objects)
  test_scenes = [t[0] for t in test]
  test_q = [(k,) + t[1:] for k, t in enumerate(test)]
  info = {"seed": seed, "image_size": image_size, "weakness": weakness, "exclude_weakness": exclude_weakness}
  for split, scenes, qs in (("train", train_scenes, train_q), ("test", test_scenes, test_q)):
    rows = _rows(split, scenes, qs, out_dir, image_size)
    io.write_text(os.path.join(out_dir, f"{split}.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    info[split] = len(rows)
  info["test_per_skill"] = {s: sum(q[3] == s for q in test_q) for s in lang.SKILLS}
  info["test_in_weakness"] = sum(bool(q[4]) for q in test_q)
  io.write_json(os.path.join(out_dir, "info.json"), info)
  return info
