"""The OpenAI chat-completions format, as vLLM serves it, reduced to what a VQA answerer needs.

Request: {"model"?, "messages": [{"role": "system"|"user", "content": str | [parts]}], "max_tokens"? (or
"max_completion_tokens"), "temperature"?, "top_p"?, "n"? (1), "stream"? (false)} with parts
{"type": "text", "text": str} and exactly one {"type": "image_url", "image_url": {"url": "data:image/...;base64,..."}}
(the image must be inline: the server never fetches URLs). The text parts, system first, are joined by newlines.
Response: {"id", "object": "chat.completion", "created", "model", "choices": [{"index": 0, "message": {"role":
"assistant", "content"}, "finish_reason": "stop"|"length"}], "usage": {"prompt_tokens", "completion_tokens",
"total_tokens"}}. Errors: {"error": {"message", "type", "code"}}.
"""
import dataclasses
import time
import uuid

import numpy as np

from auditdm_jax import httpserve
from auditdm_jax.httpserve import InvalidRequest

FIELDS = ("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream")
ROLES = ("system", "user")


@dataclasses.dataclass
class Limits:
  max_tokens: int = 256  # Largest max_tokens a request may ask for.
  default_max_tokens: int = 16
  default_temperature: float = 1.0  # OpenAI's default; answerers ask for 0 (greedy).
  max_text_chars: int = 8000
  max_image_bytes: int = 32 << 20
  max_image_pixels: int = 4096 * 4096


@dataclasses.dataclass
class ChatJob:
  """One validated request: the image [H, W, 3] uint8, the user's text and the sampling settings."""
  image: np.ndarray
  text: str
  max_tokens: int
  temperature: float
  top_p: float
  mode: str = "chat"

  @property
  def batch_key(self):
    # The sampler takes one temperature / top_p per call; max_tokens may differ within a batch.
    return (self.temperature, self.top_p)


def _parts(message, i):
  content = message["content"]
  if isinstance(content, str):
    return [{"type": "text", "text": content}]
  if not isinstance(content, list) or not content:
    raise InvalidRequest(f"`messages[{i}].content` must be a string or a non-empty list of parts")
  for j, part in enumerate(content):
    if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
      raise InvalidRequest(f"`messages[{i}].content[{j}]` must be an object with type 'text' or 'image_url'")
  return content


def _image_url(part, where):
  url = part.get("image_url")
  url = url.get("url") if isinstance(url, dict) else url
  if not isinstance(url, str) or not url.startswith("data:"):
    raise InvalidRequest(f"`{where}.image_url.url` must be a base64 data URL (data:image/png;base64,...); the "
                         f"server does not fetch remote images")
  return url


def parse_messages(messages, limits):
  """-> (RGB PIL image, text) of the one image and the joined text parts."""
  if not isinstance(messages, list) or not messages:
    raise InvalidRequest("`messages` must be a non-empty list")
  urls, texts = [], []
  for i, message in enumerate(messages):
    if not isinstance(message, dict) or "content" not in message:
      raise InvalidRequest(f"`messages[{i}]` must be an object with `role` and `content`")
    if message.get("role") not in ROLES:
      raise InvalidRequest(f"`messages[{i}].role` must be one of {ROLES} (one question per request, no multi-turn "
                           f"history), got {message.get('role')!r}")
    for j, part in enumerate(_parts(message, i)):
      if part["type"] == "image_url":
        urls.append(_image_url(part, f"messages[{i}].content[{j}]"))
      elif not isinstance(part.get("text"), str):
        raise InvalidRequest(f"`messages[{i}].content[{j}].text` must be a string")
      else:
        texts.append(part["text"])
  if len(urls) != 1:
    raise InvalidRequest(f"a request needs exactly one image (an image_url part), got {len(urls)}")
  text = "\n".join(t for t in texts if t.strip()).strip()
  if not text:
    raise InvalidRequest("the messages have no text (the question)")
  if len(text) > limits.max_text_chars:
    raise InvalidRequest(f"the text has {len(text)} characters; the limit is {limits.max_text_chars}")
  image = httpserve.decode_image(urls[0], limits.max_image_bytes, limits.max_image_pixels, name="image_url")
  return image, text


def parse_request(body, limits):
  """A chat-completions body -> ChatJob; InvalidRequest naming the bad field."""
  httpserve.check_fields(body, FIELDS)
  if (n := body.get("n", 1)) != 1 or type(n) is not int:  # pylint: disable=unidiomatic-typecheck
    raise InvalidRequest(f"`n` must be the integer 1, got {n!r}")
  if body.get("stream", False) is not False:
    raise InvalidRequest("`stream` is not supported (answers are short); leave it out or false")
  if "max_tokens" in body and "max_completion_tokens" in body:
    raise InvalidRequest("give `max_tokens` or `max_completion_tokens`, not both")
  name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
  max_tokens = httpserve.field(body, name, int, limits.default_max_tokens, 1, limits.max_tokens)
  temperature = httpserve.field(body, "temperature", float, limits.default_temperature, 0.0, 2.0)
  top_p = httpserve.field(body, "top_p", float, 1.0, 0.0, 1.0)
  if top_p <= 0:
    raise InvalidRequest("`top_p` must be in (0, 1]")
  image, text = parse_messages(body.get("messages"), limits)
  return ChatJob(np.asarray(image), text, max_tokens, temperature, top_p)


def completion(model, answer):
  """The response body of one answered request (`answer`: model.Answer)."""
  return {
      "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()), "model": model,
      "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                   "finish_reason": answer.finish_reason}],
      "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                "total_tokens": answer.prompt_tokens + answer.completion_tokens},
  }


def models_list(model):
  return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "auditdm"}]}


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
               499: "client_closed_request", 503: "service_unavailable", 504: "timeout"}


def error_body(status, message):
  return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "code": status}}
