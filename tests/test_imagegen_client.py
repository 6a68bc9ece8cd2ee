"""The client (retries, backoff, cache, per-item errors) and the service's backpressure, auth and timeouts, against
the real app and Batcher with a scripted engine (fast and controllable: it can block, stall or fail on cue)."""
import concurrent.futures
import signal
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from auditdm_jax import httpserve
from auditdm_jax.imagegen import engine as engine_lib
from auditdm_jax.imagegen import get_generator, service
from auditdm_jax.imagegen.errors import GenerationError


class ScriptedEngine(engine_lib.Engine):
  """Engine whose `run` paints each job's seed into a solid image; `gate` blocks it, `stall_s` delays the first
  call, and the text "boom" raises (so Engine.run_jobs' failure isolation runs for real). Like the pipelines it
  checks `should_stop` as it goes (every 10 ms) and returns early when told (counted in `stopped`)."""

  def __init__(self, stall_s=0.0):
    super().__init__({})
    self.gate = threading.Event()
    self.gate.set()
    self.stall_s, self.calls, self.stopped = stall_s, 0, 0

  def run(self, jobs, should_stop=None):
    self.calls += 1
    deadline = time.monotonic() + (self.stall_s if self.calls == 1 else 0.0)
    while time.monotonic() < deadline or not self.gate.wait(0.01):
      if should_stop is not None and should_stop():
        self.stopped += 1
        break
      time.sleep(0.01)
    if any(j.text == "boom" for j in jobs):
      raise RuntimeError("the pipeline exploded")
    return [Image.new("RGB", (j.width, j.height), (j.seed % 256, 7, 9)) for j in jobs]


@pytest.fixture
def make_server():
  """make_server(engine, **settings) -> base URL of the real app over `engine` (all stopped after the test)."""
  with __import__("contextlib").ExitStack() as stack:

    def make(engine, **kwargs):
      settings = service.Settings(**{"batch_wait_ms": 0, "default_size": 8, **kwargs})
      metrics = service.Metrics()
      app = service.create_app(settings, {"generate": 2, "edit": 2},
                               service.LocalBackend(engine, settings, metrics), metrics)
      return stack.enter_context(httpserve.serve_in_thread(app))

    yield make


def _metrics(url, token=None):
  headers = {"Authorization": f"Bearer {token}"} if token else {}
  return httpx.get(url + "/metrics", params={"format": "json"}, headers=headers).json()


def _wait_for(predicate, timeout=20):
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, "condition not reached"
    time.sleep(0.01)


def test_full_queue_answers_429_then_drains(make_server):
  engine = ScriptedEngine()
  engine.gate.clear()
  url = make_server(engine, max_queue=2, max_batch_size=1)
  post = lambda seed: httpx.post(url + "/v1/generate", json=dict(prompt="x", seed=seed), timeout=30)
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    running = pool.submit(post, 0)
    _wait_for(lambda: _metrics(url)["in_flight"] == 1)
    queued = [pool.submit(post, s) for s in (1, 2)]
    _wait_for(lambda: _metrics(url)["queue_depth"] == 2)
    rejected = post(3)
    assert rejected.status_code == 429 and rejected.headers["retry-after"] == "1"
    assert "limit 2" in rejected.json()["error"]
    engine.gate.set()
    assert [f.result().status_code for f in [running] + queued] == [200, 200, 200]
  assert _metrics(url)["requests"]["generate/429"] == 1


def test_client_retries_429_until_the_queue_drains(make_server):
  engine = ScriptedEngine()
  engine.gate.clear()
  url = make_server(engine, max_queue=1, max_batch_size=1)
  gen = get_generator("flux-http", url=url, concurrency=4, max_retries=8, backoff_s=0.05, max_backoff_s=0.2,
                      height=8, width=8)
  threading.Timer(0.5, engine.gate.set).start()
  images = gen.generate(["a", "b", "c", "d"], [1, 2, 3, 4])
  assert [int(im[0, 0, 0]) for im in images] == [1, 2, 3, 4]
  assert gen.stats["retries"] >= 1 and _metrics(url)["requests"].get("generate/429", 0) >= 1


