"""The audit system of the embedded shapes world (`config.system.module = "auditdm_jax.worlds.shapes.system"`).

Roles: the SFT-initialised tiny auditor (a `VLMPolicy`), the target with a planted weakness, 2-3 references
without it (greedy `VLMAnswerer`s), the procedural renderer as image generator, seeded scene pools, and ground
truth from the world's own parser: `shapes.parse_image` recovers the scene of any rendered image and
`shapes_language.answer` answers any question of the language (None when the question is outside the language
or refers to no/several objects: unanswerable).

Models come from `auditdm demo-pretrain` as `<models_dir>/<name>/{params.npz,
model_config.json,meta.json}` plus `<models_dir>/tokenizer.model`.
"""
import functools
import json
import os

import numpy as np

from auditdm_jax import images as images_lib
from auditdm_jax import io as io_lib
from auditdm_jax.audit import answerers
from auditdm_jax.audit import divergence
from auditdm_jax.audit import policy as policy_lib
from auditdm_jax.audit import system as system_lib
from auditdm_jax.models import loading
from auditdm_jax.models import tokenizer as tokenizer_lib
from auditdm_jax.worlds.shapes import language as lang
from auditdm_jax.worlds.shapes import pretrain
from auditdm_jax.worlds.shapes import procedural
from auditdm_jax.worlds.shapes import scenes as shapes
from auditdm_jax.worlds.shapes import tasks


def load_model(models_dir, name, npz=None):
  """(cfg, host params, params.npz path) of a pretrained demo model."""
  directory = os.path.join(models_dir, name)
  loaded = pretrain.load_model(directory, npz=npz)
  if loaded is None:
    raise FileNotFoundError(f"no pretrained demo model {name!r} in {models_dir} (run `auditdm demo-pretrain`)")
  return loaded[0], loaded[1], npz or os.path.join(directory, "params.npz")


@functools.lru_cache(maxsize=256)
def _scene_of(dtype, shape, data):
  """The scene of an image given by its bytes (None: not a rendered scene). Keyed by content: a rollout asks about
  each source image G times, and both `posed` and `truth` look at it, so most parses are repeats."""
  try:
    return shapes.parse_image(np.frombuffer(data, dtype).reshape(shape))
  except ValueError:
    return None


def truth(image, question):
  """Ground-truth answer of `question` about a rendered shapes image; None when unanswerable."""
  image = np.ascontiguousarray(image)
  scene = _scene_of(image.dtype.str, image.shape, image.tobytes())
  if scene is None:
    return None
  try:
    return lang.answer(question, scene)
  except ValueError:  # LanguageError: outside the language, or a reference that is ambiguous or missing.
    return None


def posed(image, question):
  """Whether `question` has a defined answer on the rendered `image` (the reward's ill-posedness check)."""
  return truth(image, question) is not None


_PARSERS = {"question": lang.parse_question, "edit": lang.parse_edit, "caption": lang.parse_caption}


def well_formed(text, kind):
  """Whether an auditor output is a sentence of the world's language (its grammar only: no image, no answer)."""
  try:
    _PARSERS[kind](text)
  except ValueError:
    return False
  return True


UNPARSED = "unparsed"  # The type / skill of a text outside the language.


def _parse_question(question):
  """The parsed question, None outside the language."""
  try:
    return lang.parse_question(question)
  except ValueError:
    return None


def question_type(question):
  """The skill of a question of the language, "unparsed" outside it (`System.type_fn`: knows no weakness)."""
  q = _parse_question(question)
  return q.skill if q else UNPARSED


def render_batch(scenes, image_size):
  return np.stack([shapes.render(s, image_size) for s in scenes])


class SceneSource:
  """Seeded source batches: images of random scenes, ids and one sampled dataset question per image (the fixed
  question of the (Q, I*) modes). `batch(k)` is deterministic in (seed, k)."""

  def __init__(self, seed, batch_size, image_size, num=None):
    self.seed, self.batch_size, self.image_size, self.num = seed, batch_size, image_size, num

  def __len__(self):
    if self.num is None:
      raise TypeError("an unbounded scene source has no length")
    return self.num

  def __getitem__(self, k):
    return self.batch(k)

  def __call__(self, k):
    return self.batch(k)

  def batch(self, k):
    rng = np.random.default_rng([self.seed, k])
    scenes = [shapes.sample_scene(rng, 1, 4) for _ in range(self.batch_size)]
    questions = [tasks.sample_question(s, rng)[0] for s in scenes]
    return {"image": render_batch(scenes, self.image_size), "question": np.array(questions),
            "id": np.array([f"s{self.seed}-{k}-{i}" for i in range(self.batch_size)])}


