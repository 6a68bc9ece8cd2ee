"""Evaluator metrics against hand-computed values and reference implementations; evaluator runs write outputs."""
import json

import numpy as np
import pytest

import data_fixtures
from auditdm_jax import evaluators
from auditdm_jax.evaluators import anls
from auditdm_jax.evaluators import cider
from auditdm_jax.evaluators import exact_match
from auditdm_jax.evaluators import refcoco
from auditdm_jax.evaluators import relaxed
from auditdm_jax.evaluators import vqa


def test_vqa_normalisation():
  assert vqa.normalize_answer("Two dogs.") == "2 dogs"
  assert vqa.normalize_answer("isnt it, the 1,000") == "isn't it 1000"
  assert vqa.normalize_answer("  an apple\n") == "apple"
  assert vqa.normalize_answer("left-hand side") == "left hand side"
  assert vqa.normalize_answer("3.5") == "3.5"
  assert vqa.normalize_answer("Dont!") == "don't"


@pytest.mark.parametrize("matches,want", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_leave_one_out(matches, want):
  answers = ["cat"] * matches + ["dog"] * (10 - matches)
  assert vqa.vqa_accuracy("The cat.", answers) == pytest.approx(want)


def test_vqa_accuracy_number_words():
  assert vqa.vqa_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
  with pytest.raises(ValueError):
    vqa.vqa_accuracy("x", [])


def test_exact_match():
  assert exact_match.exact_match(" Yes.", "yes") == 1.0
  assert exact_match.exact_match("no", "yes") == 0.0
  assert exact_match.exact_match("left  side", "Left side") == 1.0


def test_anls():
  assert anls.levenshtein("kitten", "sitting") == 3
  assert anls.anls("hello", ["helo"]) == pytest.approx(0.8)
  assert anls.anls("abc", ["xyz"]) == 0.0
  assert anls.anls("abcd", ["abxy"]) == 0.0  # distance 0.5 is not < τ
  assert anls.anls(" Hello ", ["world", "HELLO"]) == 1.0
  assert anls.anls("12/10/1998", ["12/10/1996"]) == pytest.approx(0.9)


def test_relaxed_correctness():
  assert relaxed.relaxed_correctness("10.4", "10") == 1.0
  assert relaxed.relaxed_correctness("10.6", "10") == 0.0
  assert relaxed.relaxed_correctness("5%", "0.05") == 1.0
  assert relaxed.relaxed_correctness("Yes", "yes") == 1.0
  assert relaxed.relaxed_correctness("0", "0") == 1.0
  assert relaxed.relaxed_correctness("0.0", "0") == 0.0  # a 0 answer is compared as text
  assert relaxed.relaxed_correctness("-95", "-100") == 1.0


def test_cider_equals_pycocoevalcap():
  from pycocoevalcap.cider.cider import Cider  # pylint: disable=g-import-not-at-top
  preds = ["a man riding a horse on a beach", "two dogs play in the snow", "a plate of food", "a red bus",
           "a cat sitting on a couch next to a remote"]
  refs = [["a man rides a horse along the beach", "person on horse at the sea", "a man riding a brown horse"],
          ["two dogs playing in snow", "dogs in the snow", "a couple of dogs running through snow", "two dogs"],
          ["a plate with food on it", "food on a white plate"],
          ["a red double decker bus", "a bus on the street", "red bus parked"],
          ["a cat on a couch", "a cat laying on the sofa with a remote control", "cat and remote"]]
  score, scores = cider.cider_d(preds, refs)
  want, want_scores = Cider().compute_score(dict(enumerate(refs)), {i: [p] for i, p in enumerate(preds)})
  assert score == pytest.approx(want, rel=1e-12)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-12)
  assert cider.tokenize("A man, riding a horse-drawn cart (on a beach).") == "a man riding a horse-drawn cart on a beach"
  assert cider.tokenize("\"Quoted\" sign: 3.5 cm, 1,000 m. The end.") == "quoted sign 3.5 cm 1,000 m the end"


