"""RefCOCO referring-expression metrics from PaliGemma `<locYYYY>` / `<segNNN>` outputs.

A prediction reads `<loc y1><loc x1><loc y2><loc x2>[<seg000>...x16] [label]`: four location tokens (coordinates
normalised to [0, 1] in 1024 bins, value/1023) and optionally 16 segmentation tokens, indices into the 128-entry
codebook of PaliGemma's mask VQ-VAE. Box metrics (Acc@0.5, mean box IoU) need nothing else. Mask mIoU needs the
VQ-VAE decoder: pass `mask_decoder="/path/vae-oid.npz"` (the big_vision checkpoint, PyTorch-layout arrays
`_vq_vae._embedding`, `decoder.*`), which `MaskDecoder` reconstructs as a [64, 64] mask pasted into the box.
"""
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from auditdm_jax.evaluators import common

_LOC = re.compile(r"<loc(\d{4})>")
_SEG = re.compile(r"<seg(\d{3})>")


def parse_box(text):
  """The first 4 `<locNNNN>` tokens as a normalised [y1, x1, y2, x2] box, or None when absent/invalid."""
  locs = [int(m) for m in _LOC.findall(text)[:4]]
  if len(locs) < 4 or max(locs) > 1023:
    return None
  y1, x1, y2, x2 = (v / 1023 for v in locs)
  return (y1, x1, y2, x2) if y2 > y1 and x2 > x1 else None


def parse_seg(text):
  """The first 16 `<segNNN>` codebook indices [16], or None."""
  segs = [int(m) for m in _SEG.findall(text)[:16]]
  return np.asarray(segs, np.int32) if len(segs) == 16 and max(segs) <= 127 else None


def _area(y1, x1, y2, x2):
  return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)


def box_iou(a, b):
  """IoU of two [y1, x1, y2, x2] boxes (any common scale)."""
  inter = _area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
  union = _area(*a) + _area(*b) - inter
  return inter / union if union > 0 else 0.0


def mask_iou(pred_box, mask64, gt_mask):
  """IoU of the decoded mask [64, 64] (in [-1, 1]) resized into `pred_box` with the gt mask [H, W] bool."""
  h, w = gt_mask.shape
  y1, x1, y2, x2 = (int(pred_box[0] * h), int(pred_box[1] * w), int(pred_box[2] * h), int(pred_box[3] * w))
  if y2 <= y1 or x2 <= x1:
    return 0.0
  pred = np.asarray(PIL.Image.fromarray(np.asarray(mask64, np.float32)).resize(
      (x2 - x1, y2 - y1), resample=PIL.Image.BILINEAR)) > 0.0
  inter = (gt_mask[y1:y2, x1:x2] & pred).sum()
  union = gt_mask.sum() + pred.sum() - inter
  return float(inter / union) if union else 0.0


class _ResBlock(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    y = nn.relu(nn.Conv(self.features, (3, 3), padding=1)(x))
    y = nn.relu(nn.Conv(self.features, (3, 3), padding=1)(y))
    return x + nn.Conv(self.features, (1, 1), padding=0)(y)


class MaskDecoder(nn.Module):
  """PaliGemma's VQ-VAE mask decoder: [B, 4, 4, E] codebook vectors -> [B, 64, 64, 1] mask in about [-1, 1]."""

  @nn.compact
  def __call__(self, x):
    dim = 128
    x = nn.relu(nn.Conv(dim, (1, 1), padding=0)(x))
    for _ in range(2):
      x = _ResBlock(dim)(x)
    for _ in range(4):  # 4 -> 64 pixels
      x = nn.relu(nn.ConvTranspose(dim, (4, 4), strides=(2, 2), padding=2, transpose_kernel=True)(x))
      dim //= 2
    return nn.Conv(1, (1, 1), padding=0)(x)


def decoder_params(ckpt):
  """Flax params of MaskDecoder + codebook [128, E] from the PyTorch-layout arrays of vae-oid.npz."""
  def conv(name):  # torch [out, in, kh, kw] (ConvTranspose: [in, out, kh, kw]) -> [kh, kw, ., .]
    return {"bias": ckpt[name + ".bias"], "kernel": np.transpose(ckpt[name + ".weight"], (2, 3, 1, 0))}

  def res(name):
    return {"Conv_0": conv(name + ".0"), "Conv_1": conv(name + ".2"), "Conv_2": conv(name + ".4")}

  params = {"Conv_0": conv("decoder.0"), "_ResBlock_0": res("decoder.2.net"), "_ResBlock_1": res("decoder.3.net"),
            "Conv_1": conv("decoder.12")}
  params.update({f"ConvTranspose_{i}": conv(f"decoder.{4 + 2 * i}") for i in range(4)})
  return params, np.asarray(ckpt["_vq_vae._embedding"])


@functools.lru_cache(maxsize=2)
def load_mask_decoder(path):
  """`fn(codebook_indices [B, 16] int32) -> masks [B, 64, 64] float32` from a vae-oid.npz checkpoint."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, "rb") as f:
    ckpt = dict(np.load(f))
  missing = [k for k in ("_vq_vae._embedding", "decoder.0.weight", "decoder.12.weight") if k not in ckpt]
  if missing:
    raise ValueError(f"{path} is not a PaliGemma mask VQ-VAE checkpoint (missing {missing})")
  params, codebook = decoder_params(ckpt)

  @jax.jit
  def decode(indices):
    x = jnp.take(codebook, indices.reshape(-1), axis=0).reshape(indices.shape[0], 4, 4, codebook.shape[1])
    return MaskDecoder().apply({"params": params}, x)[..., 0]
  return lambda indices: np.asarray(decode(jnp.asarray(indices, jnp.int32)))


class Evaluator(common.BaseEvaluator):
  """RefCOCO. pp_fn keeps `bbox` (gt [y1, x1, y2, x2] normalised), and `mask` ([H, W(, 1)]) for mask mIoU."""
  fields = ("refexp", "bbox")

  def __init__(self, predict_fn, data, pp_fn, batch_size, mask_decoder=None, det_ious=(0.5,), **kw):
    super().__init__(predict_fn, data, pp_fn, batch_size, **kw)
    self.det_ious = tuple(det_ious)
    self.decode_masks = load_mask_decoder(mask_decoder) if mask_decoder else None
    self.score_fields = ("mask",) if mask_decoder else ()

  def per_example(self, record, extra):
    box = parse_box(record["prediction"])
    iou = box_iou(box, record["bbox"]) if box else 0.0
    scores = {"box_iou": iou, "valid": float(box is not None)}
    scores.update({f"acc@{t}": float(iou >= t) for t in self.det_ious})
    if self.decode_masks is not None:
      seg = parse_seg(record["prediction"])
      gt = np.asarray(extra["mask"])
      gt = (gt[..., 0] if gt.ndim == 3 else gt) > 0
      if box is None or seg is None:
        scores["mask_iou"] = 0.0
      else:
        scores["mask_iou"] = mask_iou(box, self.decode_masks(seg[None])[0], gt)
    return scores
