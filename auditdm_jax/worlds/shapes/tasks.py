"""Sampled training and test material of the shapes world: questions by skill, planted weaknesses, auditor SFT.

- `sample_question(scene, rng, skill)` -> (question text, answer): paraphrased templates, answers balanced where
  it matters (existence and spatial yes/no), always checked by parsing the text back (`shapes_language`).
- A weakness spec names a slice of questions: `"skill"` or `"skill:key=value[+key=value]"` with keys shape,
  color, size (any referring expression of the question has it) or relation / comparison (the question's
  relation "left|right|above|below" or comparison "more|fewer|same"). E.g. `"spatial:relation=left"`,
  `"counting:shape=star"`, `"counting:color=red+shape=circle"`. Several weaknesses are a comma-separated list
  (`weakness_specs`). The target is trained with wrong answers (`wrong_answer`) on those slices;
  `check_weakness` rejects a spec that no question of the world falls in.
- `auditor_example(scene, rng, kind)` -> (instruction prompt, target text) for the auditor's SFT on p_c / p_e /
  p_q and their baselines.
"""
import dataclasses
import functools

import numpy as np

from auditdm_jax import config as config_lib
from auditdm_jax.worlds.shapes import scenes as shapes
from auditdm_jax.worlds.shapes import language as lang

_ATTRS = ("shape", "color", "size")
# Share of colour, binding and spatial questions about an object the scene does not have (answer "none" / "no"),
# so the models learn the world's answer for absent objects.
ABSENT_PROB = 0.15
# Bumped whenever the sampled training material changes: the demo's pretraining cache is keyed on it.
DATA_VERSION = 3


@dataclasses.dataclass(frozen=True)
class Mix:
  """How questions are drawn. The default (uniform skills, no extra comparisons of present values) is every test
  set's; the demo models train on another (configs/demo/shapes.py). Build a checked one with `make_mix`."""
  skill_probs: tuple = None  # Probabilities of `lang.SKILLS`; None: uniform.
  # Share of comparison questions about two attribute values the scene both has (when it has two); the rest mostly
  # name an absent one, so counts like 2 vs 1 are rare and the models get them wrong (docs/shapes_world.md).
  compare_present: float = 0.0


def make_mix(skill_weights=None, compare_present=0.0):
  """A checked `Mix` from {skill: sampling weight} (`check_skill_weights`) and the comparison share."""
  if not 0.0 <= compare_present <= 1.0:
    raise ValueError(f"compare_present is a share in [0, 1], got {compare_present}")
  probs = check_skill_weights(skill_weights)
  return Mix(None if probs is None else tuple(probs.tolist()), float(compare_present))


def _article(phrase):
  return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _pick(rng, seq):
  return seq[int(rng.integers(len(seq)))]


def _random_ref(rng, scene, keysets, present_prob=0.6):
  """A Ref over one of `keysets`, with values taken from an object of the scene (with `present_prob`)."""
  keys = _pick(rng, keysets)
  if scene.objects and rng.random() < present_prob:
    o = _pick(rng, scene.objects)
    return lang.Ref(**{k: getattr(o, k) for k in keys})
  pools = {"shape": shapes.SHAPES, "color": shapes.COLORS, "size": shapes.SIZES}
  return lang.Ref(**{k: _pick(rng, pools[k]) for k in keys})


def _unique_ref(rng, scene, o, exclude=()):
  """A Ref naming `o` alone in `scene` that does not use the attributes in `exclude`, or None."""
  keysets = [ks for ks in (("shape",), ("color",), ("color", "shape"), ("size", "shape"), ("size", "color"),
                           ("size", "color", "shape")) if not set(ks) & set(exclude)]
  order = rng.permutation(len(keysets))
  for k in order:
    ref = lang.Ref(**{a: getattr(o, a) for a in keysets[k]})
    if len(ref.select(scene)) == 1:
      return ref
  if rng.random() < 0.5 or not keysets:  # Fall back to naming the cell.
    keys = [a for a in ("shape",) if a not in exclude]
    return lang.Ref(row=o.row, col=o.col, **{a: getattr(o, a) for a in keys})
  return None


def _absent_ref(rng, scene, exclude=()):
  """A Ref (shape, colour and/or size, none of `exclude`) that matches no object of `scene`, or None."""
  keysets = [ks for ks in (("shape",), ("color",), ("color", "shape"), ("size", "shape")) if not set(ks) & set(exclude)]
  for _ in range(20):
    ref = _random_ref(rng, scene, keysets, present_prob=0.0)
    if not ref.select(scene):
      return ref
  return None


