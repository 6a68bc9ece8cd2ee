"""The OpenAI-compatible HTTP answerer against a fake local chat-completions server."""
import base64
import http.server
import io
import json
import threading

import numpy as np
import pytest
from PIL import Image

from auditdm_jax import images
from auditdm_jax.audit import answerers


class _FakeOpenAI(http.server.BaseHTTPRequestHandler):
  """Answers with the dominant colour of the image; fails the first request of each question with 503."""
  seen = {}
  bodies = []

  def do_POST(self):  # noqa: N802 (http.server API)
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    type(self).bodies.append(body)
    content = body["messages"][0]["content"]
    url = next(c["image_url"]["url"] for c in content if c["type"] == "image_url")
    text = next(c["text"] for c in content if c["type"] == "text")
    if "broken" in text:
      return self._send(400, {"error": "bad request"})
    key = text
    type(self).seen[key] = type(self).seen.get(key, 0) + 1
    if "flaky" in text and type(self).seen[key] == 1:
      return self._send(503, {"error": "busy"})
    assert url.startswith("data:image/png;base64,")
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
    colour = ["red", "green", "blue"][int(image.reshape(-1, 3).mean(0).argmax())]
    self._send(200, {"choices": [{"message": {"role": "assistant", "content": f" {colour}\n"}}]})

  def _send(self, code, obj):
    data = json.dumps(obj).encode()
    self.send_response(code)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, *args):
    pass


@pytest.fixture(scope="module")
def server():
  srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
  srv.shutdown()


def _solid(rgb):
  return np.full((8, 8, 3), rgb, np.uint8)


def test_http_answerer_round_trip_and_retry(server):
  ans = answerers.HttpAnswerer("qwen", server, model="qwen2.5-vl", backoff=0.01, concurrency=4)
  images = [_solid((200, 0, 0)), _solid((0, 0, 200)), np.zeros((8, 8, 3), np.float32) + [-1, 1, -1]]
  out = ans.answer(images, ["what colour?", "flaky: what colour?", "what colour now?"])
  assert out == ["red", "blue", "green"]
  assert ans.failures == 0
  body = _FakeOpenAI.bodies[-1]
  assert body["model"] == "qwen2.5-vl" and body["temperature"] == 0.0
  assert answerers.SHORT_ANSWER in body["messages"][0]["content"][1]["text"]


def test_http_answerer_failure_is_none_not_crash(server):
  ans = answerers.HttpAnswerer("qwen", server, model="m", backoff=0.01, retries=1)
  assert ans.answer([_solid((1, 2, 3))], ["broken question"]) == [None]
  dead = answerers.HttpAnswerer("dead", "http://127.0.0.1:9/v1", model="m", backoff=0.01, retries=1, timeout=1.0)
  assert dead.answer([_solid((1, 2, 3))], ["q?"]) == [None]
  assert dead.failures == 1


def test_ensemble_and_validation():
  ens = answerers.Ensemble([answerers.FunctionAnswerer("a", lambda im, q: ["x"] * len(q)),
                            answerers.FunctionAnswerer("b", lambda im, q: ["y"] * len(q))])
  assert ens.answer([_solid(0)] * 2, ["q", "q"]) == [["x", "x"], ["y", "y"]]
  with pytest.raises(ValueError, match="unique"):
    answerers.Ensemble([answerers.FunctionAnswerer("a", None)] * 2)
  with pytest.raises(ValueError, match="2 images but 1"):
    ens.answer([_solid(0)] * 2, ["q"])
  with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
    images.to_uint8(np.zeros((4, 4)))
