"""What the project's HTTP services share (the image service `imagegen/service.py` and the answer server
`serving/`): the request errors and their status codes, reading a bounded JSON body, field validation, base64 image
decoding, bearer-token checks, a bounded micro-batching queue, and running a FastAPI app under uvicorn; and what
their clients share: checking a base URL.
"""
import asyncio
import base64
import binascii
import collections
import concurrent.futures
import contextlib
import hmac
import io
import json
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


class TooLarge(ValueError):
  """The request body is over the service's limit (HTTP 413)."""


STATUS = {InvalidRequest: 400, TooLarge: 413, QueueFull: 429, Unavailable: 503}


def status_of(error):
  """The HTTP status of one of the errors above."""
  return next(code for cls, code in STATUS.items() if isinstance(error, cls))


# ----------------------------------------------------------------------------------------------- validation


async def read_json(request, max_bytes):
  """The JSON body of a FastAPI request, read chunk by chunk: TooLarge once more than `max_bytes` arrive (whatever
  Content-Length says, or without one); InvalidRequest when it is not JSON (too deeply nested included) or holds a
  string that is not Unicode (a lone surrogate escape such as "\\ud800", which no tokenizer or encoder takes)."""
  declared = request.headers.get("content-length", "")
  if declared.isdigit() and int(declared) > max_bytes:
    raise TooLarge(f"the body is larger than {max_bytes} bytes")
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > max_bytes:
      raise TooLarge(f"the body is larger than {max_bytes} bytes")
    chunks.append(chunk)
  try:
    body = json.loads(b"".join(chunks))
  except (ValueError, RecursionError) as e:
    raise InvalidRequest(f"the body is not valid JSON ({type(e).__name__})") from None
  stack = [body]
  while stack:
    value = stack.pop()
    if isinstance(value, dict):
      stack.extend(value)
      stack.extend(value.values())
    elif isinstance(value, list):
      stack.extend(value)
    elif isinstance(value, str) and not value.isascii():
      try:
        value.encode("utf-8")
      except UnicodeEncodeError:
        raise InvalidRequest(f"the body holds a string that is not valid Unicode: {value[:40]!r}") from None
  return body


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
  scheme, _, given = request.headers.get("authorization", "").partition(" ")
  return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def error_response(status, message, **headers):
  """A JSON error answer {"error": message}."""
  from fastapi import responses  # pylint: disable=g-import-not-at-top
  return responses.JSONResponse({"error": message}, status_code=status, headers=headers or None)


def route_errors(app, error):
  """Answers the app's own HTTP errors (unknown route 404, wrong method 405) with `error(status, message,
  **headers)`, the service's JSON error format, instead of FastAPI's {"detail": ...}."""
  from starlette import exceptions  # pylint: disable=g-import-not-at-top

  @app.exception_handler(exceptions.HTTPException)
  async def _http_error(request, exc):
    del request
    return error(exc.status_code, str(exc.detail), **(exc.headers or {}))


class ClientGone(Exception):
  """The client disconnected before its answer was ready."""


CLIENT_GONE = 499  # Logged for requests whose client disconnected (nginx's code); never sent.


async def unless_gone(request, awaitable, timeout_s, poll_s=0.2):
  """Awaits `awaitable`, cancelling it when the client disconnects (ClientGone) or after `timeout_s`
  (asyncio.TimeoutError); a cancelled Batcher future leaves the queue (`Batcher.submit`)."""
  task = asyncio.ensure_future(awaitable)
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
        raise ClientGone
  finally:
    task.cancel()  # A no-op once done.


def check_url(url, what="base URL"):
  """`url` if it is an http(s) URL: a scheme-less one would fail on every retry (httpx: UnsupportedProtocol)."""
  if not isinstance(url, str) or not url.startswith(("http://", "https://")):
    raise ValueError(f"the {what} must start with http:// or https://, got {url!r}")
  return url


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
    check_queue(max_queue, max_batch_size, batch_wait_s)
    self.run_jobs, self.on_batch, self.interruptible = run_jobs, on_batch, interruptible
    self.max_queue, self.max_batch_size, self.batch_wait_s = max_queue, max_batch_size, batch_wait_s
    self._pending = collections.deque()
    self._cond = threading.Condition()
    self._closed = False
    self._running = []
    self.in_flight = 0
    self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
    self._thread.start()

  def _drop_cancelled(self):
    """Forgets queued jobs whose futures were cancelled (timed out, client gone); holds the lock."""
    if any(e.future.cancelled() for e in self._pending):
      self._pending = collections.deque(e for e in self._pending if not e.future.cancelled())

  def queue_depth(self):
    with self._cond:
      self._drop_cancelled()
      return len(self._pending)

  def submit(self, job):
    """Enqueues `job`; returns a concurrent Future of its result (cancelling it drops a queued job). Raises
    QueueFull / Unavailable; jobs nobody waits for any more do not count towards the queue's bound."""
    entry = _Entry(job)
    with self._cond:
      self._drop_cancelled()
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
        self._drop_cancelled()
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


def check_queue(max_queue, max_batch_size, batch_wait_s, timeout_s=None):
  """ValueError naming the first queue setting out of range (a batch size of 0 would never run a job)."""
  if max_queue < 1 or max_batch_size < 1:
    raise ValueError(f"need max_queue >= 1 and max_batch_size >= 1, got {max_queue} and {max_batch_size}")
  if not batch_wait_s >= 0 or (timeout_s is not None and not timeout_s > 0):
    raise ValueError(f"need batch_wait >= 0 and a request timeout > 0, got {batch_wait_s} and {timeout_s}")


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
