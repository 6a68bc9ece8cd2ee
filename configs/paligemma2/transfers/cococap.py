"""PaliGemma2 transfer to COCO captions (paper Table 1: 8 epochs, batch 256, lr 1e-5, wd 1e-6).

Data: TFDS `coco_captions` (Karpathy splits); trained on train+restval with one random reference caption per
example, CIDEr(-D) on the validation split.
  auditdm finetune --workdir runs/cococap --config configs/paligemma2/transfers/cococap.py:res=448,tokenizer=...
"""
from auditdm_jax.data import transfers as t

TEXT_LEN = 64
PREFIX = 'strfmt("caption en", outkey="prefix")'


def training_data(c, arg):
  c.input.data = [dict(name="coco_captions", split="train+restval", data_dir=arg.data_dir or None, weight=1.0)]
  c.input.pp = "|".join([t.image_pp(arg.res), "flatten", PREFIX, 'choice(inkey="captions/text", outkey="suffix")',
                         t.train_text_pp(c.tokenizer, TEXT_LEN)])


def add_eval(c, arg):
  c.evals.cococap_val = dict(
      type="cider", data=dict(name="coco_captions", split="val", data_dir=arg.data_dir or None),
      pp_fn="|".join([t.image_pp(arg.res), "flatten", 'copy("captions/text", "captions")', PREFIX,
                      t.eval_text_pp(c.tokenizer, TEXT_LEN, keep=("image/id", "captions"))]),
      batch_size=64, every_steps=0, max_decode_len=32)


def get_config(arg=None):
  arg = t.common_args(arg, qa=False)
  c = t.base_config("cococap", arg)
  training_data(c, arg)
  add_eval(c, arg)
  return c
