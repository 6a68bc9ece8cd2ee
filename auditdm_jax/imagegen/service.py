"""HTTP image service: FLUX text-to-image and FLUX-Kontext editing behind FastAPI.

Endpoints (JSON in, JSON out; images travel as base64 PNG):
  POST /v1/generate  {prompt, seed, steps?, guidance?, height?, width?}
  POST /v1/edit      {image, instruction, seed, steps?, guidance?, area?}; the output keeps the source's aspect
                     ratio at about `area` pixels (default Settings.edit_area)
  GET  /healthz      liveness + loaded modes (no auth)
  GET  /metrics      Prometheus text; `?format=json` for JSON (counts, latencies, batch sizes, queue depth)
Answers: 200 {image, height, width, seed, mode}; 400 malformed request (message names the field); 401 bad or
missing bearer token; 429 queue full (Retry-After); 503 mode not loaded / shutting down; 504 request timeout;
500 pipeline failure. A request without height/width gets the default size clipped to --max-side / max_pixels.

A request's job is cancelled when its client disconnects or its timeout passes: dropped from the queue, or, once
running, its pipeline call is interrupted at the next denoising step when every job of the batch is gone. One
SIGINT / SIGTERM shuts the service down at once: queued and running requests get 503, the running batch stops.

Requests wait in one bounded queue; a worker thread takes the oldest job plus every queued job with the same
(mode, size, steps, guidance), up to `max_batch_size`, waiting at most `batch_wait_ms` for more, and runs them in
one pipeline call (engine.Engine.run_jobs). Per-item seeds make the batched images equal the unbatched ones.
"""
import asyncio
import base64
import binascii
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import hmac
import io as _io
import logging
import math
import socket
import threading
import time

from PIL import Image

from auditdm_jax.imagegen import engine as engine_lib
from auditdm_jax.imagegen.errors import InvalidRequest, QueueFull, Unavailable

log = logging.getLogger(__name__)
_REQUIRED = object()


@dataclasses.dataclass
class Settings:
  """Service limits and defaults (all overridable from `auditdm serve-images`)."""
  host: str = "127.0.0.1"  # Loopback unless asked: the service has no rate limiting per client.
  port: int = 8000
  token: str | None = None  # Bearer token required on /v1/* and /metrics when set.
  max_queue: int = 64  # Jobs waiting (not yet running); beyond it requests get 429.
  max_batch_size: int = 4
  batch_wait_ms: float = 20.0
  request_timeout_s: float = 600.0  # Queue wait + compute; 504 after it.
  max_steps: int = 100
  max_guidance: float = 30.0
  max_side: int = 2048
  max_pixels: int = 2048 * 2048
  max_text_chars: int = 2000
  max_image_bytes: int = 32 << 20
  max_source_pixels: int = 4096 * 4096
  default_steps: int = 28
  default_guidance: float = 3.5  # FLUX.1-dev's default.
  default_edit_guidance: float = 2.5  # FLUX.1-Kontext-dev's default.
  default_size: int = 1024
  edit_area: int = 1024 * 1024  # Kontext was trained around 1 megapixel.


# ----------------------------------------------------------------------------------------------- validation


def _field(body, name, kind, default=_REQUIRED, lo=None, hi=None):
  if name not in body:
    if default is _REQUIRED:
      raise InvalidRequest(f"`{name}` is required")
    return default
  value = body[name]
  if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
    raise InvalidRequest(f"`{name}` must be an integer, got {value!r}")
  if kind is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      raise InvalidRequest(f"`{name}` must be a finite number, got {value!r}")
    value = float(value)
  if kind is str and (not isinstance(value, str) or not value.strip()):
    raise InvalidRequest(f"`{name}` must be a non-empty string")
  if (lo is not None and value < lo) or (hi is not None and value > hi):
    raise InvalidRequest(f"`{name}` must be in [{lo}, {hi}], got {value}")
  return value


