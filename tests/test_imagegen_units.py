"""Pure parts of imagegen: output sizes, cache keys, the backend registry, identity, request parsing, Ray guard."""
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from auditdm_jax import httpserve
from auditdm_jax import imagegen
from auditdm_jax.imagegen import cache as cache_lib
from auditdm_jax.imagegen import engine as engine_lib
from auditdm_jax.imagegen import service
from auditdm_jax.imagegen.errors import GenerationError


@pytest.mark.parametrize("size,area,multiple,expected", [
    ((640, 480), 1024 * 1024, 16, (880, 1184)),  # 4:3 at 1 MP: sqrt(1048576 / 307200) = 1.8475.
    ((1024, 1024), 1024 * 1024, 16, (1024, 1024)),
    ((40, 24), 960, 2, (24, 40)),  # The source's own area: unchanged.
    ((40, 24), 3840, 2, (48, 80)),
    ((1000, 10), 64 * 64, 16, (16, 640)),  # Extreme aspect: the short side never drops below one multiple.
])
def test_edit_size(size, area, multiple, expected):
  assert engine_lib.edit_size(*size, area, multiple) == expected


def test_pipeline_multiple_reads_the_vae_config(tmp_path):
  for blocks, expected in (([128, 256, 512, 512], 16), ([4], 2)):  # FLUX.1's VAE; the test VAE.
    os.makedirs(tmp_path / "vae", exist_ok=True)
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"block_out_channels": blocks}))
    assert engine_lib.pipeline_multiple(str(tmp_path)) == expected


def test_job_batch_key_ignores_text_and_seed():
  a = engine_lib.Job("generate", "a cat", 1, 28, 3.5, 512, 512)
  assert a.batch_key == engine_lib.Job("generate", "a dog", 2, 28, 3.5, 512, 512).batch_key
  assert a.batch_key != engine_lib.Job("generate", "a cat", 1, 28, 3.5, 512, 768).batch_key
  assert a.batch_key != engine_lib.Job("edit", "a cat", 1, 28, 3.5, 512, 512).batch_key


def test_cache_key_depends_on_every_input():
  params = dict(steps=28, guidance=3.5, height=512, width=512)
  base = cache_lib.cache_key("generate", "a cat", 1, params)
  assert base == cache_lib.cache_key("generate", "a cat", 1, dict(reversed(list(params.items()))))
  variants = [cache_lib.cache_key("edit", "a cat", 1, params), cache_lib.cache_key("generate", "a dog", 1, params),
              cache_lib.cache_key("generate", "a cat", 2, params),
              cache_lib.cache_key("generate", "a cat", 1, dict(params, steps=27)),
              cache_lib.cache_key("generate", "a cat", 1, params, "abc")]
  assert len({base, *variants}) == 6


def test_image_digest_is_of_pixels_and_shape():
  a = np.zeros((4, 6, 3), np.uint8)
  assert cache_lib.image_digest(a) == cache_lib.image_digest(a.copy())
  assert cache_lib.image_digest(a) != cache_lib.image_digest(a.reshape(6, 4, 3))
  b = a.copy()
  b[0, 0, 0] = 1
  assert cache_lib.image_digest(a) != cache_lib.image_digest(b)


def test_image_cache_roundtrip_leaves_no_temp_files(tmp_path):
  cache = cache_lib.ImageCache(str(tmp_path))
  key = cache_lib.cache_key("generate", "x", 0, {})
  assert cache.get(key) is None
  cache.put(key, b"\x89PNG...")
  assert cache.get(key) == b"\x89PNG..."
  assert os.listdir(tmp_path / key[:2]) == [key + ".png"]


def test_registry_and_identity_backend():
  assert sorted(imagegen.BACKENDS) == ["flux-http", "identity", "procedural"]
  with pytest.raises(ValueError, match="unknown image generator 'flux'.*registered"):
    imagegen.get_generator("flux")
  identity = imagegen.get_generator("identity")
  src = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  out = identity.edit([src, Image.fromarray(src), np.zeros((2, 2), np.uint8), np.zeros((2, 2, 3))],
                      ["make it red"] * 4, seeds=0)
  np.testing.assert_array_equal(out[0], src)
  np.testing.assert_array_equal(out[1], src)
  assert out[2].shape == (2, 2, 3) and isinstance(out[3], GenerationError)
  assert all(isinstance(e, GenerationError) for e in identity.generate(["a cat", "a dog"]))
  with pytest.raises(ValueError, match="2 images for 1 instructions"):
    identity.edit([src, src], ["x"])


