"""The image service on tiny random FLUX / Kontext pipelines, served by the real app on loopback."""
import base64
import concurrent.futures
import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import diffusers
import imagegen_fixtures as fx
from auditdm_jax import httpserve
from auditdm_jax.imagegen import engine as engine_lib
from auditdm_jax.imagegen import get_generator, service

GEN = dict(steps=3, guidance=3.5, height=16, width=24)


def _png_b64(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return base64.b64encode(buf.getvalue()).decode()


def _decode(b64):
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def _source(h=24, w=40, seed=0):
  return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def dirs():
  return fx.tiny_dirs()


@pytest.fixture(scope="module")
def direct(dirs):
  """The pipelines loaded independently of the service, for reference images."""
  flux = diffusers.FluxPipeline.from_pretrained(dirs[0])
  kontext = diffusers.FluxKontextPipeline.from_pretrained(dirs[1])
  for p in (flux, kontext):
    p.set_progress_bar_config(disable=True)
  return flux, kontext


@pytest.fixture(scope="module")
def server(dirs):
  """(base URL, app) of the service with both pipelines; 150 ms batching window so concurrent requests batch."""
  settings = service.Settings(max_batch_size=4, batch_wait_ms=150, max_side=128, max_pixels=96 * 96, default_size=16)
  app = service.build_local_app(settings, *dirs, max_sequence_length=fx.T5_MAX_LENGTH)
  with httpserve.serve_in_thread(app) as url:
    yield url, app


def _metrics(url):
  return httpx.get(url + "/metrics", params={"format": "json"}).json()


def test_generate_equals_direct_pipeline_call_for_the_seed(server, direct):
  url, _ = server
  out = [httpx.post(url + "/v1/generate", json=dict(prompt="a red circle above a blue square", seed=s, **GEN),
                    timeout=60).json() for s in (7, 7, 8)]
  assert (out[0]["height"], out[0]["width"], out[0]["seed"], out[0]["mode"]) == (16, 24, 7, "generate")
  ref = direct[0](prompt="a red circle above a blue square", height=16, width=24, num_inference_steps=3,
                  guidance_scale=3.5, max_sequence_length=fx.T5_MAX_LENGTH,
                  generator=torch.Generator().manual_seed(7)).images[0]
  image = _decode(out[0]["image"])
  assert image.shape == (16, 24, 3)
  np.testing.assert_array_equal(image, np.asarray(ref))
  assert out[0]["image"] == out[1]["image"]  # Same seed, same PNG bytes.
  assert np.abs(_decode(out[2]["image"]).astype(int) - image).max() > 10  # Another seed, another image.


def test_edit_keeps_source_aspect_ratio_and_equals_direct_call(server, direct):
  url, _ = server
  src = _source(24, 40)
  body = dict(image=_png_b64(src), instruction="make the sky purple", seed=3, steps=3, guidance=2.5)
  same = httpx.post(url + "/v1/edit", json=dict(body, area=24 * 40), timeout=60).json()
  ref = direct[1](image=Image.fromarray(src), prompt="make the sky purple", height=24, width=40, max_area=24 * 40,
                  _auto_resize=False, num_inference_steps=3, guidance_scale=2.5,
                  max_sequence_length=fx.T5_MAX_LENGTH, generator=torch.Generator().manual_seed(3)).images[0]
  np.testing.assert_array_equal(_decode(same["image"]), np.asarray(ref))
  # 4x the area: both sides double, the 5:3 aspect ratio stays (Kontext alone would make 1024 x 1024).
  big = httpx.post(url + "/v1/edit", json=dict(body, area=4 * 24 * 40), timeout=60).json()
  assert (big["height"], big["width"]) == (48, 80) and _decode(big["image"]).shape == (48, 80, 3)


def test_concurrent_requests_batch_and_equal_unbatched_images(server, direct):
  url, _ = server
  before = _metrics(url)
  prompts = ["a photo of two cats on a sofa", "a small yellow star", "add a hat to the person", "a white car"]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    outs = list(pool.map(lambda ps: httpx.post(url + "/v1/generate", json=dict(prompt=ps[0], seed=ps[1], **GEN),
                                               timeout=60).json(), zip(prompts, range(10, 14))))
  after = _metrics(url)
  batches = after["batches"]["generate"] - before["batches"].get("generate", 0)
  images = after["images"]["generate"] - before["images"].get("generate", 0)
  assert images == 4 and batches < 4, after
  for (prompt, seed), out in zip(zip(prompts, range(10, 14)), outs):
    ref = direct[0](prompt=prompt, height=16, width=24, num_inference_steps=3, guidance_scale=3.5,
                    max_sequence_length=fx.T5_MAX_LENGTH, generator=torch.Generator().manual_seed(seed)).images[0]
    # Per-item generators: the batch draws each item's noise exactly as alone; float sums in a batched matmul may
    # round differently, at most one uint8 level.
    assert np.abs(_decode(out["image"]).astype(int) - np.asarray(ref)).max() <= 1


def test_run_jobs_groups_mixed_jobs_like_single_calls(dirs):
  """Engine.run_jobs is what both the local Batcher and Ray's @serve.batch call with whatever arrived together."""
  engine = engine_lib.Engine.load(*dirs, max_sequence_length=fx.T5_MAX_LENGTH)
  src = Image.fromarray(_source(16, 16))
  jobs = [engine_lib.Job("generate", "a red circle", 1, 2, 3.5, 16, 16),
          engine_lib.Job("edit", "make it blue", 2, 2, 2.5, 16, 16, src),
          engine_lib.Job("generate", "a blue square", 3, 2, 3.5, 16, 16),
          engine_lib.Job("generate", "a red circle", 1, 2, 3.5, 8, 16)]
  mixed = engine.run_jobs(jobs)
  single = [engine.run_jobs([j])[0] for j in jobs]
  for a, b in zip(mixed, single):
    a, b = (np.asarray(Image.open(io.BytesIO(x)), dtype=int) for x in (a, b))
    assert a.shape == b.shape and np.abs(a - b).max() <= 1
  assert np.asarray(Image.open(io.BytesIO(mixed[3]))).shape == (8, 16, 3)
  # should_stop is asked after every denoising step; True interrupts the rest of the call.
  for stop, asked in ((False, 4), (True, 1)):
    calls = []
    engine.run([engine_lib.Job("generate", "a red circle", 1, 4, 3.5, 16, 16)],
               should_stop=lambda stop=stop, calls=calls: calls.append(1) or stop)
    assert len(calls) == asked


@pytest.mark.parametrize("path,body,message", [
    ("/v1/generate", {"seed": 0}, "`prompt` is required"),
    ("/v1/generate", {"prompt": "  ", "seed": 0}, "`prompt` must be a non-empty string"),
    ("/v1/generate", {"prompt": "x"}, "`seed` is required"),
    ("/v1/generate", {"prompt": "x", "seed": -1}, "`seed` must be in"),
    ("/v1/generate", {"prompt": "x", "seed": 0, "steps": 0}, "`steps` must be in [1, 100]"),
    ("/v1/generate", {"prompt": "x", "seed": 0, "steps": 101}, "`steps` must be in [1, 100]"),
    ("/v1/generate", {"prompt": "x", "seed": 0, "steps": 2.5}, "`steps` must be an integer"),
    ("/v1/generate", {"prompt": "x", "seed": 0, "guidance": "high"}, "`guidance` must be a finite number"),
    ("/v1/generate", {"prompt": "x", "seed": 0, "height": 15, "width": 16}, "`height` must be a multiple of 2"),
    ("/v1/generate", {"prompt": "x", "seed": 0, "height": 256, "width": 16}, "`height` must be in [2, 128]"),
    ("/v1/generate", {"prompt": "x", "seed": 0, "height": 128, "width": 128}, "the limit is 9216"),
    ("/v1/generate", {"prompt": "x", "seed": 0, "num_steps": 4}, "unknown field(s) ['num_steps']"),
    ("/v1/generate", [1, 2], "the body must be a JSON object"),
    ("/v1/edit", {"instruction": "x", "seed": 0}, "`image` must be a base64-encoded image"),
    ("/v1/edit", {"image": "%%%not base64", "instruction": "x", "seed": 0}, "`image` is not valid base64"),
    ("/v1/edit", {"image": base64.b64encode(b"hello").decode(), "instruction": "x", "seed": 0},
     "`image` could not be decoded as an image"),
    ("/v1/edit", {"image": _png_b64(_source(8, 8)), "seed": 0}, "`instruction` is required"),
    ("/v1/edit", {"image": _png_b64(_source(8, 400)), "instruction": "x", "seed": 0, "area": 64 * 64},
     "a side is over the limit 128"),
])
def test_bad_requests_get_400_with_a_message(server, path, body, message):
  url, _ = server
  response = httpx.post(url + path, json=body, timeout=30)
  assert response.status_code == 400, response.text
  assert message in response.json()["error"]


def test_non_json_body_is_400_and_counted(server):
  url, _ = server
  response = httpx.post(url + "/v1/generate", content=b"{not json", timeout=30)
  assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
  assert _metrics(url)["requests"]["generate/400"] >= 1


def test_metrics_prometheus_text_and_healthz(server):
  url, _ = server
  httpx.post(url + "/v1/generate", json=dict(prompt="a zebra", seed=1, **GEN), timeout=60)
  text = httpx.get(url + "/metrics").text
  assert 'auditdm_imagegen_requests_total{mode="generate",status="200"}' in text
  assert 'auditdm_imagegen_request_seconds{mode="generate",quantile="0.95"}' in text
  assert "auditdm_imagegen_queue_depth 0" in text
  snapshot = _metrics(url)
  assert snapshot["latency_s"]["generate"]["count"] == snapshot["requests"]["generate/200"]
  assert snapshot["latency_s"]["generate"]["p50"] > 0
  assert httpx.get(url + "/healthz").json() == {"status": "ok", "modes": ["edit", "generate"], "queue_depth": 0}


def test_client_against_real_pipelines_caches_and_keeps_order(server, direct, tmp_path):
  url, _ = server
  gen = get_generator("flux-http", url=url, cache_dir=str(tmp_path), concurrency=4, **GEN, edit_steps=3,
                      edit_area=24 * 40)
  prompts = ["a red circle", "a zebra", "a red circle"]
  first = gen.generate(prompts, [5, 6, 5])
  assert gen.stats["images"] == 2  # The duplicate (prompt, seed) is requested once.
  np.testing.assert_array_equal(first[0], first[2])
  ref = direct[0](prompt="a zebra", height=16, width=24, num_inference_steps=3, guidance_scale=3.5,
                  max_sequence_length=fx.T5_MAX_LENGTH, generator=torch.Generator().manual_seed(6)).images[0]
  assert np.abs(first[1].astype(int) - np.asarray(ref)).max() <= 1
  edited = gen.edit([_source(24, 40), Image.fromarray(_source(24, 40))], ["make it red", "make it red"], [1, 1])
  assert edited[0].shape == (24, 40, 3) and gen.stats["images"] == 3
  again = get_generator("flux-http", url=url, cache_dir=str(tmp_path), **GEN, edit_steps=3, edit_area=24 * 40)
  second = again.generate(prompts, [5, 6, 5]) + again.edit([_source(24, 40)], ["make it red"], [1])
  assert again.stats["requests"] == 0 and again.stats["cache_hits"] == 3
  for a, b in zip(first + edited[:1], second):
    np.testing.assert_array_equal(a, b)


def test_edit_only_service_answers_503_for_generate(dirs):
  app = service.build_local_app(service.Settings(), kontext_dir=dirs[1], max_sequence_length=fx.T5_MAX_LENGTH)
  with httpserve.serve_in_thread(app) as url:
    response = httpx.post(url + "/v1/generate", json=dict(prompt="x", seed=0), timeout=30)
  assert response.status_code == 503 and "--flux-dir" in response.json()["error"]


def test_share_encoders_reuses_flux_modules_in_kontext(dirs):
  engine = engine_lib.Engine.load(*dirs, max_sequence_length=fx.T5_MAX_LENGTH, share_encoders=True)
  flux, kontext = engine.pipelines["generate"], engine.pipelines["edit"]
  assert kontext.text_encoder_2 is flux.text_encoder_2 and kontext.vae is flux.vae
  assert kontext.transformer is not flux.transformer
  job = engine_lib.Job("edit", "make it blue", 2, 2, 2.5, 16, 16, Image.fromarray(_source(16, 16)))
  ref = diffusers.FluxKontextPipeline.from_pretrained(
      dirs[1], text_encoder=flux.text_encoder, text_encoder_2=flux.text_encoder_2, tokenizer=flux.tokenizer,
      tokenizer_2=flux.tokenizer_2, vae=flux.vae)(
          image=job.image, prompt=job.text, height=16, width=16, max_area=256, _auto_resize=False,
          num_inference_steps=2, guidance_scale=2.5, max_sequence_length=fx.T5_MAX_LENGTH,
          generator=torch.Generator().manual_seed(2)).images[0]
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(engine.run_jobs([job])[0]))), np.asarray(ref))
