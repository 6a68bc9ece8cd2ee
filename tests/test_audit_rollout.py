"""Rollout modes: counterfactual images through a generator, failures dropped and counted, never a crash."""
import dataclasses
import os
import sys

import jax
import numpy as np
import pytest

from auditdm_jax.audit import answerers
from auditdm_jax.audit import divergence
from auditdm_jax.audit import rollout
from auditdm_jax.imagegen.errors import GenerationError

sys.path.insert(0, os.path.dirname(__file__))
import audit_toy  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


class FakeGenerator:
  """Edits/regenerates to a grey image whose level encodes the text; fails on texts mentioning "color"."""

  def __init__(self):
    self.calls = []

  def _one(self, text):
    if "color" in text:
      return GenerationError(f"cannot render {text!r}")
    return np.full((8, 8, 3), len(text), np.uint8)

  def edit(self, images, instructions, seeds=None):
    self.calls.append(("edit", len(images), list(seeds)))
    return [self._one(t) for t in instructions]

  def generate(self, prompts, seeds=None):
    self.calls.append(("generate", len(prompts), list(seeds)))
    return [self._one(t) for t in prompts]


def _run(mode, **kw):
  system = audit_toy.build(audit_toy.get_config(), None)
  source = audit_toy._source(0)  # pylint: disable=protected-access
  source["question"] = np.array(["how many count?"] * 4)
  gen = FakeGenerator()
  run_rollout = rollout.Rollout(dataclasses.replace(system, generator=gen), mode=mode, group_size=4, **kw)
  return run_rollout(system.params, source, jax.random.PRNGKey(0)), gen


@pytest.mark.parametrize("mode", ["edit", "caption"])
def test_counterfactual_modes_drop_generation_failures(mode):
  res, gen = _run(mode)
  texts = res.actions[0].texts
  well_formed = np.array([not t.endswith("?") for t in texts])  # edits/captions must not be questions
  failed = np.array([w and "color" in t for w, t in zip(well_formed, texts)])
  assert gen.calls[0][0] == ("edit" if mode == "edit" else "generate")
  assert gen.calls[0][1] == well_formed.sum()  # malformed outputs never reach the generator
  assert res.counters["image_failures"] == failed.sum() > 0
  assert res.counters["malformed"] == (~well_formed).sum() > 0
  np.testing.assert_array_equal(res.valid, ~failed)
  assert np.all(res.rewards[failed] == 0.0)
  assert np.all(res.rewards[~well_formed] == -0.5)  # format penalty
  # The fixed question is asked about the counterfactual image.
  ok = np.flatnonzero(well_formed & ~failed)
  assert all(res.samples[i].question == "how many count?" and res.samples[i].image[0, 0, 0] == len(texts[i])
             for i in ok)
  assert all(s.failure for i, s in enumerate(res.samples) if i in ok)  # counting question: the target fails
  m = rollout.audit_metrics(res)
  assert m["dropped"] == pytest.approx(failed.mean()) and m["precision"] == 1.0


class IllPosed(GenerationError):
  ill_posed = True


@pytest.mark.parametrize("mode", ["edit", "edit_question"])
def test_an_instruction_the_generator_rejects_as_ill_posed_is_penalised_not_dropped(mode):
  gen = FakeGenerator()
  gen._one = lambda text: IllPosed(text) if "size" in text else np.full((8, 8, 3), 7, np.uint8)
  system = dataclasses.replace(audit_toy.build(audit_toy.get_config(), None), generator=gen)
  source = dict(audit_toy._source(0), question=np.array(["how many count?"] * 4))  # pylint: disable=protected-access
  res = rollout.Rollout(system, mode=mode, group_size=4)(system.params, source, jax.random.PRNGKey(0))
  edits = res.actions[0].texts
  ill = np.array([not t.endswith("?") and "size" in t for t in edits])
  counted = ill if mode == "edit" else ill & np.array([q.endswith("?") for q in res.actions[1].texts])
  assert counted.any() and res.counters["ill_posed"] == counted.sum()  # A malformed question counts as malformed.
  assert res.counters["image_failures"] == 0
  assert res.valid.all() and np.all(res.rewards[ill] == -0.5)
  assert not any(res.samples[i].well_formed or res.samples[i].failure for i in np.flatnonzero(ill))


