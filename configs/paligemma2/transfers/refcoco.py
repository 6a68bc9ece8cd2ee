"""PaliGemma2 transfer to RefCOCO (paper Table 1: 120 epochs, batch 256, lr 1e-5, wd 0, label smoothing 0.3).

Data: TFDS `ref_coco/refcoco_unc` (manual download, see data/builders/catalog.py), one example per referring
expression. The model learns "detect <refexp>" -> "<loc>x4 <refexp>" (box targets). Box Acc@0.5 always; mask
mIoU when `mask_decoder=/path/vae-oid.npz` is given and the model emits <seg> tokens (segmentation *targets*
need the VQ-VAE encoder, which this project does not include: train from a checkpoint that already segments).
  auditdm finetune --workdir runs/refcoco --config configs/paligemma2/transfers/refcoco.py:res=448,tokenizer=...
"""
from auditdm_jax.data import transfers as t

TEXT_LEN = 64
PREFIX = 'strfmt("detect {refexp}", outkey="prefix")'


def _source(arg, split):
  return dict(name=arg.dataset, split=split, data_dir=arg.data_dir or None, transform="refcoco_flat")


def training_data(c, arg):
  c.input.data = [dict(_source(arg, "train"), weight=1.0)]
  c.input.pp = "|".join([t.image_pp(arg.res), PREFIX, 'bbox_to_loc(key="bbox", outkey="loc")',
                         'strfmt("{loc} {refexp}", outkey="suffix")', t.train_text_pp(c.tokenizer, TEXT_LEN)])


def add_eval(c, arg):
  keep = ("refexp", "bbox") + (("mask",) if arg.mask_decoder else ())
  c.evals.refcoco_val = dict(
      type="refcoco", data=_source(arg, "validation"),
      pp_fn="|".join([t.image_pp(arg.res), PREFIX, t.eval_text_pp(c.tokenizer, TEXT_LEN, keep=keep)]),
      batch_size=64, every_steps=0, max_decode_len=24, mask_decoder=arg.mask_decoder or None)


def get_config(arg=None):
  arg = t.common_args(arg, qa=False, dataset="ref_coco/refcoco_unc", mask_decoder="")
  c = t.base_config("refcoco", arg)
  training_data(c, arg)
  add_eval(c, arg)
  return c
