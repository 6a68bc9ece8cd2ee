"""TFDS builders built from tiny fixture files in each benchmark's official format."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

import data_fixtures
from auditdm_jax.data.builders import common

EXPECTED = {  # name -> ({split: num_examples}, fields of one example)
    "vqav2": ({"train": 3, "validation": 3}, {"question_id", "question", "answers", "image", "image/id"}),
    "okvqa": ({"train": 3, "validation": 3}, {"question_id", "question", "answers", "image"}),
    "gqa": ({"train": 3, "validation": 2}, {"question_id", "question", "answer", "full_answer", "image"}),
    "ai2d": ({"train": 6, "test": 2}, {"question_id", "question", "answer", "possible_answers", "image"}),
    "docvqa": ({"train": 3, "validation": 2, "test": 1}, {"question_id", "question", "answers", "image"}),
    "chartqa": ({"train_human": 2, "train_augmented": 3, "val_human": 2, "val_augmented": 3, "test_human": 2,
                 "test_augmented": 3}, {"question_id", "question", "answer", "image"}),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("builders")
  return {name: data_fixtures.build(name, str(root / "manual" / name), str(root / "data"))
          for name in EXPECTED}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builder_splits_and_fields(built, name):
  splits, fields = EXPECTED[name]
  builder = built[name]
  assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == splits
  ex = next(iter(tfds.as_numpy(builder.as_dataset(split=sorted(splits)[0]))))
  assert fields <= set(ex)
  assert ex["image"].shape == (12, 16, 3) and ex["image"].dtype == np.uint8


def _examples(builder, split):
  return sorted(tfds.as_numpy(builder.as_dataset(split=split)), key=lambda e: str(e["question_id"]))


def test_vqav2_content(built):
  ex = _examples(built["vqav2"], "validation")
  assert [e["question_id"] for e in ex] == [1000, 2000, 3000]
  assert [a.decode() for a in ex[0]["answers"]] == data_fixtures.VQA_ANSWERS[0]
  assert ex[2]["question"] == b"what is shown 2?" and ex[2]["image/id"] == 102
  assert ex[2]["multiple_choice_answer"] == b"red"


def test_ai2d_split_and_answer(built):
  test = _examples(built["ai2d"], "test")
  assert {e["image/id"] for e in test} == {b"3"}
  by_id = {e["question_id"].decode(): e for e in test}
  assert by_id["3.png-0"]["answer"] == b"adult" and by_id["3.png-0"]["answer_index"] == 3
  assert by_id["3.png-1"]["abc_label"] and by_id["3.png-1"]["answer"] == b"B"


def test_docvqa_and_chartqa_content(built):
  val = _examples(built["docvqa"], "validation")
  assert [a.decode() for a in val[1]["answers"]] == ["11/12/1998", "december 11"]
  assert len(_examples(built["docvqa"], "test")[0]["answers"]) == 0
  human = _examples(built["chartqa"], "test_human")
  assert [e["answer"] for e in human] == [b"1", b"11"]
  both = built["chartqa"].as_dataset(split="train_human+train_augmented")
  assert sum(1 for _ in both) == 5


def test_gqa_content(built):
  val = _examples(built["gqa"], "validation")
  assert [(e["answer"], e["full_answer"]) for e in val] == [(b"no", b"No, it is not."), (b"yes", b"Yes, it is.")]


def test_missing_manual_files_error(tmp_path):
  from auditdm_jax.data import builders  # noqa: F401  pylint: disable=unused-import
  (tmp_path / "manual").mkdir()
  (tmp_path / "manual" / "unrelated.txt").write_text("x")  # TFDS itself rejects an empty manual dir
  builder = tfds.builder("vqav2", data_dir=str(tmp_path / "data"))
  with pytest.raises(common.ManualDataError, match=r"v2_OpenEnded_mscoco_train2014_questions.json.*Expected layout"):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
  data_fixtures.write_vqav2(str(tmp_path / "manual2"))
  (tmp_path / "manual2" / "val2014" / "COCO_val2014_000000000101.jpg").unlink()
  builder = tfds.builder("vqav2", data_dir=str(tmp_path / "data2"))
  with pytest.raises(Exception, match="COCO_val2014_000000000101.jpg"):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual2")))


@pytest.mark.parametrize("name, damage, message", [
    ("vqav2", lambda m: (m / "v2_mscoco_val2014_annotations.json").write_text('{"annotations": [{"quest'),
     "invalid JSON"),
    ("vqav2", lambda m: (m / "v2_mscoco_val2014_annotations.json").write_text('{"foo": []}'),
     "malformed annotations: KeyError: 'annotations'"),
    ("chartqa", lambda m: (m / "val" / "val_human.json").write_text('[{"imgname": "human0.png", "query": "q"}]'),
     "malformed annotations: KeyError: 'label'"),
])
def test_malformed_annotations_name_the_file(tmp_path, name, damage, message):
  from auditdm_jax import errors  # pylint: disable=g-import-not-at-top
  manual = tmp_path / "manual"
  getattr(data_fixtures, f"write_{name}")(str(manual))
  damage(manual)
  builder = tfds.builder(name, data_dir=str(tmp_path / "data"))
  with pytest.raises(errors.InputError, match=message) as e:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  assert str(e.value.path).startswith(str(manual)), e.value.path


def test_refcoco_flat_transform():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from auditdm_jax.data.builders import catalog  # pylint: disable=g-import-not-at-top
  # The structure TFDS ref_coco yields: one image, objects with boxes, masks and nested referring expressions.
  example = {
      "image": tf.constant(b"jpeg-bytes"), "image/id": tf.constant(7, tf.int64),
      "objects": {"bbox": tf.constant([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 1.0, 1.0]]),
                  "mask": tf.zeros([2, 4, 5, 3], tf.uint8),
                  "refexp": {"raw": tf.ragged.constant([["left cat", "small cat"], ["the dog"]])}}}
  ds = catalog.TRANSFORMS["refcoco_flat"](tf.data.Dataset.from_tensors(example))
  out = list(ds.as_numpy_iterator())
  assert [o["refexp"] for o in out] == [b"left cat", b"small cat", b"the dog"]
  np.testing.assert_allclose(out[2]["bbox"], [0.5, 0.5, 1.0, 1.0])
  assert out[0]["mask"].shape == (4, 5, 1) and out[1]["image/id"] == 7
