"""Answer normalisation, consensus and reward cases."""
import jax.numpy as jnp
import numpy as np
import pytest

from auditdm_jax import config as config_lib
from auditdm_jax.audit import divergence as dv
from auditdm_jax.audit import grpo
from auditdm_jax.audit import prompts
from auditdm_jax.audit import trainer


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
  assert dv.consensus(["two", "2", "three"], 0.5) == ("2", pytest.approx(2 / 3), True, 3, False)
  assert dv.consensus(["two", "2", "three"], 1.0).agreed is False
  assert dv.consensus(["", ""], 0.5) == ("", 0.0, False, 2, False)
  with pytest.raises(ValueError):
    dv.consensus([])


@pytest.mark.parametrize("answers", [
    ["yes", "no"], ["yes", "yes", "no", "no"], ["red", "blue", "green"], ["cat", "dog", "cat", "dog", "fox"],
    ["yes", "No.", None],  # a tie among the references that answered
])
def test_a_tie_is_never_consensus(answers):
  for threshold in (0.2, 0.5):
    c = dv.consensus(answers, threshold)
    assert (c.label, c.agreed) == ("", False)
    r = dv.reward("maybe", answers, config=dv.RewardConfig(threshold=threshold, partial_credit=1.0))
    assert (r["reward"], r["failure"], r["target_disagrees"]) == (0.0, False, False)


def test_ties_from_the_issue_give_no_reward():
  assert dv.reward("no", ["yes", "no"])["reward"] == 0.0
  assert dv.reward("no", ["yes", "yes", "no", "no"])["reward"] == 0.0
  # A unique top answer below a strict majority is a consensus at threshold 0.4 (4 answers: 2, 1, 1).
  c = dv.consensus(["cat", "cat", "dog", "fox"], 0.4)
  assert (c.label, c.agreement, c.agreed) == ("cat", 0.5, True)


def test_a_failed_reference_is_absent_never_an_answer():
  r = dv.reward("red", [None, None, "red"])
  assert (r["label"], r["reward"], r["answered"], r["too_few_references"], r["consensus"]) == (
      "red", 0.0, 1, True, False)
  # One of three answered: too few for a consensus by default (more than half must answer)...
  assert dv.reward("blue", [None, None, "red"])["reward"] == 0.0
  # ...unless the config says one answer suffices; the agreement is over those that answered.
  r = dv.reward("blue", [None, None, "red"], config=dv.RewardConfig(min_references=1))
  assert (r["reward"], r["label"], r["agreement"]) == (1.0, "red", 1.0)
  # An exception object is a failure too, as is a failed target (never a disagreement).
  r = dv.reward("blue", [RuntimeError("HTTP 500"), "red", "red"])
  assert (r["reward"], r["answered"], r["agreement"]) == (1.0, 2, 1.0)
  r = dv.reward(None, ["red", "red", "red"])
  assert (r["reward"], r["target"], r["failure"]) == (0.0, "", False)
  # All references failed: no consensus, no reward, no exception.
  r = dv.reward("red", [None, None, None], config=dv.RewardConfig(partial_credit=1.0))
  assert (r["reward"], r["label"], r["answered"], r["too_few_references"]) == (0.0, "", 0, True)
  # None is not text: it never becomes the number word "none" = "0".
  assert dv.reward("0", [None, None, "0"], config=dv.RewardConfig(min_references=1))["label"] == "0"
  assert dv.reward("1", [None, None, None], config=dv.RewardConfig(min_references=1))["label"] == ""
  with pytest.raises(TypeError, match="NoneType"):
    dv.normalize_answer(None)


def test_adversarial_answers():
  # Numbers, number words and decimal spellings of the same count agree.
  assert dv.consensus([2, "two", "2.0", "Two."]) == ("2", 1.0, True, 4, False)
  assert dv.reward(3.0, [2, "two", 2])["reward"] == 1.0
  assert dv.normalize_answer("2.50") == "2.50" and dv.normalize_answer(2.5) == "2.5"
  # Empty answers are answers (they count in the denominator) but never the label.
  c = dv.consensus(["", "", "red"])
  assert (c.label, c.agreement, c.agreed) == ("red", pytest.approx(1 / 3), False)
  assert dv.reward("", ["", "", ""])["reward"] == 0.0
  # True is not an answer (bool is an int subclass).
  with pytest.raises(TypeError, match="bool"):
    dv.normalize_answer(True)
  with pytest.raises(ValueError, match="min_references"):
    dv.RewardConfig(min_references=0)


