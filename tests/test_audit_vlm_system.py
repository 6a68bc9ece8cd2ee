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
from auditdm_jax.audit import trainer
from auditdm_jax.audit import vlm_system
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
      module="auditdm_jax.audit.vlm_system", tokenizer=tok_path, auditor=tiny, target=tiny,
      references=[dict(tiny, name="ref_jax"),
                  dict(kind="http", name="ref_http", base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1",
                       model="m")],
      generator=dict(name="identity"), images=str(tmp_path / "pool.jsonl"), eval_images="", batch_size=2,
      eval_batches=1, prompt_len=64, max_new_tokens=6, temperature=1.0, top_p=1.0, answer_tokens=3))
  system = vlm_system.build(sc, str(tmp_path))
  assert len(system.pool) == 2 and system.pool[1]["question"].tolist() == ["what color?"] * 2
  config = ml_collections.ConfigDict(dict(mode="edit", group_size=2, max_words=32,
                                          reward=dict(threshold=0.5, soft_agreement=False, partial_credit=0.0,
                                                      format_penalty=0.5)))
  n_before = len(_FakeOpenAI.bodies)
  result, samples = trainer.evaluate(system, system.params, config)
  srv.shutdown()
  assert result["num_samples"] == 4
  asked = [s for s in samples if s["well_formed"] and s["valid"]]
  assert len(_FakeOpenAI.bodies) - n_before == len(asked)
  assert all(set(s["reference_answers"]) == {"ref_jax", "ref_http"} for s in asked)
  assert all(s["question"] == "what color?" for s in samples)
