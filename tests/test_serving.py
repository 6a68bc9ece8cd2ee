"""The answer server (`auditdm_jax.serving`): OpenAI-compatible round trips equal the in-process greedy answers,
concurrent load gets only 200/429, and malformed requests get 4xx JSON without hurting the server."""
import base64
import concurrent.futures
import contextlib
import io
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from auditdm_jax import httpserve
from auditdm_jax.audit import answerers
from auditdm_jax.models import tokenizer as tokenizer_lib
from auditdm_jax.models.loading import load_vlm
from auditdm_jax.serving import chat
from auditdm_jax.serving import model as model_lib
from auditdm_jax.serving import server

QUESTIONS = ["what color is the circle?", "how many stars are there?", "is the square blue?", "what shape is red?",
             "where is the star?", "what size is it?"]
PROMPT_LEN = 40


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return tokenizer_lib.train(str(tmp_path_factory.mktemp("tok") / "t.model"), QUESTIONS * 20, vocab_size=1400)


@pytest.fixture(scope="module")
def paligemma(tok):
  return load_vlm(dict(variant="paligemma2_tiny", res=32, llm=dict(vocab_size=tok.vocab_size)), seed=3)


def _images(n, seed=0):
  return list(np.random.default_rng(seed).integers(0, 256, (n, 24, 40, 3)).astype(np.uint8))


@contextlib.contextmanager
def _serve(cfg, params, tok, **settings):
  model = model_lib.AnswerModel(cfg, params, tok, prompt_len=PROMPT_LEN, max_batch_size=4)
  app = server.create_app(server.Settings(model_name="tiny", limits=chat.Limits(max_tokens=32), **settings), model)
  with httpserve.serve_in_thread(app) as url:
    yield url


