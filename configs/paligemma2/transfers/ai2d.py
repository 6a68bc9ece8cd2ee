"""PaliGemma2 transfer to AI2D (paper Table 1: 16 epochs, batch 256, lr 1e-5, wd 1e-6, no dropout/smoothing).

Multiple choice: the options are listed in the prompt and the answer is the option text (exact match on test).
  auditdm finetune --workdir runs/ai2d --config configs/paligemma2/transfers/ai2d.py:res=448,tokenizer=...
"""
from auditdm_jax.data import transfers as t

TEXT_LEN = 128
PREFIX = ('join(inkey="possible_answers", outkey="choices", sep=" ; ")'
          '|strfmt("answer en {question} choices: {choices}", outkey="prefix")')


def training_data(c, arg):
  c.input.data = [dict(name="ai2d", split="train", data_dir=arg.data_dir or None, weight=1.0)]
  c.input.pp = "|".join([t.image_pp(arg.res), PREFIX, 'copy("answer", "suffix")',
                         t.train_text_pp(c.tokenizer, TEXT_LEN)])
  # Generated rows carry no option list: they are trained as open questions.
  t.add_extra_jsonl(c, arg, 'strfmt("answer en {question}", outkey="prefix")', TEXT_LEN)


def add_eval(c, arg):
  c.evals.ai2d_test = dict(
      type="exact_match", data=dict(name="ai2d", split="test", data_dir=arg.data_dir or None),
      pp_fn="|".join([t.image_pp(arg.res), PREFIX,
                      t.eval_text_pp(c.tokenizer, TEXT_LEN, keep=("question_id", "question", "answer"))]),
      batch_size=64, every_steps=0, max_decode_len=16)


def get_config(arg=None):
  arg = t.common_args(arg)
  c = t.base_config("ai2d", arg)
  training_data(c, arg)
  add_eval(c, arg)
  return c
