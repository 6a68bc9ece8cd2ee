"""The audit system of real MLLMs (`config.system.module = "auditdm_jax.audit.vlm_system"`).

- auditor: a PaliGemma-family or Gemma3 multimodal VLM (the paper's is Gemma3-4B) from a big_vision .npz or a HF
  directory (`init`), with its own sentencepiece model in `auditor.tokenizer` (default: the shared `tokenizer`;
  Gemma3 and PaliGemma tokenizers differ);
- target / JAX references: PaliGemma-family VLMs from a .npz or a HF directory (`init`) answering with `tokenizer`;
  tiny variants are randomly initialised when `init` is empty (smoke tests); otherwise a missing `init` is an error;
- HTTP references: any OpenAI-compatible server (`kind="http"`, base_url, model; e.g. vLLM serving Qwen2.5-VL);
- image generator: an `imagegen` backend by name (`flux-http`, `procedural`, `identity`) with its kwargs;
- image pool: every image under `images` (a folder) or a JSONL with {image, question} rows (the fixed questions of
  the (Q, I*) modes), resized to the auditor's resolution.
Single-model analysis = several references excluding the target; model comparison = one reference.
The RL policy (`policy.VLMPolicy`) prompts a PaliGemma auditor with its prefix-LM format and a Gemma3 auditor with
the chat template (image + instruction in the user turn, sampling the model turn).
"""
import json
import os

import numpy as np
from PIL import Image

from auditdm_jax.audit import answerers
from auditdm_jax.audit import policy as policy_lib
from auditdm_jax.audit import trainer
from auditdm_jax.models import tokenizer as tokenizer_lib
from auditdm_jax.models.loading import load_vlm


class ImagePool:
  """Batches of `batch_size` images (resized to `res`) from a folder or a JSONL of {image, question}."""

  def __init__(self, path, res, batch_size):
    self.res, self.batch_size = res, batch_size
    if os.path.isdir(path):
      from auditdm_jax.data import jsonl_source  # pylint: disable=g-import-not-at-top
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


def build(sc, workdir):
  del workdir
  aud_cfg, aud_params = load_vlm(sc.auditor, seed=0)
  tok = tokenizer_lib.Tokenizer(sc.tokenizer)
  aud_tok = tokenizer_lib.Tokenizer(sc.auditor.get("tokenizer") or sc.tokenizer)
  policy = policy_lib.VLMPolicy(aud_cfg, aud_tok, prompt_len=sc.prompt_len, max_new_tokens=sc.max_new_tokens,
                                temperature=sc.temperature, top_p=sc.top_p)

  def answerer(spec, seed):
    spec = dict(spec)
    if spec.get("kind") == "http":
      return answerers.HttpAnswerer(spec["name"], spec["base_url"], spec["model"], api_key=spec.get("api_key"))
    cfg, params = load_vlm(spec, seed)
    return answerers.VLMAnswerer(spec["name"], cfg, params, tok, max_new_tokens=sc.answer_tokens)

  target = answerer(dict(sc.target, name="target"), 1)
  references = answerers.Ensemble([answerer(r, 2 + i) for i, r in enumerate(sc.references)])
  from auditdm_jax import imagegen  # pylint: disable=g-import-not-at-top
  gen = dict(sc.generator)
  generator = imagegen.get_generator(gen.pop("name"), **gen)
  pool = ImagePool(sc.images, aud_cfg.res, sc.batch_size)
  eval_pool = ImagePool(sc.eval_images or sc.images, aud_cfg.res, sc.batch_size)
  return trainer.System(policy=policy, params=aud_params, target=target, references=references,
                        generator=generator, data=pool, pool=pool,
                        eval_data=[eval_pool[k] for k in range(min(sc.eval_batches, len(eval_pool)))])
