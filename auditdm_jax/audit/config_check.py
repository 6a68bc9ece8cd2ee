"""Checks of an audit config's values before anything runs (`auditdm` calls them before claiming the workdir):
a bad value fails at once in one line, not minutes into a run or silently (a `rectify.mix` above 1 gives the
original data a negative weight).

Stages: "rollout" (mode, reward, max_words, the system's sizes and sampling, the world's own check), "train" (GRPO:
steps, logging interval, learning rate, group size, loss, optimizer and schedule), "generate" and "rectify" (their
sections). `ALL` is the whole loop's.
"""
import importlib

from auditdm_jax import config as config_lib
from auditdm_jax.audit import generate
from auditdm_jax.audit import rectify
from auditdm_jax.audit import rollout
from auditdm_jax.audit import trainer
from auditdm_jax.train import optim

ALL = ("rollout", "train", "generate", "rectify")
# The system's counts that every world reads alike, where its config has them (>= 1 each).
SYSTEM_COUNTS = ("batch_size", "answer_batch_size", "eval_batches", "pool_batches", "prompt_len", "max_new_tokens",
                 "answer_tokens", "test_questions", "weakness_questions")


def _system(sc):
  """The counts and sampling settings every world reads alike, then the world's own check (`check_config(sc)` of
  its system module, when it has one: e.g. the shapes world's weakness spec)."""
  for key in SYSTEM_COUNTS:
    if key in sc:
      config_lib.check_count(sc, key, "system.")
  if "rectify_scenes" in sc:
    config_lib.check_count(sc, "rectify_scenes", "system.", low=0)
  if "temperature" in sc:
    config_lib.check_number(sc, "temperature", "system.", lambda t: t > 0, "> 0")
  if "top_p" in sc:
    config_lib.check_number(sc, "top_p", "system.", lambda p: 0 < p <= 1, "in (0, 1]")
  world = importlib.import_module(sc.module)
  if hasattr(world, "check_config"):
    world.check_config(sc)


def check(config, stages=ALL):
  """Raises `config.ConfigError` naming the first bad value of `config` (an audit config) for `stages`."""
  unknown = set(stages) - set(ALL)
  if unknown:
    raise ValueError(f"unknown config_check stages {sorted(unknown)}; known: {ALL}")
  if "rollout" in stages:
    rollout.check_config(config)
    config_lib.check_count(config, "max_words")
    _system(config.system)
  if "train" in stages:
    config_lib.check_count(config, "total_steps")
    config_lib.check_count(config, "log_every")
    config_lib.check_number(config, "lr", "", lambda lr: lr > 0, "> 0")  # NaN too: it would train NaN weights.
    # One sample per group has no advantage: GRPO compares each rollout with its group's others.
    config_lib.check_count(config, "group_size", low=2)
    config_lib.check_count(config, "grad_accum_steps")
    trainer.loss_config(config)
    optim.make_optimizer(config, total_steps=config.total_steps)
  if "generate" in stages:
    config_lib.check_count(config.generate, "samples_per_source", "generate.")
    if config.generate.keep not in generate.KEEP:
      config_lib.fail("generate.keep", f"one of {generate.KEEP}", config.generate.keep)
    generate.check_auditor_mode(config)
  if "rectify" in stages:
    rc = config.rectify
    config_lib.check_number(rc, "mix", "rectify.", lambda m: 0 <= m <= 1, "in [0, 1] (the generated data's share)")
    config_lib.check_number(rc, "lr", "rectify.", lambda lr: lr > 0, "> 0")
    for key in ("steps", "batch_size", "text_len", "log_every"):
      if key in rc:
        config_lib.check_count(rc, key, "rectify.")
    rectify.check_balance_answers(rc.get("balance_answers", 1))
