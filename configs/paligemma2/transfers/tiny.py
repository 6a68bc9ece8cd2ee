"""A tiny PaliGemma2 VQAv2-style transfer that runs on CPU in seconds (tests, smoke runs).

  auditdm finetune --workdir /tmp/tiny --config configs/paligemma2/transfers/tiny.py:tokenizer=/tmp/t.model,\
data_dir=/tmp/tfds,vocab=256
`vocab` must be >= the tokenizer's size (tiny Gemma's table is resized to it). Data: the `vqav2` builder (e.g. built
from tiny fixture files), plus `extra_jsonl` mixed in when given.
"""
from auditdm_jax.data import transfers as t

TEXT_LEN = 24
PREFIX = 'strfmt("answer en {question}", outkey="prefix")'


def get_config(arg=None):
  arg = t.common_args(arg, res=32, variant="paligemma2_tiny", vocab=256, steps=4, batch_size=8)
  c = t.base_config("vqav2", arg)
  c.model.llm.vocab_size = arg.vocab
  c.input.batch_size = arg.batch_size
  c.input.shuffle_buffer = 16
  c.input.data = [dict(name="vqav2", split="train", data_dir=arg.data_dir or None, weight=1.0)]
  c.input.pp = "|".join([t.image_pp(arg.res), PREFIX, 'choice(inkey="answers", outkey="suffix")',
                         t.train_text_pp(c.tokenizer, TEXT_LEN)])
  t.add_extra_jsonl(c, arg, PREFIX, TEXT_LEN)
  c.total_steps = arg.steps
  c.lr = 1e-3
  c.schedule = dict(decay_type="cosine", warmup_steps=1)
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.log_every_steps = 1
  c.ckpt_every_steps = 2
  c.evals.vqav2_val = dict(
      type="vqa", data=dict(name="vqav2", split="validation", data_dir=arg.data_dir or None),
      pp_fn="|".join([t.image_pp(arg.res), PREFIX,
                      t.eval_text_pp(c.tokenizer, TEXT_LEN, keep=("question_id", "question", "answers"))]),
      batch_size=2, every_steps=2, max_decode_len=4)
  return c
