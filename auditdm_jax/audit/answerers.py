"""Answerers: the target and reference MLLMs, seen by the audit loop as `answer(images, questions) -> answers`.

An answerer returns one string per (image, question), or None where that item failed (an HTTP reference that keeps
erroring); the rollout drops such pairs and counts them, it never crashes. Implementations:
  - `HttpAnswerer`: any OpenAI-compatible chat-completions server (`auditdm serve-answers`, vLLM-served
    Qwen2.5-VL, ...), images sent inline as base64 PNG data URLs.
  - `VLMAnswerer`: an in-process JAX VLM (PaliGemma2 / Gemma3 families) batched through the KV-cache sampler.
  - `FunctionAnswerer`: wraps a Python function (oracles, tests).
`Ensemble` bundles the references: one model in model-comparison mode, several (target excluded) in single-model
mode.
"""
import base64
import collections
import concurrent.futures
import json
import logging
import os
import threading
import time

import numpy as np
from PIL import Image

from auditdm_jax import decode
from auditdm_jax import httpserve
from auditdm_jax import images as images_lib
from auditdm_jax.models import tokenizer as tokenizer_lib

log = logging.getLogger(__name__)

TOKEN_ENV = "AUDITDM_ANSWERS_TOKEN"  # `auditdm serve-answers`'s bearer token: HttpAnswerer's default api_key.
# Asking for a short answer makes free-form chat models comparable with VQA-style exact match.
SHORT_ANSWER = "Answer the question using a single word or phrase."


def data_url(image):
  return "data:image/png;base64," + base64.b64encode(images_lib.png_bytes(image)).decode("ascii")


class FunctionAnswerer:
  """Wraps `fn(images, questions) -> answers` (e.g. a ground-truth oracle) as an answerer."""

  def __init__(self, name, fn):
    self.name, self._fn = name, fn

  def answer(self, images, questions):
    _check_batch(images, questions)
    return list(self._fn(images, questions))


class HttpAnswerer:
  """An OpenAI-compatible `/chat/completions` endpoint: `auditdm serve-answers`, `vllm serve
  Qwen/Qwen2.5-VL-7B-Instruct`, or any server speaking vLLM's chat format (base_url ends in `/v1`).

  Items are sent concurrently (`concurrency` requests in flight); connection errors, timeouts, 429 and 5xx are
  retried with exponential backoff (honouring Retry-After, each wait at most `max_backoff`), so a server restarting
  within the retry window loses nothing; an item that still fails after `retries` comes back as None. `stats`
  counts requests, retries and failures (items given up on). `instruction` is appended to each question on its own
  line ("" sends the question alone, as `auditdm serve-answers` expects: it formats prompts itself). `api_key`
  defaults to $AUDITDM_ANSWERS_TOKEN, the token `auditdm serve-answers` reads.
  """

  def __init__(self, name, base_url, model, api_key=None, max_tokens=16, temperature=0.0, instruction=SHORT_ANSWER,
               concurrency=8, timeout=60.0, retries=3, backoff=0.5, max_backoff=30.0, client=None):
    import httpx  # pylint: disable=g-import-not-at-top
    self.name, self.model = name, model
    self.url = httpserve.check_url(base_url).rstrip("/") + "/chat/completions"
    self.max_tokens, self.temperature, self.instruction = max_tokens, temperature, instruction
    self.concurrency, self.retries, self.backoff, self.max_backoff = concurrency, retries, backoff, max_backoff
    api_key = api_key or os.environ.get(TOKEN_ENV)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    self._client = client or httpx.Client(timeout=timeout, headers=headers)
    self._retryable = (httpx.TimeoutException, httpx.TransportError)
    self.stats = collections.Counter()  # requests, retries, failures
    self._lock = threading.Lock()  # Items run on a thread pool.

  @property
  def failures(self):
    return self.stats["failures"]

  def request_body(self, image, question):
    text = f"{question}\n{self.instruction}" if self.instruction else question
    return {
        "model": self.model,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(image)}},
            {"type": "text", "text": text},
        ]}],
        "max_tokens": self.max_tokens,
        "temperature": self.temperature,
    }

  def _one(self, image, question):
    # Encoded here, ASCII-escaped: text a UTF-8 encoder refuses (a lone surrogate) reaches the server, which names it.
    body = json.dumps(self.request_body(image, question))
    for attempt in range(self.retries + 1):
      wait = min(self.max_backoff, self.backoff * 2 ** attempt)
      try:
        self._count("requests")
        resp = self._client.post(self.url, content=body, headers={"content-type": "application/json"})
        if resp.status_code == 200:
          return message_text(resp.json())
        if resp.status_code != 429 and resp.status_code < 500:
          log.warning("%s: HTTP %d (not retried): %s", self.name, resp.status_code, resp.text[:200])
          return None
        reason = f"HTTP {resp.status_code}"
        retry_after = resp.headers.get("retry-after", "")
        if retry_after.isdigit():
          wait = max(wait, min(self.max_backoff, float(retry_after)))
      except self._retryable as e:
        reason = repr(e)
      except (KeyError, IndexError, TypeError, ValueError) as e:
        log.warning("%s: malformed response: %r", self.name, e)
        return None
      if attempt < self.retries:
        self._count("retries")
        log.info("%s: %s; retry %d/%d in %.1f s", self.name, reason, attempt + 1, self.retries, wait)
        time.sleep(wait)
    log.warning("%s: giving up after %d attempts (%s)", self.name, self.retries + 1, reason)
    return None

  def _count(self, key):
    with self._lock:
      self.stats[key] += 1

  def answer(self, images, questions):
    _check_batch(images, questions)
    with concurrent.futures.ThreadPoolExecutor(max(1, self.concurrency)) as pool:
      out = list(pool.map(self._one, images, questions))
    with self._lock:
      self.stats["failures"] += sum(a is None for a in out)
    return out


