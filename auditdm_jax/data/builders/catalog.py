"""Benchmarks taken from the TFDS catalog, and dataset-level transforms for them.

- RefCOCO: TFDS `ref_coco` (configs `refcoco_unc`, `refcoco_google`, `refcocoplus_unc`, `refcocog_umd`, ...;
  splits train/validation/testA/testB). It needs a manual download (COCO train2014 images + the refer
  annotations); see https://www.tensorflow.org/datasets/catalog/ref_coco. Use the source
  `{"name": "ref_coco/refcoco_unc", "split": "validation", "transform": "refcoco_flat"}`: one example per
  referring expression, with `refexp` (text), `bbox` ([4] y1, x1, y2, x2 normalised) and `mask` ([H, W, 1] uint8).
- COCO captions: TFDS `coco_captions` (Karpathy splits train/val/test/restval); each example has
  `captions/text` (the 5 reference captions) and `image/id`. Downloads automatically.
"""
import tensorflow as tf


def refcoco_flat(ds):
  """ref_coco examples (one per image, nested objects/refexps) -> one example per (object, referring expression)."""
  def per_image(ex):
    objects = ex["objects"]

    def per_object(obj):
      refexps = tf.data.Dataset.from_tensor_slices(obj["refexp"]["raw"])
      mask = obj["mask"]
      mask = mask[..., :1] if mask.shape.rank == 3 else mask
      return refexps.map(lambda raw: {"image": ex["image"], "image/id": ex["image/id"], "refexp": raw,
                                      "bbox": obj["bbox"], "mask": mask})
    return tf.data.Dataset.from_tensor_slices(objects).flat_map(per_object)
  return ds.flat_map(per_image)


TRANSFORMS = {"refcoco_flat": refcoco_flat}
