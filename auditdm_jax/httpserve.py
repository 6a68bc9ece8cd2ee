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
import socket
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
  __slots__ = ("job", "future", "abandoned")

  def __init__(self, job):
    self.job, self.future, self.abandoned = job, concurrent.futures.Future(), False


class Batcher:
  """A bounded queue and one worker thread running micro-batches of compatible jobs through `run_jobs`.

  Args:
    run_jobs: list[job] -> list[result | Exception]; jobs have a `batch_key` (jobs with equal keys may share a
      batch) and a `mode` (for `on_batch`).
    on_batch: optional (mode, results that succeeded, seconds) callback after each batch (metrics).
    interruptible: run_jobs takes `should_stop=`, a `() -> bool` that turns True once every request of the batch is
      abandoned or the batcher closes, and stops early when it does (the image engine, between denoising steps).
  """

  def __init__(self, run_jobs, max_queue=64, max_batch_size=4, batch_wait_s=0.02, on_batch=None, name="batcher",
               interruptible=False):
    self.run_jobs, self.on_batch, self.interruptible = run_jobs, on_batch, interruptible
    self.max_queue, self.max_batch_size, self.batch_wait_s = max_queue, max_batch_size, batch_wait_s
    self._pending = collections.deque()
    self._cond = threading.Condition()
    self._closed = False
    self._running = []
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
        jobs = [e.job for e in batch]
        results = self.run_jobs(jobs, should_stop=should_stop) if self.interruptible else self.run_jobs(jobs)
      except Exception as e:  # pylint: disable=broad-except
        log.exception("batch failed")
        results = [e] * len(batch)
      if stopped:  # Interrupted: the results are unfinished.
        log.info("batch of %d stopped (%s)", len(batch), "shutting down" if self._closed else "abandoned")
        results = [Unavailable("the request was cancelled before it was finished")] * len(batch)
      with self._cond:
        self._running = []
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


def bind(host, port):
  """A socket bound to host:port, made before a service loads its models so that a busy port fails in a second,
  not after minutes of loading. Raises OSError naming the address (ValueError for a port outside 0-65535)."""
  if not 0 <= port <= 65535:
    raise ValueError(f"port {port} is not in 0-65535")
  try:
    return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
  except OSError as e:
    raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror} (another service there? pick --port)",
                  f"{host}:{port}") from None


def make_server(app, host="127.0.0.1", port=0, log_level="warning", on_exit=None, **kwargs):
  """A uvicorn server whose first SIGINT / SIGTERM also calls `on_exit` (e.g. a Batcher's `close`), so requests
  waiting on running work get 503 at once instead of holding the shutdown until it finishes."""
  import uvicorn  # pylint: disable=g-import-not-at-top

  class Server(uvicorn.Server):

    def handle_exit(self, sig, frame):
      if on_exit is not None:  # In a thread: closing may wait for a running job to notice.
        threading.Thread(target=on_exit, name="service-close", daemon=True).start()
      super().handle_exit(sig, frame)

  return Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, **kwargs))


def serve(app, host, port, token=None, what="the service", sock=None, on_exit=None):
  """Serves `app` on host:port (or the already bound `sock`) until SIGINT / SIGTERM (warns when a non-loopback bind
  has no bearer token)."""
  if host not in LOOPBACK and not token:
    log.warning("serving %s on %s without a bearer token: anyone who can reach the port can use it", what, host)
  server = make_server(app, host, port, log_level="info", on_exit=on_exit, timeout_keep_alive=30,
                       timeout_graceful_shutdown=30)
  server.run(sockets=[sock] if sock is not None else None)


@contextlib.contextmanager
def serve_in_thread(app, host="127.0.0.1", port=0, on_exit=None):
  """Serves `app` from a background thread; yields its base URL (port 0 picks a free port). The server is
  `app.state.server` (tests call its `handle_exit` as a signal would)."""
  server = app.state.server = make_server(app, host, port, on_exit=on_exit)
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
