"""Tiny fixture files in the benchmarks' official distribution formats (shared by the data tests)."""
import json
import os

import numpy as np
from PIL import Image


def _image(path, seed, size=(16, 12), fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.RandomState(seed)
  Image.fromarray(rng.randint(0, 255, (size[1], size[0], 3), np.uint8)).save(path, format=fmt)


def _json(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


VQA_ANSWERS = [["2", "two", "2", "2", "3", "2", "two", "2", "2", "2"], ["yes"] * 10, ["red"] * 7 + ["blue"] * 3]


def write_vqa(root, questions_fmt, annotations_fmt, subsets=(("train2014", 3), ("val2014", 3))):
  """VQAv2 / OK-VQA format: questions + annotations JSON and COCO_<subset>_<id:012d>.jpg images."""
  for subset, n in subsets:
    qs, anns = [], []
    for i in range(n):
      image_id, qid = 100 + i, 1000 * (i + 1)
      _image(f"{root}/{subset}/COCO_{subset}_{image_id:012d}.jpg", i, fmt="JPEG")
      qs.append({"image_id": image_id, "question": f"what is shown {i}?", "question_id": qid})
      answers = VQA_ANSWERS[i % 3]
      anns.append({"question_id": qid, "image_id": image_id, "question_type": "what", "answer_type": "other",
                   "multiple_choice_answer": answers[0],
                   "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                               for j, a in enumerate(answers)]})
    _json(f"{root}/{questions_fmt.format(subset)}", {"questions": qs, "data_subtype": subset})
    _json(f"{root}/{annotations_fmt.format(subset)}", {"annotations": anns, "data_subtype": subset})


def write_vqav2(root):
  write_vqa(root, "v2_OpenEnded_mscoco_{}_questions.json", "v2_mscoco_{}_annotations.json")


def write_okvqa(root):
  write_vqa(root, "OpenEnded_mscoco_{}_questions.json", "mscoco_{}_annotations.json")


def write_gqa(root):
  for name, n in (("train_balanced_questions.json", 3), ("val_balanced_questions.json", 2)):
    qs = {}
    for i in range(n):
      image_id = f"n{len(name)}{i}"
      _image(f"{root}/images/{image_id}.jpg", i, fmt="JPEG")
      qs[f"{name[:3]}{i}"] = {"imageId": image_id, "question": f"is it red {i}?", "answer": "yes" if i % 2 else "no",
                             "fullAnswer": "Yes, it is." if i % 2 else "No, it is not.", "types": {}}
    _json(f"{root}/{name}", qs)


def write_ai2d(root):
  for n in range(4):
    _image(f"{root}/images/{n}.png", n)
    _json(f"{root}/questions/{n}.png.json", {"imageName": f"{n}.png", "questions": {
        f"which stage {n}?": {"abcLabel": False, "answerTexts": ["egg", "larva", "pupa", "adult"],
                              "correctAnswer": n % 4, "questionId": f"{n}.png-0"},
        f"what eats {n}?": {"abcLabel": True, "answerTexts": ["A", "B"], "correctAnswer": 1,
                            "questionId": f"{n}.png-1"}}})
  with open(f"{root}/ai2d_test_ids.csv", "w") as f:
    f.write("3\n")


def write_docvqa(root):
  for folder, n, answers in (("train", 3, True), ("val", 2, True), ("test", 1, False)):
    data = []
    for i in range(n):
      _image(f"{root}/{folder}/documents/doc{i}_1.png", i)
      d = {"questionId": 50 + i, "question": f"what is the date {i}?", "image": f"documents/doc{i}_1.png",
           "docId": i, "question_types": ["form"]}
      if answers:
        d["answers"] = [f"1{i}/12/1998", f"december 1{i}"]
      data.append(d)
    _json(f"{root}/{folder}/{folder}_v1.0_withQT.json", {"dataset_name": "docvqa", "dataset_split": folder,
                                                          "data": data})


def write_chartqa(root):
  for folder in ("train", "val", "test"):
    for kind, n in (("human", 2), ("augmented", 3)):
      rows = []
      for i in range(n):
        _image(f"{root}/{folder}/png/{kind}{i}.png", i)
        rows.append({"imgname": f"{kind}{i}.png", "query": f"what is the value {i}?", "label": str(10 * i + 1)})
      _json(f"{root}/{folder}/{folder}_{kind}.json", rows)


WRITERS = {"vqav2": write_vqav2, "okvqa": write_okvqa, "gqa": write_gqa, "ai2d": write_ai2d,
           "docvqa": write_docvqa, "chartqa": write_chartqa}


def build(name, manual_dir, data_dir):
  """Writes the fixture files for `name` into manual_dir and prepares the TFDS dataset into data_dir."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from auditdm_jax.data import builders  # pylint: disable=g-import-not-at-top,unused-import
  WRITERS[name](manual_dir)
  builder = tfds.builder(name, data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder
