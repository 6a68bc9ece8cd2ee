"""PaliGemma2 transfer to DocVQA (paper Table 1: 10 epochs, batch 256, lr 1e-5, wd 1e-6, no dropout/smoothing).

Evaluated with ANLS on the validation split (the test split's answers are not public).
  auditdm finetune --workdir runs/docvqa --config configs/paligemma2/transfers/docvqa.py:res=448,tokenizer=...
"""
from auditdm_jax.data import transfers as t

TEXT_LEN = 64
PREFIX = 'strfmt("answer en {question}", outkey="prefix")'


def training_data(c, arg):
  c.input.data = [dict(name="docvqa", split="train", data_dir=arg.data_dir or None, weight=1.0)]
  c.input.pp = "|".join([t.image_pp(arg.res), PREFIX, 'choice(inkey="answers", outkey="suffix")',
                         t.train_text_pp(c.tokenizer, TEXT_LEN)])
  t.add_extra_jsonl(c, arg, PREFIX, TEXT_LEN)


def add_eval(c, arg):
  c.evals.docvqa_val = dict(
      type="anls", data=dict(name="docvqa", split="validation", data_dir=arg.data_dir or None),
      pp_fn="|".join([t.image_pp(arg.res), PREFIX,
                      t.eval_text_pp(c.tokenizer, TEXT_LEN, keep=("question_id", "question", "answers"))]),
      batch_size=64, every_steps=0, max_decode_len=32)


def get_config(arg=None):
  arg = t.common_args(arg)
  c = t.base_config("docvqa", arg)
  training_data(c, arg)
  add_eval(c, arg)
  return c
