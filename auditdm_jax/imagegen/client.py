"""`flux-http`: the client of the image service (service.py / ray_serve.py) used by the RL loop and `generate`.

Batched and async: up to `concurrency` requests in flight (keep it >= the service's max_batch_size x replicas so
the service can fill its micro-batches). Each item is looked up in a content-addressed on-disk cache first (key:
mode, text, source-image pixels, seed, sampling params), so reruns and resumed jobs never regenerate. Transient
failures (connection errors, timeouts, 429, 5xx) are retried with exponential backoff and jitter, honouring
Retry-After; other 4xx and exhausted retries give that item a GenerationError, never an exception for the batch.
"""
import asyncio
import base64
import collections
import io as _io
import json
import logging
import os
import random

import httpx
import numpy as np
from PIL import Image

from auditdm_jax import httpserve
from auditdm_jax import images as images_lib
from auditdm_jax.imagegen import cache as cache_lib
from auditdm_jax.imagegen import normalize_seeds, to_rgb_array
from auditdm_jax.imagegen.errors import GenerationError

log = logging.getLogger(__name__)
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
TOKEN_ENV = "AUDITDM_IMAGEGEN_TOKEN"


def _decode(png):
  return np.asarray(Image.open(_io.BytesIO(png)).convert("RGB"))


def _message(response):
  try:
    return response.json()["error"]
  except Exception:  # pylint: disable=broad-except
    return response.text[:500]


