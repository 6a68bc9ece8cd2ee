"""One round of auditing: the auditor proposes, the image generator renders, target and references answer.

Modes (the paper's three probing settings):
  "question"          (Q*, I):  Q = A(I, p_q) on the original image.
  "edit"              (Q, I*):  E = A(I, p_e), I_e = edit(I, E); the dataset's question Q is kept.
  "caption"           (Q, I*):  C = A(I, p_c), I_g = generate(C); the dataset's question Q is kept.
  "edit_question"     (Q*, I*): E = A(I, p_e), I_e = edit(I, E), then Q = A(I_e, p_q).
  "caption_question"  (Q*, I*): C = A(I, p_c), I_g = generate(C), then Q = A(I_g, p_q).
The first auditor action is sampled G times per source image (the GRPO group); a question that follows an image
action is sampled once per counterfactual image. Every auditor action of a sample gets the sample's reward.

A `Rollout` is bound to its system (`audit.system.System`: the auditor `Policy`, generator, target, references)
once and returns one `Sample` per row; each call runs propose -> render -> answer -> score.
Generation failures (`imagegen.errors.GenerationError` items) and unanswered pairs (an answerer returning None) are
counted and the sample dropped (valid=False); malformed auditor outputs (outside the format / the world's grammar,
a question the world's `posed_fn` finds ill-posed on its image, or a caption / edit the generator rejects as
`ill_posed`, e.g. an edit of an object the image lacks) are kept and penalised (see divergence).
"""
import dataclasses
import time

import jax
import numpy as np
from PIL import Image

from auditdm_jax.audit import divergence
from auditdm_jax.audit import prompts

MODES = {
    # mode: (image action kind or None, whether the question is generated)
    "question": (None, True),
    "edit": ("edit", False),
    "caption": ("caption", False),
    "edit_question": ("edit", True),
    "caption_question": ("caption", True),
}


@dataclasses.dataclass
class Completions:
  """Sampled auditor outputs. `batch` holds numpy arrays with leading dim N: at least tokens [N, L] int32,
  mask [N, L] (1 on completion tokens), old_logp [N, L] (the sampler's logprobs), plus whatever the policy's
  `logprobs` needs (e.g. prompt tokens and images)."""
  texts: list
  batch: dict


@dataclasses.dataclass
class Sample:
  """One audited (question, image) pair: what the auditor proposed, what the models answered, how it scored."""
  source_id: str
  source_index: int  # Row of the source batch.
  mode: str
  instruction: str | None  # The caption / edit command (None in the question-only mode).
  question: str
  image: np.ndarray | None  # The counterfactual image [H, W, 3] uint8 (None: the source image is asked about).
  source_image: np.ndarray
  target_answer: str
  reference_answers: dict  # reference name -> answer
  label: str  # The reference consensus answer.
  agreement: float
  consensus: bool
  failure: bool  # A valid pair where the consensus exists and the target disagrees with it.
  reward: float
  valid: bool  # False = dropped (generation or answering failed).
  well_formed: bool
  truth: str | None  # Ground truth (worlds with a `truth_fn`); None when unanswerable or not judged.
  judged: bool


@dataclasses.dataclass
class RolloutResult:
  """N = B * G samples; `actions` the auditor outputs to train on."""
  samples: list  # [Sample]
  actions: list  # [Completions], each with N rows aligned with `samples`
  rewards: np.ndarray  # [N] float32
  valid: np.ndarray  # [N] bool: False = dropped (generation or answering failed)
  parts: dict  # reward components from divergence.batch_rewards, [N] each
  counters: dict  # image_failures, answer_failures, reference_failures, malformed
  timings: dict  # seconds: rollout (auditor sampling), image_service, answer


def check_mode(mode):
  if mode not in MODES:
    raise ValueError(f"unknown rollout mode {mode!r}; known: {sorted(MODES)}")
  return MODES[mode]


