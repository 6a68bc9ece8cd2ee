"""Plain-file image sources: JSONL rows (generated data, user sets) and image folders (unlabelled pools).

JSONL: one object per line, e.g. `{"image": "imgs/0001.png", "question": "...", "answer": "...", "id": "g0"}`.
`image` is a path, relative to the JSONL file's directory unless absolute; the source yields its encoded bytes
(decode with the `decode` pp op). Other fields may be strings, numbers, bools or lists of strings/numbers; every
row must have the same keys and the same types (a clear error names the first offending row otherwise).

Folder: every image file under a directory (recursively, sorted), yielding `{"image": bytes, "image/id": relpath}`.
"""
import json
import os

import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


class SourceError(ValueError):
  """A JSONL file or image folder is malformed."""


def read_jsonl(path):
  """Returns the list of row dicts of a JSONL file (blank lines skipped)."""
  if not tf.io.gfile.exists(path):
    raise SourceError(f"JSONL file not found: {path!r}")
  rows = []
  with tf.io.gfile.GFile(path) as f:
    for lineno, line in enumerate(f, 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise SourceError(f"{path}:{lineno}: invalid JSON: {e}") from None
  if not rows:
    raise SourceError(f"JSONL file {path!r} has no rows")
  return rows


def _kind(value):
  if isinstance(value, bool):
    return "bool"
  if isinstance(value, int):
    return "int"
  if isinstance(value, float):
    return "float"
  if isinstance(value, str):
    return "str"
  if isinstance(value, list) and all(isinstance(v, str) for v in value):
    return "list[str]"
  if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
    return "list[num]"
  return None


def _columns(rows, path):
  keys = sorted(rows[0])
  kinds = {}
  for i, row in enumerate(rows):
    if sorted(row) != keys:
      raise SourceError(f"{path}: row {i} has keys {sorted(row)}, row 0 has {keys}")
    for k in keys:
      kind = _kind(row[k])
      if kind is None:
        raise SourceError(f"{path}: row {i} field {k!r} has unsupported value {row[k]!r}")
      # Ints widen to float when a column mixes them.
      if kinds.setdefault(k, kind) != kind and {kinds[k], kind} != {"int", "float"}:
        raise SourceError(f"{path}: row {i} field {k!r} is {kind}, row 0 has {kinds[k]}")
      if {kinds[k], kind} == {"int", "float"}:
        kinds[k] = "float"
  cols = {}
  for k in keys:
    values = [r[k] for r in rows]
    if kinds[k] == "list[str]":
      cols[k] = tf.ragged.constant(values, dtype=tf.string)
    elif kinds[k] == "list[num]":
      cols[k] = tf.ragged.constant(values, dtype=tf.float32)
    else:
      cols[k] = tf.constant(values, dtype={"bool": tf.bool, "int": tf.int64, "float": tf.float32,
                                           "str": tf.string}[kinds[k]])
  return cols


def jsonl_dataset(path, image_key="image", process_index=0, process_count=1):
  """A finite, ordered tf.data.Dataset over this process's rows (rows[process_index::process_count]).

  Returns (dataset, num_rows_of_this_process).
  """
  rows = read_jsonl(path)[process_index::process_count]
  if not rows:
    raise SourceError(f"{path}: no rows for process {process_index} of {process_count}")
  base = os.path.dirname(os.path.abspath(path))
  if image_key:
    for i, row in enumerate(rows):
      if image_key not in row or not isinstance(row[image_key], str):
        raise SourceError(f"{path}: row {i} has no {image_key!r} path")
      row[image_key] = os.path.join(base, row[image_key])
  ds = tf.data.Dataset.from_tensor_slices(_columns(rows, path))
  if image_key:
    def read_image(ex):
      ex = dict(ex)
      ex[image_key] = tf.io.read_file(ex[image_key])
      return ex
    ds = ds.map(read_image, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds, len(rows)


def list_images(folder):
  """Sorted relative paths of the image files under `folder`."""
  if not tf.io.gfile.isdir(folder):
    raise SourceError(f"image folder not found: {folder!r}")
  found = []
  for root, _, files in tf.io.gfile.walk(folder):
    for name in files:
      if name.lower().endswith(IMAGE_EXTENSIONS):
        found.append(os.path.relpath(os.path.join(root, name), folder))
  if not found:
    raise SourceError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder!r}")
  return sorted(found)


def folder_dataset(folder, process_index=0, process_count=1):
  """Dataset of `{"image": bytes, "image/id": relpath}` for this process's share of the folder's images."""
  names = list_images(folder)[process_index::process_count]
  ds = tf.data.Dataset.from_tensor_slices({"image/id": names})

  def read(ex):
    return {"image": tf.io.read_file(tf.strings.join([folder.rstrip("/") + "/", ex["image/id"]])),
            "image/id": ex["image/id"]}
  return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True), len(names)