def test_reward_cases():
  cfg = dv.RewardConfig(threshold=0.5)
  # References agree, target differs: a failure found.
  r = dv.reward("3", ["two", "2", "2"], config=cfg)
  assert (r["reward"], r["failure"], r["label"]) == (1.0, True, "2")
  # Target agrees with the consensus: no reward.
  assert dv.reward("Two.", ["2", "2", "3"], config=cfg)["reward"] == 0.0
  # No consensus: no reward under the strict rule...
  r = dv.reward("blue", ["red", "red", "yellow"], config=dv.RewardConfig(threshold=0.9))
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
  # Failed references (None) are absent: counted, not answers.
  out = dv.batch_rewards(["a", "a"], [[None, "b"], [None, "b"], ["b", None]])
  np.testing.assert_array_equal(out["answered"], [1, 2])
  np.testing.assert_array_equal(out["too_few_references"], [True, False])
  np.testing.assert_allclose(out["reward"], [0.0, 1.0])
  with pytest.raises(ValueError, match="answers"):
    dv.batch_rewards(["a"], [["a", "b"]])


def test_reward_config_validation():
  with pytest.raises(ValueError, match="threshold"):
    dv.RewardConfig(threshold=0.0)
  with pytest.raises(ValueError, match="partial_credit"):
    dv.RewardConfig(partial_credit=2.0)
  with pytest.raises(ValueError, match="diversity"):
    dv.RewardConfig(diversity=-0.5)


def test_spread_pays_a_rare_failure_type_more_per_pair():
  # Pairs 0-3 are failures of type "a", 4 of type "b"; 5 is a dropped "b" failure, 6 a non-failure, 7 malformed.
  parts = dv.batch_rewards(["3"] * 6 + ["2", "x"], [["2"] * 8, ["2"] * 8], well_formed=[True] * 7 + [False])
  types = ["a"] * 4 + ["b", "b", "a", "b"]
  valid = [True] * 5 + [False, True, True]
  out = dv.spread(parts, types, valid, 0.5)
  np.testing.assert_allclose(out["divergence"], [0.5] * 4 + [1.0, 1.0, 0.0, 0.0])
  np.testing.assert_allclose(out["reward"], [0.5] * 4 + [1.0, 1.0, 0.0, -0.5])
  np.testing.assert_array_equal(out["type_count"], [4, 4, 4, 4, 1, 0, 0, 0])
  np.testing.assert_array_equal(out["failure"], parts["failure"])  # Only the reward changes.
  # A type found n times earns n ** (1 - diversity) in all; diversity 0 changes nothing.
  assert out["divergence"][:4].sum() == pytest.approx(4 ** 0.5)
  np.testing.assert_allclose(dv.spread(parts, types, valid, 0.0)["reward"], parts["reward"])
  np.testing.assert_allclose(dv.spread(parts, types, valid, 1.0)["divergence"][:5], [0.25] * 4 + [1.0])
  with pytest.raises(ValueError, match="one type per pair"):
    dv.spread(parts, types[:3], valid, 0.5)


def test_diversity_survives_dr_grpo_advantages_not_group_std():
  """Two groups of 4: a common type's failures (reward 1/4 after `spread` at diversity 1) and a rare type's (1).
  Dividing by each group's std gives both the same advantages; r - mean keeps the rare one 4x as strong, which is
  why the demo uses Dr.GRPO's advantages when the diversity term is on."""
  rewards = jnp.array([0.25, 0.25, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
  std = grpo.advantages(rewards, 4, config=grpo.loss_config("grpo"))
  np.testing.assert_allclose(std[:4], std[4:], rtol=1e-4)
  dr = grpo.advantages(rewards, 4, config=grpo.loss_config("grpo", advantage="dr_grpo"))
  np.testing.assert_allclose(dr[4:], 4 * dr[:4], rtol=1e-6)
  demo = lambda arg: config_lib.load(config_lib.find_spec(f"configs/audit/demo.py:{arg}"))
  assert trainer.loss_config(demo("diversity=1.0")).advantage == "dr_grpo"
  assert trainer.loss_config(demo("")).advantage == "grpo"


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