@pytest.mark.slow  # ~60 s on 2 busy cores: compiles the in-process and the served decoders.
def test_round_trip_equals_in_process_greedy_answers(paligemma, tok):
  cfg, params = paligemma
  images = _images(len(QUESTIONS))
  local = answerers.VLMAnswerer("local", cfg, params, tok, max_new_tokens=5, batch_size=8, prompt_len=PROMPT_LEN)
  expected = local.answer(images, QUESTIONS)
  with _serve(cfg, params, tok, batch_wait_ms=50) as url:
    remote = answerers.HttpAnswerer("served", url + "/v1", "tiny", max_tokens=5, instruction="", concurrency=6)
    assert remote.answer(images, QUESTIONS) == expected
    assert remote.stats["failures"] == 0 and remote.stats["requests"] == len(QUESTIONS)
    assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "tiny"
    # A shorter max_tokens equals decoding alone with that budget, though it may share a batch with longer ones.
    short = answerers.VLMAnswerer("short", cfg, params, tok, max_new_tokens=2, batch_size=8, prompt_len=PROMPT_LEN)
    body = remote.request_body(images[0], QUESTIONS[0])
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      two, five = pool.map(lambda m: httpx.post(url + "/v1/chat/completions", json=dict(body, max_tokens=m),
                                                    timeout=120).json(),
                           (2, 5))
    assert answerers.message_text(two) == short.answer(images[:1], QUESTIONS[:1])[0]
    assert answerers.message_text(five) == expected[0]
    assert two["object"] == "chat.completion" and two["choices"][0]["message"]["role"] == "assistant"
    assert two["usage"]["completion_tokens"] <= 2 and two["usage"]["prompt_tokens"] > 0
    assert two["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.slow
def test_gemma3_round_trip(tok):
  cfg, params = load_vlm(dict(variant="gemma3_tiny", res=32, llm=dict(vocab_size=tok.vocab_size)), seed=4)
  images = _images(3, seed=1)
  local = answerers.VLMAnswerer("local", cfg, params, tok, prompt_fn=model_lib.PROMPTS["gemma3"], max_new_tokens=4,
                                batch_size=4, prompt_len=PROMPT_LEN)
  with _serve(cfg, params, tok) as url:
    remote = answerers.HttpAnswerer("served", url + "/v1", "tiny", max_tokens=4, instruction="", concurrency=3)
    assert remote.answer(images, QUESTIONS[:3]) == local.answer(images, QUESTIONS[:3])


class _Slow:
  """The real model, made slow enough that 50 simultaneous requests overflow a small queue."""

  def __init__(self, model):
    self.model = model

  def prompt_tokens(self, text):
    return self.model.prompt_tokens(text)

  def run_jobs(self, jobs):
    time.sleep(0.2)
    return self.model.run_jobs(jobs)


@pytest.mark.slow
def test_50_concurrent_requests_get_only_200_or_429(paligemma, tok):
  cfg, params = paligemma
  model = _Slow(model_lib.AnswerModel(cfg, params, tok, prompt_len=PROMPT_LEN, max_batch_size=4))
  app = server.create_app(server.Settings(model_name="tiny", max_queue=6, max_batch_size=4, batch_wait_ms=5), model)
  body = answerers.HttpAnswerer("x", "http://unused/v1", "tiny", max_tokens=3, instruction="").request_body(
      _images(1)[0], QUESTIONS[1])
  with httpserve.serve_in_thread(app) as url, httpx.Client(timeout=120) as client:
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
      responses = list(pool.map(lambda _: client.post(url + "/v1/chat/completions", json=body), range(50)))
  codes = [r.status_code for r in responses]
  assert set(codes) == {200, 429}, codes
  answers = {answerers.message_text(r.json()) for r in responses if r.status_code == 200}
  assert len(answers) == 1  # Greedy: the same question gets the same answer in every batch.
  busy = [r for r in responses if r.status_code == 429]
  assert all(r.headers["retry-after"] == "1" and r.json()["error"]["code"] == 429 for r in busy)


def _png_url(rgb=(255, 0, 0)):
  buf = io.BytesIO()
  Image.fromarray(np.full((8, 8, 3), rgb, np.uint8)).save(buf, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _body(**overrides):
  body = {"model": "tiny", "max_tokens": 3, "temperature": 0.0, "messages": [{"role": "user", "content": [
      {"type": "image_url", "image_url": {"url": _png_url()}}, {"type": "text", "text": "what color?"}]}]}
  body.update(overrides)
  return body


def _content(*parts):
  return [{"role": "user", "content": list(parts)}]


TEXT = {"type": "text", "text": "what color?"}
MALFORMED = {
    "bad JSON": (b"{not json", "not valid JSON", 400),
    "not an object": ([1, 2], "JSON object", 400),
    "missing messages": (_body(messages=None) | {"messages": None}, "`messages` must be a non-empty list", 400),
    "no messages field": ({"model": "tiny"}, "`messages` must be a non-empty list", 400),
    "bad base64": (_body(messages=_content({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}},
                                           TEXT)), "not valid base64", 400),
    "not an image": (_body(messages=_content({"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(b"hello").decode()}}, TEXT)), "could not be decoded", 400),
    "remote image": (_body(messages=_content({"type": "image_url", "image_url": {"url": "http://x/y.png"}}, TEXT)),
                     "data URL", 400),
    "no image": (_body(messages=_content(TEXT)), "exactly one image", 400),
    "two images": (_body(messages=_content({"type": "image_url", "image_url": {"url": _png_url()}},
                                           {"type": "image_url", "image_url": {"url": _png_url()}}, TEXT)),
                   "exactly one image", 400),
    "no text": (_body(messages=_content({"type": "image_url", "image_url": {"url": _png_url()}})), "no text", 400),
    "messages a string": (_body(messages="hi"), "`messages` must be a non-empty list", 400),
    "content an int": (_body(messages=[{"role": "user", "content": 7}]), "must be a string or a non-empty list", 400),
    "assistant turn": (_body(messages=[{"role": "assistant", "content": "x"}]), "`messages[0].role`", 400),
    "max_tokens a string": (_body(max_tokens="5"), "`max_tokens` must be an integer", 400),
    "huge max_tokens": (_body(max_tokens=10**9), "`max_tokens` must be in [1, 32]", 400),
    "temperature a string": (_body(temperature="hot"), "`temperature` must be a finite number", 400),
    "negative temperature": (_body(temperature=-1), "`temperature` must be in", 400),
    "n > 1": (_body(n=2), "`n` must be the integer 1", 400),
    "n true": (_body(n=True), "`n` must be the integer 1", 400),
    "model null": (_body(model=None), "`model` must be a non-empty string", 400),
    "lone surrogate": (json.dumps(_body(messages=_content({"type": "image_url", "image_url": {"url": _png_url()}},
                                                          {"type": "text", "text": "\ud800 what?"}))).encode(),
                       "not valid Unicode", 400),
    "too deep": (b"[" * 50_000 + b"]" * 50_000, "not valid JSON", 400),
    "stream": (_body(stream=True), "`stream` is not supported", 400),
    "unknown field": (_body(logit_bias={}), "unknown field(s) ['logit_bias']", 400),
    "question too long": (_body(messages=_content({"type": "image_url", "image_url": {"url": _png_url()}},
                                                  {"type": "text", "text": "what color? " * 40})), "too long", 400),
    "unknown model": (_body(model="gpt-4o"), "does not exist", 404),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_get_4xx_json(malformed_server, case):
  url, client = malformed_server
  body, message, status = MALFORMED[case]
  kw = dict(content=body) if isinstance(body, bytes) else dict(json=body)
  r = client.post(url + "/v1/chat/completions", headers={"Authorization": "Bearer s3cret"}, **kw)
  assert r.status_code == status, r.text
  assert message in r.json()["error"]["message"] and r.json()["error"]["code"] == status


@pytest.fixture(scope="module")
def malformed_server(paligemma, tok):
  cfg, params = paligemma
  with _serve(cfg, params, tok, token="s3cret") as url, httpx.Client(timeout=60) as client:
    yield url, client
    # Still answering after every malformed request.
    ok = client.post(url + "/v1/chat/completions", json=_body(), headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and isinstance(answerers.message_text(ok.json()), str)


def test_bearer_token_is_required(malformed_server):
  url, client = malformed_server
  for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
    r = client.post(url + "/v1/chat/completions", json=_body(), headers=headers)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert r.headers["www-authenticate"] == "Bearer"
  assert client.get(url + "/v1/models").status_code == 401
  unknown = client.get(url + "/v1/completions")
  assert unknown.status_code == 404 and unknown.json()["error"]["code"] == 404
  assert client.get(url + "/healthz").json()["model"] == "tiny"


def test_parse_request_defaults_and_aliases():
  job = chat.parse_request({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [
      {"type": "image_url", "image_url": _png_url((0, 0, 255))}, {"type": "text", "text": "what color?"}]}],
      "max_completion_tokens": 7}, chat.Limits())
  assert (job.text, job.max_tokens, job.temperature, job.top_p) == ("be brief\nwhat color?", 7, 1.0, 1.0)
  assert job.image.shape == (8, 8, 3) and tuple(job.image[0, 0]) == (0, 0, 255)
  with pytest.raises(httpserve.InvalidRequest, match="not both"):
    chat.parse_request(_body(max_completion_tokens=3), chat.Limits())


class _Echo:
  """A stand-in model (no JAX): answers "<text> <image height>"."""

  def prompt_tokens(self, text):
    return len(text.split())

  def run_jobs(self, jobs):
    return [model_lib.Answer(f"{j.text} {j.image.shape[0]}", "stop", 1, 1) for j in jobs]


def test_http_answerer_rides_out_a_server_that_is_down_then_starts():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  up, stop = threading.Event(), threading.Event()
  app = server.create_app(server.Settings(model_name="echo"), _Echo())

  def late_server():
    time.sleep(1.0)
    with httpserve.serve_in_thread(app, port=port):
      up.set()
      stop.wait()

  thread = threading.Thread(target=late_server, daemon=True)
  thread.start()
  try:
    remote = answerers.HttpAnswerer("echo", f"http://127.0.0.1:{port}/v1", "echo", instruction="", retries=10,
                                    backoff=0.2, max_backoff=2.0)
    answers = remote.answer(_images(3), QUESTIONS[:3])
  finally:
    stop.set()
    thread.join(timeout=20)
  assert up.is_set() and answers == [f"{q} 24" for q in QUESTIONS[:3]]
  assert remote.stats["retries"] >= 3 and remote.stats["failures"] == 0


def test_message_text_accepts_string_or_text_parts():
  as_parts = {"choices": [{"message": {"content": [{"type": "text", "text": " blue"}, {"type": "text", "text": "!"}]}}]}
  assert answerers.message_text(as_parts) == "blue!"
  with pytest.raises(TypeError):
    answerers.message_text({"choices": [{"message": {"content": None}}]})
