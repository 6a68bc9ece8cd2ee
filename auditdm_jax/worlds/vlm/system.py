"""The audit system of real MLLMs (`config.system.module = "auditdm_jax.worlds.vlm.system"`).

- auditor: a PaliGemma-family or Gemma3 multimodal VLM (the paper's is Gemma3-4B) from a big_vision .npz or a HF
  directory (`init`), with its own sentencepiece model in `auditor.tokenizer` (default: the shared `tokenizer`;
  Gemma3 and PaliGemma tokenizers differ);
- target / JAX references: PaliGemma-family VLMs from a .npz or a HF directory (`init`) answering with `tokenizer`;
  tiny variants are randomly initialised when `init` is empty (smoke tests); otherwise a missing `init` is an error;
- HTTP references: any OpenAI-compatible server (`kind="http"`, base_url, model and optionally the other
  `answerers.HttpAnswerer` arguments; e.g. vLLM serving Qwen2.5-VL, or `auditdm serve-answers`);
- image generator: an `imagegen` backend by name (`flux-http`, `procedural`, `identity`) with its kwargs;
- image pool: every image under `images` (a folder) or a JSONL with {image, question} rows (the fixed questions of
  the (Q, I*) modes), resized to the auditor's resolution.
- rectification (`auditdm rectify` / `iterate`, JAX targets): `target_train` (JSONL(s) of the target's original
  {image, question, answer} data, mixed with the generated pairs) and `target_eval` (a labelled JSONL: exact-match
  accuracy before and after); a randomly initialised tiny target is saved to `<workdir>/target_init.npz` first.
Single-model analysis = several references excluding the target; model comparison = one reference. The reward's
diversity term types questions by their first two words (`question_type`).
The RL policy (`policy.VLMPolicy`) prompts a PaliGemma auditor with its prefix-LM format and a Gemma3 auditor with
the chat template (image + instruction in the user turn, sampling the model turn).
"""
import json
import os

import numpy as np
from PIL import Image

from auditdm_jax import imagegen
from auditdm_jax.audit import answerers
from auditdm_jax.audit import divergence
from auditdm_jax.audit import policy as policy_lib
from auditdm_jax.audit import system as system_lib
from auditdm_jax.data import jsonl_source
from auditdm_jax.models import checkpoints
from auditdm_jax.models import loading
from auditdm_jax.models import tokenizer as tokenizer_lib