def _check_fields(body, allowed):
  if not isinstance(body, dict):
    raise InvalidRequest("the body must be a JSON object")
  unknown = sorted(set(body) - set(allowed))
  if unknown:
    raise InvalidRequest(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def _text(body, name, settings):
  text = _field(body, name, str)
  if len(text) > settings.max_text_chars:
    raise InvalidRequest(f"`{name}` has {len(text)} characters; the limit is {settings.max_text_chars}")
  return text


def default_side(settings, multiple):
  """The side of a request without height/width: default_size, within max_side and max_pixels."""
  side = min(settings.default_size, settings.max_side, math.isqrt(settings.max_pixels))
  return max(multiple, side // multiple * multiple)


def _side(body, name, settings, multiple):
  side = _field(body, name, int, default_side(settings, multiple), multiple, settings.max_side)
  if side % multiple:
    raise InvalidRequest(f"`{name}` must be a multiple of {multiple} (VAE factor x 2 for latent packing), got {side}")
  return side


def parse_generate(body, settings, multiple):
  """Validates a /v1/generate body -> engine.Job. Raises InvalidRequest naming the bad field."""
  _check_fields(body, ("prompt", "seed", "steps", "guidance", "height", "width"))
  prompt = _text(body, "prompt", settings)
  seed = _field(body, "seed", int, lo=0, hi=2**63 - 1)
  steps = _field(body, "steps", int, settings.default_steps, 1, settings.max_steps)
  guidance = _field(body, "guidance", float, settings.default_guidance, 0.0, settings.max_guidance)
  height, width = _side(body, "height", settings, multiple), _side(body, "width", settings, multiple)
  if height * width > settings.max_pixels:
    raise InvalidRequest(f"height x width = {height * width} pixels; the limit is {settings.max_pixels}")
  return engine_lib.Job(mode="generate", text=prompt, seed=seed, steps=steps, guidance=guidance, height=height,
                        width=width)


def decode_image(data, settings):
  """base64 (optionally a `data:` URL) -> RGB PIL image; InvalidRequest on anything that is not an image."""
  if not isinstance(data, str) or not data:
    raise InvalidRequest("`image` must be a base64-encoded image string")
  if data.startswith("data:"):
    data = data.partition(",")[2]
  if len(data) * 3 // 4 > settings.max_image_bytes:
    raise InvalidRequest(f"`image` is larger than {settings.max_image_bytes} bytes")
  try:
    raw = base64.b64decode(data, validate=True)
  except (binascii.Error, ValueError) as e:
    raise InvalidRequest(f"`image` is not valid base64: {e}") from None
  try:
    image = Image.open(_io.BytesIO(raw))
    if image.width * image.height > settings.max_source_pixels:  # Checked on the header, before decoding pixels.
      raise InvalidRequest(f"`image` has {image.width}x{image.height} pixels; the limit is "
                           f"{settings.max_source_pixels}")
    return image.convert("RGB")
  except InvalidRequest:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise InvalidRequest(f"`image` could not be decoded as an image: {e}") from None


def parse_edit(body, settings, multiple):
  """Validates a /v1/edit body -> engine.Job with the source resized to the output size."""
  _check_fields(body, ("image", "instruction", "seed", "steps", "guidance", "area"))
  instruction = _text(body, "instruction", settings)
  seed = _field(body, "seed", int, lo=0, hi=2**63 - 1)
  steps = _field(body, "steps", int, settings.default_steps, 1, settings.max_steps)
  guidance = _field(body, "guidance", float, settings.default_edit_guidance, 0.0, settings.max_guidance)
  area = _field(body, "area", int, settings.edit_area, multiple * multiple, settings.max_pixels)
  image = decode_image(body.get("image"), settings)
  height, width = engine_lib.edit_size(image.width, image.height, area, multiple)
  if height > settings.max_side or width > settings.max_side:
    raise InvalidRequest(f"the edit output would be {width}x{height} (aspect ratio of the source at `area`="
                         f"{area}); a side is over the limit {settings.max_side}")
  if image.size != (width, height):
    image = image.resize((width, height), Image.LANCZOS)
  return engine_lib.Job(mode="edit", text=instruction, seed=seed, steps=steps, guidance=guidance, height=height,
                        width=width, image=image)


PARSERS = {"generate": parse_generate, "edit": parse_edit}


# -------------------------------------------------------------------------------------------------- metrics


class Metrics:
  """Thread-safe request/batch counters with a window of recent latencies for quantiles."""

  def __init__(self, window=2048):
    self._lock = threading.Lock()
    self.requests = collections.Counter()  # (mode, status) -> count
    self.latency = collections.defaultdict(functools.partial(collections.deque, maxlen=window))
    self.latency_total = collections.Counter()  # mode -> seconds
    self.images = collections.Counter()  # mode -> images the pipelines produced (cache hits never get here)
    self.batches = collections.Counter()  # mode -> micro-batches run
    self.batch_seconds = collections.Counter()

  def __getstate__(self):  # Ray Serve pickles the app, and so its Metrics, to ship it to the ingress replica.
    return {k: v for k, v in self.__dict__.items() if k != "_lock"}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def request(self, mode, status, seconds):
    with self._lock:
      self.requests[(mode, status)] += 1
      if status == 200:
        self.latency[mode].append(seconds)
        self.latency_total[mode] += seconds

  def batch(self, mode, size, seconds):
    with self._lock:
      self.images[mode] += size
      self.batches[mode] += 1
      self.batch_seconds[mode] += seconds

  def batch_member(self, mode, size, seconds):
    """One image that ran in a batch of `size` taking `seconds` (batches counted as 1/size each: the Ray ingress
    sees images one by one, and a full batch still adds up to one)."""
    with self._lock:
      self.images[mode] += 1
      self.batches[mode] += 1 / size
      self.batch_seconds[mode] += seconds / size

  def snapshot(self, queue_depth=None, in_flight=None):
    """JSON-ready dict of every counter, with latency mean/p50/p95 over the recent window per mode."""
    with self._lock:
      latency = {}
      for mode, window in self.latency.items():
        s, count = sorted(window), self.requests[(mode, 200)]
        latency[mode] = {"count": count, "mean": self.latency_total[mode] / count,
                         "p50": s[len(s) // 2], "p95": s[min(len(s) - 1, int(0.95 * len(s)))]}
      return {
          "requests": {f"{m}/{st}": n for (m, st), n in sorted(self.requests.items())},
          "images": dict(self.images), "batches": {m: round(v, 6) for m, v in self.batches.items()},
          "mean_batch_size": {m: round(self.images[m] / self.batches[m], 6) for m in self.batches},
          "batch_seconds": dict(self.batch_seconds), "latency_s": latency,
          "queue_depth": queue_depth, "in_flight": in_flight,
      }

  def prometheus(self, queue_depth=None, in_flight=None):
    """Prometheus text exposition (0.0.4) of the same numbers."""
    p = "auditdm_imagegen_"
    with self._lock:
      lines = [f"# TYPE {p}requests_total counter"]
      lines += [f'{p}requests_total{{mode="{m}",status="{st}"}} {n}' for (m, st), n in sorted(self.requests.items())]
      for name, counter in (("images_total", self.images), ("batches_total", self.batches),
                            ("batch_seconds_total", self.batch_seconds)):
        lines.append(f"# TYPE {p}{name} counter")
        lines += [f'{p}{name}{{mode="{m}"}} {v}' for m, v in sorted(counter.items())]
      lines.append(f"# TYPE {p}request_seconds summary")
      for mode, window in sorted(self.latency.items()):
        s = sorted(window)
        for q in (0.5, 0.95):
          lines.append(f'{p}request_seconds{{mode="{mode}",quantile="{q}"}} {s[min(len(s) - 1, int(q * len(s)))]}')
        lines.append(f'{p}request_seconds_sum{{mode="{mode}"}} {self.latency_total[mode]}')
        lines.append(f'{p}request_seconds_count{{mode="{mode}"}} {self.requests[(mode, 200)]}')
    for name, value in (("queue_depth", queue_depth), ("in_flight", in_flight)):
      if value is not None:
        lines += [f"# TYPE {p}{name} gauge", f"{p}{name} {value}"]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------------- batching


class _Entry:
  __slots__ = ("job", "future", "abandoned")

  def __init__(self, job):
    self.job, self.future, self.abandoned = job, concurrent.futures.Future(), False


class Batcher:
  """A bounded queue and one worker thread running micro-batches of compatible jobs through `run_jobs`.

  Args:
    run_jobs: (list[Job], should_stop) -> list[PNG bytes | Exception] (engine.Engine.run_jobs).
  """

  def __init__(self, run_jobs, metrics, max_queue=64, max_batch_size=4, batch_wait_s=0.02):
    self.run_jobs, self.metrics = run_jobs, metrics
    self.max_queue, self.max_batch_size, self.batch_wait_s = max_queue, max_batch_size, batch_wait_s
    self._pending = collections.deque()
    self._cond = threading.Condition()
    self._closed = False
    self._running = []
    self.in_flight = 0
    self._thread = threading.Thread(target=self._loop, name="imagegen-batcher", daemon=True)
    self._thread.start()

  def queue_depth(self):
    with self._cond:
      return len(self._pending)

  def submit(self, job):
    """Enqueues `job`; returns a concurrent Future of its PNG bytes. Raises QueueFull / Unavailable."""
    entry = _Entry(job)
    with self._cond:
      if self._closed:
        raise Unavailable("the service is shutting down")
      if len(self._pending) >= self.max_queue:
        raise QueueFull(f"{len(self._pending)} requests are queued (limit {self.max_queue}); retry later")
      self._pending.append(entry)
      self._cond.notify_all()
    return entry.future

  def abandon(self, future):
    """Nobody waits for `future` any more (client gone, timed out): a queued job is dropped; a running batch is
    interrupted once all of its jobs are abandoned."""
    future.cancel()  # Succeeds while queued.
    with self._cond:
      for entry in self._running:
        if entry.future is future:
          entry.abandoned = True

  def close(self):
    """Refuses new jobs, fails the queued ones and interrupts the running batch (503 for all). Idempotent."""
    with self._cond:
      self._closed = True
      pending, self._pending = list(self._pending), collections.deque()
      self._cond.notify_all()
    for entry in pending:
      if entry.future.set_running_or_notify_cancel():
        entry.future.set_exception(Unavailable("the service shut down before this request ran"))
    self._thread.join(timeout=5)

  def _next_batch(self):
    """Blocks until a job is queued; returns it plus the compatible jobs queued within batch_wait_s (None: closed)."""
    with self._cond:
      while True:
        self._pending = collections.deque(e for e in self._pending if not e.future.cancelled())  # Timed out.
        if self._closed:
          return None
        if self._pending:
          break
        self._cond.wait()
      key = self._pending[0].job.batch_key
      deadline = time.monotonic() + self.batch_wait_s
      while True:
        batch = [e for e in self._pending if e.job.batch_key == key and not e.future.cancelled()]
        remaining = deadline - time.monotonic()
        if len(batch) >= self.max_batch_size or remaining <= 0 or self._closed:
          break
        self._cond.wait(remaining)
      batch = batch[:self.max_batch_size]
      taken = set(map(id, batch))
      self._pending = collections.deque(e for e in self._pending if id(e) not in taken)
      return [e for e in batch if e.future.set_running_or_notify_cancel()]

  def _loop(self):
    while (batch := self._next_batch()) is not None:
      if not batch:
        continue
      with self._cond:
        self._running = batch
      self.in_flight = len(batch)
      start, stopped = time.perf_counter(), []

      def should_stop(batch=batch, stopped=stopped):
        if self._closed or all(e.abandoned for e in batch):
          stopped.append(True)
        return bool(stopped)
      try:
        results = self.run_jobs([e.job for e in batch], should_stop=should_stop)
      except Exception as e:  # pylint: disable=broad-except
        log.exception("batch failed")
        results = [e] * len(batch)
      if stopped:  # Interrupted: the images are unfinished.
        log.info("batch of %d stopped (%s)", len(batch), "shutting down" if self._closed else "abandoned")
        results = [Unavailable("the request was cancelled before its image was finished")] * len(batch)
      with self._cond:
        self._running = []
      done = sum(not isinstance(r, BaseException) for r in results)
      self.metrics.batch(batch[0].job.mode, done, time.perf_counter() - start)
      self.in_flight = 0
      for entry, result in zip(batch, results):
        if isinstance(result, BaseException):
          entry.future.set_exception(result)
        else:
          entry.future.set_result(result)


class LocalBackend:
  """The in-process backend: an Engine behind a Batcher."""

  def __init__(self, engine, settings, metrics):
    self.engine = engine
    self.batcher = Batcher(engine.run_jobs, metrics, settings.max_queue, settings.max_batch_size,
                           settings.batch_wait_ms / 1000)

  async def submit(self, job):
    future = self.batcher.submit(job)
    try:
      return await asyncio.wrap_future(future)
    except asyncio.CancelledError:  # Client gone or timed out (see create_app): stop the work too.
      self.batcher.abandon(future)
      raise

  def queue_depth(self):
    return self.batcher.queue_depth()

  def in_flight(self):
    return self.batcher.in_flight

  def close(self):
    self.batcher.close()


# ------------------------------------------------------------------------------------------------------- app

_STATUS = {InvalidRequest: 400, QueueFull: 429, Unavailable: 503}
CLIENT_GONE = 499  # Logged for requests whose client disconnected (nginx's code); never sent.


class _ClientGone(Exception):
  pass


async def _unless_gone(request, coroutine, timeout_s, poll_s=0.2):
  """Awaits `coroutine`, cancelling it when the client disconnects (_ClientGone) or after `timeout_s`
  (asyncio.TimeoutError)."""
  task = asyncio.ensure_future(coroutine)
  deadline = time.monotonic() + timeout_s
  try:
    while True:
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        raise asyncio.TimeoutError
      done, _ = await asyncio.wait({task}, timeout=min(poll_s, remaining))
      if done:
        return task.result()
      if await request.is_disconnected():
        raise _ClientGone
  finally:
    task.cancel()  # A no-op once done.


def create_app(settings, multiples, backend, metrics=None):
  """The FastAPI app.

  Args:
    settings: Settings.
    multiples: {mode: pixel multiple} for the loaded modes (engine.pipeline_multiple); other modes answer 503.
    backend: object with `async submit(job) -> PNG bytes`, `queue_depth()`, `in_flight()` (None when unknown)
      and `close()`: LocalBackend here, ray_serve.RayBackend for Ray Serve.
    metrics: Metrics shared with the backend (a new one if None).
  """
  import fastapi  # pylint: disable=g-import-not-at-top
  from fastapi import responses  # pylint: disable=g-import-not-at-top

  @contextlib.asynccontextmanager
  async def lifespan(app):
    yield
    app.state.backend.close()

  app = fastapi.FastAPI(title="auditdm image service", lifespan=lifespan)
  app.state.backend, app.state.metrics = backend, metrics or Metrics()

  def authorized(request):
    if not settings.token:
      return True
    given = request.headers.get("authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode())

  def error(status, message, **headers):
    return responses.JSONResponse({"error": message}, status_code=status, headers=headers or None)

  async def handle(request, mode):
    start, status = time.perf_counter(), 500
    try:
      if not authorized(request):
        status = 401
        return error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
      try:
        body = await request.json()
      except ValueError:
        raise InvalidRequest("the body is not valid JSON") from None
      if mode not in multiples:
        raise Unavailable(f"no {mode} pipeline is loaded (start the service with --"
                          f"{'flux' if mode == 'generate' else 'kontext'}-dir)")
      job = await asyncio.to_thread(PARSERS[mode], body, settings, multiples[mode])
      png = await _unless_gone(request, app.state.backend.submit(job), settings.request_timeout_s)
      status = 200
      return responses.JSONResponse({"image": base64.b64encode(png).decode("ascii"), "height": job.height,
                                     "width": job.width, "seed": job.seed, "mode": mode})
    except _ClientGone:
      status = CLIENT_GONE
      return error(status, "the client disconnected")
    except asyncio.TimeoutError:
      status = 504
      return error(504, f"no result within the request timeout of {settings.request_timeout_s} s")
    except (InvalidRequest, QueueFull, Unavailable) as e:
      status = next(code for cls, code in _STATUS.items() if isinstance(e, cls))
      return error(status, str(e), **({"Retry-After": "1"} if status in (429, 503) else {}))
    except Exception as e:  # pylint: disable=broad-except
      log.exception("%s request failed", mode)
      return error(500, f"{type(e).__name__}: {e}")
    finally:
      app.state.metrics.request(mode, status, time.perf_counter() - start)

  @app.post("/v1/generate")
  async def generate(request: fastapi.Request):
    return await handle(request, "generate")

  @app.post("/v1/edit")
  async def edit(request: fastapi.Request):
    return await handle(request, "edit")

  @app.get("/healthz")
  async def healthz():
    return {"status": "ok", "modes": sorted(multiples), "queue_depth": app.state.backend.queue_depth()}

  @app.get("/metrics")
  async def metrics_endpoint(request: fastapi.Request, format: str = "prometheus"):  # pylint: disable=redefined-builtin
    if not authorized(request):
      return error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
    gauges = dict(queue_depth=app.state.backend.queue_depth(), in_flight=app.state.backend.in_flight())
    if format == "json":
      return app.state.metrics.snapshot(**gauges)
    return responses.PlainTextResponse(app.state.metrics.prometheus(**gauges),
                                       media_type="text/plain; version=0.0.4")

  return app


def build_local_app(settings, flux_dir=None, kontext_dir=None, device=None, dtype=None, max_sequence_length=512,
                    share_encoders=False):
  """Loads the pipelines (engine.Engine.load) and returns the app served by one process (no Ray)."""
  engine = engine_lib.Engine.load(flux_dir, kontext_dir, device, dtype, max_sequence_length, share_encoders)
  multiples = {mode: engine_lib.pipeline_multiple(d)
               for mode, d in (("generate", flux_dir), ("edit", kontext_dir)) if d}
  metrics = Metrics()
  return create_app(settings, multiples, LocalBackend(engine, settings, metrics), metrics)


def bind(host, port):
  """A socket bound to host:port, made before the pipelines load so that a busy port fails in a second, not after
  minutes of loading. Raises OSError naming the address."""
  try:
    return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
  except OSError as e:
    raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror} (another service there? pick --port)",
                  f"{host}:{port}") from None


def make_server(app, host="127.0.0.1", port=0, log_level="warning", **kwargs):
  """A uvicorn server whose first SIGINT / SIGTERM also closes the app's backend, so the requests that wait for
  a running pipeline get 503 at once instead of holding the shutdown until they finish."""
  import uvicorn  # pylint: disable=g-import-not-at-top

  class Server(uvicorn.Server):

    def handle_exit(self, sig, frame):
      # In a thread: closing joins the worker, which may need one more denoising step to notice.
      threading.Thread(target=app.state.backend.close, name="imagegen-close", daemon=True).start()
      super().handle_exit(sig, frame)

  return Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, **kwargs))


def serve(app, settings, sock=None):
  """Serves `app` on settings.host:settings.port (or the already bound `sock`) until SIGINT / SIGTERM."""
  if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.token:
    log.warning("serving on %s without a bearer token: anyone who can reach the port can use the GPUs",
                settings.host)
  server = make_server(app, settings.host, settings.port, log_level="info", timeout_keep_alive=30,
                       timeout_graceful_shutdown=30)
  server.run(sockets=[sock] if sock is not None else None)


@contextlib.contextmanager
def serve_in_thread(app, host="127.0.0.1", port=0):
  """Serves `app` from a background thread; yields its base URL (port 0 picks a free port). The server is
  `app.state.server` (tests call its `handle_exit` as a signal would)."""
  server = app.state.server = make_server(app, host, port)
  thread = threading.Thread(target=server.run, name="imagegen-uvicorn", daemon=True)
  thread.start()
  deadline = time.monotonic() + 30
  while not server.started:
    if not thread.is_alive() or time.monotonic() > deadline:
      raise RuntimeError(f"the image service did not start on {host}:{port}")
    time.sleep(0.01)
  bound = server.servers[0].sockets[0].getsockname()[1]
  try:
    yield f"http://{host}:{bound}"
  finally:
    server.should_exit = True
    thread.join(timeout=10)
