"""The real-model system wiring: tiny PaliGemma auditor/target/reference + an HTTP reference + a generator."""
import http.server
import json
import os
import sys
import threading

import ml_collections
import numpy as np
import pytest
from PIL import Image

from auditdm_jax.audit import prompts
from auditdm_jax.audit import rectify
from auditdm_jax.audit import trainer
from auditdm_jax.worlds.vlm import system as vlm_system
from auditdm_jax.models import tokenizer as tokenizer_lib

sys.path.insert(0, os.path.dirname(__file__))
from test_audit_answerers import _FakeOpenAI  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.mark.slow
def test_vlm_system_edit_mode_with_http_reference(tmp_path):
  srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
  threading.Thread(target=srv.serve_forever, daemon=True).start()
  tok_path = str(tmp_path / "t.model")
  tokenizer_lib.train(tok_path, ["how many red circles?", "make it blue"] * 20 +
                      [prompts.get(k, b) for k in prompts.PROMPTS for b in (0, 1)], vocab_size=1400)
  os.makedirs(tmp_path / "imgs")
  rows = []
  for i in range(4):
    Image.fromarray(np.full((40, 40, 3), (60 * i, 0, 200 - 40 * i), np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    rows.append(json.dumps({"image": f"imgs/{i}.png", "question": "what color?"}) + "\n")
  (tmp_path / "pool.jsonl").write_text("".join(rows))
  tiny = dict(variant="paligemma2_tiny", res=32, llm=dict(vocab_size=1400), init="")
  sc = ml_collections.ConfigDict(dict(
      module="auditdm_jax.worlds.vlm.system", tokenizer=tok_path, auditor=tiny, target=tiny,
      references=[dict(tiny, name="ref_jax"),
                  dict(kind="http", name="ref_http", base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1",
                       model="m")],
      generator=dict(name="identity"), images=str(tmp_path / "pool.jsonl"), eval_images="", batch_size=2,
      eval_batches=1, prompt_len=64, max_new_tokens=6, temperature=1.0, top_p=1.0, answer_tokens=3))
  system = vlm_system.build(sc, str(tmp_path))
  assert len(system.pool) == 2 and system.pool[1]["question"].tolist() == ["what color?"] * 2
  config = ml_collections.ConfigDict(dict(mode="edit", group_size=2, max_words=32,
                                          reward=dict(threshold=0.5, soft_agreement=False, partial_credit=0.0,
                                                      format_penalty=0.5, diversity=0.5)))
  assert [system.type_fn(q) for q in ("What color is it?", "How many cats?", "?")] == ["what color", "how many",
                                                                                     "empty"]
  n_before = len(_FakeOpenAI.bodies)
  result, samples = trainer.evaluate(system, system.params, config)
  srv.shutdown()
  assert result["num_samples"] == 4
  asked = [s for s in samples if s.well_formed and s.valid]
  assert len(_FakeOpenAI.bodies) - n_before == len(asked)
  assert all(set(s.reference_answers) == {"ref_jax", "ref_http"} for s in asked)
  assert all(s.question == "what color?" for s in samples)


@pytest.mark.slow
def test_vlm_system_rectifies_its_target(tmp_path):
  """`auditdm rectify` on the real-model world: the tiny target is fine-tuned from the very weights audited and
  evaluated before and after on a labelled JSONL; the next iteration's system audits the rectified weights."""
  tok_path = str(tmp_path / "t.model")
  tokenizer_lib.train(tok_path, ["what color is it?", "red", "blue"] * 20 +
                      [prompts.get(k, b) for k in prompts.PROMPTS for b in (0, 1)], vocab_size=1400)
  os.makedirs(tmp_path / "imgs")
  rows = []
  for i in range(4):
    Image.fromarray(np.full((32, 32, 3), (200 * (i % 2), 0, 200 * (1 - i % 2)), np.uint8)).save(
        tmp_path / "imgs" / f"{i}.png")
    rows.append(json.dumps({"image": f"imgs/{i}.png", "question": "what color is it?",
                            "answer": "red" if i % 2 else "blue", "id": f"r{i}"}) + "\n")
  (tmp_path / "labelled.jsonl").write_text("".join(rows))
  tiny = dict(variant="paligemma2_tiny", res=32, llm=dict(vocab_size=1400), init="")
  sc = ml_collections.ConfigDict(dict(
      module="auditdm_jax.worlds.vlm.system", tokenizer=tok_path, auditor=tiny, target=tiny,
      references=[dict(tiny, name="ref_jax")], generator=dict(name="identity"),
      images=str(tmp_path / "labelled.jsonl"), eval_images="", batch_size=2, eval_batches=1, prompt_len=64,
      max_new_tokens=4, temperature=1.0, top_p=1.0, answer_tokens=3,
      target_train=str(tmp_path / "labelled.jsonl"), target_eval=str(tmp_path / "labelled.jsonl")))
  system = vlm_system.build(sc, str(tmp_path))
  hooks = system.rectification
  assert os.path.exists(hooks.target_spec["model_init"])  # The random tiny target, saved to start from.
  assert hooks.original_data == [dict(jsonl=str(tmp_path / "labelled.jsonl"), weight=1.0)]
  config = ml_collections.ConfigDict(dict(rectify=dict(dataset="", mix=0.5, steps=2, lr=1e-3, wd=0.0, batch_size=8,
                                                       text_len=16, log_every=1)))
  out = rectify.rectify(config, str(tmp_path / "rect"), system, str(tmp_path / "labelled.jsonl"))
  assert out["generated_pairs"] == 4 and out["before"]["num"] == out["after"]["num"] == 4
  assert 0.0 <= out["after"]["accuracy"] <= 1.0 and os.path.exists(out["target_npz"])
  rectified = hooks.with_target(out["target_npz"])
  assert rectified.rectification.target_spec["model_init"] == out["target_npz"]
  assert rectified.rectification.evaluate_target(None) == out["after"]