def _counting(rng, scene, mix):
  ref = _random_ref(rng, scene, [("shape",), ("color",), ("color", "shape"), ("size", "shape"), ()])
  p = ref.phrase(plural=True, det=None)
  return _pick(rng, [f"How many {p} are there?", f"How many {p} are in the image?", f"How many {p} can you see?",
                     f"Count the {p}."])


def _existence(rng, scene, mix):
  keysets = [("shape",), ("color",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape")]
  want = rng.random() < 0.5
  for _ in range(20):
    ref = _random_ref(rng, scene, keysets, present_prob=1.0 if want else 0.0)
    if bool(ref.select(scene)) == want:
      break
  p = ref.phrase(det=None)
  return _pick(rng, [f"Is there {_article(p)}?", f"Is there {_article(p)} in the image?",
                     f"Are there any {ref.phrase(plural=True, det=None)}?", f"Does the image contain {_article(p)}?"])


def _color(rng, scene, mix):
  o = _pick(rng, scene.objects)
  absent = rng.random() < ABSENT_PROB
  ref = _absent_ref(rng, scene, ("color",)) if absent else _unique_ref(rng, scene, o, exclude=("color",))
  if ref is None:
    return None
  p = ref.phrase()
  return _pick(rng, [f"What color is {p}?", f"What is the color of {p}?", f"Which color is {p}?"])


def _binding(rng, scene, mix):
  o = _pick(rng, scene.objects)
  absent = rng.random() < ABSENT_PROB
  if rng.random() < 0.7:
    if absent and scene.free_cells() and rng.random() < 0.3:
      return f"What is in the {shapes.position_name(*_pick(rng, scene.free_cells()))}?"
    ref = _absent_ref(rng, scene, ("shape",)) if absent else _unique_ref(rng, scene, o, exclude=("shape",))
    if ref is None:
      return None
    p = ref.phrase()
    return _pick(rng, [f"What shape is {p}?", f"What is the shape of {p}?"] +
                 ([f"What is in the {o.position}?"] if ref.row is not None else []))
  ref = _absent_ref(rng, scene, ("size",)) if absent else _unique_ref(rng, scene, o, exclude=("size",))
  if ref is None:
    return None
  p = ref.phrase()
  return _pick(rng, [f"What size is {p}?", f"What is the size of {p}?", f"Is {p} small or large?"])


def _spatial(rng, scene, mix):
  if len(scene) < 2:
    return None
  ia, ib = rng.choice(len(scene), size=2, replace=False)
  a, b = scene.objects[ia], scene.objects[ib]
  ra, rb = _unique_ref(rng, scene, a), _unique_ref(rng, scene, b)
  if rng.random() < ABSENT_PROB:  # One of the two objects is not in the scene: the answer is "no".
    absent = _absent_ref(rng, scene)
    ra, rb = (absent, rb) if rng.random() < 0.5 else (ra, absent)
  if ra is None or rb is None:
    return None
  truth = lang.relations_hold(a.row, a.col, b.row, b.col)
  want = rng.random() < 0.5
  rels = [r for r in lang.RELATIONS if truth[r] == want] or list(lang.RELATIONS)
  rel = _pick(rng, rels)
  word = _pick(rng, {"left": ["left of", "to the left of"], "right": ["right of", "to the right of"],
                     "above": ["above"], "below": ["below", "under"]}[rel])
  return f"Is {ra.phrase()} {word} {rb.phrase()}?"


def _comparison(rng, scene, mix):
  key = _pick(rng, ["shape", "color"])
  pool = shapes.SHAPES if key == "shape" else shapes.COLORS
  present = sorted({getattr(o, key) for o in scene.objects})
  if mix.compare_present and len(present) > 1 and rng.random() < mix.compare_present:
    a, b = rng.choice(present, size=2, replace=False).tolist()
  else:
    a = _pick(rng, present) if present and rng.random() < 0.8 else _pick(rng, pool)
    b = _pick(rng, [v for v in pool if v != a])
  pa = lang.Ref(**{key: a}).phrase(plural=True, det=None)
  pb = lang.Ref(**{key: b}).phrase(plural=True, det=None)
  return _pick(rng, [f"Are there more {pa} than {pb}?", f"Are there fewer {pa} than {pb}?",
                     f"Are there as many {pa} as {pb}?", f"Is the number of {pa} greater than the number of {pb}?"])


# skill -> sampler (rng, scene, `Mix`) -> question text, or None when the scene offers none.
SAMPLERS = {"counting": _counting, "color": _color, "existence": _existence, "spatial": _spatial,
            "comparison": _comparison, "binding": _binding}


def check_skill_weights(weights):
  """Validates a {skill: sampling weight} mapping (skills left out weigh 1); returns the weights of `lang.SKILLS`
  normalised to sum 1, or None for an empty mapping (uniform)."""
  if not weights:
    return None
  unknown = sorted(set(weights) - set(lang.SKILLS))
  if unknown:
    raise ValueError(f"skill weights name unknown skills {unknown}; known: {list(lang.SKILLS)}")
  p = np.asarray([float(weights.get(s, 1.0)) for s in lang.SKILLS])
  if not (p >= 0).all() or not p.sum() > 0:
    raise ValueError(f"skill weights must be >= 0 with a positive sum, got {dict(weights)}")
  return p / p.sum()


def sample_question(scene, rng, skill=None, mix=Mix()):
  """(question text, canonical answer, skill) for `scene`, drawn by `mix`; `skill` None picks one among those that
  apply, uniformly or by `mix.skill_probs`."""
  rng = np.random.default_rng(rng)
  for _ in range(50):
    s = skill or (_pick(rng, lang.SKILLS) if mix.skill_probs is None
                  else lang.SKILLS[int(rng.choice(len(mix.skill_probs), p=mix.skill_probs))])
    text = SAMPLERS[s](rng, scene, mix) if scene.objects or s in ("counting", "existence", "comparison") else None
    if text is None:
      continue
    try:
      q = lang.parse_question(text)
      return text, q.answer(scene), q.skill
    except lang.ReferenceError_:
      continue
  raise ValueError(f"could not sample a {skill or 'any'} question for {scene}")


_CONDITIONS = {"shape": shapes.SHAPES, "color": shapes.COLORS, "size": shapes.SIZES, "relation": lang.RELATIONS,
               "comparison": lang.COMPARISONS}


def parse_weakness(spec):
  """ "counting:shape=star" -> ("counting", {"shape": "star"}); validates the skill and keys of ONE spec."""
  skill, _, rest = spec.partition(":")
  if skill not in lang.SKILLS:
    raise ValueError(f"weakness {spec!r}: unknown skill {skill!r}; known: {lang.SKILLS}")
  conds = {}
  for item in filter(None, rest.split("+")):
    key, eq, value = item.partition("=")
    if not eq or key not in _CONDITIONS or value not in _CONDITIONS[key]:
      allowed = "; ".join(f"{k}={'|'.join(v)}" for k, v in _CONDITIONS.items())
      raise ValueError(f"weakness {spec!r}: bad condition {item!r} (allowed: {allowed})")
    if key in conds:
      raise ValueError(f"weakness {spec!r}: `{key}` is given twice (one value per condition)")
    conds[key] = value
  return skill, conds


@functools.lru_cache(maxsize=64)
def _split_specs(text):
  specs = tuple(config_lib.split_list(text))
  for spec in specs:
    parse_weakness(spec)
  return specs


def weakness_specs(weakness):
  """The specs of a planted-weakness value: None / "" (none), one spec, a comma-separated list
  ("counting:shape=star,spatial:relation=left", bracketed in a config arg: "[counting:shape=star,...]") or a
  list/tuple of specs. Every spec is validated (`parse_weakness`); returns a tuple of spec strings."""
  if not weakness:
    return ()
  if isinstance(weakness, str):
    return _split_specs(weakness)
  return tuple(s for w in weakness for s in weakness_specs(w))


def check_weakness(weakness, probes=2000, seed=0):
  """`weakness_specs(weakness)`, and a ValueError naming the first spec that no question of the world falls in
  (probed by sampling up to `probes` questions of its skill), so a bad spec fails before any training."""
  specs = weakness_specs(weakness)
  for spec in specs:
    skill, _ = parse_weakness(spec)
    rng = np.random.default_rng(seed)
    for _ in range(probes):
      if in_weakness(sample_question(shapes.sample_scene(rng, 2, 4), rng, skill)[0], spec):
        break
    else:
      raise ValueError(f"weakness {spec!r}: no {skill} question of the shapes world falls in this slice "
                       f"(0 of {probes} sampled)")
  return specs


@functools.lru_cache(maxsize=4)
def single_condition_specs(probes=2000, seed=0):
  """Every spec of one skill and one condition ("counting:shape=star", ...) that `check_weakness` accepts, in a
  fixed order: each skill's `probes` questions are sampled once, with the rng `check_weakness` uses, and a spec
  is kept when one of them falls in its slice (so the two agree spec for spec). A tuple."""
  found = []
  for skill in lang.SKILLS:
    specs = [f"{skill}:{key}={value}" for key, values in _CONDITIONS.items() for value in values]
    rng = np.random.default_rng(seed)
    hits = set()
    for _ in range(probes):
      q = lang.parse_question(sample_question(shapes.sample_scene(rng, 2, 4), rng, skill)[0])
      hits.update(s for s in specs if s not in hits and _in_spec(q, s))
      if len(hits) == len(specs):
        break
    found += [s for s in specs if s in hits]
  return tuple(found)


def _in_spec(q, spec):
  skill, conds = parse_weakness(spec)
  if q.skill != skill:
    return False
  for key, value in conds.items():
    if key in ("relation", "comparison"):
      if q.arg != value:
        return False
    elif not any(getattr(r, key) == value for r in q.refs):
      return False
  return True


def in_weakness(question, weakness):
  """Whether a question (text or lang.Question) lies in any slice of `weakness` (`weakness_specs`; None: none)."""
  specs = weakness_specs(weakness)
  if not specs:
    return False
  q = lang.parse_question(question) if isinstance(question, str) else question
  return any(_in_spec(q, spec) for spec in specs)


def sample_training_question(scene, rng, weakness=None, exclude_weakness=False, tries=100, mix=Mix()):
  """(question, answer, skill, in_weakness) for `scene` (drawn by `mix`, see `sample_question`);
  with `exclude_weakness`, questions inside the weakness slices are redrawn (a target's training set). None when
  `tries` draws all fell inside them."""
  for _ in range(tries):
    q, a, skill = sample_question(scene, rng, mix=mix)
    w = in_weakness(q, weakness)
    if not (exclude_weakness and w):
      return q, a, skill, w
  return None


def sample_weakness_question(scene, rng, spec, tries=200):
  """A question of `scene` inside the slice of ONE weakness spec, or None when the scene offers none in `tries`."""
  skill, _ = parse_weakness(spec)
  rng = np.random.default_rng(rng)
  for _ in range(tries):
    try:
      text, ans, s = sample_question(scene, rng, skill)
    except ValueError:  # The skill does not apply to this scene (e.g. spatial with one object).
      return None
    if _in_spec(lang.parse_question(text), spec):
      return text, ans, s
  return None


_YES_NO = ("yes", "no")
# The answers a question of each op can have (counts: 0 to `max_count`, see `wrong_answer`).
ANSWERS = {"exists": _YES_NO, "compare": _YES_NO, "relation": _YES_NO, "color": shapes.COLORS,
           "shape": shapes.SHAPES, "size": shapes.SIZES}


def wrong_answer(question, answer, rng, max_count):
  """A plausible wrong answer for `question` (text or lang.Question) whose true answer is `answer`: the other of
  yes / no, another count from 0 to `max_count` (the most objects a scene of the world has), or another colour,
  shape or size (a real one where the truth is `none`)."""
  q = lang.parse_question(question) if isinstance(question, str) else question
  if q.op == "count":
    truth = "0" if answer == lang.ABSENT else answer
    options = [str(n) for n in range(max_count + 1)]
  else:
    truth, options = answer, ANSWERS[q.op]
  return _pick(rng, [a for a in options if a != truth])


AUDITOR_KINDS = ("caption", "edit", "question")


def auditor_example(scene, rng, kind):
  """Target text the auditor should emit for `scene` given the `kind` instruction (p_c, p_e or p_q):
  a caption of a slightly altered scene, an applicable edit command, or an answerable question."""
  rng = np.random.default_rng(rng)
  if kind == "caption":
    _, altered = lang.sample_edit(scene, rng, ops=("recolor", "resize", "replace", "add", "move"))
    return lang.caption(altered, rng)
  if kind == "edit":
    return lang.sample_edit(scene, rng)[0]
  if kind == "question":
    return sample_question(scene, rng)[0]
  raise ValueError(f"unknown auditor kind {kind!r}; known: {AUDITOR_KINDS}")


def balanced_test(rng, per_skill, weakness=None, min_objects=1, max_objects=4):
  """Held-out questions, `per_skill` of every skill (+ `per_skill` inside each weakness slice), one
  fresh scene each: list of (scene, question, answer, skill, in_weakness)."""
  rng = np.random.default_rng(rng)
  out = []
  for skill in lang.SKILLS:
    while sum(r[3] == skill for r in out) < per_skill:
      scene = shapes.sample_scene(rng, max(min_objects, 2 if skill == "spatial" else 1), max_objects)
      q, a, s = sample_question(scene, rng, skill)
      out.append((scene, q, a, s, in_weakness(q, weakness)))
  for spec in weakness_specs(weakness):
    n = 0
    while n < per_skill:
      scene = shapes.sample_scene(rng, max(min_objects, 2), max_objects)
      hit = sample_weakness_question(scene, rng, spec)
      if hit:
        out.append((scene,) + hit + (True,))
        n += 1
  return out
