"""The answer server's FastAPI app (OpenAI-compatible; see chat.py for the format).

  POST /v1/chat/completions   one question about one inline image -> one answer
  GET  /v1/models             the one served model
  GET  /healthz               liveness, model, queue depth (no auth)
Answers: 200; 400 malformed request (the message names the field); 401 bad or missing bearer token; 404 unknown
model or route; 405 wrong method; 413 body too large; 429 queue full (Retry-After); 503 shutting down; 504 timeout;
500 model failure. Every error is a JSON body {"error": {"message", "type", "code"}}; nothing a client sends can
stop the server.

Requests wait in one bounded queue (`httpserve.Batcher`): a worker thread takes the oldest request plus the queued
ones with the same temperature / top_p, up to `max_batch_size`, waiting at most `batch_wait_ms` for more, and answers
them in one sampler call (`model.AnswerModel.run_jobs`). A request that times out or whose client disconnects
leaves the queue at once; one already in the running sampler call is not interrupted (`--max-tokens` bounds it).
"""
import asyncio
import contextlib
import dataclasses
import logging

from auditdm_jax import httpserve
from auditdm_jax.httpserve import InvalidRequest, QueueFull, Unavailable
from auditdm_jax.serving import chat

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Settings:
  """Server limits (all overridable from `auditdm serve-answers`)."""
  model_name: str = "auditdm"  # The `model` id clients send (and /v1/models lists).
  host: str = "127.0.0.1"  # Loopback unless asked: no per-client rate limiting.
  port: int = 8001
  token: str | None = None  # Bearer token required on /v1/* when set.
  max_queue: int = 64  # Requests waiting (not yet running); beyond it 429.
  max_batch_size: int = 8
  batch_wait_ms: float = 10.0
  request_timeout_s: float = 300.0  # Queue wait + compute; 504 after it.
  max_body_bytes: int = 48 << 20
  limits: chat.Limits = dataclasses.field(default_factory=chat.Limits)

  def __post_init__(self):
    httpserve.check_queue(self.max_queue, self.max_batch_size, self.batch_wait_ms / 1000, self.request_timeout_s)
    if self.limits.max_tokens < 1 or self.max_body_bytes < 1:
      raise ValueError(f"need max_tokens >= 1 and max_body_bytes >= 1, got {self.limits.max_tokens} and "
                       f"{self.max_body_bytes}")


def create_app(settings, model):
  """The FastAPI app answering with `model` (an AnswerModel, or anything with `run_jobs` and `prompt_tokens`)."""
  import fastapi  # pylint: disable=g-import-not-at-top
  from fastapi import responses  # pylint: disable=g-import-not-at-top

  batcher = httpserve.Batcher(model.run_jobs, settings.max_queue, settings.max_batch_size,
                              settings.batch_wait_ms / 1000, name="answer-batcher")

  @contextlib.asynccontextmanager
  async def lifespan(app):
    del app
    yield
    batcher.close()

  app = fastapi.FastAPI(title="auditdm answer server", lifespan=lifespan)

  def error(status, message, **headers):
    return responses.JSONResponse(chat.error_body(status, message), status_code=status, headers=headers or None)

  httpserve.route_errors(app, error)

  def unauthorized(request):
    if httpserve.authorized(request, settings.token):
      return None
    return error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})

  async def parse(request):
    body = await httpserve.read_json(request, settings.max_body_bytes)
    httpserve.check_fields(body, chat.FIELDS)
    if (name := httpserve.field(body, "model", str, settings.model_name)) != settings.model_name:
      return None, error(404, f"the model `{name}` does not exist; this server serves `{settings.model_name}`")
    job = await asyncio.to_thread(chat.parse_request, body, settings.limits)
    await asyncio.to_thread(model.prompt_tokens, job.text)  # 400 now, rather than failing in the batch.
    return job, None

  @app.post("/v1/chat/completions")
  async def chat_completions(request: fastapi.Request):
    try:
      if (denied := unauthorized(request)) is not None:
        return denied
      job, rejected = await parse(request)
      if rejected is not None:
        return rejected
      answer = await httpserve.unless_gone(request, asyncio.wrap_future(batcher.submit(job)),
                                           settings.request_timeout_s)
      return chat.completion(settings.model_name, answer)
    except httpserve.ClientGone:
      return error(httpserve.CLIENT_GONE, "the client disconnected")
    except asyncio.TimeoutError:
      return error(504, f"no answer within the request timeout of {settings.request_timeout_s} s")
    except (InvalidRequest, httpserve.TooLarge, QueueFull, Unavailable) as e:
      status = httpserve.status_of(e)
      return error(status, str(e), **({"Retry-After": "1"} if status in (429, 503) else {}))
    except Exception as e:  # pylint: disable=broad-except
      log.exception("chat completion failed")
      return error(500, f"{type(e).__name__}: {e}")

  @app.get("/v1/models")
  async def models(request: fastapi.Request):
    if (denied := unauthorized(request)) is not None:
      return denied
    return chat.models_list(settings.model_name)

  @app.get("/healthz")
  async def healthz():
    return {"status": "ok", "model": settings.model_name, "queue_depth": batcher.queue_depth(),
            "in_flight": batcher.in_flight}

  return app