class ImagePool:
  """Batches of `batch_size` images (resized to `res`) from a folder or a JSONL of {image, question}."""

  def __init__(self, path, res, batch_size):
    self.res, self.batch_size = res, batch_size
    if os.path.isdir(path):
      self.rows = [dict(image=os.path.join(path, p)) for p in jsonl_source.list_images(path)]
    elif path.endswith(".jsonl") and os.path.exists(path):
      root = os.path.dirname(os.path.abspath(path))
      with open(path, encoding="utf-8") as f:
        self.rows = [json.loads(line) for line in f if line.strip()]
      for r in self.rows:
        r["image"] = os.path.join(root, r["image"])
    else:
      raise FileNotFoundError(f"image pool {path!r} is neither a folder nor a .jsonl file")
    if len(self.rows) < batch_size:
      raise ValueError(f"image pool {path!r} has {len(self.rows)} images, fewer than a batch ({batch_size})")

  def __len__(self):
    return len(self.rows) // self.batch_size

  def __getitem__(self, k):
    rows = self.rows[k * self.batch_size:(k + 1) * self.batch_size]
    images = np.stack([np.asarray(Image.open(r["image"]).convert("RGB").resize((self.res, self.res),
                                                                                Image.BICUBIC)) for r in rows])
    out = {"image": images, "id": np.array([os.path.basename(r["image"]) for r in rows])}
    if all("question" in r for r in rows):
      out["question"] = np.array([r["question"] for r in rows])
    return out

  def __call__(self, step):
    """Training batches cycle through the pool in a seeded order (deterministic in the step)."""
    order = np.random.default_rng([0, step // len(self)]).permutation(len(self))
    return self[int(order[step % len(self)])]


def labelled_accuracy(answerer, path, res):
  """Exact-match accuracy (normalised answers) of `answerer` on a JSONL of {image, question, answer} rows."""
  pool = ImagePool(path, res, 1)
  images = [pool[k]["image"][0] for k in range(len(pool))]
  preds = answerer.answer(images, [r["question"] for r in pool.rows])
  ok = [p is not None and divergence.normalize_answer(p) == divergence.normalize_answer(r["answer"])
        for p, r in zip(preds, pool.rows)]
  return {"accuracy": float(np.mean(ok)), "num": len(ok)}


def rectification(sc, workdir, spec, cfg, params, target, tok):
  """What `auditdm rectify` / `iterate` need for a JAX target (`audit.system.Rectification`)."""
  init = spec.get("init")
  if not init:  # A random tiny target: fine-tuning must start from these very weights.
    init = os.path.join(workdir, "target_init.npz")
    if not os.path.exists(init):
      checkpoints.save_npz(init, params)
  train = sc.get("target_train") or []

  def evaluate_target(new_params=None):
    if not sc.get("target_eval"):
      raise ValueError("set config.system.target_eval (a JSONL of {image, question, answer}) to evaluate the target")
    answerer = target if new_params is None else answerers.VLMAnswerer(
        "rectified", cfg, new_params, tok, max_new_tokens=sc.answer_tokens)
    return labelled_accuracy(answerer, sc.target_eval, cfg.res)

  return system_lib.Rectification(
      target_spec=dict(model=loading.model_spec(cfg), model_init=init, tokenizer=sc.tokenizer),
      original_data=[dict(jsonl=p, weight=1.0) for p in ([train] if isinstance(train, str) else train)],
      evaluate_target=evaluate_target, with_target=lambda npz: build(sc, workdir, npz))


def question_type(question, words=2):
  """The question's first `words` words, lower-cased ("how many", "what color", "is there"): the VQA notion of a
  question type, for the reward's diversity term (`System.type_fn`)."""
  return " ".join(divergence.normalize_answer(question).split()[:words]) or "empty"


def build(sc, workdir, target_init=None):
  """The System for `config.system` (sc); `target_init` replaces the target's weights (refinement iterations)."""
  aud_cfg, aud_params = loading.load_vlm(sc.auditor, seed=0)
  tok = tokenizer_lib.Tokenizer(sc.tokenizer)
  aud_tok = tokenizer_lib.Tokenizer(sc.auditor.get("tokenizer") or sc.tokenizer)
  policy = policy_lib.VLMPolicy(aud_cfg, aud_tok, prompt_len=sc.prompt_len, max_new_tokens=sc.max_new_tokens,
                                temperature=sc.temperature, top_p=sc.top_p)

  def http(spec):
    options = {k: v for k, v in spec.items() if k not in ("kind", "name", "base_url", "model")}
    return answerers.HttpAnswerer(spec["name"], spec["base_url"], spec["model"], **options)

  def answerer(spec, seed):
    if spec.get("kind") == "http":
      return http(spec)
    cfg, params = loading.load_vlm(spec, seed)
    return answerers.VLMAnswerer(spec["name"], cfg, params, tok, max_new_tokens=sc.answer_tokens)

  target_spec = dict(sc.target, name="target", **({"init": target_init} if target_init else {}))
  target = answerer(target_spec, 1)
  references = answerers.Ensemble([answerer(dict(r), 2 + i) for i, r in enumerate(sc.references)])
  gen = dict(sc.generator)
  generator = imagegen.get_generator(gen.pop("name"), **gen)
  pool = ImagePool(sc.images, aud_cfg.res, sc.batch_size)
  eval_pool = ImagePool(sc.eval_images or sc.images, aud_cfg.res, sc.batch_size)
  return system_lib.System(
      policy=policy, params=aud_params, target=target, references=references, generator=generator, data=pool,
      pool=pool, eval_data=[eval_pool[k] for k in range(min(sc.eval_batches, len(eval_pool)))],
      type_fn=question_type,
      rectification=(rectification(sc, workdir, target_spec, target.cfg, target.params, target, tok)
                     if isinstance(target, answerers.VLMAnswerer) else None))  # An HTTP target cannot be tuned.
