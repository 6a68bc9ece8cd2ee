"""SFT of a Gemma3 target on CPU: the `gemma3_chat_tokens` pp op, and a tiny random gemma3_tiny fine-tuned on a
tiny JSONL dataset with configs/gemma3/rectify.py (loss decreases, checkpoint written, predictions produced)."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from auditdm_jax import config as config_lib
from auditdm_jax import metrics as metrics_lib
from auditdm_jax.data import pp as pp_lib
from auditdm_jax.models import tokenizer as tokenizer_lib
from auditdm_jax.train import sft

QA = [("what color is it?", "red"), ("what shape is it?", "a circle"), ("how many?", "two"), ("is it big?", "yes")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("g3sft")
  texts = [f"user model {q} {a}" for q, a in QA] * 10
  tok = tokenizer_lib.train(str(root / "tok.model"), texts, vocab_size=120,
                            special=("\n\n", "\n") + tokenizer_lib.GEMMA3_SPECIAL)
  assert tok.vocab_size <= 253  # Below the tiny model's <start_of_image>/<end_of_image>/placeholder ids.
  rows = []
  for i, (q, a) in enumerate(QA):
    Image.fromarray(np.full((12, 12, 3), 60 * i, np.uint8)).save(root / f"{i}.png")
    rows.append({"image": f"{i}.png", "question": q, "answer": a})
  (root / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return root, tok


def test_gemma3_chat_tokens_masks(setup):
  root, tok = setup
  op = pp_lib.get_preprocess_fn(f'gemma3_chat_tokens(model="{root}/tok.model", image_token_id=255, '
                                f'num_image_tokens=4, answer="answer")')
  out = op({"question": tf.constant("how many?"), "answer": tf.constant("two")})
  text, loss = out["text"].numpy(), out["mask_loss"].numpy()
  assert (out["mask_ar"].numpy() == 1).all() and (out["mask_input"].numpy() == 1).all()
  assert int((text == 255).sum()) == 4 and text[0] == tok.bos_id
  eot = tok.piece_id("<end_of_turn>")
  assert tok.decode(text[loss == 1].tolist()[:-1]) == "two" and text[loss == 1][-1] == eot
  prompt = tokenizer_lib.gemma3_chat([{"role": "user", "content": [{"type": "image"}, "how many?"]}],
                                     num_image_tokens=4)
  assert text[loss == 0].tolist() == tokenizer_lib.encode_gemma3(tok, prompt, 255)
  # Without an answer: the sampling prompt, no loss.
  op = pp_lib.get_preprocess_fn(f'gemma3_chat_tokens(model="{root}/tok.model", image_token_id=255, '
                                f'num_image_tokens=4)')
  out = op({"question": tf.constant("how many?")})
  assert out["text"].numpy().tolist() == text[loss == 0].tolist() and out["mask_loss"].numpy().sum() == 0


def test_rectify_config_paper_values():
  c = config_lib.load("configs/gemma3/rectify.py:tokenizer=/t.model,model_init=/hf,extra_jsonl=/g.jsonl")
  assert (c.input.batch_size, c.lr, c.total_epochs, c.model.variant, c.model.res) == (512, 2e-6, 1, "gemma3_4b", 896)
  assert c.model_init == "/hf" and [d["jsonl"] for d in c.input.data] == ["/g.jsonl"]
  assert "image_token_id=262144, num_image_tokens=256" in c.input.pp
  assert c.model.llm.scan_layers and c.model.img.scan


def test_gemma3_tiny_sft(setup):
  root, _ = setup
  c = config_lib.load(f"configs/gemma3/rectify.py:tiny,tokenizer={root}/tok.model,extra_jsonl={root}/gen.jsonl,"
                      f"eval_jsonl={root}/gen.jsonl,batch_size=8")
  c.total_steps = 6
  workdir = str(root / "run")
  results = sft.train(c, workdir)
  rows = [r for r in metrics_lib.read(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]
  assert [r["step"] for r in rows] == list(range(1, 7))
  assert all(np.isfinite(r["loss"]) for r in rows) and rows[-1]["loss"] < rows[0]["loss"]
  assert "6" in os.listdir(os.path.join(workdir, "checkpoints"))
  assert results["eval/num_examples"] == 4
  preds = [json.loads(l) for l in open(os.path.join(workdir, "evals", "step_0000006", "eval.predictions.jsonl"))]
  assert len(preds) == 4 and all(isinstance(p["prediction"], str) for p in preds)


def test_rectify_sft_config_picks_family():
  import ml_collections  # pylint: disable=g-import-not-at-top
  from auditdm_jax.audit import rectify  # pylint: disable=g-import-not-at-top
  rc = ml_collections.ConfigDict(dict(mix=0.5, steps=3, lr=1e-5, wd=0.0, batch_size=8, text_len=300))
  spec = lambda v, r: dict(model=dict(variant=v, res=r, llm={}, img={}), model_init=None, tokenizer="/t.model")
  g3 = rectify.sft_config(spec("gemma3_4b", 896), [], "/g.jsonl", rc)
  assert "gemma3_chat_tokens(" in g3.input.pp and "image_token_id=262144" in g3.input.pp
  pg = rectify.sft_config(spec("paligemma2_3b", 224), [], "/g.jsonl", rc)
  assert "gemma3" not in pg.input.pp and 'strfmt("answer en {question}"' in pg.input.pp