def check_config(config):
  """Validates an audit config's rollout settings (mode, reward) before anything is built; returns its
  `divergence.RewardConfig`."""
  check_mode(config.mode)
  return divergence.RewardConfig(**config.reward.to_dict())


class Rollout:
  """The rollout of one system, bound once: `rollout(params, source, rng, seed=..., baseline=...)`.

  Args:
    system: an `audit.system.System` (policy, generator, target, references, truth_fn, format_fn).
    mode: a key of MODES; group_size: G samples of the first auditor action per source image.
    reward_config: `divergence.RewardConfig`; max_words: longest well-formed auditor output.
  """

  def __init__(self, system, *, mode="question", group_size=4, reward_config=divergence.RewardConfig(),
               max_words=64):
    self.image_kind, self.asks = check_mode(mode)
    if self.image_kind and system.generator is None:
      raise ValueError(f"mode {mode!r} renders images but the system has no image generator")
    if reward_config.diversity and system.type_fn is None:
      raise ValueError("reward.diversity > 0 needs question types: this world's System has no type_fn")
    self.system, self.mode, self.group_size = system, mode, group_size
    self.reward_config, self.max_words = reward_config, max_words

  @classmethod
  def from_config(cls, system, config, group_size=None):
    """From an audit config (mode, group_size, reward, max_words)."""
    return cls(system, mode=config.mode, group_size=group_size or config.group_size,
               reward_config=check_config(config), max_words=config.max_words)

  def __call__(self, params, source, rng, *, seed=0, baseline=False):
    """Audits one batch of source examples.

    source: dict with "image" [B, H, W, 3] uint8, "id" [B] and, for the fixed-question modes, "question" [B].
    rng: PRNG key of the auditor's sampling; seed: base seed of the image generator (per-sample seeds derive
    from it); baseline: the baseline prompts p^b instead of p_c / p_e / p_q.
    """
    images = np.asarray(source["image"])
    b, g = images.shape[0], self.group_size
    n = b * g
    src_idx = np.repeat(np.arange(b), g)
    timings = dict(rollout=0.0, image_service=0.0, answer=0.0)
    counters = dict(image_failures=0, answer_failures=0, reference_failures=0, malformed=0)
    well_formed, valid = np.ones(n, bool), np.ones(n, bool)
    actions, instructions = [], [None] * n
    rng_image, rng_question = jax.random.split(rng)
    cf_images = [images[i] for i in src_idx]
    unrenderable = []  # Rows whose caption / edit the generator rejected as ill-posed.

    if self.image_kind:  # Propose a caption / edit command, then render it.
      comp, instructions = self._propose(params, images, self.image_kind, g, rng_image, baseline, timings)
      actions.append(comp)
      well_formed &= [self._well_formed(t, self.image_kind) for t in instructions]
      failed, unrenderable = self._render(images, src_idx, instructions, np.flatnonzero(well_formed), seed,
                                          cf_images, timings)
      valid[failed] = False
      counters["image_failures"] = len(failed)
    if self.asks:  # Propose a question about the (counterfactual) image.
      if self.image_kind:
        comp, questions = self._propose(params, _stack_like(cf_images, images.shape[1:]), "question", 1,
                                        rng_question, baseline, timings)
      else:
        comp, questions = self._propose(params, images, "question", g, rng_question, baseline, timings)
      actions.append(comp)
      well_formed &= [self._well_formed(q, "question") for q in questions]
    else:
      if "question" not in source:
        raise ValueError(f"mode {self.mode!r} keeps the dataset's question: the source batch needs a 'question' "
                         f"field")
      questions = [str(source["question"][j]) for j in src_idx]
    counters["malformed"] = int((~well_formed).sum())
    unrenderable = [i for i in unrenderable if well_formed[i]]  # Counted once, as ill-posed.
    well_formed[unrenderable] = False
    counters["ill_posed"] = len(unrenderable) + self._check_posed(cf_images, questions,
                                                                  np.flatnonzero(valid & well_formed), well_formed)

    # Only valid, well-formed pairs are sent to the models.
    target_answers, ref_answers, failed = self._answer(cf_images, questions, np.flatnonzero(valid & well_formed),
                                                       timings)
    valid[failed] = False
    counters["answer_failures"] = len(failed)
    counters["reference_failures"] = sum(a is None for r in ref_answers for a in r)
    parts = divergence.batch_rewards(target_answers, ref_answers, well_formed, self.reward_config)
    if self.reward_config.diversity:
      parts = divergence.spread(parts, [self.system.type_fn(q) for q in questions], valid,
                                self.reward_config.diversity)
    rewards = np.where(valid, parts["reward"], 0.0).astype(np.float32)
    samples = self._score(source, images, src_idx, instructions, questions, cf_images, target_answers, ref_answers,
                          parts, rewards, valid, well_formed)
    return RolloutResult(samples=samples, actions=actions, rewards=rewards, valid=valid, parts=parts,
                         counters=counters, timings=timings)

  def _well_formed(self, text, kind):
    format_fn = self.system.format_fn
    return divergence.check_format(text, kind, self.max_words)[0] and (format_fn is None or format_fn(text, kind))

  def _check_posed(self, images, questions, rows, well_formed):
    """Marks the rows whose question has no defined answer on its image as malformed (in place); returns how many.
    Without this, a question the world cannot answer (an ambiguous "the circle") could still win the reward."""
    posed_fn = self.system.posed_fn
    if posed_fn is None:
      return 0
    ill = [i for i in rows if not posed_fn(images[i], questions[i])]
    well_formed[ill] = False
    return len(ill)

  def _propose(self, params, images, kind, num_samples, rng, baseline, timings):
    """The auditor's `kind` output for each image, `num_samples` times -> (Completions, stripped texts)."""
    t0 = time.perf_counter()
    comp = self.system.policy.sample(params, images, [prompts.get(kind, baseline)] * len(images), num_samples, rng)
    timings["rollout"] += time.perf_counter() - t0
    return comp, [t.strip() for t in comp.texts]

  def _render(self, images, src_idx, instructions, todo, seed, cf_images, timings):
    """Renders the instructions of rows `todo` into cf_images (in place) -> (rows whose rendering failed, rows whose
    instruction the generator rejected as ill-posed)."""
    seeds = [seed + int(i) for i in todo]
    generator = self.system.generator
    t0 = time.perf_counter()
    if self.image_kind == "edit":
      outs = generator.edit([images[src_idx[i]] for i in todo], [instructions[i] for i in todo], seeds)
    else:
      outs = generator.generate([instructions[i] for i in todo], seeds)
    timings["image_service"] += time.perf_counter() - t0
    failed, ill_posed = [], []
    for i, out in zip(todo, outs):
      if isinstance(out, Exception):
        (ill_posed if getattr(out, "ill_posed", False) else failed).append(int(i))
      else:
        cf_images[i] = np.asarray(out.convert("RGB") if hasattr(out, "convert") else out, np.uint8)
    return failed, ill_posed

  def _answer(self, images, questions, ask, timings):
    """Target and reference answers of rows `ask` -> (target [N], references [R][N], failed rows). A row fails when
    the target or every reference failed; a failed reference alone stays None there (the consensus counts the
    references that answered, `divergence.consensus`)."""
    n, names = len(questions), self.system.references.names
    t0 = time.perf_counter()
    ask_images, ask_questions = [images[i] for i in ask], [questions[i] for i in ask]
    tgt = self.system.target.answer(ask_images, ask_questions) if len(ask) else []
    refs = self.system.references.answer(ask_images, ask_questions) if len(ask) else [[] for _ in names]
    timings["answer"] += time.perf_counter() - t0
    target_answers, ref_answers, failed = [""] * n, [[""] * n for _ in names], []
    for k, i in enumerate(ask):
      if tgt[k] is None or all(r[k] is None for r in refs):
        failed.append(int(i))
        continue
      target_answers[i] = tgt[k]
      for r, ans in zip(ref_answers, refs):
        r[i] = ans[k]
    return target_answers, ref_answers, failed

  def _score(self, source, images, src_idx, instructions, questions, cf_images, target_answers, ref_answers, parts,
             rewards, valid, well_formed):
    """One `Sample` per row, judged against the world's ground truth when it has one."""
    truth_fn, names = self.system.truth_fn, self.system.references.names
    samples = []
    for i, j in enumerate(src_idx):
      judged = bool(truth_fn is not None and valid[i] and well_formed[i])
      samples.append(Sample(
          source_id=str(source["id"][j]), source_index=int(j), mode=self.mode, instruction=instructions[i],
          question=questions[i], image=cf_images[i] if self.image_kind else None, source_image=images[j],
          target_answer=target_answers[i], reference_answers=dict(zip(names, (r[i] for r in ref_answers))),
          label=parts["label"][i], agreement=float(parts["agreement"][i]), consensus=bool(parts["consensus"][i]),
          failure=bool(parts["failure"][i] and valid[i]), reward=float(rewards[i]), valid=bool(valid[i]),
          well_formed=bool(well_formed[i]), truth=truth_fn(cf_images[i], questions[i]) if judged else None,
          judged=judged))
    return samples


