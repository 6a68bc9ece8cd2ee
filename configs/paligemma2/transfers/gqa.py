"""PaliGemma2 transfer to GQA (paper Table 1: 4 epochs, batch 256, lr 1e-5, wd 1e-7, no dropout/smoothing).

Trained on the balanced train split, evaluated with exact match on testdev (balanced).
  auditdm finetune --workdir runs/gqa --config configs/paligemma2/transfers/gqa.py:res=448,tokenizer=...,model_init=...
"""
from auditdm_jax.data import transfers as t

TEXT_LEN = 64
PREFIX = 'strfmt("answer en {question}", outkey="prefix")'


def training_data(c, arg):
  c.input.data = [dict(name="gqa", split="train", data_dir=arg.data_dir or None, weight=1.0)]
  c.input.pp = "|".join([t.image_pp(arg.res), PREFIX, 'copy("answer", "suffix")',
                         t.train_text_pp(c.tokenizer, TEXT_LEN)])
  t.add_extra_jsonl(c, arg, PREFIX, TEXT_LEN)


def add_eval(c, arg):
  c.evals.gqa_testdev = dict(
      type="exact_match", data=dict(name="gqa", split="testdev", data_dir=arg.data_dir or None),
      pp_fn="|".join([t.image_pp(arg.res), PREFIX,
                      t.eval_text_pp(c.tokenizer, TEXT_LEN, keep=("question_id", "question", "answer"))]),
      batch_size=64, every_steps=0, max_decode_len=16)


def get_config(arg=None):
  arg = t.common_args(arg)
  c = t.base_config("gqa", arg)
  training_data(c, arg)
  add_eval(c, arg)
  return c
