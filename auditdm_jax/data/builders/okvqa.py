"""OK-VQA (Marino et al. 2019) from the official files at https://okvqa.allenai.org/download.html.

Manual download directory layout (VQA format; images are COCO 2014 from https://cocodataset.org):
  OpenEnded_mscoco_train2014_questions.json   mscoco_train2014_annotations.json
  OpenEnded_mscoco_val2014_questions.json     mscoco_val2014_annotations.json
  train2014/COCO_train2014_000000xxxxxx.jpg   val2014/COCO_val2014_000000xxxxxx.jpg
Splits: train, validation. Each example: image, image/id, question_id, question, answers (10 human answers),
multiple_choice_answer (empty in OK-VQA), answer_type, question_type.
"""
import tensorflow_datasets as tfds

from auditdm_jax.data.builders import common
from auditdm_jax.data.builders import vqav2

INSTRUCTIONS = __doc__.split("\n", 1)[1]  # the layout part of the module docstring

SUBSETS = {"train": ("train2014", "train2014", "train2014"), "validation": ("val2014", "val2014", "val2014")}
QUESTIONS = "OpenEnded_mscoco_{}_questions.json"
ANNOTATIONS = "mscoco_{}_annotations.json"


class Okvqa(tfds.core.GeneratorBasedBuilder):
  """OK-VQA from manually downloaded official files."""
  name = "okvqa"
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

  def _info(self):
    return self.dataset_info_from_configs(features=vqav2.vqa_features(), homepage="https://okvqa.allenai.org")

  def _split_generators(self, dl_manager):
    return vqav2.vqa_split_generators(self, dl_manager, SUBSETS, QUESTIONS, ANNOTATIONS)

  @common.names_source
  def _generate_examples(self, questions, annotations, image_dir):
    yield from vqav2.vqa_examples(questions, annotations, image_dir)
