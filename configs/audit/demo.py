"""`auditdm demo`: the whole AuditDM loop on the embedded shapes world, on CPU.

  auditdm demo --workdir runs/demo                      # full demo (target: <= 30 min on 2 cores)
  auditdm demo --workdir runs/demo_fast --config configs/audit/demo.py:fast   # minutes; used by the tests
Arguments: fast, steps (GRPO steps), weakness (planted in the target by demo-pretrain), models_dir (default
<workdir>/pretrain), mode (rollout mode), diversity (the reward's diversity exponent, `divergence.spread`).
"""
from auditdm_jax import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, fast=False, steps=0, weakness="counting:shape=star", models_dir="",
                             mode="question", pretrain_config="",
                             diversity=0.0)
  fast = arg.fast
  c = config_lib.ml_collections.ConfigDict()
  c.seed = 0
  c.mode = arg.mode
  c.group_size = 8
  c.max_words = 32
  c.total_steps = arg.steps or (6 if fast else 200)
  # Paper recipe (AdamW, 10% warm-up, cosine to min_lr) at a learning rate suited to a tiny, SFT-initialised model.
  c.optimizer, c.lr, c.wd, c.b2, c.grad_clip_norm = "adamw", 2e-4, 0.0, 0.999, 1.0
  c.schedule = dict(decay_type="cosine", warmup_percent=0.1, min_lr=2e-5)
  c.grad_accum_steps = 1
  c.mesh = dict(data=-1)
  c.ckpt_every, c.ckpt_keep, c.log_every = max(1, c.total_steps // 4), 4, 5
  # With two references a consensus means both agree (threshold 1.0): one weak reference alone must not be able
  # to flag the target (this is what keeps the audit's precision high).
  # diversity > 0 spreads the search over failure types (question skills), for audits that expect several.
  c.reward = dict(threshold=1.0, soft_agreement=False, partial_credit=0.0, format_penalty=0.5,
                  diversity=float(arg.diversity))
  # With the diversity term, advantages are r - group mean (Dr.GRPO's): dividing by the group's std would scale a
  # group whose failures share one type back up, undoing the term's 1/n between groups.
  c.loss = dict(algorithm="grpo", beta=0.04, kl_estimator="k3", advantage_std="population",
                advantage="dr_grpo" if arg.diversity else "grpo")
  # The shapes world's system (auditdm_jax/worlds/shapes/system.py); models_dir "" = <workdir>/pretrain, filled in
  # by the demo command.
  c.system = dict(
      module="auditdm_jax.worlds.shapes.system", models_dir=arg.models_dir, weakness=arg.weakness,
      auditor="auditor", target="target", references=["ref0", "ref1"], prompt_len=64, max_new_tokens=24,
      temperature=1.0, top_p=1.0, batch_size=4 if fast else 8, answer_batch_size=64, eval_batches=1 if fast else 4,
      pool_batches=2 if fast else 40, rectify_scenes=40 if fast else 1500, seed=0,
      # Held-out questions: general ones (accuracy outside the weakness: 10000 puts the standard error of its
      # change under rectification near 0.3 points; 1000 left it near 1, the size of the change the demo bounds)
      # and inside the weakness slices.
      test_questions=40 if fast else 10000, weakness_questions=40 if fast else 1000)
  c.pretrain_config = arg.pretrain_config or ("configs/demo/shapes.py:fast" if fast else "configs/demo/shapes.py")
  # 8 pairs per source: the direction of a failure the auditor finds rarely still gets enough distinct images.
  c.generate = dict(samples_per_source=2 if fast else 8, keep="consensus", auditor_workdir="", baseline=False)
  # balance_answers: within each question type, every consensus answer of the generated pairs weighs the same (a
  # minority answer's pairs are copied up to 50 times): the auditor finds one direction of a failure far more often.
  c.rectify = dict(dataset="", mix=0.5, steps=20 if fast else 300, lr=5e-4, wd=0.0, batch_size=16 if fast else 64,
                   text_len=40, log_every=10, balance_answers=50)
  c.iterations = 1
  return c
