"""Rectification SFT of a Gemma3 target on generated (+ optionally original) pairs (paper Sec. A.4: Gemma3-4B,
global batch 512, lr 2e-6, one epoch).

  auditdm finetune --workdir /tmp/g3 --config configs/gemma3/rectify.py:model_init=/ckpt/gemma-3-4b-it,\
tokenizer=/ckpt/gemma-3-4b-it/tokenizer.model,extra_jsonl=/run/rectify_data/generated.jsonl
JSONL rows: {image (path relative to the file), question, answer}; `train_jsonl` adds the original data (weight 1,
generated data weight `extra_weight`), `eval_jsonl` an exact-match eval. `tiny` (with `vocab`) is a random
gemma3_tiny at 32px for CPU tests; the tokenizer must then have the Gemma3 special pieces and < vocab - 3 pieces.
"""
import ml_collections

from auditdm_jax import config as config_lib
from auditdm_jax.data import transfers as t
from auditdm_jax.models import variants


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant="gemma3_4b", res=0, tokenizer="tokenizer.model", model_init="",
                             extra_jsonl="", extra_weight=1.0, train_jsonl="", eval_jsonl="", text_len=0,
                             batch_size=512, epochs=1.0, lr=2e-6, tiny=False, vocab=256)
  if arg.tiny:
    arg.variant = "gemma3_tiny"
  llm = dict(vocab_size=arg.vocab) if arg.variant.endswith("tiny") else {}
  family, _, _, res = variants.lookup(arg.variant, arg.res or None)
  if family != "gemma3":
    raise ValueError(f"rectify.py fine-tunes a Gemma3 variant, got {arg.variant}")
  tokens = variants.gemma3_image_tokens(arg.variant, arg.vocab)
  image_id, n_image = tokens["image_token_id"], tokens["mm_tokens_per_image"]
  text_len = arg.text_len or n_image + (32 if arg.tiny else 128)
  pp = "|".join([t.image_pp(res), t.gemma3_text_pp(arg.tokenizer, text_len, image_id, n_image)])

  c = ml_collections.ConfigDict()
  c.model = dict(variant=arg.variant, res=res, llm=dict(llm, **t.SCANNED["llm"]), img=dict(t.SCANNED["img"]))
  c.model_init = arg.model_init or None
  c.tokenizer = arg.tokenizer
  data = ([dict(jsonl=arg.train_jsonl, weight=1.0, pp=pp)] if arg.train_jsonl else []) + (
      [dict(jsonl=arg.extra_jsonl, weight=arg.extra_weight, pp=pp)] if arg.extra_jsonl else [])
  c.input = ml_collections.ConfigDict(dict(data=data, pp=pp, batch_size=arg.batch_size, shuffle_buffer=50_000))
  c.total_steps = 0  # 0: total_epochs over the data.
  c.total_epochs, c.lr, c.wd, c.llm_dropout, c.label_smoothing = arg.epochs, arg.lr, 0.0, 0.0, 0.0
  c.optimizer, c.b2, c.grad_clip_norm, c.grad_accum_steps, c.trainable = "adamw", 0.999, 1.0, 1, None
  c.schedule = dict(decay_type="cosine", warmup_percent=0.05)
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.seed, c.log_every_steps, c.ckpt_every_steps, c.keep_ckpts = 0, 10, 1000, 2
  c.evals = ml_collections.ConfigDict()
  if arg.eval_jsonl:
    c.evals.eval = dict(
        type="exact_match", data=dict(jsonl=arg.eval_jsonl),
        pp_fn="|".join(['setdefault("question_id", -1)', t.image_pp(res),
                        t.gemma3_text_pp(arg.tokenizer, text_len, image_id, n_image, answer=None,
                                         keep=("question_id", "question", "answer"))]),
        batch_size=min(arg.batch_size, 64), every_steps=0, max_decode_len=16)
  if arg.tiny:
    c.input.shuffle_buffer = 16
    c.lr = arg.lr if arg.lr != 2e-6 else 1e-3
    c.schedule = dict(decay_type="cosine", warmup_steps=1)
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.log_every_steps, c.ckpt_every_steps = 1, 2
  return c
