"""Content-addressed on-disk cache of generated images, so reruns never regenerate.

The key hashes everything that determines the output: mode, text (prompt or edit instruction), the source image's
pixels (edits), seed and sampling parameters. Entries are the service's PNG bytes, written atomically.
"""
import hashlib
import json
import os

import numpy as np

from auditdm_jax import io


def image_digest(image):
  """sha256 of an image's pixels and shape (PNG encodings of the same pixels may differ; pixels do not).

  Args:
    image: uint8 array [H, W, 3].
  """
  image = np.ascontiguousarray(image, dtype=np.uint8)
  h = hashlib.sha256(json.dumps(image.shape).encode())
  h.update(image.tobytes())
  return h.hexdigest()


def cache_key(mode, text, seed, params, source_digest=None):
  """Hex digest naming one output: (mode, text, source image digest, seed, params dict)."""
  record = {"mode": mode, "text": text, "seed": int(seed), "params": params, "source": source_digest}
  return hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()


class ImageCache:
  """PNG bytes under `directory/ab/abcd....png` (two-level fan-out keeps directories small)."""

  def __init__(self, directory):
    self.directory = os.path.abspath(os.path.expanduser(directory))
    os.makedirs(self.directory, exist_ok=True)

  def path(self, key):
    return os.path.join(self.directory, key[:2], key + ".png")

  def get(self, key):
    """The cached PNG bytes, or None."""
    try:
      with open(self.path(key), "rb") as f:
        return f.read()
    except FileNotFoundError:
      return None

  def put(self, key, png):
    io.write_bytes(self.path(key), png)
