"""Shared helpers of the manual-download builders."""
import json
import os

import tensorflow as tf


class ManualDataError(FileNotFoundError):
  """The manual download directory lacks a file the builder needs."""


def manual_path(dl_manager, *parts, instructions=""):
  """`manual_dir/parts...`, or a ManualDataError naming the missing path and the expected layout."""
  path = os.path.join(os.fspath(dl_manager.manual_dir), *parts)
  if not tf.io.gfile.exists(path):
    raise ManualDataError(f"missing {path}. Expected layout:\n{instructions}")
  return path


def exists(dl_manager, *parts):
  return tf.io.gfile.exists(os.path.join(os.fspath(dl_manager.manual_dir), *parts))


def load_json(path):
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def require_image(path):
  if not tf.io.gfile.exists(path):
    raise ManualDataError(f"image referenced by the annotations not found: {path}")
  return path
