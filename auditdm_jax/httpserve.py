"""What the project's HTTP services share (the image service `imagegen/service.py` and the answer server
`serving/`): the request errors and their status codes, field validation, base64 image decoding, bearer-token
checks, a bounded micro-batching queue, and running a FastAPI app under uvicorn.
"""
import base64
import binascii
import collections
import concurrent.futures
import contextlib
import hmac
import io
import logging
import math
import threading
import time

from PIL import Image

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_REQUIRED = object()


class InvalidRequest(ValueError):
  """A request the service rejects as malformed (HTTP 400); the message names the field."""


class QueueFull(RuntimeError):
  """The service's queue is at its bound (HTTP 429): retry later."""


class Unavailable(RuntimeError):
  """The service cannot take the request now (HTTP 503): shutting down, or the mode's pipeline is not loaded."""


STATUS = {InvalidRequest: 400, QueueFull: 429, Unavailable: 503}


def status_of(error):
  """The HTTP status of one of the errors above."""
  return next(code for cls, code in STATUS.items() if isinstance(error, cls))


# ----------------------------------------------------------------------------------------------- validation


def field(body, name, kind, default=_REQUIRED, lo=None, hi=None):
  """body[name] checked to be an int / finite float / non-empty str within [lo, hi]; `default` when absent."""
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


def check_fields(body, allowed):
  if not isinstance(body, dict):
    raise InvalidRequest("the body must be a JSON object")
  unknown = sorted(set(body) - set(allowed))
  if unknown:
    raise InvalidRequest(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def decode_image(data, max_bytes, max_pixels, name="image"):
  """base64 (optionally a `data:` URL) -> RGB PIL image; InvalidRequest on anything that is not an image."""
  if not isinstance(data, str) or not data:
    raise InvalidRequest(f"`{name}` must be a base64-encoded image string")
  if data.startswith("data:"):
    data = data.partition(",")[2]
  if len(data) * 3 // 4 > max_bytes:
    raise InvalidRequest(f"`{name}` is larger than {max_bytes} bytes")
  try:
    raw = base64.b64decode(data, validate=True)
  except (binascii.Error, ValueError) as e:
    raise InvalidRequest(f"`{name}` is not valid base64: {e}") from None
  try:
    image = Image.open(io.BytesIO(raw))
    if image.width * image.height > max_pixels:  # Checked on the header, before decoding pixels.
      raise InvalidRequest(f"`{name}` has {image.width}x{image.height} pixels; the limit is {max_pixels}")
    return image.convert("RGB")
  except InvalidRequest:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise InvalidRequest(f"`{name}` could not be decoded as an image: {e}") from None


def authorized(request, token):
  """Whether a FastAPI request carries `Authorization: Bearer <token>` (always True when token is unset)."""
  if not token:
    return True
  given = request.headers.get("authorization", "")
  return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def error_response(status, message, **headers):
  """A JSON error answer {"error": message}."""
  from fastapi import responses  # pylint: disable=g-import-not-at-top
  return responses.JSONResponse({"error": message}, status_code=status, headers=headers or None)


# -------------------------------------------------------------------------------------------------- batching


class _Entry:
  __slots__ = ("job", "future")

  def __init__(self, job):
    self.job, self.future = job, concurrent.futures.Future()


class Batcher:
  """A bounded queue and one worker thread running micro-batches of compatible jobs through `run_jobs`.

  Args:
    run_jobs: list[job] -> list[result | Exception]; jobs have a `batch_key` (jobs with equal keys may share a
      batch) and a `mode` (for `on_batch`).
    on_batch: optional (mode, results that succeeded, seconds) callback after each batch (metrics).
  """

  def __init__(self, run_jobs, max_queue=64, max_batch_size=4, batch_wait_s=0.02, on_batch=None, name="batcher"):
    self.run_jobs, self.on_batch = run_jobs, on_batch
    self.max_queue, self.max_batch_size, self.batch_wait_s = max_queue, max_batch_size, batch_wait_s
    self._pending = collections.deque()
    self._cond = threading.Condition()
    self._closed = False
    self.in_flight = 0
    self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
    self._thread.start()

  def queue_depth(self):
    with self._cond:
      return len(self._pending)

  def submit(self, job):
    """Enqueues `job`; returns a concurrent Future of its result. Raises QueueFull / Unavailable."""
    entry = _Entry(job)
    with self._cond:
      if self._closed:
        raise Unavailable("the service is shutting down")
      if len(self._pending) >= self.max_queue:
        raise QueueFull(f"{len(self._pending)} requests are queued (limit {self.max_queue}); retry later")
      self._pending.append(entry)
      self._cond.notify_all()
    return entry.future

  def close(self):
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
      self.in_flight = len(batch)
      start = time.perf_counter()
      try:
        results = self.run_jobs([e.job for e in batch])
      except Exception as e:  # pylint: disable=broad-except
        log.exception("batch failed")
        results = [e] * len(batch)
      if self.on_batch:
        done = sum(not isinstance(r, BaseException) for r in results)
        self.on_batch(batch[0].job.mode, done, time.perf_counter() - start)
      self.in_flight = 0
      for entry, result in zip(batch, results):
        if isinstance(result, BaseException):
          entry.future.set_exception(result)
        else:
          entry.future.set_result(result)


# --------------------------------------------------------------------------------------------------- serving


def serve(app, host, port, token=None, what="the service"):
  """Serves `app` on host:port until interrupted (warns when a non-loopback bind has no bearer token)."""
  import uvicorn  # pylint: disable=g-import-not-at-top
  if host not in LOOPBACK and not token:
    log.warning("serving %s on %s without a bearer token: anyone who can reach the port can use it", what, host)
  uvicorn.run(app, host=host, port=port, log_level="info", timeout_keep_alive=30)


@contextlib.contextmanager
def serve_in_thread(app, host="127.0.0.1", port=0):
  """Serves `app` from a background thread; yields its base URL (port 0 picks a free port)."""
  import uvicorn  # pylint: disable=g-import-not-at-top
  server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
  thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
  thread.start()
  deadline = time.monotonic() + 30
  while not server.started:
    if not thread.is_alive() or time.monotonic() > deadline:
      raise RuntimeError(f"the service did not start on {host}:{port}")
    time.sleep(0.01)
  bound = server.servers[0].sockets[0].getsockname()[1]
  try:
    yield f"http://{host}:{bound}"
  finally:
    server.should_exit = True
    thread.join(timeout=10)