class FluxHTTPGenerator:
  """Generator backed by the HTTP image service.

  Args:
    url: service base URL.
    token: bearer token (default: $AUDITDM_IMAGEGEN_TOKEN).
    cache_dir: on-disk cache of results (None: no cache).
    concurrency: requests in flight.
    max_retries: retries after the first attempt, for transient failures only.
    backoff_s, max_backoff_s: the n-th retry waits ~backoff_s * 2**n (x0.5-1.5 jitter), at most max_backoff_s.
    timeout_s: per-attempt HTTP timeout (keep it above the service's request timeout).
    steps, guidance, height, width: text-to-image parameters.
    edit_steps, edit_guidance, edit_area: edit parameters (the output keeps the source's aspect ratio at about
      `edit_area` pixels).
    transport: an httpx transport (tests).
  """

  name = "flux-http"

  def __init__(self, url="http://127.0.0.1:8000", token=None, cache_dir=None, concurrency=8, max_retries=6,
               backoff_s=0.5, max_backoff_s=30.0, timeout_s=900.0, steps=28, guidance=3.5, height=512, width=512,
               edit_steps=28, edit_guidance=2.5, edit_area=512 * 512, transport=None):
    if concurrency < 1 or max_retries < 0:
      raise ValueError(f"need concurrency >= 1 and max_retries >= 0, got {concurrency}, {max_retries}")
    self.url, self.token = httpserve.check_url(url, "service URL").rstrip("/"), token or os.environ.get(TOKEN_ENV)
    self.cache = cache_lib.ImageCache(cache_dir) if cache_dir else None
    self.concurrency, self.max_retries = concurrency, max_retries
    self.backoff_s, self.max_backoff_s, self.timeout_s = backoff_s, max_backoff_s, timeout_s
    self.generate_params = dict(steps=steps, guidance=guidance, height=height, width=width)
    self.edit_params = dict(steps=edit_steps, guidance=edit_guidance, area=edit_area)
    self.transport = transport
    self.stats = collections.Counter()  # cache_hits, requests (HTTP attempts), retries, failures, images

  # ---------------------------------------------------------------------------------------------- public API

  def generate(self, prompts, seeds=None):
    """Captions -> list of uint8 [H, W, 3] images or GenerationError items (blocking)."""
    return _run(self.agenerate(prompts, seeds))

  def edit(self, images, instructions, seeds=None):
    """(sources: PIL or uint8 [H, W, 3], edit commands) -> edited images or GenerationError items (blocking)."""
    return _run(self.aedit(images, instructions, seeds))

  async def agenerate(self, prompts, seeds=None):
    seeds = normalize_seeds(seeds, len(prompts))
    items = []
    for prompt, seed in zip(prompts, seeds):
      payload = dict(prompt=prompt, seed=seed, **self.generate_params)
      items.append(("generate", payload, cache_lib.cache_key("generate", prompt, seed, self.generate_params)))
    return await self._run_items(items)

  async def aedit(self, images, instructions, seeds=None):
    if len(images) != len(instructions):
      raise ValueError(f"got {len(images)} images for {len(instructions)} instructions")
    seeds = normalize_seeds(seeds, len(images))
    items = []
    for image, instruction, seed in zip(images, instructions, seeds):
      try:
        array = to_rgb_array(image)
      except ValueError as e:
        self.stats["failures"] += 1
        items.append(GenerationError(f"bad source image: {e}"))
        continue
      png = images_lib.png_bytes(array, compress_level=1)
      payload = dict(image=base64.b64encode(png).decode("ascii"), instruction=instruction, seed=seed,
                     **self.edit_params)
      key = cache_lib.cache_key("edit", instruction, seed, self.edit_params, cache_lib.image_digest(array))
      items.append(("edit", payload, key))
    return await self._run_items(items)

  # -------------------------------------------------------------------------------------------------- internals

  async def _run_items(self, items):
    """items: (mode, payload, cache key) or a GenerationError -> images / errors, in order. Equal keys in one
    call are requested once."""
    headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
    limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
    semaphore = asyncio.Semaphore(self.concurrency)
    tasks = {}
    async with httpx.AsyncClient(base_url=self.url, headers=headers, limits=limits, transport=self.transport,
                                 timeout=httpx.Timeout(self.timeout_s, connect=min(30.0, self.timeout_s))) as client:
      for item in items:
        if not isinstance(item, GenerationError) and item[2] not in tasks:
          tasks[item[2]] = asyncio.ensure_future(self._one(client, semaphore, *item))
      done = {key: await task for key, task in tasks.items()}
    out = [item if isinstance(item, GenerationError) else done[item[2]] for item in items]
    failed = sum(isinstance(x, GenerationError) for x in out)
    if failed:
      log.warning("%d of %d images failed: first error: %s", failed, len(out),
                  next(x for x in out if isinstance(x, GenerationError)))
    return out

  async def _one(self, client, semaphore, mode, payload, key):
    """One item: cache, else the service; returns uint8 [H, W, 3] or GenerationError."""
    if self.cache is not None and (png := self.cache.get(key)) is not None:
      try:
        image = _decode(png)
        self.stats["cache_hits"] += 1
        return image
      except Exception:  # pylint: disable=broad-except
        log.warning("unreadable cache entry %s; regenerating", self.cache.path(key))
    try:
      async with semaphore:
        png = await self._post(client, f"/v1/{mode}", payload)
    except GenerationError as e:
      self.stats["failures"] += 1
      return e
    try:
      image = _decode(png)
    except Exception as e:  # pylint: disable=broad-except
      self.stats["failures"] += 1
      return GenerationError(f"the service returned an unreadable image: {e}")
    if self.cache is not None:
      self.cache.put(key, png)
    self.stats["images"] += 1
    return image

  def _backoff(self, attempt):
    return min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.5)

  async def _post(self, client, path, payload):
    """POSTs with retries; returns PNG bytes or raises GenerationError."""
    last, status = "", None
    for attempt in range(self.max_retries + 1):
      self.stats["requests"] += 1
      try:
        # ASCII-escaped JSON: text a UTF-8 encoder refuses (a lone surrogate) reaches the service, which names it.
        response = await client.post(path, content=json.dumps(payload), headers={"content-type": "application/json"})
      except (httpx.TimeoutException, httpx.TransportError) as e:
        last, status, wait = f"{type(e).__name__}: {e}", None, self._backoff(attempt)
      else:
        if response.status_code == 200:
          try:
            return base64.b64decode(response.json()["image"])
          except (ValueError, KeyError, TypeError) as e:
            raise GenerationError(f"the service returned an unreadable image: {e!r}", 200, attempt + 1) from None
        last, status = f"HTTP {response.status_code}: {_message(response)}", response.status_code
        if status not in RETRY_STATUS:
          raise GenerationError(f"{self.url}{path} rejected the request ({last})", status, attempt + 1)
        wait = self._backoff(attempt)
        try:
          wait = max(wait, min(self.max_backoff_s, float(response.headers.get("retry-after", 0))))
        except ValueError:
          pass
      if attempt < self.max_retries:
        self.stats["retries"] += 1
        log.info("%s%s: %s; retry %d/%d in %.1f s", self.url, path, last, attempt + 1, self.max_retries, wait)
        await asyncio.sleep(wait)
    raise GenerationError(f"{self.url}{path} failed after {self.max_retries + 1} attempts; last error: {last}",
                          status, self.max_retries + 1)


def _run(coroutine):
  """Runs a coroutine from synchronous code (the RL loop); from async code, await agenerate/aedit instead."""
  try:
    asyncio.get_running_loop()
  except RuntimeError:
    return asyncio.run(coroutine)
  coroutine.close()
  raise RuntimeError("FluxHTTPGenerator.generate/edit called inside a running event loop; await "
                     "agenerate/aedit instead")
