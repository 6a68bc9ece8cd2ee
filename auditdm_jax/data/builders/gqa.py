"""GQA balanced (Hudson & Manning 2019) from the official files at https://cs.stanford.edu/people/dorarad/gqa.

Manual download directory layout (questions1.2.zip and images.zip unzipped into it):
  train_balanced_questions.json  val_balanced_questions.json  testdev_balanced_questions.json
  images/<imageId>.jpg
Splits: train, validation, testdev (those whose question file is present). Each example: image, image/id,
question_id, question, answer, full_answer.
"""
import tensorflow_datasets as tfds

from auditdm_jax.data.builders import common

INSTRUCTIONS = __doc__.split("\n", 1)[1]  # the layout part of the module docstring

FILES = {"train": "train_balanced_questions.json", "validation": "val_balanced_questions.json",
         "testdev": "testdev_balanced_questions.json"}


class Gqa(tfds.core.GeneratorBasedBuilder):
  """GQA balanced splits from manually downloaded official files."""
  name = "gqa"
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="jpeg"),
        "image/id": tfds.features.Text(),
        "question_id": tfds.features.Text(),
        "question": tfds.features.Text(),
        "answer": tfds.features.Text(),
        "full_answer": tfds.features.Text(),
    }), homepage="https://cs.stanford.edu/people/dorarad/gqa")

  def _split_generators(self, dl_manager):
    need = lambda *p: common.manual_path(dl_manager, *p, instructions=self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    splits = {s: self._generate_examples(need(f), need("images")) for s, f in FILES.items()
              if common.exists(dl_manager, f)}
    if not splits:
      need(FILES["train"])
    return splits

  @common.names_source
  def _generate_examples(self, questions, image_dir):
    for qid, q in common.load_json(questions).items():
      yield qid, {
          "image": common.require_image(f"{image_dir}/{q['imageId']}.jpg"),
          "image/id": q["imageId"],
          "question_id": qid,
          "question": q["question"],
          "answer": q.get("answer", ""),
          "full_answer": q.get("fullAnswer", ""),
      }
