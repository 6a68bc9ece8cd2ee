"""DocVQA single-page (Mathew et al. 2021) from the official release at https://rrc.cvc.uab.es/?ch=17.

Manual download directory layout (one folder per split, each with exactly one annotation JSON file, e.g.
train_v1.0_withQT.json / val_v1.0_withQT.json / test_v1.0.json, and the page images it references):
  train/<annotations>.json  train/documents/<page>.png
  val/<annotations>.json    val/documents/<page>.png
  test/<annotations>.json   test/documents/<page>.png
The JSON is `{"data": [{"questionId", "question", "image": "documents/x.png", "answers": [...], ...}]}` (the test
split has no answers). Splits: train, validation, test (those present). Each example: image, image/id,
question_id, question, answers, question_types.
"""
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from auditdm_jax.data.builders import common

INSTRUCTIONS = __doc__.split("\n", 1)[1]  # the layout part of the module docstring

FOLDERS = {"train": "train", "validation": "val", "test": "test"}


class Docvqa(tfds.core.GeneratorBasedBuilder):
  """DocVQA from manually downloaded official files."""
  name = "docvqa"
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="png"),
        "image/id": tfds.features.Text(),
        "question_id": np.int64,
        "question": tfds.features.Text(),
        "answers": tfds.features.Sequence(tfds.features.Text()),
        "question_types": tfds.features.Sequence(tfds.features.Text()),
    }), homepage="https://www.docvqa.org")

  def _split_generators(self, dl_manager):
    splits = {}
    for split, folder in FOLDERS.items():
      if not common.exists(dl_manager, folder):
        continue
      path = common.manual_path(dl_manager, folder)
      files = sorted(f for f in tf.io.gfile.listdir(path) if f.endswith(".json"))
      if len(files) != 1:
        raise common.ManualDataError(f"{path} must hold exactly one annotation .json file, found {files}. "
                                     f"Expected layout:\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
      splits[split] = self._generate_examples(f"{path}/{files[0]}", path)
    if not splits:
      common.manual_path(dl_manager, "train", instructions=self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return splits

  @common.names_source
  def _generate_examples(self, annotations, folder):
    for d in common.load_json(annotations)["data"]:
      yield d["questionId"], {
          "image": common.require_image(f"{folder}/{d['image']}"),
          "image/id": d["image"].rsplit("/", 1)[-1].rsplit(".", 1)[0],
          "question_id": d["questionId"],
          "question": d["question"],
          "answers": d.get("answers", []),
          "question_types": d.get("question_types", []),
      }
