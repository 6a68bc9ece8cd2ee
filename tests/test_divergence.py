"""Answer normalisation, consensus and reward cases."""
import numpy as np
import pytest

from auditdm_jax.audit import divergence as dv
from auditdm_jax.audit import prompts


@pytest.mark.parametrize("raw,norm", [
    ("Two red Circles.", "2 red circles"),
    ("  THE answer is: yes!", "answer is yes"),
    ("2.5", "2.5"),
    ("1,000", "1000"),
    ("an apple", "apple"),
    ("none", "0"),
    ("dont", "don't"),
    ("left\nside", "left side"),
])
def test_normalize_answer(raw, norm):
  assert dv.normalize_answer(raw) == norm


def test_consensus_majority_and_threshold():
  assert dv.consensus(["two", "2", "three"], 0.5) == ("2", pytest.approx(2 / 3), True)
  assert dv.consensus(["two", "2", "three"], 1.0)[2] is False
  assert dv.consensus(["red", "blue", "green"], 0.5) == ("red", pytest.approx(1 / 3), False)  # tie -> first seen
  assert dv.consensus(["", ""], 0.5) == ("", 0.0, False)
  with pytest.raises(ValueError):
    dv.consensus([])


def test_reward_cases():
  cfg = dv.RewardConfig(threshold=0.5)
  # References agree, target differs: a failure found.
  r = dv.reward("3", ["two", "2", "2"], config=cfg)
  assert (r["reward"], r["failure"], r["label"]) == (1.0, True, "2")
  # Target agrees with the consensus: no reward.
  assert dv.reward("Two.", ["2", "2", "3"], config=cfg)["reward"] == 0.0
  # No consensus: no reward under the strict rule...
  r = dv.reward("blue", ["red", "green", "yellow"], config=dv.RewardConfig(threshold=0.6))
  assert r["reward"] == 0.0 and not r["consensus"] and r["target_disagrees"]
  # ...and agreement x partial credit otherwise.
  r = dv.reward("blue", ["red", "red", "yellow"], config=dv.RewardConfig(threshold=1.0, partial_credit=0.5))
  assert r["reward"] == pytest.approx(0.5 * 2 / 3) and not r["failure"]
  # Soft agreement pays the agreement fraction.
  r = dv.reward("blue", ["red", "red", "yellow"], config=dv.RewardConfig(threshold=0.5, soft_agreement=True))
  assert r["reward"] == pytest.approx(2 / 3) and r["failure"]
  # Malformed auditor output: no divergence reward, a penalty.
  r = dv.reward("3", ["2", "2", "2"], well_formed=False, config=dv.RewardConfig(format_penalty=0.5))
  assert (r["reward"], r["divergence"], r["format_penalty"], r["failure"]) == (-0.5, 0.0, 0.5, False)
  # Model-comparison mode: one reference.
  assert dv.reward("yes", ["no"], config=cfg)["reward"] == 1.0


def test_batch_rewards():
  out = dv.batch_rewards(["2", "3", "red"], [["2", "2", "blue"], ["2", "2", "green"], ["two", "2", "blue"]],
                         well_formed=[True, True, False])
  np.testing.assert_allclose(out["reward"], [0.0, 1.0, -0.5])
  np.testing.assert_array_equal(out["failure"], [False, True, False])
  assert out["label"] == ["2", "2", "blue"]
  with pytest.raises(ValueError, match="answers"):
    dv.batch_rewards(["a"], [["a", "b"]])


def test_reward_config_validation():
  with pytest.raises(ValueError, match="threshold"):
    dv.RewardConfig(threshold=0.0)
  with pytest.raises(ValueError, match="partial_credit"):
    dv.RewardConfig(partial_credit=2.0)


@pytest.mark.parametrize("text,kind,ok", [
    ("How many red circles are there?", "question", True),
    ("How many? Which?", "question", False),
    ("There are two circles.", "question", False),
    ("", "caption", False),
    ("a red circle left of a blue square", "caption", True),
    ("make the red circle blue", "edit", True),
    ("why?", "edit", False),
    ("word " * 70, "caption", False),
])
def test_check_format(text, kind, ok):
  assert dv.check_format(text, kind)[0] is ok


def test_prompts_verbatim():
  assert prompts.get("question") == ("You are given an image. Generate a single question that can be answered "
                                     "solely based on its visible content. Return the question only.")
  assert "challenging for vision-language models" in prompts.get("question", baseline=True)
  assert prompts.get("caption").startswith("You are given an image. Produce a detailed, literal caption")
  assert "easy for models to get wrong" in prompts.get("caption", baseline=True)
  assert prompts.get("edit").endswith("Return the editing command only.")
  with pytest.raises(ValueError):
    prompts.get("image")