def test_edit_question_mode_has_two_actions_per_sample():
  res, _ = _run("edit_question")
  assert len(res.actions) == 2 and all(len(a.texts) == 16 for a in res.actions)
  questions = res.actions[1].texts
  assert [s.question for s in res.samples] == [q.strip() for q in questions]


def test_fixed_question_modes_need_a_question():
  system = audit_toy.build(audit_toy.get_config(), None)
  with pytest.raises(ValueError, match="needs a 'question'"):
    source = audit_toy._source(0)  # pylint: disable=protected-access
    rollout.Rollout(dataclasses.replace(system, generator=FakeGenerator()), mode="edit", group_size=2)(
        system.params, source, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="unknown rollout mode"):
    rollout.check_mode("both")
  with pytest.raises(ValueError, match="has no image generator"):
    rollout.Rollout(system, mode="caption")  # The toy world has no generator: only question-only audits.


def test_system_checks_its_roles_when_built():
  system = audit_toy.build(audit_toy.get_config(), None)
  with pytest.raises(TypeError, match="System.target must implement Answerer"):
    dataclasses.replace(system, target=lambda images, questions: questions)
  with pytest.raises(TypeError, match="System.generator must implement Generator"):
    dataclasses.replace(system, generator=object())
  with pytest.raises(TypeError, match="System.data must be callable"):
    dataclasses.replace(system, data=[])
  with pytest.raises(ValueError, match="rectify needs `rectification`"):
    system.require("rectification", "rectify")


def test_unanswered_pairs_are_dropped_and_a_failed_reference_is_left_out():
  system = audit_toy.build(audit_toy.get_config(), None)
  flaky = answerers.FunctionAnswerer("flaky", lambda im, qs: [None if "size" in q else "ok" for q in qs])
  refs = answerers.Ensemble(system.references.references[:2] + [flaky])
  source = audit_toy._source(0)  # pylint: disable=protected-access
  run = lambda s: rollout.Rollout(s, mode="question", group_size=4)(system.params, source, jax.random.PRNGKey(3))
  res = run(dataclasses.replace(system, references=refs))  # One reference fails: the other two decide.
  asked_size = np.array(["size" in t and t.endswith("?") for t in res.actions[0].texts])
  assert asked_size.any() and res.counters["answer_failures"] == 0
  assert res.counters["reference_failures"] == asked_size.sum()
  for sample, size in zip(res.samples, asked_size):
    assert (sample.reference_answers["flaky"] is None) == size and sample.valid
  res = run(dataclasses.replace(system, target=flaky))  # The target fails: nothing to score.
  assert res.counters["answer_failures"] == asked_size.sum() > 0
  np.testing.assert_array_equal(res.valid, ~asked_size)


def test_world_format_fn_marks_outputs_malformed():
  system = audit_toy.build(audit_toy.get_config(), None)
  source = audit_toy._source(0)  # pylint: disable=protected-access
  system = dataclasses.replace(system, format_fn=lambda text, kind: "count" not in text)
  res = rollout.Rollout(system, mode="question", group_size=4)(system.params, source, jax.random.PRNGKey(0))
  counting = np.array(["count" in t for t in res.actions[0].texts])
  assert counting.any() and not any(s.well_formed for s, c in zip(res.samples, counting) if c)
  assert np.all(res.rewards[counting] == -0.5)


def test_diversity_spreads_the_reward_over_question_types():
  system = audit_toy.build(audit_toy.get_config(), None)
  source = audit_toy._source(0)  # pylint: disable=protected-access
  run = lambda s, d: rollout.Rollout(s, mode="question", group_size=4, reward_config=divergence.RewardConfig(
      diversity=d))(system.params, source, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="type_fn"):
    run(system, 0.5)
  typed = dataclasses.replace(system, type_fn=lambda q: q.split()[1])
  plain, spread = run(typed, 0.0), run(typed, 0.5)
  fails = plain.parts["failure"]  # The toy target fails every well-formed counting question.
  assert fails.sum() > 1
  np.testing.assert_array_equal(spread.parts["failure"], fails)
  np.testing.assert_allclose(spread.rewards[fails], fails.sum() ** -0.5, rtol=1e-6)
  np.testing.assert_allclose(spread.rewards[~fails], plain.rewards[~fails])
