"""`audit.config_check`: every shipped audit config passes; each bad value fails at once, naming its key."""
import re

import pytest

from auditdm_jax import config as config_lib
from auditdm_jax.audit import config_check

DEMO = "configs/audit/demo.py"


def _config(spec, overrides=()):
  return config_lib.resolve(config_lib.find_spec(spec), list(overrides))


@pytest.mark.parametrize("spec", [DEMO, DEMO + ":fast", DEMO + ":mode=edit_question,diversity=1.0",
                                  "configs/audit/paper.py", "configs/audit/paper.py:mode=edit",
                                  "configs/audit/paper.py:tiny=True"])
def test_shipped_configs_pass(spec):
  config_check.check(_config(spec))


@pytest.mark.parametrize("override,message", [
    ("total_steps=0", "config total_steps must be an int >= 1, got 0"),
    ("group_size=1", "config group_size must be an int >= 2, got 1"),
    ("grad_accum_steps=0", "config grad_accum_steps must be an int >= 1"),
    ("max_words=0", "config max_words must be an int >= 1"),
    ("mode=edits", "unknown rollout mode 'edits'"),
    ("reward.threshold=1.5", "threshold must be in (0, 1]"),
    ("loss.beta=-1", "beta must be >= 0"),
    ("loss.kl_estimator=k9", "unknown KL estimator 'k9'"),
    ("schedule.warmup_percent=2.0", "exceeds total_steps"),
    ("system.batch_size=0", "config system.batch_size must be an int >= 1, got 0"),
    ("system.answer_batch_size=-4", "config system.answer_batch_size must be an int >= 1"),
    ("system.rectify_scenes=-1", "config system.rectify_scenes must be an int >= 0"),
    ("system.temperature=0", "config system.temperature must be > 0"),
    ("system.top_p=1.5", "config system.top_p must be in (0, 1]"),
    ("generate.samples_per_source=0", "config generate.samples_per_source must be an int >= 1"),
    ("generate.keep=some", "config generate.keep must be one of ('consensus', 'failures', 'all')"),
    ("rectify.mix=1.5", "config rectify.mix must be in [0, 1] (the generated data's share), got 1.5"),
    ("rectify.mix=-0.1", "config rectify.mix must be in [0, 1]"),
    ("rectify.lr=0", "config rectify.lr must be > 0"),
    ("rectify.steps=0", "config rectify.steps must be an int >= 1"),
    ("rectify.balance_answers=0", "rectify.balance_answers must be an int >= 1"),
    ("rectify.log_every=0", "config rectify.log_every must be an int >= 1"),
    ("log_every=0", "config log_every must be an int >= 1"),
    ("lr=nan", "config lr must be > 0, got nan"),
    ("lr=-1", "config lr must be > 0, got -1.0"),
    # The world's own check (shapes: the weakness spec), before anything trains or loads.
    ("system.weakness=countin:shape=star", "unknown skill 'countin'"),
    ("system.weakness=counting:shape=star+shape=circle", "`shape` is given twice"),
    ("system.weakness=color:color=red", "no color question of the shapes world falls in this slice"),
])
def test_bad_value_fails_naming_it(override, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    config_check.check(_config(DEMO, [override]))


def test_stages_check_only_their_sections():
  bad = _config(DEMO, ["rectify.mix=2", "group_size=1"])
  config_check.check(bad, ("rollout", "generate"))  # Neither bad value is read by these stages.
  with pytest.raises(ValueError, match="group_size"):
    config_check.check(bad, ("train",))
  with pytest.raises(ValueError, match="rectify.mix"):
    config_check.check(bad, ("rectify",))
  with pytest.raises(ValueError, match="unknown config_check stages"):
    config_check.check(bad, ("rolout",))
