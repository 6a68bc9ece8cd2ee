"""Image helpers shared by every layer: conversion to uint8 and the one PNG encoder."""
import io

import numpy as np
from PIL import Image


def to_uint8(image):
  """PIL image or array ([H, W, 3] uint8, or float in [-1, 1] / [0, 1]) -> [H, W, 3] uint8."""
  if isinstance(image, Image.Image):
    return np.asarray(image.convert("RGB"))
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected an [H, W, 3] image, got shape {image.shape}")
  if image.dtype == np.uint8:
    return image
  lo = float(image.min()) if image.size else 0.0
  scaled = (image + 1.0) * 127.5 if lo < 0 else image * 255.0
  return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def png_bytes(image, compress_level=6):
  """Lossless PNG encoding of an image (see `to_uint8`). Serving paths pass compress_level=1 (faster, larger)."""
  buf = io.BytesIO()
  Image.fromarray(to_uint8(image)).save(buf, format="PNG", compress_level=compress_level)
  return buf.getvalue()
