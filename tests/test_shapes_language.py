"""Shapes world language: captions, edit commands, questions (generation and parsing)."""
import numpy as np
import pytest

from auditdm_jax import config as config_lib
from auditdm_jax.tools import draw_weaknesses
from auditdm_jax.worlds.shapes import scenes as shapes
from auditdm_jax.worlds.shapes import language as lang
from auditdm_jax.worlds.shapes import tasks

O = shapes.Obj
SCENE = shapes.Scene((O("circle", "red", "small", 0, 0), O("circle", "blue", "large", 0, 2),
                      O("star", "green", "large", 1, 1), O("triangle", "red", "small", 2, 0, "striped")))


def test_caption_roundtrip_canonical_and_paraphrased():
  rng = np.random.default_rng(0)
  for _ in range(200):
    s = shapes.sample_scene(rng, 0, 9, texture_prob=0.3)
    assert lang.parse_caption(lang.caption(s)) == s
    assert lang.parse_caption(lang.caption(s, rng)) == s


@pytest.mark.parametrize("text,expected", [
    ("An image of a large red circle in the top-left corner.", [("circle", "red", "large", 0, 0)]),
    ("There are two small green squares in the top left and the bottom right on a white background",
     [("square", "green", "small", 0, 0), ("square", "green", "small", 2, 2)]),
    ("one big violet star at the center, and a tiny yellow disk on the right",
     [("star", "purple", "large", 1, 1), ("circle", "yellow", "small", 1, 2)]),
    ("A picture with a red large triangle in the upper right", [("triangle", "red", "large", 0, 2)]),
])
def test_parse_caption_paraphrases(text, expected):
  s = lang.parse_caption(text)
  assert [(o.shape, o.color, o.size, o.row, o.col) for o in s.objects] == expected


def test_parse_caption_fills_missing_from_seed():
  a, b = lang.parse_caption("a blue star", seed=3), lang.parse_caption("a blue star", seed=3)
  assert a == b and len(a) == 1 and a.objects[0].color == "blue" and a.objects[0].shape == "star"
  assert lang.parse_caption("an empty image") == shapes.Scene(())


@pytest.mark.parametrize("text,error", [
    ("a cat on a mat", lang.ParseError), ("", lang.ParseError), ("three circles in the top left", lang.ParseError),
    ("a red circle in the center and a star in the middle", lang.ConflictError),
    ("nine circles and a star", lang.ConflictError),
])
def test_parse_caption_errors(text, error):
  with pytest.raises(error):
    lang.parse_caption(text)


@pytest.mark.parametrize("text,skill,answer", [
    ("How many circles are there?", "counting", "2"),
    ("how many red objects are in the image", "counting", "2"),
    ("Count the striped triangles.", "counting", "1"),
    ("How many purple things can you see?", "counting", "0"),
    ("Is there a green star?", "existence", "yes"),
    ("Are there any orange squares?", "existence", "no"),
    ("Does the image contain a large blue circle?", "existence", "yes"),
    ("What color is the star?", "color", "green"),
    ("What is the colour of the object in the top right?", "color", "blue"),
    ("Which color is the small circle?", "color", "red"),
    ("What shape is the green object?", "binding", "star"),
    ("What is the shape of the striped object?", "binding", "triangle"),
    ("What is in the bottom left?", "binding", "triangle"),
    ("What size is the blue circle?", "binding", "large"),
    ("Is the star small or large?", "binding", "large"),
    ("Is the small red circle left of the blue circle?", "spatial", "yes"),
    ("Is the star to the right of the triangle?", "spatial", "yes"),
    ("Is the triangle above the star?", "spatial", "no"),
    ("Is the triangle below the blue circle?", "spatial", "yes"),
    ("Are there more circles than stars?", "comparison", "yes"),
    ("Are there fewer red objects than green objects?", "comparison", "no"),
    ("Are there as many stars as triangles?", "comparison", "yes"),
    ("Is the number of squares greater than the number of stars?", "comparison", "no"),
])
def test_questions_ground_truth(text, skill, answer):
  q = lang.parse_question(text)
  assert q.skill == skill
  assert q.answer(SCENE) == answer


@pytest.mark.parametrize("text,error", [
    ("What is love?", lang.ParseError), ("How many dogs are there?", lang.ParseError), (None, lang.ParseError),
])
def test_question_parse_errors(text, error):
  with pytest.raises(error):
    lang.parse_question(text)


