"""The shapes-world demo: tiny VLMs pretrained on CPU in minutes (`auditdm demo-pretrain`, `auditdm skills`).

Arguments: `weakness=` the target's planted weakness (a `data/shapes_tasks.py` spec, e.g.
"spatial:relation=left", "counting:shape=star"), `fast` (tiny budgets for tests).
  auditdm demo-pretrain --workdir W --config configs/demo/shapes.py:weakness=spatial:relation=left
"""
import ml_collections

from auditdm_jax import config as config_lib


def _model(name, role, seed, steps, width=128, depth=3, img_width=128, img_depth=2, batch_size=32, lr=2e-3):
  return dict(name=name, role=role, seed=seed, steps=steps, width=width, depth=depth, img_width=img_width,
              img_depth=img_depth, batch_size=batch_size, lr=lr, aux_weight=1.0)


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, weakness="counting:shape=star", fast=False)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.image_size = 96  # Patch = a third of the image: one image token per grid cell.
  c.world = dict(min_objects=1, max_objects=4)
  c.weakness = arg.weakness
  c.tokenizer = dict(vocab_size=600, num_scenes=300 if arg.fast else 1500)
  c.vqa = dict(num_scenes=300 if arg.fast else 4000, per_scene=4, max_len=32)
  c.auditor_data = dict(num_scenes=100 if arg.fast else 1500, per_scene=3, max_len=160)
  steps = 30 if arg.fast else 3000
  small = dict(width=32, depth=1, img_width=32, img_depth=1) if arg.fast else {}
  c.target = _model("target", "target", 0, steps, **small)
  c.references = [_model("ref0", "reference", 1, steps, **small),
                  _model("ref1", "reference", 2, steps, **(small or dict(width=96, img_width=96)))]
  c.auditor = _model("auditor", "auditor", 3, 10 if arg.fast else 400, **(small or dict(depth=2)))
  c.eval = dict(per_skill=20 if arg.fast else 200, seed=12345, auditor_samples=4 if arg.fast else 64)
  return c
