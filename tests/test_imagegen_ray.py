"""The Ray Serve deployment on CPU (replicas without GPUs) with the tiny pipelines. Ray is in the `test` extra, so
CI runs this; it is skipped only where Ray is not installed (the optional `[ray]` extra)."""
import concurrent.futures
import socket

import httpx
import numpy as np
import pytest
import torch

import diffusers
import imagegen_fixtures as fx
from auditdm_jax.imagegen import get_generator, service

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


@pytest.mark.slow  # Starts a local Ray cluster (~20 s).
def test_ray_deployment_batches_and_matches_direct_pipeline():
  from auditdm_jax.imagegen import ray_serve  # pylint: disable=g-import-not-at-top
  flux_dir, kontext_dir = fx.tiny_dirs()
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  settings = service.Settings(port=port, max_batch_size=4, batch_wait_ms=200, default_size=16)
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
  try:
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(ray_serve.build_app(settings, flux_dir, kontext_dir, gpus_per_replica=0, device="cpu",
                                  max_sequence_length=fx.T5_MAX_LENGTH), name=ray_serve.APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(url + "/healthz").json()["modes"] == ["edit", "generate"]
    bad = httpx.post(url + "/v1/generate", json={"prompt": "x", "seed": 0, "height": 15})
    assert bad.status_code == 400 and "multiple of 2" in bad.json()["error"]
    prompts = ["a red circle", "a zebra", "three cats", "a car"]
    gen = get_generator("flux-http", url=url, height=16, width=24, steps=3, concurrency=4, max_retries=2,
                        edit_steps=3, edit_area=24 * 40)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # generate() runs its own event loop.
      images = pool.submit(gen.generate, prompts, [0, 1, 2, 3]).result()
      src = (np.random.RandomState(0).rand(24, 40, 3) * 255).astype(np.uint8)
      edited = pool.submit(gen.edit, [src], ["make it red"], [5]).result()
    assert edited[0].shape == (24, 40, 3)
    snapshot = httpx.get(url + "/metrics", params={"format": "json"}).json()
    assert snapshot["images"]["generate"] == 4 and snapshot["mean_batch_size"]["generate"] > 1
  finally:
    serve.shutdown()
    ray.shutdown()
  pipe = diffusers.FluxPipeline.from_pretrained(flux_dir)
  pipe.set_progress_bar_config(disable=True)
  for prompt, seed, image in zip(prompts, range(4), images):
    ref = pipe(prompt=prompt, height=16, width=24, num_inference_steps=3, guidance_scale=3.5,
               max_sequence_length=fx.T5_MAX_LENGTH, generator=torch.Generator().manual_seed(seed)).images[0]
    assert np.abs(np.asarray(ref).astype(int) - image).max() <= 1
