"""One round of auditing: the auditor proposes, the image generator renders, target and references answer.

Modes (the paper's three probing settings):
  "question"          (Q*, I):  Q = A(I, p_q) on the original image.
  "edit"              (Q, I*):  E = A(I, p_e), I_e = edit(I, E); the dataset's question Q is kept.
  "caption"           (Q, I*):  C = A(I, p_c), I_g = generate(C); the dataset's question Q is kept.
  "edit_question"     (Q*, I*): E = A(I, p_e), I_e = edit(I, E), then Q = A(I_e, p_q).
  "caption_question"  (Q*, I*): C = A(I, p_c), I_g = generate(C), then Q = A(I_g, p_q).
The first auditor action is sampled G times per source image (the GRPO group); a question that follows an image
action is sampled once per counterfactual image. Every auditor action of a sample gets the sample's reward.

The auditor is a `Policy`:
  sample(params, images [B, H, W, 3] uint8, instructions: list[str], num_samples: int, rng) -> Completions
      with N = B * num_samples rows, the samples of one image contiguous.
  logprobs(params, batch) -> [N, L] log-probabilities of batch["tokens"] (pure and jittable in params).
Generation failures (`imagegen.errors.GenerationError` items) and unanswered pairs (an answerer returning None) are
counted and the sample dropped (valid=False); malformed auditor outputs are kept and penalised (see divergence).
"""
import dataclasses
import time

import jax
import numpy as np

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
class RolloutResult:
  """N = B * G samples. `samples` are dicts for logging/datasets; `actions` the auditor outputs to train on."""
  samples: list
  actions: list  # [Completions], each with N rows aligned with `samples`
  rewards: np.ndarray  # [N] float32
  valid: np.ndarray  # [N] bool: False = dropped (generation or answering failed)
  parts: dict  # reward components from divergence.batch_rewards, [N] each
  counters: dict  # image_failures, answer_failures, malformed
  timings: dict  # seconds: rollout (auditor sampling), image_service, answer


def check_mode(mode):
  if mode not in MODES:
    raise ValueError(f"unknown rollout mode {mode!r}; known: {sorted(MODES)}")
  return MODES[mode]