def test_refcoco_parsing_and_iou():
  assert refcoco.parse_box("<loc0000><loc0000><loc0511><loc1023> cat") == pytest.approx((0, 0, 511 / 1023, 1))
  assert refcoco.parse_box("<loc0500><loc0000><loc0100><loc1023>") is None  # y2 < y1
  assert refcoco.parse_box("a cat") is None
  assert refcoco.box_iou((0, 0, 0.5, 0.5), (0, 0, 0.5, 1.0)) == pytest.approx(0.5)
  assert refcoco.box_iou((0, 0, 0.2, 0.2), (0.5, 0.5, 1, 1)) == 0.0
  segs = "".join(f"<seg{i:03d}>" for i in range(16))
  assert refcoco.parse_seg("<loc0000>" * 4 + segs).tolist() == list(range(16))
  gt = np.zeros((10, 10), bool)
  gt[:5, :5] = True
  full = np.ones((64, 64), np.float32)
  assert refcoco.mask_iou((0, 0, 0.5, 0.5), full, gt) == pytest.approx(1.0)
  assert refcoco.mask_iou((0, 0, 0.5, 1.0), full, gt) == pytest.approx(0.5)


def test_mask_decoder_matches_pytorch(tmp_path):
  torch = pytest.importorskip("torch")
  nn = torch.nn
  torch.manual_seed(0)

  class Res(nn.Module):
    def __init__(self):
      super().__init__()
      self.net = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1),
                               nn.ReLU(), nn.Conv2d(128, 128, 1))

    def forward(self, x):
      return x + self.net(x)

  emb = 8
  decoder = nn.Sequential(nn.Conv2d(emb, 128, 1), nn.ReLU(), Res(), Res(),
                          nn.ConvTranspose2d(128, 128, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(128, 64, 4, 2, 1),
                          nn.ReLU(), nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
                          nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 1, 1))
  codebook = torch.randn(128, emb)
  arrays = {f"decoder.{k}": v.numpy() for k, v in decoder.state_dict().items()}
  arrays["_vq_vae._embedding"] = codebook.numpy()
  path = str(tmp_path / "vae.npz")
  np.savez(path, **arrays)
  indices = np.random.RandomState(0).randint(0, 128, (2, 16)).astype(np.int32)
  with torch.no_grad():
    x = codebook[torch.as_tensor(indices.reshape(-1), dtype=torch.long)].reshape(2, 4, 4, emb).permute(0, 3, 1, 2)
    want = decoder(x)[:, 0].numpy()
  got = refcoco.load_mask_decoder(path)(indices)
  assert got.shape == (2, 64, 64)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_evaluator_lookup():
  assert evaluators.get("vqa") is vqa.Evaluator
  assert evaluators.get("auditdm_jax.evaluators.anls") is anls.Evaluator
  with pytest.raises(ValueError, match="unknown evaluator type 'nope'"):
    evaluators.get("nope")


@pytest.fixture(scope="module")
def vqav2_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("evaldata")
  data_fixtures.build("vqav2", str(root / "manual"), str(root / "data"))
  return str(root / "data")


def test_vqa_evaluator_run_writes_predictions_and_metrics(vqav2_dir, tmp_path):
  # Question i (ids 1000, 2000, 3000) has the fixture answers VQA_ANSWERS[i]; predict "2", "no", "blue".
  canned = {1000: "2", 2000: "no", 3000: "blue"}

  def predict_fn(params, batch):
    assert params == "params" and batch["image"].shape[1:] == (8, 8, 3)
    return [canned[int(q)] for q in batch["question_id"]]

  ev = evaluators.get("vqa")(predict_fn, data={"name": "vqav2", "split": "validation", "data_dir": vqav2_dir},
                             pp_fn='decode|resize(8)|keep("image", "question_id", "question", "answers")',
                             batch_size=2, outdir=str(tmp_path), name="vqav2_val")
  metrics = ev.run("params")
  # "2" vs 8x"2"/"two" (all normalise to "2") + 2 others... answers: 2,two,2,2,3,2,two,2,2,2 -> 9 match -> 1.0;
  # "no" vs 10x"yes" -> 0; "blue" vs 3 of 10 -> 0.9. Mean 1.9 / 3.
  assert metrics["vqav2_val/acc"] == pytest.approx(1.9 / 3)
  assert metrics["vqav2_val/num_examples"] == 3
  rows = [json.loads(l) for l in open(tmp_path / "vqav2_val.predictions.jsonl")]
  assert sorted(r["question_id"] for r in rows) == [1000, 2000, 3000]
  assert {r["prediction"] for r in rows} == {"2", "no", "blue"}
  assert json.load(open(tmp_path / "vqav2_val.metrics.json")) == metrics


def test_evaluator_pp_must_keep_fields(vqav2_dir):
  ev = evaluators.get("vqa")(lambda p, b: ["x"] * 2, data={"name": "vqav2", "split": "validation",
                                                            "data_dir": vqav2_dir},
                             pp_fn='keep("question_id")', batch_size=2)
  with pytest.raises(ValueError, match=r"pp_fn must keep \['question', 'answers'\]"):
    ev.run(None)
