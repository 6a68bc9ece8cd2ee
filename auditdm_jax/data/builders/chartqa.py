"""ChartQA (Masry et al. 2022) from the official release at https://github.com/vis-nlp/ChartQA.

Manual download directory layout (the "ChartQA Dataset" folder as distributed):
  train/train_human.json  train/train_augmented.json  train/png/<imgname>
  val/val_human.json      val/val_augmented.json      val/png/<imgname>
  test/test_human.json    test/test_augmented.json    test/png/<imgname>
Each JSON is a list of `{"imgname": "x.png", "query": "...", "label": "..."}`.
Splits: train_human, train_augmented, val_human, val_augmented, test_human, test_augmented (those present; use
e.g. split="train_human+train_augmented"). Each example: image, image/id, question_id, question, answer.
"""
import tensorflow_datasets as tfds

from auditdm_jax.data.builders import common

INSTRUCTIONS = __doc__.split("\n", 1)[1]  # the layout part of the module docstring

FOLDERS = {"train": "train", "val": "val", "test": "test"}


class Chartqa(tfds.core.GeneratorBasedBuilder):
  """ChartQA from manually downloaded official files."""
  name = "chartqa"
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="png"),
        "image/id": tfds.features.Text(),
        "question_id": tfds.features.Text(),
        "question": tfds.features.Text(),
        "answer": tfds.features.Text(),
    }), homepage="https://github.com/vis-nlp/ChartQA")

  def _split_generators(self, dl_manager):
    splits = {}
    for folder in FOLDERS.values():
      for kind in ("human", "augmented"):
        name = f"{folder}/{folder}_{kind}.json"
        if common.exists(dl_manager, name):
          images = common.manual_path(dl_manager, folder, "png", instructions=self.MANUAL_DOWNLOAD_INSTRUCTIONS)
          splits[f"{folder}_{kind}"] = self._generate_examples(common.manual_path(dl_manager, name), images,
                                                               f"{folder}_{kind}")
    if not splits:
      common.manual_path(dl_manager, "train/train_human.json", instructions=self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return splits

  @common.names_source
  def _generate_examples(self, annotations, image_dir, prefix):
    for i, d in enumerate(common.load_json(annotations)):
      key = f"{prefix}_{i}"
      yield key, {
          "image": common.require_image(f"{image_dir}/{d['imgname']}"),
          "image/id": d["imgname"].rsplit(".", 1)[0],
          "question_id": key,
          "question": d["query"],
          "answer": str(d["label"]),
      }
