"""What both HTTP services share (`auditdm_jax.httpserve`): the bounded body reader, JSON errors for unknown routes,
bearer tokens, the micro-batching queue's bound and settings, and the clients' URL check."""
import collections
import threading

import httpx
import numpy as np
import pytest

from auditdm_jax import httpserve
from auditdm_jax.audit import answerers
from auditdm_jax.imagegen import client as image_client
from auditdm_jax.imagegen import service
from auditdm_jax.imagegen.errors import GenerationError
from auditdm_jax.serving import server

LIMIT = 1000


@pytest.fixture(scope="module")
def echo_url():
  """An app whose POST /echo answers the body `read_json` read (limit LIMIT bytes), behind token "tok"."""
  import fastapi  # pylint: disable=g-import-not-at-top
  app = fastapi.FastAPI()
  httpserve.route_errors(app, httpserve.error_response)

  @app.post("/echo")
  async def echo(request: fastapi.Request):
    if not httpserve.authorized(request, "tok"):
      return httpserve.error_response(401, "no")
    try:
      return {"body": await httpserve.read_json(request, LIMIT)}
    except (httpserve.InvalidRequest, httpserve.TooLarge) as e:
      return httpserve.error_response(httpserve.status_of(e), str(e))

  with httpserve.serve_in_thread(app) as url:
    yield url


def _post(url, content, scheme="Bearer", **headers):
  return httpx.post(url + "/echo", content=content, headers={"authorization": f"{scheme} tok", **headers}, timeout=30)


def test_read_json_reads_a_body_within_the_limit(echo_url):
  r = _post(echo_url, b'{"a": ["\\u00e9", 1]}')
  assert r.status_code == 200 and r.json() == {"body": {"a": ["\u00e9", 1]}}


@pytest.mark.parametrize("content, status, message", [
    (b"[" * 600 + b"]" * 600, 413, "larger than 1000 bytes"),  # Content-Length over the limit.
    (iter([b'{"a": "' + b"x" * 600, b"x" * 600 + b'"}']), 413, "larger than 1000 bytes"),  # Chunked, no length.
    (b"[" * 400 + b"]" * 400, 200, None),  # Nested, within the limit and the parser's depth.
    (b'{"a": "\\ud800 red"}', 400, "not valid Unicode"),  # A lone surrogate: valid JSON, no valid text.
    (b'{"a": ' + b"[" * 490 + b"]" * 490 + b"}", 200, None),
    (b"\xff\xfe{", 400, "not valid JSON"),
])
def test_read_json_bounds_what_it_reads(echo_url, content, status, message):
  r = _post(echo_url, content)
  assert r.status_code == status, r.text
  if message:
    assert message in r.json()["error"]


def test_too_deep_json_is_a_400_not_a_500():
  import fastapi  # pylint: disable=g-import-not-at-top
  app = fastapi.FastAPI()

  @app.post("/echo")
  async def echo(request: fastapi.Request):
    try:
      return await httpserve.read_json(request, 1 << 20)
    except httpserve.InvalidRequest as e:
      return httpserve.error_response(400, str(e))

  with httpserve.serve_in_thread(app) as url:
    r = httpx.post(url + "/echo", content=b"[" * 100_000 + b"]" * 100_000, timeout=30)
  assert r.status_code == 400 and "RecursionError" in r.json()["error"]


def test_bearer_scheme_is_case_insensitive_and_the_token_exact(echo_url):
  assert _post(echo_url, b"{}", scheme="bearer").status_code == 200
  assert _post(echo_url, b"{}", scheme="BEARER").status_code == 200
  assert _post(echo_url, b"{}", scheme="Basic").status_code == 401
  assert httpx.post(echo_url + "/echo", content=b"{}", headers={"authorization": "Bearer tok2"}).status_code == 401


def test_unknown_routes_and_methods_answer_in_the_service_error_format(echo_url):
  r = httpx.get(echo_url + "/nope")
  assert r.status_code == 404 and r.json() == {"error": "Not Found"}
  r = httpx.get(echo_url + "/echo")
  assert r.status_code == 405 and r.json() == {"error": "Method Not Allowed"} and r.headers["allow"] == "POST"


Job = collections.namedtuple("Job", "batch_key mode value")


def test_jobs_nobody_waits_for_leave_the_queue_and_its_bound():
  gate = threading.Event()
  batcher = httpserve.Batcher(lambda jobs: gate.wait() and [j.value for j in jobs], max_queue=2, max_batch_size=1,
                              batch_wait_s=0)
  try:
    running = batcher.submit(Job(0, "m", "a"))
    while not batcher.in_flight:
      gate.wait(0.01)
    queued = [batcher.submit(Job(0, "m", v)) for v in "bc"]
    with pytest.raises(httpserve.QueueFull):
      batcher.submit(Job(0, "m", "d"))
    for f in queued:  # What a timeout (asyncio.wait_for / wrap_future) does to them.
      assert f.cancel()
    assert batcher.queue_depth() == 0
    late = [batcher.submit(Job(0, "m", v)) for v in "de"]
    gate.set()
    assert running.result(10) == "a" and [f.result(10) for f in late] == ["d", "e"]
  finally:
    gate.set()
    batcher.close()


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_batch_size=0), "max_batch_size >= 1"),
    (dict(max_queue=0), "max_queue >= 1"),
    (dict(batch_wait_ms=-1), "batch_wait >= 0"),
    (dict(request_timeout_s=0), "timeout > 0"),
])
def test_queue_settings_out_of_range_fail_when_made(kwargs, message):
  for settings in (server.Settings, service.Settings):
    with pytest.raises(ValueError, match=message):
      settings(**kwargs)
  if "max_batch_size" in kwargs:
    with pytest.raises(ValueError, match=message):
      httpserve.Batcher(lambda jobs: jobs, max_batch_size=0)


def test_clients_refuse_a_url_without_scheme(monkeypatch):
  with pytest.raises(ValueError, match="must start with http"):
    answerers.HttpAnswerer("r", "127.0.0.1:8001/v1", "m")
  with pytest.raises(ValueError, match="must start with http"):
    image_client.FluxHTTPGenerator(url="127.0.0.1:8000")
  monkeypatch.setenv(answerers.TOKEN_ENV, "secret")
  remote = answerers.HttpAnswerer("r", "http://127.0.0.1:8001/v1", "m")
  assert remote._client.headers["authorization"] == "Bearer secret"  # pylint: disable=protected-access


def test_image_client_counts_sources_it_rejects_itself():
  gen = image_client.FluxHTTPGenerator(url="http://127.0.0.1:9", max_retries=0)
  out = gen.edit([np.zeros((0, 0, 3), np.uint8), "not an image"], ["x", "y"])
  assert all(isinstance(x, GenerationError) for x in out) and gen.stats["failures"] == 2
  assert gen.stats["requests"] == 0
