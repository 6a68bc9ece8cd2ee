"""Reward honesty in the shapes world: the hacks an auditor could find earn no reward (one test per hack)."""
import jax
import numpy as np
import pytest

from auditdm_jax.audit import answerers
from auditdm_jax.audit import divergence
from auditdm_jax.audit import grpo
from auditdm_jax.audit import rollout
from auditdm_jax.audit import system as system_lib
from auditdm_jax.worlds.shapes import scenes as shapes
from auditdm_jax.worlds.shapes import system as shapes_system

O = shapes.Obj
# Two circles (so "the circle" is ambiguous), one star, no square.
SCENE = shapes.Scene((O("circle", "red", "small", 0, 0), O("circle", "blue", "large", 0, 2),
                      O("star", "green", "large", 1, 1)))
IMAGE = shapes.render(SCENE, 48)


class ScriptedPolicy:
  """An auditor that writes the given texts, in order, one per sample."""

  def __init__(self, texts):
    self.texts = list(texts)

  def sample(self, params, images, instructions, num_samples, rng):
    n = len(images) * num_samples
    assert n == len(self.texts)
    zeros = np.zeros((n, 1), np.float32)
    return rollout.Completions(self.texts, {"tokens": zeros.astype(np.int32), "mask": zeros + 1, "old_logp": zeros})

  def logprobs(self, params, batch):
    return batch["old_logp"]


def _oracle_or(fallback):
  """A reference that knows the truth, and says `fallback` where the world has no answer."""
  return lambda images, qs: [shapes_system.truth(im, q) or fallback for im, q in zip(images, qs)]


def _audit(texts, target, posed_fn=shapes_system.posed, diversity=0.0):
  """One question-mode rollout on IMAGE (one source, G = len(texts)) -> the samples and the rollout result."""
  refs = answerers.Ensemble([answerers.FunctionAnswerer(f"ref{i}", _oracle_or("yes")) for i in range(2)])
  system = system_lib.System(
      policy=ScriptedPolicy(texts), params={}, target=answerers.FunctionAnswerer("target", target),
      references=refs, generator=None, data=lambda k: None, eval_data=[], truth_fn=shapes_system.truth,
      format_fn=shapes_system.well_formed, posed_fn=posed_fn, type_fn=shapes_system.question_type)
  source = {"image": IMAGE[None], "id": np.array(["s0"])}
  run = rollout.Rollout(system, mode="question", group_size=len(texts), max_words=16,
                        reward_config=divergence.RewardConfig(diversity=diversity))
  res = run(None, source, jax.random.PRNGKey(0))
  return res.samples, res


def _always(answer):
  return lambda images, qs: [answer] * len(qs)


@pytest.mark.parametrize("text,why", [
    ("", "empty"),
    ("Circle what the is?", "ungrammatical: outside the world's language"),
    ("How many stars? How many circles?", "two questions in one"),
    ("What color is the circle?", "ill-posed: two circles, no defined answer"),
    ("Is the star left of the star?", "ill-posed: one object in two roles"),
    ("Are there fewer stars than stars?", "given away: a set compared with itself"),
    ("Are there more red circles than circles?", "given away: a subset is never more than its superset"),
    ("What color is the green star?", "given away: the question names its answer"),
])
def test_hacks_earn_only_the_format_penalty(text, why):
  # The references answer "yes" wherever the world has no answer and the target says "no": without the checks
  # every one of these would be a "failure found".
  samples, res = _audit([text], _always("no"))
  assert not samples[0].failure and samples[0].reward == -0.5, why


def test_ill_posed_questions_are_counted_and_never_answered():
  asked = []
  def target(images, qs):
    asked.extend(qs)
    return ["no"] * len(qs)
  _, res = _audit(["What color is the circle?", "What color is the star?"], target)
  assert res.counters["ill_posed"] == 1 and asked == ["What color is the star?"]


def test_without_the_posedness_check_an_ill_posed_question_is_rewarded():
  """The control: what `posed_fn` blocks (references agreeing on an answer the world does not define)."""
  samples, _ = _audit(["What color is the circle?"], _always("no"), posed_fn=None)
  assert samples[0].failure and samples[0].reward == 1.0 and samples[0].truth is None
  assert not rollout.audit_is_true_failure(samples[0])


def test_absent_objects_are_answerable_and_rewarded_only_on_a_genuine_failure():
  # "none" from everyone: no divergence, no reward.
  samples, _ = _audit(["What color is the square?"], _oracle_or("yes"))
  assert samples[0].truth == "none" and samples[0].well_formed and samples[0].reward == 0.0
  # A target that names a colour for a missing square is truly wrong: a failure, confirmed by ground truth.
  samples, _ = _audit(["What color is the square?"], _always("red"))
  assert samples[0].failure and samples[0].reward == 1.0 and rollout.audit_is_true_failure(samples[0])


def test_a_repeated_question_earns_nothing_extra():
  """G copies of one failing question: each pair is judged on its own (no duplicate bonus) and the group's
  advantages are zero, so repeating a question teaches the auditor nothing."""
  samples, res = _audit(["How many stars are there?"] * 4, _always("3"))
  assert [s.reward for s in samples] == [1.0] * 4
  adv = grpo.advantages(res.rewards, 4, res.valid, grpo.loss_config("grpo"))
  np.testing.assert_allclose(adv, 0.0)


def test_diversity_pays_the_rarer_skill_more():
  """Three counting failures and one binding failure in a group: with diversity 1 each skill earns 1 in all, so the
  binding question gets the highest advantage; type_fn reads the skill from the grammar, whatever is planted."""
  texts = ["How many stars are there?", "How many large objects are there?", "How many green objects are there?",
           "What shape is the green object?", "Circle what the is?"]
  samples, res = _audit(texts, _always("3"), diversity=1.0)
  assert [shapes_system.question_type(t) for t in texts] == ["counting"] * 3 + ["binding", "unparsed"]
  np.testing.assert_allclose([s.reward for s in samples], [1 / 3] * 3 + [1.0, -0.5], rtol=1e-6)
  adv = grpo.advantages(res.rewards, len(texts), res.valid, grpo.loss_config("grpo"))
  assert np.argmax(adv) == 3


def test_posed_matches_truth():
  assert shapes_system.posed(IMAGE, "What color is the square?")
  assert not shapes_system.posed(IMAGE, "What color is the circle?")
  assert not shapes_system.posed(IMAGE, "Paint it black?")
  assert not shapes_system.posed(np.zeros_like(IMAGE), "How many stars are there?")  # Not a rendered scene.


def test_truth_parses_each_image_content_once():
  """A rollout asks about each image G times (posed, then truth): the scene is parsed once per content, and an
  image whose pixels differ is parsed again, never served another image's scene."""
  shapes_system._scene_of.cache_clear()
  copies = [IMAGE.copy() for _ in range(4)]
  assert [shapes_system.truth(im, "How many circles are there?") for im in copies] == ["2"] * 4
  assert shapes_system.posed(copies[0], "What color is the star?")
  info = shapes_system._scene_of.cache_info()
  assert (info.misses, info.hits) == (1, 4)
  recoloured = shapes.render(shapes.Scene(SCENE.objects[1:]), 48)
  assert shapes_system.truth(recoloured, "How many circles are there?") == "1"
  assert shapes_system.truth(IMAGE.astype(np.float32), "How many circles are there?") == "2"  # Keyed by dtype.
  broken = IMAGE.copy()
  broken[:8] = 0
  assert shapes_system.truth(broken, "How many circles are there?") is None
  assert shapes_system._scene_of.cache_info().misses == 4
