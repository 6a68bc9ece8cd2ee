"""PaliGemma2 transfer to ChartQA (paper Table 1: 40 epochs, batch 256, lr 1e-5, wd 1e-6, LLM dropout 0.1,
label smoothing 0.2).

Trained on human + augmented train questions; relaxed accuracy on test_human and test_augmented.
  auditdm finetune --workdir runs/chartqa --config configs/paligemma2/transfers/chartqa.py:res=448,tokenizer=...
"""
from auditdm_jax.data import transfers as t

TEXT_LEN = 64
PREFIX = 'strfmt("answer en {question}", outkey="prefix")'


def training_data(c, arg):
  c.input.data = [dict(name="chartqa", split="train_human+train_augmented", data_dir=arg.data_dir or None,
                       weight=1.0)]
  c.input.pp = "|".join([t.image_pp(arg.res), PREFIX, 'copy("answer", "suffix")',
                         t.train_text_pp(c.tokenizer, TEXT_LEN)])
  t.add_extra_jsonl(c, arg, PREFIX, TEXT_LEN)


def add_eval(c, arg):
  for subset in ("human", "augmented"):
    c.evals[f"chartqa_test_{subset}"] = dict(
        type="relaxed", data=dict(name="chartqa", split=f"test_{subset}", data_dir=arg.data_dir or None),
        pp_fn="|".join([t.image_pp(arg.res), PREFIX,
                        t.eval_text_pp(c.tokenizer, TEXT_LEN, keep=("question_id", "question", "answer"))]),
        batch_size=64, every_steps=0, max_decode_len=16)


def get_config(arg=None):
  arg = t.common_args(arg)
  c = t.base_config("chartqa", arg)
  training_data(c, arg)
  add_eval(c, arg)
  return c