def _stack_like(images, shape):
  """Stacks counterfactual images; a generator returning another size is resized to the source size."""
  out = []
  for im in images:
    if im.shape != tuple(shape):
      im = np.asarray(Image.fromarray(im).resize((shape[1], shape[0]), Image.BILINEAR))
    out.append(im)
  return np.stack(out)


def audit_metrics(result):
  """Scalar metrics of one rollout: reward parts, failure-search success rate, drops, lengths."""
  valid = result.valid
  n = max(int(valid.sum()), 1)
  m = dict(
      reward=float(result.rewards[valid].mean()) if valid.any() else 0.0,
      success_rate=float((result.parts["failure"] & valid).sum() / len(valid)),
      divergence=float(result.parts["divergence"][valid].sum() / n),
      format_penalty=float(result.parts["format_penalty"][valid].sum() / n),
      consensus_rate=float((result.parts["consensus"] & valid).sum() / n),
      target_disagree_rate=float((result.parts["target_disagrees"] & valid).sum() / n),
      dropped=float((~valid).mean()),
      **{k: float(v) for k, v in result.counters.items()},
      **{f"time/{k}": float(v) for k, v in result.timings.items()})
  for i, comp in enumerate(result.actions):
    m[f"length/action{i}"] = float(np.asarray(comp.batch["mask"]).sum(-1).mean())
  judged = [s for s in result.samples if s.failure and s.judged]
  if judged:
    m["precision"] = float(np.mean([audit_is_true_failure(s) for s in judged]))
  return m


def audit_is_true_failure(sample):
  """Ground-truth check of a flagged pair: the target is wrong and the reference consensus is right (a question
  the image cannot answer, truth None, is never a true failure)."""
  return flag_category(sample) == "genuine"


FLAG_CATEGORIES = ("genuine", "reference_error", "unanswerable")


def flag_category(sample):
  """Ground-truth category of a pair: "unanswerable" (truth None), "genuine" (the target is wrong and the
  consensus right), "reference_error" (the consensus is wrong), or None (the target is right, the consensus too)."""
  if sample.truth is None:
    return "unanswerable"
  truth = divergence.normalize_answer(sample.truth)
  if divergence.normalize_answer(sample.label) != truth:
    return "reference_error"
  return "genuine" if divergence.normalize_answer(sample.target_answer) != truth else None


def flag_breakdown(samples):
  """{category: count} over the flagged pairs that ground truth judged (the paper's Table 3, exactly)."""
  flagged = [flag_category(s) for s in samples if s.failure and s.judged]
  return {c: flagged.count(c) for c in FLAG_CATEGORIES}