def test_timeout_gives_504_and_the_client_retry_succeeds(make_server):
  engine = ScriptedEngine(stall_s=1.0)
  url = make_server(engine, request_timeout_s=0.3)
  gen = get_generator("flux-http", url=url, max_retries=5, backoff_s=0.05, max_backoff_s=1.5, height=8, width=8)
  [image] = gen.generate(["a cat"], [42])
  assert image.shape == (8, 8, 3) and image[0, 0, 0] == 42
  counts = _metrics(url)["requests"]
  assert counts["generate/504"] >= 1 and counts["generate/200"] == 1 and gen.stats["retries"] >= 1
  assert engine.stopped == 1  # The timed-out request's pipeline call was interrupted, not run to the end.


def test_client_side_timeout_is_retried(make_server):
  url = make_server(ScriptedEngine(stall_s=1.0))
  gen = get_generator("flux-http", url=url, max_retries=4, backoff_s=0.05, timeout_s=0.4, height=8, width=8)
  [image] = gen.generate(["a cat"], [9])
  assert image[0, 0, 0] == 9 and gen.stats["retries"] >= 1


def test_one_failing_item_does_not_fail_the_batch(make_server):
  url = make_server(ScriptedEngine(), max_batch_size=4, batch_wait_ms=100)
  gen = get_generator("flux-http", url=url, max_retries=1, backoff_s=0.01, height=8, width=8)
  out = gen.generate(["ok", "boom", "fine", ""], [1, 2, 3, 4])
  assert out[0][0, 0, 0] == 1 and out[2][0, 0, 0] == 3
  assert isinstance(out[1], GenerationError) and out[1].status == 500 and out[1].attempts == 2
  assert "the pipeline exploded" in str(out[1]) and "after 2 attempts" in str(out[1])
  # A 400 is not transient: no retry, and the message names the field.
  assert isinstance(out[3], GenerationError) and out[3].status == 400 and out[3].attempts == 1
  assert "`prompt` must be a non-empty string" in str(out[3])
  bad = gen.edit([np.zeros((4, 4, 3), np.float32), np.zeros((4, 6, 3), np.uint8)], ["x", "y"], [0, 1])
  assert isinstance(bad[0], GenerationError) and "uint8" in str(bad[0]) and bad[1].shape[2] == 3


def test_unreachable_service_gives_errors_after_retries():
  gen = get_generator("flux-http", url="http://127.0.0.1:9", max_retries=2, backoff_s=0.01)
  out = gen.generate(["a", "b"], 0)
  assert all(isinstance(e, GenerationError) and e.attempts == 3 and e.status is None for e in out)
  assert "failed after 3 attempts" in str(out[0]) and "ConnectError" in str(out[0])


def test_cache_prevents_duplicate_work(make_server, tmp_path):
  url = make_server(ScriptedEngine(), max_batch_size=4, batch_wait_ms=20)
  kw = dict(url=url, cache_dir=str(tmp_path / "cache"), height=8, width=8, edit_area=64)
  src = [np.full((4, 4, 3), 5, np.uint8), np.full((4, 4, 3), 6, np.uint8)]
  gen = get_generator("flux-http", **kw)
  gen.generate(["a", "b", "a"], [1, 2, 1])
  gen.edit(src, ["x", "x"], [1, 1])  # Same instruction and seed, different source pixels: two images.
  assert _metrics(url)["images"] == {"generate": 2, "edit": 2}
  rerun = get_generator("flux-http", **kw)  # A rerun (new process, same cache) regenerates nothing.
  out = rerun.generate(["a", "b", "a", "c"], [1, 2, 1, 1]) + rerun.edit(src[::-1], ["x", "x"], [1, 1])
  assert _metrics(url)["images"] == {"generate": 3, "edit": 2}
  assert rerun.stats["cache_hits"] == 4 and rerun.stats["images"] == 1  # ("a", 1) twice in one call: one lookup.
  assert [int(o[0, 0, 0]) for o in out] == [1, 2, 1, 1, 1, 1]
  other = get_generator("flux-http", **dict(kw, width=16)).generate(["a"], [1])  # Other params: another entry.
  assert other[0].shape == (8, 16, 3) and _metrics(url)["images"]["generate"] == 4