@pytest.mark.parametrize("text,answer", [
    ("What color is the square?", "none"), ("What shape is the purple object?", "none"),
    ("What size is the yellow star?", "none"), ("What is in the bottom right?", "none"),
    ("Is the square left of the star?", "no"), ("Is the star above the orange circle?", "no"),
    ("How many squares are there?", "0"), ("Is there a square?", "no"), ("Are there more squares than stars?", "no"),
])
def test_absent_objects_have_defined_answers(text, answer):
  assert lang.answer(text, SCENE) == answer


def test_ill_posed_questions_are_typed():
  with pytest.raises(lang.ReferenceError_):
    lang.answer("What color is the circle?", SCENE)  # Two circles.
  with pytest.raises(lang.ReferenceError_):
    lang.answer("Is the red circle left of the small circle?", SCENE)  # One object, two roles.


@pytest.mark.parametrize("text", [
    "Are there fewer stars than stars?", "Are there as many red objects as red objects?",
    "Is the number of squares greater than the number of squares?",  # Absent: still the words alone.
    "Are there more red circles than circles?", "Are there fewer objects than stars?",
    "Is the star left of the star?", "Is the square above the square?",
    "What color is the red circle?", "What shape is the star?", "What size is the large yellow square?",
])
def test_given_away_questions_are_ill_posed(text):
  """Questions whose words alone fix or name the answer ask nothing about the image: no scene answers them."""
  q = lang.parse_question(text)
  assert q.given_away()
  for scene in (SCENE, shapes.Scene(())):
    with pytest.raises(lang.GivenAwayError):
      q.answer(scene)


@pytest.mark.parametrize("text,answer", [
    ("Are there fewer red circles than circles?", "yes"), ("Are there more circles than red circles?", "yes"),
    ("Are there as many circles as red objects?", "yes"), ("Are there more objects than stars?", "yes"),
    ("Is the red circle left of the star?", "yes"), ("What color is the small circle?", "red"),
    ("What shape is the green object?", "star"), ("What is in the top left?", "circle"),
])
def test_questions_about_overlapping_sets_are_not_given_away(text, answer):
  """A subset and its superset, or one attribute naming the object and another asked: the image decides."""
  assert not lang.parse_question(text).given_away() and lang.answer(text, SCENE) == answer


def test_the_worlds_questions_never_give_their_answer_away():
  rng = np.random.default_rng(4)
  mixes = (tasks.Mix(), tasks.make_mix(compare_present=1.0))
  for i in range(3000):
    scene = shapes.sample_scene(rng, 2, 9)
    q, _, skill = tasks.sample_question(scene, rng, lang.SKILLS[i % len(lang.SKILLS)], mix=mixes[i % 2])
    assert not lang.parse_question(q).given_away(), (skill, q)


def test_sampled_absent_questions_are_labelled_by_ground_truth():
  """The samplers ask about absent objects (so models learn "none"); the world's parser and the image-level truth
  function give the same answer, on the rendered image as on the scene."""
  from auditdm_jax.worlds.shapes import system  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  absent = {}
  for _ in range(600):
    scene = shapes.sample_scene(rng, 1, 4)
    q, a, skill = tasks.sample_question(scene, rng)
    if a == lang.ABSENT or (skill == "spatial" and not all(r.select(scene) for r in lang.parse_question(q).refs)):
      absent.setdefault(skill, []).append((scene, q, a))
  assert set(absent) == {"color", "binding", "spatial"} and all(len(v) >= 5 for v in absent.values())
  for scene, q, a in [v[0] for v in absent.values()]:
    assert system.truth(shapes.render(scene, 48), q) == a == lang.answer(q, scene)


@pytest.mark.parametrize("text,check", [
    ("Make the star blue.", lambda s: s.at(1, 1).color == "blue"),
    ("change the colour of the blue circle to orange", lambda s: s.at(0, 2).color == "orange"),
    ("Remove the green star", lambda s: s.at(1, 1) is None and len(s) == 3),
    ("Add a small yellow square in the bottom right.", lambda s: s.at(2, 2) == O("square", "yellow", "small", 2, 2)),
    ("move the star to the bottom center", lambda s: s.at(1, 1) is None and s.at(2, 1).shape == "star"),
    ("Enlarge the triangle", lambda s: s.at(2, 0).size == "large"),
    ("make the blue circle small", lambda s: s.at(0, 2).size == "small"),
    ("Replace the star with a square", lambda s: s.at(1, 1) == O("square", "green", "large", 1, 1)),
    ("make all circles purple", lambda s: s.at(0, 0).color == s.at(0, 2).color == "purple"),
    ("remove the stripes from the triangle", lambda s: s.at(2, 0).texture == "plain"),
])
def test_edits(text, check):
  assert check(lang.parse_edit(text).apply(SCENE))


