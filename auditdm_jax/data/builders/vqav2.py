"""VQAv2 (Goyal et al. 2017) from the official files at https://visualqa.org/download.html.

Manual download directory layout (unzipped as distributed; COCO images from https://cocodataset.org):
  v2_OpenEnded_mscoco_train2014_questions.json   v2_mscoco_train2014_annotations.json
  v2_OpenEnded_mscoco_val2014_questions.json     v2_mscoco_val2014_annotations.json
  v2_OpenEnded_mscoco_test2015_questions.json    v2_OpenEnded_mscoco_test-dev2015_questions.json
  train2014/COCO_train2014_000000xxxxxx.jpg  val2014/COCO_val2014_...jpg  test2015/COCO_test2015_...jpg
Splits: train, validation, test, test_dev (only those whose question file is present; test splits have no
answers). Each example: image, image/id, question_id, question, answers (the 10 human answers),
multiple_choice_answer, answer_type, question_type.
"""
import numpy as np
import tensorflow_datasets as tfds

from auditdm_jax.data.builders import common

INSTRUCTIONS = __doc__.split("\n", 1)[1]  # the layout part of the module docstring

# split -> (question-file subset, annotation subset or None, image folder)
SUBSETS = {
    "train": ("train2014", "train2014", "train2014"),
    "validation": ("val2014", "val2014", "val2014"),
    "test": ("test2015", None, "test2015"),
    "test_dev": ("test-dev2015", None, "test2015"),
}
QUESTIONS = "v2_OpenEnded_mscoco_{}_questions.json"
ANNOTATIONS = "v2_mscoco_{}_annotations.json"


def vqa_features():
  """Features of the VQA-format datasets (VQAv2, OK-VQA)."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(encoding_format="jpeg"),
      "image/id": np.int64,
      "question_id": np.int64,
      "question": tfds.features.Text(),
      "answers": tfds.features.Sequence(tfds.features.Text()),
      "multiple_choice_answer": tfds.features.Text(),
      "answer_type": tfds.features.Text(),
      "question_type": tfds.features.Text(),
  })


def vqa_examples(questions_path, annotations_path, image_dir):
  """Yields (question_id, example) from an official VQA-format question file (+ annotation file or None)."""
  answers = {}
  if annotations_path:
    for a in common.load_json(annotations_path)["annotations"]:
      answers[a["question_id"]] = a
  folder = image_dir.rstrip("/").rsplit("/", 1)[-1]
  for q in common.load_json(questions_path)["questions"]:
    a = answers.get(q["question_id"], {})
    yield q["question_id"], {
        "image": common.require_image(f"{image_dir}/COCO_{folder}_{q['image_id']:012d}.jpg"),
        "image/id": q["image_id"],
        "question_id": q["question_id"],
        "question": q["question"],
        "answers": [x["answer"] for x in a.get("answers", [])],
        "multiple_choice_answer": a.get("multiple_choice_answer", ""),
        "answer_type": a.get("answer_type", ""),
        "question_type": a.get("question_type", ""),
    }


def vqa_split_generators(builder, dl_manager, subsets, questions, annotations):
  """{split: generator} for the splits whose question file is in the manual dir."""
  splits = {}
  for split, (qsub, asub, images) in subsets.items():
    if common.exists(dl_manager, questions.format(qsub)):
      need = lambda *p: common.manual_path(dl_manager, *p, instructions=builder.MANUAL_DOWNLOAD_INSTRUCTIONS)
      splits[split] = builder._generate_examples(  # pylint: disable=protected-access
          need(questions.format(qsub)), asub and need(annotations.format(asub)), need(images))
  if not splits:
    common.manual_path(dl_manager, questions.format(next(iter(subsets.values()))[0]),
                       instructions=builder.MANUAL_DOWNLOAD_INSTRUCTIONS)
  return splits


class Vqav2(tfds.core.GeneratorBasedBuilder):
  """VQAv2 from manually downloaded official files."""
  name = "vqav2"
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

  def _info(self):
    return self.dataset_info_from_configs(features=vqa_features(), homepage="https://visualqa.org")

  def _split_generators(self, dl_manager):
    return vqa_split_generators(self, dl_manager, SUBSETS, QUESTIONS, ANNOTATIONS)

  @common.names_source
  def _generate_examples(self, questions, annotations, image_dir):
    yield from vqa_examples(questions, annotations, image_dir)
