"""Shared helpers of the manual-download builders."""
import functools
import json
import os

import tensorflow as tf

from auditdm_jax import errors


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
  """The JSON file at `path`; an InputError naming it when it is not JSON (e.g. cut short by a failed download)."""
  with tf.io.gfile.GFile(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise errors.InputError(f"invalid JSON: {e}", path) from None


def names_source(generate):
  """Decorates a builder's `_generate_examples(self, source, ...)`: an annotation without a field the builder
  reads, or of another shape (KeyError, IndexError, TypeError, ValueError), fails as an InputError naming `source`
  (the file or folder it reads) instead of a bare KeyError from deep in the build."""
  @functools.wraps(generate)
  def wrapped(self, source, *args):
    try:
      yield from generate(self, source, *args)
    except (errors.InputError, ManualDataError):
      raise
    except (KeyError, IndexError, TypeError, ValueError) as e:
      raise errors.InputError(f"malformed annotations: {type(e).__name__}: {e}", source) from None
  return wrapped


def require_image(path):
  if not tf.io.gfile.exists(path):
    raise ManualDataError(f"image referenced by the annotations not found: {path}")
  return path