def test_bearer_token(make_server):
  url = make_server(ScriptedEngine(), token="s3cret")
  body = dict(prompt="x", seed=1)
  assert httpx.post(url + "/v1/generate", json=body).status_code == 401
  wrong = httpx.post(url + "/v1/generate", json=body, headers={"Authorization": "Bearer nope"})
  assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
  assert httpx.post(url + "/v1/generate", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
  assert httpx.get(url + "/metrics").status_code == 401 and httpx.get(url + "/healthz").status_code == 200
  assert _metrics(url, "s3cret")["requests"]["generate/401"] == 2
  denied = get_generator("flux-http", url=url, height=8, width=8).generate(["x"], [1])[0]
  assert isinstance(denied, GenerationError) and denied.status == 401
  assert get_generator("flux-http", url=url, token="s3cret", height=8, width=8).generate(["x"], [1])[0].shape


def test_disconnected_clients_cancel_their_queued_and_running_work(make_server):
  engine = ScriptedEngine()
  engine.gate.clear()  # Never opens: only cancellation ends the work.
  url = make_server(engine, max_batch_size=1)
  give_up = lambda seed: httpx.post(url + "/v1/generate", json=dict(prompt="x", seed=seed), timeout=1.0)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    clients = [pool.submit(give_up, s) for s in (1, 2)]  # One runs, one waits in the queue.
    for c in clients:
      with pytest.raises(httpx.ReadTimeout):
        c.result()
  _wait_for(lambda: _metrics(url)["requests"].get("generate/499") == 2)
  _wait_for(lambda: _metrics(url)["in_flight"] == 0 and _metrics(url)["queue_depth"] == 0)
  assert engine.calls >= 1 and engine.stopped == engine.calls  # Every started job was interrupted.


def test_one_signal_shuts_down_with_a_job_running():
  engine = ScriptedEngine()
  engine.gate.clear()
  settings = service.Settings(batch_wait_ms=0, default_size=8, max_batch_size=1)
  metrics = service.Metrics()
  app = service.create_app(settings, {"generate": 2}, service.LocalBackend(engine, settings, metrics), metrics)
  with httpserve.serve_in_thread(app, on_exit=app.state.backend.close) as url:
    post = lambda seed: httpx.post(url + "/v1/generate", json=dict(prompt="x", seed=seed), timeout=30)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      running = pool.submit(post, 0)
      _wait_for(lambda: _metrics(url)["in_flight"] == 1)
      queued = pool.submit(post, 1)
      _wait_for(lambda: _metrics(url)["queue_depth"] == 1)
      start = time.monotonic()
      app.state.server.handle_exit(signal.SIGINT, None)  # What uvicorn calls on Ctrl-C.
      assert [f.result().status_code for f in (running, queued)] == [503, 503]
    assert time.monotonic() - start < 5 and engine.stopped == 1
    _wait_for(lambda: _refused(url))


def _refused(url):
  try:
    httpx.get(url + "/healthz", timeout=1)
  except httpx.TransportError:
    return True
  return False


def test_default_size_stays_within_max_side_and_max_pixels():
  body = dict(prompt="x", seed=0)
  assert service.parse_generate(body, service.Settings(max_side=512), 16).height == 512  # not 1024
  job = service.parse_generate(body, service.Settings(max_side=512, max_pixels=300 * 300), 16)
  assert (job.height, job.width) == (288, 288)
  assert service.parse_generate(body, service.Settings(), 16).height == 1024
  assert service.parse_generate(dict(body, width=64), service.Settings(max_side=512), 16).width == 64


def test_sync_api_refuses_to_run_inside_an_event_loop():
  import asyncio  # pylint: disable=g-import-not-at-top
  gen = get_generator("flux-http", url="http://127.0.0.1:9")

  async def call():
    return gen.generate(["x"], [0])

  with pytest.raises(RuntimeError, match="await agenerate"):
    asyncio.run(call())
