"""HTTP image service: FLUX text-to-image and FLUX-Kontext editing behind FastAPI.

Endpoints (JSON in, JSON out; images travel as base64 PNG):
  POST /v1/generate  {prompt, seed, steps?, guidance?, height?, width?}
  POST /v1/edit      {image, instruction, seed, steps?, guidance?, area?}; the output keeps the source's aspect
                     ratio at about `area` pixels (default Settings.edit_area)
  GET  /healthz      liveness + loaded modes (no auth)
  GET  /metrics      Prometheus text; `?format=json` for JSON (counts, latencies, batch sizes, queue depth)
Answers: 200 {image, height, width, seed, mode}; 400 malformed request (message names the field); 401 bad or missing
bearer token; 404 unknown route; 405 wrong method; 413 body too large; 429 queue full (Retry-After); 503 mode not
loaded / shutting down; 504 request timeout; 500 pipeline failure. Errors are JSON {"error": message}. A request
without height/width gets the default size clipped to --max-side / max_pixels.

A request's job is cancelled when its client disconnects or its timeout passes: dropped from the queue, or, once
running, its pipeline call is interrupted at the next denoising step when every job of the batch is gone. One
SIGINT / SIGTERM shuts the service down at once: queued and running requests get 503, the running batch stops.

Requests wait in one bounded queue; a worker thread takes the oldest job plus every queued job with the same
(mode, size, steps, guidance), up to `max_batch_size`, waiting at most `batch_wait_ms` for more, and runs them in
one pipeline call (engine.Engine.run_jobs). Per-item seeds make the batched images equal the unbatched ones.
"""
import asyncio
import base64
import collections
import contextlib
import dataclasses
import functools
import logging
import math
import threading
import time

from PIL import Image

from auditdm_jax import httpserve
from auditdm_jax.httpserve import InvalidRequest, QueueFull, Unavailable
from auditdm_jax.imagegen import engine as engine_lib

log = logging.getLogger(__name__)


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
  max_body_bytes: int = 48 << 20  # An edit's base64 source (max_image_bytes) and its fields; beyond it 413.

  def __post_init__(self):
    httpserve.check_queue(self.max_queue, self.max_batch_size, self.batch_wait_ms / 1000, self.request_timeout_s)


# ----------------------------------------------------------------------------------------------- validation


def _text(body, name, settings):
  text = httpserve.field(body, name, str)
  if len(text) > settings.max_text_chars:
    raise InvalidRequest(f"`{name}` has {len(text)} characters; the limit is {settings.max_text_chars}")
  return text


def default_side(settings, multiple):
  """The side of a request without height/width: default_size, within max_side and max_pixels."""
  side = min(settings.default_size, settings.max_side, math.isqrt(settings.max_pixels))
  return max(multiple, side // multiple * multiple)


def _side(body, name, settings, multiple):
  side = httpserve.field(body, name, int, default_side(settings, multiple), multiple, settings.max_side)
  if side % multiple:
    raise InvalidRequest(f"`{name}` must be a multiple of {multiple} (VAE factor x 2 for latent packing), got {side}")
  return side


def parse_generate(body, settings, multiple):
  """Validates a /v1/generate body -> engine.Job. Raises InvalidRequest naming the bad field."""
  httpserve.check_fields(body, ("prompt", "seed", "steps", "guidance", "height", "width"))
  prompt = _text(body, "prompt", settings)
  seed = httpserve.field(body, "seed", int, lo=0, hi=2**63 - 1)
  steps = httpserve.field(body, "steps", int, settings.default_steps, 1, settings.max_steps)
  guidance = httpserve.field(body, "guidance", float, settings.default_guidance, 0.0, settings.max_guidance)
  height, width = _side(body, "height", settings, multiple), _side(body, "width", settings, multiple)
  if height * width > settings.max_pixels:
    raise InvalidRequest(f"height x width = {height * width} pixels; the limit is {settings.max_pixels}")
  return engine_lib.Job(mode="generate", text=prompt, seed=seed, steps=steps, guidance=guidance, height=height,
                        width=width)


def decode_image(data, settings):
  """base64 (optionally a `data:` URL) -> RGB PIL image within the settings' size limits."""
  return httpserve.decode_image(data, settings.max_image_bytes, settings.max_source_pixels)


def parse_edit(body, settings, multiple):
  """Validates a /v1/edit body -> engine.Job with the source resized to the output size."""
  httpserve.check_fields(body, ("image", "instruction", "seed", "steps", "guidance", "area"))
  instruction = _text(body, "instruction", settings)
  seed = httpserve.field(body, "seed", int, lo=0, hi=2**63 - 1)
  steps = httpserve.field(body, "steps", int, settings.default_steps, 1, settings.max_steps)
  guidance = httpserve.field(body, "guidance", float, settings.default_edit_guidance, 0.0, settings.max_guidance)
  area = httpserve.field(body, "area", int, settings.edit_area, multiple * multiple, settings.max_pixels)
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
    """A micro-batch that made `size` images in `seconds`; one whose every job failed is not counted (the mean
    batch size is of batches that made images)."""
    if not size:
      return
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


class LocalBackend:
  """The in-process backend: an Engine behind a Batcher."""

  def __init__(self, engine, settings, metrics):
    self.engine = engine
    self.batcher = httpserve.Batcher(engine.run_jobs, settings.max_queue, settings.max_batch_size,
                                     settings.batch_wait_ms / 1000, on_batch=metrics.batch, name="imagegen-batcher",
                                     interruptible=True)

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

  authorized = functools.partial(httpserve.authorized, token=settings.token)
  error = httpserve.error_response
  httpserve.route_errors(app, error)

  async def handle(request, mode):
    start, status = time.perf_counter(), 500
    try:
      if not authorized(request):
        status = 401
        return error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
      body = await httpserve.read_json(request, settings.max_body_bytes)
      if mode not in multiples:
        raise Unavailable(f"no {mode} pipeline is loaded (start the service with --"
                          f"{'flux' if mode == 'generate' else 'kontext'}-dir)")
      job = await asyncio.to_thread(PARSERS[mode], body, settings, multiples[mode])
      png = await httpserve.unless_gone(request, app.state.backend.submit(job), settings.request_timeout_s)
      status = 200
      return responses.JSONResponse({"image": base64.b64encode(png).decode("ascii"), "height": job.height,
                                     "width": job.width, "seed": job.seed, "mode": mode})
    except httpserve.ClientGone:
      status = httpserve.CLIENT_GONE
      return error(status, "the client disconnected")
    except asyncio.TimeoutError:
      status = 504
      return error(504, f"no result within the request timeout of {settings.request_timeout_s} s")
    except (InvalidRequest, httpserve.TooLarge, QueueFull, Unavailable) as e:
      status = httpserve.status_of(e)
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