def test_procedural_backend_is_registered_by_path():
  gen = imagegen.get_generator("procedural")
  assert type(gen).__name__ == "ProceduralGenerator"
  [item] = gen.generate(["%% not a caption %%"], [0])  # The contract: an error item, not an exception.
  assert isinstance(item, GenerationError)


def test_normalize_seeds():
  assert imagegen.normalize_seeds(None, 3) == [0, 0, 0]
  assert imagegen.normalize_seeds(5, 3) == [5, 6, 7]
  assert imagegen.normalize_seeds(np.array([1, 2]), 2) == [1, 2]
  with pytest.raises(ValueError, match="got 1 seeds for 2 items"):
    imagegen.normalize_seeds([1], 2)


def test_parse_generate_fills_defaults():
  settings = service.Settings()
  job = service.parse_generate({"prompt": "a cat", "seed": 3}, settings, 16)
  assert (job.mode, job.text, job.seed, job.steps, job.guidance, job.height, job.width) == (
      "generate", "a cat", 3, 28, 3.5, 1024, 1024)
  with pytest.raises(httpserve.InvalidRequest, match="`width` must be a multiple of 16"):
    service.parse_generate({"prompt": "a cat", "seed": 3, "width": 520}, settings, 16)
  with pytest.raises(httpserve.InvalidRequest, match="`seed` must be an integer, got True"):
    service.parse_generate({"prompt": "a cat", "seed": True}, settings, 16)


def test_parse_edit_resizes_the_source_to_the_output_size():
  import base64, io  # pylint: disable=g-import-not-at-top,multiple-imports
  buf = io.BytesIO()
  Image.new("RGB", (640, 480), (200, 10, 10)).save(buf, format="PNG")
  body = {"image": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), "instruction": "x",
          "seed": 0}
  job = service.parse_edit(body, service.Settings(), 16)
  assert (job.height, job.width, job.image.size, job.guidance) == (880, 1184, (1184, 880), 2.5)
  with pytest.raises(httpserve.InvalidRequest, match="limit is 100"):
    service.parse_edit(body, service.Settings(max_source_pixels=100), 16)


def test_ray_backend_says_how_to_install_ray():
  from auditdm_jax.imagegen import ray_serve  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("ray") is not None:
    pytest.skip("ray is installed")
  with pytest.raises(ImportError, match=r"pip install 'auditdm_jax\[ray\]'"):
    ray_serve.require_ray()
  with pytest.raises(ImportError, match="Ray Serve"):
    ray_serve.build_app(service.Settings(), flux_dir="/nonexistent")


def test_serve_images_command_errors(capsys):
  from auditdm_jax.commands import serve_images  # pylint: disable=g-import-not-at-top
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser()
  serve_images.add_arguments(parser)
  with pytest.raises(ValueError, match="give --flux-dir and/or --kontext-dir"):
    serve_images.run(parser.parse_args([]))
  if importlib.util.find_spec("ray") is None:
    with pytest.raises(ImportError, match="needs Ray Serve"):
      serve_images.run(parser.parse_args(["--backend", "ray", "--flux-dir", "/x"]))
  settings = serve_images.settings_from_args(parser.parse_args(["--max-side", "512", "--port", "9000"]))
  assert (settings.host, settings.port, settings.max_pixels, settings.token) == ("127.0.0.1", 9000, 512 * 512,
                                                                                  os.environ.get("AUDITDM_IMAGEGEN_TOKEN") or None)


def test_metrics_survive_pickling():
  import pickle  # pylint: disable=g-import-not-at-top
  metrics = service.Metrics()
  metrics.request("generate", 200, 0.5)
  metrics.batch("generate", 2, 0.4)
  copy = pickle.loads(pickle.dumps(metrics))
  copy.request("generate", 200, 1.5)
  assert copy.snapshot()["latency_s"]["generate"] == {"count": 2, "mean": 1.0, "p50": 1.5, "p95": 1.5}
  assert copy.snapshot(queue_depth=3)["mean_batch_size"] == {"generate": 2.0}