@pytest.mark.parametrize("text,error", [
    ("make the circle blue", lang.ReferenceError_),  # Ambiguous.
    ("remove the square", lang.ReferenceError_),
    ("add a red star in the center", lang.ConflictError),
    ("move the star to the top left", lang.ConflictError),
    ("paint the sky blue", lang.ParseError),
    ("do something", lang.ParseError),
])
def test_edit_errors(text, error):
  with pytest.raises(error):
    lang.parse_edit(text).apply(SCENE)


def test_sampled_material_parses():
  rng = np.random.default_rng(1)
  skills = set()
  for _ in range(300):
    s = shapes.sample_scene(rng, 1, 4)
    q, a, skill = tasks.sample_question(s, rng)
    assert lang.answer(q, s) == a
    skills.add(skill)
    text, edited = lang.sample_edit(s, rng)
    assert lang.parse_edit(text).apply(s) == edited != s
    for kind in tasks.AUDITOR_KINDS:
      out = tasks.auditor_example(s, rng, kind)
      {"caption": lang.parse_caption, "edit": lang.parse_edit, "question": lang.parse_question}[kind](out)
  assert skills == set(lang.SKILLS)


def test_skill_weights_set_how_often_each_skill_is_drawn():
  rng = np.random.default_rng(3)
  weights = config_lib.parse_weights("[spatial:4,color:0]")
  assert weights == dict(spatial=4.0, color=0.0)
  assert config_lib.parse_weights("(spatial:4, 'color:0')") == weights and config_lib.parse_weights("") == {}
  mix = tasks.make_mix(weights)
  drawn = [tasks.sample_question(shapes.sample_scene(rng, 2, 4), rng, mix=mix)[2] for _ in range(800)]
  share = {s: drawn.count(s) / len(drawn) for s in lang.SKILLS}
  assert share["color"] == 0 and abs(share["spatial"] - 0.5) < 0.06 and abs(share["counting"] - 0.125) < 0.04


@pytest.mark.parametrize("text,message", [("spatial", "'spatial' is not name:number"),
                                          ("spatial:x", "'spatial:x' is not name:number"),
                                          ("spatial:1,spatial:2", "'spatial' given twice")])