def message_text(response):
  """The answer in a chat-completions response: `content` is a string, or (some servers) a list of text parts."""
  content = response["choices"][0]["message"]["content"]
  if isinstance(content, list):
    content = "".join(p["text"] for p in content if p.get("type") == "text")
  if not isinstance(content, str):
    raise TypeError(f"message content is {type(content).__name__}, not text")
  return content.strip()


class VLMAnswerer:
  """An in-process JAX VLM (PaliGemma family) answering greedily through the shared `decode.Decoder` of its
  architecture (a target and its same-size references share one compiled prefill / decode).

  `prompt_fn(question) -> prefix text` formats the question as the model was trained (PaliGemma: "answer en {q}").
  """

  def __init__(self, name, cfg, params, tokenizer, prompt_fn=None, max_new_tokens=8, batch_size=64, prompt_len=48):
    self.name, self.cfg, self.params, self.batch_size, self.res = name, cfg, params, batch_size, cfg.res
    self.prompt_fn = prompt_fn or (lambda q: tokenizer_lib.paligemma_prompt("answer", q))
    self.prompt_len, self.max_new_tokens = prompt_len, max_new_tokens
    self._decoder = decode.shared(cfg, tokenizer)

  def answer(self, images, questions):
    _check_batch(images, questions)
    out = []
    for i in range(0, len(questions), self.batch_size):
      imgs = [resize(images_lib.to_uint8(im), self.res) for im in images[i:i + self.batch_size]]
      prefixes = [self.prompt_fn(q) for q in questions[i:i + self.batch_size]]
      n = len(prefixes)
      # Every chunk is padded to batch_size (repeating its last item): one compiled shape, whatever N is.
      imgs += imgs[-1:] * (self.batch_size - n)
      prefixes += prefixes[-1:] * (self.batch_size - n)
      texts = self._decoder.generate(self.params, np.stack(imgs), prefixes, prompt_len=self.prompt_len,
                                     max_new_tokens=self.max_new_tokens)
      out.extend(texts[:n])
    return out


def resize(image, res):
  """[H, W, 3] uint8 -> [res, res, 3] (e.g. a Gemma3 auditor's 896px images for a 448px PaliGemma target)."""
  if image.shape[:2] == (res, res):
    return image
  return np.asarray(Image.fromarray(image).resize((res, res), Image.BICUBIC))


class Ensemble:
  """The reference models. `answer` returns R lists of N answers (one list per reference)."""

  def __init__(self, references):
    if not references:
      raise ValueError("need at least one reference answerer")
    names = [r.name for r in references]
    if len(set(names)) != len(names):
      raise ValueError(f"reference names must be unique, got {names}")
    self.references = list(references)

  @property
  def names(self):
    return [r.name for r in self.references]

  def answer(self, images, questions):
    return [r.answer(images, questions) for r in self.references]


def _check_batch(images, questions):
  if len(images) != len(questions):
    raise ValueError(f"got {len(images)} images but {len(questions)} questions")