def test_set(seed, num, num_weak, weakness, image_size):
  """Fixed evaluation questions: `num` general ones (all skills) and `num_weak` in the weakness slices (shared
  evenly between the specs of `weakness`)."""
  rng = np.random.default_rng(seed)
  specs = tasks.weakness_specs(weakness)
  per_spec = -(-num_weak // len(specs)) if specs else 0
  general, weak = [], {spec: [] for spec in specs}
  while len(general) < num or any(len(w) < per_spec for w in weak.values()):
    scene = shapes.sample_scene(rng, 2, 4)
    image = shapes.render(scene, image_size)
    if len(general) < num:
      q, a, skill = tasks.sample_question(scene, rng)
      general.append((image, q, a, skill, tasks.in_weakness(q, weakness)))
    for spec, items in weak.items():
      got = tasks.sample_weakness_question(scene, rng, spec) if len(items) < per_spec else None
      if got:
        items.append((image, got[0], got[1], got[2], True))
  return general, [it for items in weak.values() for it in items]


def accuracy(answerer, items):
  if not items:
    return float("nan")
  preds = answerer.answer([it[0] for it in items], [it[1] for it in items])
  return float(np.mean([divergence.normalize_answer(p) == divergence.normalize_answer(it[2])
                        for p, it in zip(preds, items)]))


def skill_accuracies(answerer, general, weak, weakness=None, before=None):
  """overall, per skill, weakness slice and everything outside it (+ `weakness/<spec>` per spec of a list) ->
  (that dict, per-question correctness on `general`). With `before` (the correctness of another model on the same
  questions), also "outside_weakness_change_se": the standard error of the paired change outside the weakness."""
  preds = answerer.answer([it[0] for it in general], [it[1] for it in general])
  ok = np.array([divergence.normalize_answer(p) == divergence.normalize_answer(it[2]) for p, it in zip(preds, general)])
  skills = np.array([it[3] for it in general])
  outside = ~np.array([it[4] for it in general], bool)
  out = {"overall": float(ok.mean()), "outside_weakness": float(ok[outside].mean()) if outside.any() else None,
         "weakness": accuracy(answerer, weak)}
  if before is not None and outside.sum() > 1:
    change = ok[outside].astype(float) - before[outside]
    out["outside_weakness_change_se"] = float(change.std(ddof=1) / np.sqrt(len(change)))
  out.update({f"skill/{s}": float(ok[skills == s].mean()) for s in sorted(set(skills))})
  specs = tasks.weakness_specs(weakness)
  if len(specs) > 1:
    for spec in specs:
      out[f"weakness/{spec}"] = accuracy(answerer, [it for it in weak if tasks.in_weakness(it[1], spec)])
  return out, ok


def write_original_jsonl(path, seed, num_scenes, per_scene, weakness, image_size, mix=tasks.Mix()):
  """A sample of the target's training distribution (weakness slice excluded; drawn by the target's `mix`, a
  `tasks.Mix`) as JSONL + PNGs, for rectification."""
  if os.path.exists(path):
    return path
  root = os.path.dirname(path)
  d = pretrain.vqa_data(pretrain.sample_scenes(num_scenes, seed), per_scene, seed, weakness=weakness,
                        exclude_weakness=True, image_size=image_size, mix=mix)
  for i, image in enumerate(d["images"]):
    io_lib.write_bytes(os.path.join(root, "images", f"{i:06d}.png"), images_lib.png_bytes(image))
  rows = [json.dumps(dict(image=f"images/{j:06d}.png", question=q, answer=a, id=f"o{k}")) + "\n"
          for k, (j, q, a) in enumerate(zip(d["image_index"], d["question"], d["answer"]))]
  io_lib.write_text(path, "".join(rows))
  return path


def weakness_label(spec):
  """The skill label (`System.skill_fn`) of a question inside the planted weakness `spec`."""
  return f"{tasks.parse_weakness(spec)[0]} (planted weakness {spec})"


def check_config(sc):
  """The values of `config.system` the world alone knows (`audit.config_check` calls it before the workdir is
  claimed): the planted weakness spec."""
  tasks.check_weakness(sc.weakness)


def build(sc, workdir, target_npz=None):
  """The System for `config.system` (sc); `target_npz` replaces the target's weights (refinement iterations)."""
  check_config(sc)  # A bad spec fails before any model is loaded.
  tok_path = os.path.join(sc.models_dir, "tokenizer.model")
  if not os.path.exists(tok_path):  # E.g. configs/audit/demo.py outside `auditdm demo`, which fills models_dir in.
    raise FileNotFoundError(2, "no shapes-world demo models: pass --config.system.models_dir=W/pretrain of an "
                            "`auditdm demo-pretrain --workdir W` (or `auditdm demo`) run", tok_path)
  tok = tokenizer_lib.Tokenizer(tok_path)
  aud_cfg, aud_params, _ = load_model(sc.models_dir, sc.auditor)
  image_size = aud_cfg.res  # Scenes are rendered at the models' resolution.
  policy = policy_lib.VLMPolicy(aud_cfg, tok, prompt_len=sc.prompt_len, max_new_tokens=sc.max_new_tokens,
                                temperature=sc.temperature, top_p=sc.top_p)
  tgt_cfg, tgt_params, tgt_npz = load_model(sc.models_dir, sc.target, target_npz)
  answer = lambda name, cfg, params: answerers.VLMAnswerer(name, cfg, params, tok, max_new_tokens=4,
                                                           batch_size=sc.answer_batch_size)
  target = answer("target", tgt_cfg, tgt_params)
  references = answerers.Ensemble([answer(n, *load_model(sc.models_dir, n)[:2]) for n in sc.references])
  if tgt_cfg.res != image_size:
    raise ValueError(f"target resolution {tgt_cfg.res} differs from the auditor's {image_size}")
  generator = procedural.ProceduralGenerator(image_size=image_size)
  eval_source = SceneSource(sc.seed + 1, sc.batch_size, image_size)
  general, weak = test_set(sc.seed + 2, sc.test_questions, sc.weakness_questions, sc.weakness, image_size)
  target_correct = []  # The unrectified target's per-question correctness, for the paired standard error.

  def evaluate_target(params=None):
    if params is None or not target_correct:
      acc, ok = skill_accuracies(target, general, weak, sc.weakness)
      target_correct[:] = [ok]
      if params is None:
        return acc
    return skill_accuracies(answer("rectified", tgt_cfg, params), general, weak, sc.weakness,
                            before=target_correct[0])[0]

  def skill_fn(question):
    q = _parse_question(question)
    if q is None:
      return UNPARSED
    planted = [spec for spec in tasks.weakness_specs(sc.weakness) if tasks.in_weakness(q, spec)]
    return weakness_label(planted[0]) if planted else q.skill

  original = os.path.join(workdir, "original", "train.jsonl")
  if sc.get("rectify_scenes"):
    trained_on = pretrain.read_meta(os.path.join(sc.models_dir, sc.target))  # Present: the target loaded.
    write_original_jsonl(original, sc.seed + 3, sc.rectify_scenes, 4, sc.weakness, image_size,
                         pretrain.recorded_mix(trained_on))
  rectification = system_lib.Rectification(
      target_spec=dict(model=loading.model_spec(tgt_cfg), model_init=tgt_npz, tokenizer=tok_path),
      original_data=[dict(jsonl=original, weight=1.0)], evaluate_target=evaluate_target,
      with_target=lambda npz: build(sc, workdir, npz))
  return system_lib.System(
      policy=policy, params=aud_params, target=target, references=references, generator=generator,
      data=SceneSource(sc.seed, sc.batch_size, image_size),
      eval_data=[eval_source(k) for k in range(sc.eval_batches)],
      pool=SceneSource(sc.seed + 4, sc.batch_size, image_size, num=sc.pool_batches),
      truth_fn=truth, format_fn=well_formed, posed_fn=posed, skill_fn=skill_fn, type_fn=question_type,
      rectification=rectification, test_sets=(general, weak))