def test_bad_weight_lists_fail_at_once(text, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.parse_weights(text)


@pytest.mark.parametrize("weights,message", [({"colour": 2}, r"unknown skills \['colour'\]"),
                                             ({"spatial": -1}, "must be >= 0"),
                                             (dict.fromkeys(lang.SKILLS, 0), "positive sum")])
def test_bad_skill_weights_fail_at_once(weights, message):
  with pytest.raises(ValueError, match=message):
    tasks.make_mix(weights)


def test_compare_present_asks_about_two_values_the_scene_has():
  def counts(mix):
    rng = np.random.default_rng(5)
    out = []
    for _ in range(600):
      scene = shapes.sample_scene(rng, 2, 4)
      refs = lang.parse_question(tasks.sample_question(scene, rng, "comparison", mix=mix)[0]).refs
      out.append(tuple(len(r.select(scene)) for r in refs))
    return out
  both = lambda pairs: np.mean([min(p) > 0 for p in pairs])
  default, half = counts(tasks.Mix()), counts(tasks.make_mix(compare_present=0.5))
  assert both(default) < 0.4 < 0.6 < both(half)
  assert sum(sorted(p) == [1, 2] for p in half) > 1.5 * sum(sorted(p) == [1, 2] for p in default)
  for bad in (-0.1, 1.5):
    with pytest.raises(ValueError, match="compare_present is a share"):
      tasks.make_mix(compare_present=bad)


def test_weakness_lists():
  both = ("counting:shape=star", "spatial:relation=left")
  for value in ("counting:shape=star,spatial:relation=left", "[counting:shape=star, spatial:relation=left]",
                "('counting:shape=star','spatial:relation=left')", list(both)):
    assert tasks.weakness_specs(value) == both
  assert tasks.weakness_specs(None) == tasks.weakness_specs("") == ()
  assert tasks.in_weakness("How many stars are there?", both) and tasks.in_weakness("Is the star left of the circle?",
                                                                                     ",".join(both))
  assert not tasks.in_weakness("How many circles are there?", both)
  test = tasks.balanced_test(np.random.default_rng(0), 6, ",".join(both))
  for spec in both:  # Each slice gets its own held-out questions.
    assert sum(t[4] and tasks.in_weakness(t[1], spec) for t in test) >= 6


@pytest.mark.parametrize("value,message", [
    ("counting:shape=star,flying", "unknown skill 'flying'"),
    ("counting:shape=hexagon", "bad condition 'shape=hexagon'"),
    # Colour questions never name the colour they ask for.
    ("color:color=red", "no color question of the shapes world falls in this slice"),
    ("counting:relation=left", "no counting question"),
    ("counting:shape=star,spatial:comparison=more", "weakness 'spatial:comparison=more': no spatial question"),
])
def test_check_weakness_fails_at_once_naming_the_spec(value, message):
  with pytest.raises(ValueError, match=message) as e:
    tasks.check_weakness(value)
  assert "\n" not in str(e.value)


def test_single_condition_specs_are_the_ones_check_weakness_accepts():
  specs = tasks.single_condition_specs(probes=300)
  assert "spatial:relation=left" in specs and "color:color=red" not in specs and "counting:relation=left" not in specs
  for skill in lang.SKILLS:
    for key, values in tasks._CONDITIONS.items():
      for value in values:
        spec = f"{skill}:{key}={value}"
        try:
          tasks.check_weakness(spec, probes=300)
          accepted = True
        except ValueError:
          accepted = False
        assert accepted == (spec in specs), spec


def test_draw_weaknesses(capsys):
  every = tasks.single_condition_specs()
  assert len(every) == 71  # docs/shapes_world.md, *Weakness specs*.
  drawn = draw_weaknesses.draw(5, seed=1)
  assert len(set(drawn)) == 5 and set(drawn) <= set(every) and drawn == draw_weaknesses.draw(5, seed=1)
  assert drawn != draw_weaknesses.draw(5, seed=2)
  left = draw_weaknesses.draw(len(every) - 2, seed=3, exclude=",".join(drawn[:2]))
  assert set(left) == set(every) - set(drawn[:2])
  with pytest.raises(ValueError, match="--n must be in 1"):
    draw_weaknesses.draw(len(every) - 1, seed=3, exclude=drawn[:2])
  with pytest.raises(ValueError, match="bad condition"):
    draw_weaknesses.draw(1, seed=3, exclude="counting:shape=hexagon")
  draw_weaknesses.main(["--n", "2", "--seed", "1"])
  assert capsys.readouterr().out == ",".join(drawn[:2]) + "\n"  # A sample's prefix: the first n picks.
  with pytest.raises(SystemExit):
    draw_weaknesses.main(["--n", "0", "--seed", "1"])
  assert "--n must be in 1..71" in capsys.readouterr().err


def test_weakness_specs():
  assert tasks.parse_weakness("counting:color=red+shape=circle") == ("counting", {"color": "red", "shape": "circle"})
  for bad in ("flying", "counting:shape=hexagon", "spatial:relation"):
    with pytest.raises(ValueError):
      tasks.parse_weakness(bad)
  assert tasks.in_weakness("Is the star left of the circle?", "spatial:relation=left")
  assert not tasks.in_weakness("Is the star right of the circle?", "spatial:relation=left")
  assert tasks.in_weakness("How many red circles are there?", "counting:color=red+shape=circle")
  assert not tasks.in_weakness("How many circles are there?", "counting:color=red+shape=circle")
  assert not tasks.in_weakness("How many stars are there?", None)
  rng = np.random.default_rng(0)
  test = tasks.balanced_test(rng, 10, "counting:shape=star")
  assert sum(t[4] for t in test) >= 10 and all(tasks.in_weakness(t[1], "counting:shape=star") == t[4] for t in test)


@pytest.mark.parametrize("text,phrases", [
    ("Is the red circle to the left of the blue star?", ["Is the red circle", " to the left of the blue star"]),
    ("Are there more squares than stars?", ["Are there more squares", " than stars"]),
    ("How many large red circles can you see?", ["How many large red circles"]),
    ("Is there a circle in the image?", ["Is there a circle"]),
    ("Is the star in the top left above the star in the center?",
     ["Is the star in the top left", " above the star in the center"]),
    ("What is in the top left?", [None]),  # Named by its cell alone: no phrase of the referent.
])
def test_ref_ends_finds_each_referring_expression_in_order(text, phrases):
  ends = lang.ref_ends(text, lang.parse_question(text))
  expected, at = [], 0
  for p in phrases:
    expected.append(None if p is None else at + len(p))
    at = expected[-1] or at
  assert ends == expected


def test_ref_ends_stops_at_word_boundaries():
  q = lang.Question(skill="counting", op="count", refs=(lang.Ref(shape="star"),))
  assert lang.ref_ends("How many stars are there?", q) == [len("How many stars")]  # Not inside "stars".
  assert lang.ref_ends("How many starfish are there?", q) == [None]
