"""AI2D diagrams QA (Kembhavi et al. 2016) from the official AllenAI release (ai2d-all.zip + ai2d_test_ids.csv).

Manual download directory layout (ai2d-all.zip unzipped, the test-id list beside it):
  images/<n>.png   questions/<n>.png.json   ai2d_test_ids.csv   (one image id <n> per line)
A question file is `{"imageName": "<n>.png", "questions": {"<question>": {"answerTexts": [...],
"correctAnswer": i, "abcLabel": bool, "questionId": "..."}}}`.
Splits: train (images not in ai2d_test_ids.csv), test. Each example: image, image/id, question_id, question,
possible_answers, answer (the correct answer text), answer_index, abc_label.
"""
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from auditdm_jax.data.builders import common

INSTRUCTIONS = __doc__.split("\n", 1)[1]  # the layout part of the module docstring


class Ai2d(tfds.core.GeneratorBasedBuilder):
  """AI2D from manually downloaded official files."""
  name = "ai2d"
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="png"),
        "image/id": tfds.features.Text(),
        "question_id": tfds.features.Text(),
        "question": tfds.features.Text(),
        "possible_answers": tfds.features.Sequence(tfds.features.Text()),
        "answer": tfds.features.Text(),
        "answer_index": np.int32,
        "abc_label": np.bool_,
    }), homepage="https://allenai.org/data/diagrams")

  def _split_generators(self, dl_manager):
    need = lambda *p: common.manual_path(dl_manager, *p, instructions=self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    with tf.io.gfile.GFile(need("ai2d_test_ids.csv")) as f:
      test_ids = {line.strip().split(",")[0] for line in f if line.strip()}
    qdir, idir = need("questions"), need("images")
    return {"train": self._generate_examples(qdir, idir, test_ids, False),
            "test": self._generate_examples(qdir, idir, test_ids, True)}

  @common.names_source
  def _generate_examples(self, question_dir, image_dir, test_ids, test):
    for name in sorted(tf.io.gfile.listdir(question_dir)):
      if not name.endswith(".json"):
        continue
      doc = common.load_json(f"{question_dir}/{name}")
      image_name = doc["imageName"]
      image_id = image_name.rsplit(".", 1)[0]
      if (image_id in test_ids) != test:
        continue
      for question, q in doc["questions"].items():
        yield q["questionId"], {
            "image": common.require_image(f"{image_dir}/{image_name}"),
            "image/id": image_id,
            "question_id": q["questionId"],
            "question": question,
            "possible_answers": q["answerTexts"],
            "answer": q["answerTexts"][q["correctAnswer"]],
            "answer_index": q["correctAnswer"],
            "abc_label": bool(q.get("abcLabel", False)),
        }
