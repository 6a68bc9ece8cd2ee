"""The shapes-world demo: tiny VLMs pretrained on CPU in minutes (`auditdm demo-pretrain`, `auditdm skills`).

A BASE VLM learns the world's questions; the references are the base fine-tuned further (own seeds), the target is
the base fine-tuned on data whose planted weakness slices carry wrong answers (`planted_share` of its questions lie
inside them); the auditor is SFT-trained on the instruction prompts. The references must pass a competence check
(`competence`: every skill on validation questions; the base trains more rounds while they fall short). See
auditdm_jax/worlds/shapes/pretrain.py.

Arguments: `weakness=` the target's planted weakness (a `worlds/shapes/tasks.py` spec, e.g.
"spatial:relation=left", "counting:shape=star", or a bracketed list), `fast` (tiny budgets for tests), `ground`
(the grounding loss's weight, `ground_weight`), `pos` (the image tokens' position loss weight, `position_weight`),
`skills` (how often each skill's questions are drawn for training, e.g. "spatial:3"; others weigh 1), `compare`
(the share of training comparisons about two attribute values a scene both has, `compare_present`), `ft_aux`
(whether fine-tunes train the auxiliary losses too, `finetune_aux`), `easy` (how many of the base's first pools of
questions draw scenes of at most 2 objects, `easy_pools`), `shipped` (False: train every model, none copied).
  auditdm demo-pretrain --workdir W --config configs/demo/shapes.py:weakness=spatial:relation=left
  auditdm demo --workdir W --config.pretrain_config=configs/demo/shapes.py:shipped=False   # the demo from scratch
"""
import ml_collections

from auditdm_jax import config as config_lib


def _arch(width=128, depth=3, img_width=128, img_depth=2, heads=4, kv_heads=1):
  """A tiny VLM: its decoder's width, depth and (query, key/value) heads; its ViT's width and depth."""
  return dict(width=width, depth=depth, img_width=img_width, img_depth=img_depth, heads=heads, kv_heads=kv_heads)


def _fit(name, seed, steps, batch_size=64, lr=2e-3, **extra):
  return dict(name=name, seed=seed, steps=steps, batch_size=batch_size, lr=lr, **extra)


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, weakness="counting:shape=star", fast=False, ground=0.5, pos=1.0,
                             skills="spatial:3", compare=0.5, ft_aux=False, easy=0,
                             shipped=True)
  fast = arg.fast
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.image_size = 96  # Patch = a third of the image: one image token per grid cell.
  c.world = dict(min_objects=1, max_objects=4)
  c.weakness = arg.weakness
  c.tokenizer = dict(vocab_size=600, num_scenes=300 if fast else 1500)
  # A pool of scenes per pass over the data; every pass draws new scenes.
  c.vqa = dict(num_scenes=100 if fast else 4000, per_scene=4, max_len=32)
  # {skill: weight}, skills left out weigh 1; names checked before any work. Spatial questions are drawn 3x as
  # often: their relations take the longest to learn.
  c.skill_weights = config_lib.parse_weights(arg.skills)
  # Share of training comparisons about two attribute values the scene both has (tasks.Mix): counts such as 2 vs 1
  # are rare otherwise.
  c.compare_present = arg.compare
  c.auditor_data = dict(num_scenes=100 if fast else 1500, per_scene=3, max_len=160)
  c.aux_weight = 1.0  # The per-cell attribute loss on the image tokens (pretrain.cell_loss).
  # The grounding loss (pretrain.grounded_losses): the objects a question names, predicted where they are named
  # and where the answer is; it makes spatial relations learnable (docs/shapes_world.md). 0: off.
  c.ground_weight = arg.ground
  # Each image token also predicts its cell's row and column (pretrain.cell_loss); 0: off.
  c.position_weight = arg.pos
  # A curriculum: the base's first `easy_pools` pools of questions (vqa.num_scenes scenes each: 250 steps at batch
  # 64) draw scenes of at most 2 objects, so names are grounded among fewer objects first. 0: off.
  c.easy_pools = arg.easy
  tiny = _arch(32, 1, 32, 1) if fast else {}
  c.base = _fit("base", 0, 30 if fast else 5000, **(tiny or _arch(depth=4)))
  # Fine-tunes of the base: the target with its planted weakness, the references on data of their own seeds.
  finetune = dict(steps=10 if fast else 200, lr=5e-4)
  # Whether the fine-tunes train the auxiliary losses too, with fresh heads, or the answers alone (False: the
  # heads' first gradients do not shake what the base learned; docs/shapes_world.md).
  c.finetune_aux = arg.ft_aux
  c.target = _fit("target", 10, planted_share=0.1, **finetune)
  c.references = [_fit("ref0", 11, **finetune), _fit("ref1", 12, **finetune)]
  # The references must answer `bar` of every skill's validation questions (`per_skill` each, scenes of seed
  # `seed`); while they fall short, at most `rounds` times, the base trains `steps` more steps (its losses, peak
  # `lr`) and they are fine-tuned again from it (pretrain.pretrain_all). rounds=0: off.
  c.competence = dict(bar=0.95, rounds=0 if fast else 4, steps=1000, lr=5e-4, per_skill=1000, seed=777)
  # 1000 SFT steps: at 300, a fifth of its questions did not parse (a third of the spatial ones), and GRPO's
  # format penalty then drove it off the skills whose questions are long (docs/shapes_world.md).
  c.auditor = _fit("auditor", 3, 10 if fast else 1000, batch_size=32, **(tiny or _arch(depth=2)))
  # Models found in the package's shipped sets (worlds/shapes/shipped.py, by the digest of this config) are copied
  # instead of trained; False trains every model (e.g. to check that shipped ones reproduce).
  c.shipped = arg.shipped
  c.eval = dict(per_skill=20 if fast else 200, seed=12345, auditor_samples=4 if fast else 64)
  return c
