"""PaliGemma2 transfer to OK-VQA (paper Table 1: 10 epochs, batch 256, lr 5e-6, wd 0, no dropout/smoothing).

  auditdm finetune --workdir runs/okvqa --config configs/paligemma2/transfers/okvqa.py:res=448,\
tokenizer=/ckpt/paligemma_tokenizer.model,model_init=/ckpt/paligemma2-3b-pt-448,data_dir=~/tensorflow_datasets
Arg fields: res, tokenizer, data_dir, model_init, variant, extra_jsonl (generated pairs to mix in), extra_weight.
"""
from auditdm_jax.data import transfers as t

TEXT_LEN = 64
PREFIX = 'strfmt("answer en {question}", outkey="prefix")'


def training_data(c, arg):
  c.input.data = [dict(name="okvqa", split="train", data_dir=arg.data_dir or None, weight=1.0)]
  c.input.pp = "|".join([t.image_pp(arg.res), PREFIX, 'choice(inkey="answers", outkey="suffix")',
                         t.train_text_pp(c.tokenizer, TEXT_LEN)])
  t.add_extra_jsonl(c, arg, PREFIX, TEXT_LEN)


def add_eval(c, arg):
  c.evals.okvqa_val = dict(
      type="okvqa", data=dict(name="okvqa", split="validation", data_dir=arg.data_dir or None),
      pp_fn="|".join([t.image_pp(arg.res), PREFIX,
                      t.eval_text_pp(c.tokenizer, TEXT_LEN, keep=("question_id", "question", "answers"))]),
      batch_size=64, every_steps=0, max_decode_len=16)


def get_config(arg=None):
  arg = t.common_args(arg)
  c = t.base_config("okvqa", arg)
  training_data(c, arg)
  add_eval(c, arg)
  return c
