"""Image generation for the audit loop: the `Generator` protocol and its backends, looked up by name.

  gen = imagegen.get_generator("flux-http", url="http://127.0.0.1:8000", cache_dir="/tmp/flux_cache")
  images = gen.generate(captions, seeds)             # regeneration from captions (paper: FLUX.1-dev)
  images = gen.edit(sources, edit_commands, seeds)   # editing (paper: FLUX.1-Kontext-dev)

Every returned item is an image (uint8 [H, W, 3]) or a `GenerationError` in its place: one bad item never raises.
Backends are imported lazily by path, so `identity` and `procedural` need neither torch nor httpx.
"""
import importlib
from typing import Protocol

import numpy as np

from auditdm_jax.imagegen.errors import GenerationError

BACKENDS = {
    "flux-http": "auditdm_jax.imagegen.client:FluxHTTPGenerator",
    "procedural": "auditdm_jax.worlds.shapes.procedural:ProceduralGenerator",
    "identity": "auditdm_jax.imagegen:IdentityGenerator",
}


class Generator(Protocol):

  def generate(self, prompts, seeds=None):
    """Captions -> list of uint8 [H, W, 3] images or GenerationError items."""

  def edit(self, images, instructions, seeds=None):
    """(source images [H, W, 3], edit commands) -> list of edited images or GenerationError items."""


def normalize_seeds(seeds, n):
  """None -> [0] * n; an int s -> [s, s+1, ...]; a sequence must have n entries."""
  if seeds is None:
    return [0] * n
  if np.isscalar(seeds):
    return [int(seeds) + i for i in range(n)]
  seeds = [int(s) for s in seeds]
  if len(seeds) != n:
    raise ValueError(f"got {len(seeds)} seeds for {n} items")
  return seeds


def to_rgb_array(image):
  """PIL image or uint8 array [H, W] / [H, W, 3|4] -> uint8 [H, W, 3]; ValueError naming the problem otherwise."""
  if hasattr(image, "convert"):
    return np.asarray(image.convert("RGB"))
  array = np.asarray(image)
  if array.dtype != np.uint8:
    raise ValueError(f"images must be uint8 (got {array.dtype}); scale float images to [0, 255] first")
  if array.ndim == 2:
    return np.repeat(array[..., None], 3, axis=-1)
  if array.ndim != 3 or array.shape[-1] not in (3, 4) or min(array.shape[:2]) == 0:
    raise ValueError(f"images must be [H, W, 3] (or [H, W], [H, W, 4]); got shape {array.shape}")
  return array[..., :3]


class IdentityGenerator:
  """`identity`: edits return the source image unchanged (question-only audits probe the original image).
  Text-to-image has no source, so each `generate` item is a GenerationError."""

  name = "identity"

  def generate(self, prompts, seeds=None):
    normalize_seeds(seeds, len(prompts))
    return [GenerationError("the identity backend has no source image to return for a caption; use "
                            "edit(images, ...) or an image-generating backend") for _ in prompts]

  def edit(self, images, instructions, seeds=None):
    if len(images) != len(instructions):
      raise ValueError(f"got {len(images)} images for {len(instructions)} instructions")
    normalize_seeds(seeds, len(images))
    out = []
    for image in images:
      try:
        out.append(to_rgb_array(image))
      except ValueError as e:
        out.append(GenerationError(str(e)))
    return out


def register(name, target):
  """Registers backend `name` as "module.path:Attribute" (a class or factory taking the backend's kwargs)."""
  BACKENDS[name] = target


def get_generator(name, **kwargs):
  """The backend registered as `name`, constructed with `kwargs`."""
  if name not in BACKENDS:
    raise ValueError(f"unknown image generator {name!r}; registered: {sorted(BACKENDS)}")
  module, _, attr = BACKENDS[name].partition(":")
  return getattr(importlib.import_module(module), attr)(**kwargs)