def run(policy, params, source, generator, target, references, rng, *, mode="question", group_size=4,
        baseline=False, reward_config=divergence.RewardConfig(), max_words=64, truth_fn=None, format_fn=None,
        seed=0):
  """Audits one batch of source examples.

  Args:
    policy, params: the auditor and its parameters.
    source: dict with "image" [B, H, W, 3] uint8, "id" [B] and, for the fixed-question modes, "question" [B].
    generator: `imagegen` Generator (generate / edit); unused in "question" mode.
    target: answerer under audit; references: `answerers.Ensemble`.
    rng: jax PRNG key for the auditor's sampling.
    baseline: use the baseline prompts p^b instead of p_c / p_e / p_q.
    truth_fn: optional `truth_fn(image, question) -> ground-truth answer, or None when the question is not
      answerable from the image` (the shapes world's parser). With it every valid sample is judged.
    format_fn: optional world-specific validity check `format_fn(text, kind) -> bool` of an auditor output
      (e.g. the shapes world's grammar), on top of `divergence.check_format`; it never sees the image.
    seed: base seed of the image generator (per-sample seeds are derived from it).
  """
  well_formed_fn = lambda text, kind: divergence.check_format(text, kind, max_words)[0] and (
      format_fn is None or format_fn(text, kind))
  image_kind, asks = check_mode(mode)
  images = np.asarray(source["image"])
  b, g = images.shape[0], group_size
  n = b * g
  src_idx = np.repeat(np.arange(b), g)
  timings = dict(rollout=0.0, image_service=0.0, answer=0.0)
  counters = dict(image_failures=0, answer_failures=0, malformed=0)
  well_formed = np.ones(n, bool)
  valid = np.ones(n, bool)
  actions, instructions = [], [None] * n
  rng_image, rng_question = jax.random.split(rng)
  cf_images = [images[i] for i in src_idx]

  if image_kind:
    t0 = time.perf_counter()
    comp = policy.sample(params, images, [prompts.get(image_kind, baseline)] * b, g, rng_image)
    timings["rollout"] += time.perf_counter() - t0
    actions.append(comp)
    instructions = [t.strip() for t in comp.texts]
    for i, text in enumerate(instructions):
      well_formed[i] = well_formed_fn(text, image_kind)
    todo = np.flatnonzero(well_formed)
    seeds = [seed + int(i) for i in todo]
    t0 = time.perf_counter()
    if image_kind == "edit":
      outs = generator.edit([images[src_idx[i]] for i in todo], [instructions[i] for i in todo], seeds)
    else:
      outs = generator.generate([instructions[i] for i in todo], seeds)
    timings["image_service"] += time.perf_counter() - t0
    for i, out in zip(todo, outs):
      if isinstance(out, Exception):
        valid[i] = False
        counters["image_failures"] += 1
      else:
        cf_images[i] = np.asarray(out.convert("RGB") if hasattr(out, "convert") else out, np.uint8)

  if asks:
    t0 = time.perf_counter()
    if image_kind:
      q_images = _stack_like(cf_images, images.shape[1:])
      comp = policy.sample(params, q_images, [prompts.get("question", baseline)] * n, 1, rng_question)
    else:
      comp = policy.sample(params, images, [prompts.get("question", baseline)] * b, g, rng_question)
    timings["rollout"] += time.perf_counter() - t0
    actions.append(comp)
    questions = [t.strip() for t in comp.texts]
    for i, q in enumerate(questions):
      well_formed[i] &= well_formed_fn(q, "question")
  else:
    if "question" not in source:
      raise ValueError(f"mode {mode!r} keeps the dataset's question: the source batch needs a 'question' field")
    questions = [str(source["question"][j]) for j in src_idx]
  counters["malformed"] = int((~well_formed).sum())

  # Only valid, well-formed pairs are sent to the models.
  ask = np.flatnonzero(valid & well_formed)
  t0 = time.perf_counter()
  ask_images = [cf_images[i] for i in ask]
  ask_questions = [questions[i] for i in ask]
  tgt = target.answer(ask_images, ask_questions) if len(ask) else []
  refs = references.answer(ask_images, ask_questions) if len(ask) else [[] for _ in references.names]
  timings["answer"] += time.perf_counter() - t0
  target_answers, ref_answers = [""] * n, [[""] * n for _ in references.names]
  for k, i in enumerate(ask):
    if tgt[k] is None or any(r[k] is None for r in refs):
      valid[i] = False
      counters["answer_failures"] += 1
      continue
    target_answers[i] = tgt[k]
    for r, ans in zip(ref_answers, refs):
      r[i] = ans[k]

  parts = divergence.batch_rewards(target_answers, ref_answers, well_formed, reward_config)
  rewards = np.where(valid, parts["reward"], 0.0).astype(np.float32)
  samples = []
  for i in range(n):
    j = src_idx[i]
    judged = bool(truth_fn is not None and valid[i] and well_formed[i])
    truth = truth_fn(cf_images[i], questions[i]) if judged else None
    samples.append(dict(
        source_id=str(source["id"][j]), source_index=int(j), mode=mode, instruction=instructions[i],
        question=questions[i], image=cf_images[i] if image_kind else None, source_image=images[j],
        target_answer=target_answers[i], reference_answers=dict(zip(references.names, (r[i] for r in ref_answers))),
        label=parts["label"][i], agreement=float(parts["agreement"][i]), consensus=bool(parts["consensus"][i]),
        failure=bool(parts["failure"][i] and valid[i]), reward=float(rewards[i]), valid=bool(valid[i]),
        well_formed=bool(well_formed[i]), truth=truth, judged=judged))
  return RolloutResult(samples=samples, actions=actions, rewards=rewards, valid=valid, parts=parts,
                       counters=counters, timings=timings)


def _stack_like(images, shape):
  """Stacks counterfactual images; a generator returning another size is resized to the source size."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
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
  judged = [s for s in result.samples if s["failure"] and s["judged"]]
  if judged:
    m["precision"] = float(np.mean([audit_is_true_failure(s) for s in judged]))
  return m


def audit_is_true_failure(sample):
  """Ground-truth check of a flagged pair: the target is wrong and the reference consensus is right (a question
  the image cannot answer, truth None, is never a true failure)."""
  if sample["truth"] is None:
    return False
  truth = divergence.normalize_answer(sample["truth"])
  return (divergence.normalize_answer(sample["target_answer"]) != truth
          and divergence.normalize_answer(sample["label"]) == truth)
