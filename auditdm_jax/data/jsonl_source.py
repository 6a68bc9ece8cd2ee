"""Plain-file image sources: JSONL rows (generated data, user sets) and image folders (unlabelled pools).

JSONL: one object per line, e.g. `{"image": "imgs/0001.png", "question": "...", "answer": "...", "id": "g0"}`.
`image` is a path, relative to the JSONL file's directory unless absolute; the source yields its encoded bytes
(decode with the `decode` pp op). Other fields may be strings, numbers, bools or lists of strings/numbers; every
row must have the same keys and the same types (a clear error names the file and line otherwise). A row whose
image file is missing is a per-row error: counted and skipped (`on_missing_image="skip"`, the default; a source
dict sets it as `on_missing_image`), or an error at once ("error").

Folder: every image file under a directory (recursively, sorted), yielding `{"image": bytes, "image/id": relpath}`.
"""
import json
import logging
import os

import tensorflow as tf

from auditdm_jax.errors import InputError

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
ON_MISSING_IMAGE = ("skip", "error")


class SourceError(InputError):
  """A JSONL file or image folder is malformed (`path`, `line` say where)."""


def read_jsonl(path, with_lines=False, allow_empty=False):
  """The row dicts of a JSONL file (blank lines skipped); with_lines: (line number, row) pairs."""
  if not tf.io.gfile.exists(path):
    raise SourceError("JSONL file not found", path)
  rows = []
  with tf.io.gfile.GFile(path) as f:
    for lineno, line in enumerate(f, 1):
      if lineno == 1:
        line = line.removeprefix("\ufeff")  # A byte-order mark (files saved by some Windows editors).
      if line.strip():
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise SourceError(f"invalid JSON: {e.msg} at column {e.colno}", path, lineno) from None
        if not isinstance(row, dict):
          raise SourceError(f"a row must be a JSON object, got {type(row).__name__}", path, lineno)
        rows.append((lineno, row))
  if not rows and not allow_empty:
    raise SourceError("JSONL file has no rows", path)
  return rows if with_lines else [row for _, row in rows]


def _kind(value):
  if isinstance(value, bool):
    return "bool"
  if isinstance(value, int):
    return "int" if -2**63 <= value < 2**63 else None  # int64, as tf stores it.
  if isinstance(value, float):
    return "float"
  if isinstance(value, str):
    return "str"
  if isinstance(value, list) and not value:
    return "list"  # Empty: either list kind, as the column's other rows say.
  if isinstance(value, list) and all(isinstance(v, str) for v in value):
    return "list[str]"
  if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
    return "list[num]"
  return None


def _columns(rows, lines, path):
  keys = sorted(rows[0])
  kinds = {}
  for row, line in zip(rows, lines):
    if sorted(row) != keys:
      raise SourceError(f"row has keys {sorted(row)}, the first row has {keys}", path, line)
    for k in keys:
      kind = _kind(row[k])
      if kind is None:
        raise SourceError(f"field {k!r} has unsupported value {row[k]!r}", path, line)
      have = kinds.setdefault(k, kind)
      if have == kind or (kind == "list" and have.startswith("list")):
        continue
      if {have, kind} == {"int", "float"}:  # Ints widen to float when a column mixes them.
        kinds[k] = "float"
      elif have == "list" and kind.startswith("list["):
        kinds[k] = kind
      else:
        raise SourceError(f"field {k!r} is {kind}, the first row has {have}", path, line)
  cols = {}
  for k in keys:
    values = [r[k] for r in rows]
    if kinds[k] in ("list[str]", "list"):
      cols[k] = tf.ragged.constant(values, dtype=tf.string)
    elif kinds[k] == "list[num]":
      cols[k] = tf.ragged.constant(values, dtype=tf.float32)
    else:
      cols[k] = tf.constant(values, dtype={"bool": tf.bool, "int": tf.int64, "float": tf.float32,
                                           "str": tf.string}[kinds[k]])
  return cols


def _with_images(numbered, path, image_key, on_missing_image):
  """Rows with their image path made absolute; rows whose image file is missing are skipped (counted) or raise."""
  if on_missing_image not in ON_MISSING_IMAGE:
    raise ValueError(f"on_missing_image must be one of {ON_MISSING_IMAGE}, got {on_missing_image!r}")
  # Relative to the JSONL file; a remote one (gs://, ram://...) keeps its scheme.
  base = os.path.dirname(path if "://" in path else os.path.abspath(path))
  kept, missing = [], []
  for line, row in numbered:
    if not isinstance(row.get(image_key), str) or not row[image_key].strip():
      raise SourceError(f"row has no {image_key!r} path", path, line)
    row[image_key] = os.path.join(base, row[image_key])
    if tf.io.gfile.exists(row[image_key]) and not tf.io.gfile.isdir(row[image_key]):
      kept.append((line, row))
    elif on_missing_image == "error":
      raise SourceError(f"image file not found: {row[image_key]}", path, line)
    else:
      missing.append(line)
  if missing:
    log.warning("%s: skipped %d of %d rows whose image file is missing (lines %s)", path, len(missing),
                len(numbered), ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else ""))
  if not kept:
    raise SourceError(f"none of the {len(numbered)} rows has an existing image file", path)
  return kept


def jsonl_dataset(path, image_key="image", process_index=0, process_count=1, on_missing_image="skip"):
  """A finite, ordered tf.data.Dataset over this process's rows (rows[process_index::process_count]).

  Returns (dataset, num_rows_of_this_process).
  """
  numbered = read_jsonl(path, with_lines=True)[process_index::process_count]
  if not numbered:
    raise SourceError(f"no rows for process {process_index} of {process_count}", path)
  if image_key:
    numbered = _with_images(numbered, path, image_key, on_missing_image)
  rows = [row for _, row in numbered]
  ds = tf.data.Dataset.from_tensor_slices(_columns(rows, [line for line, _ in numbered], path))
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
    raise SourceError("image folder not found", folder)
  found = []
  for root, _, files in tf.io.gfile.walk(folder):
    for name in files:
      if name.lower().endswith(IMAGE_EXTENSIONS):
        found.append(os.path.relpath(os.path.join(root, name), folder))
  if not found:
    raise SourceError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under the folder", folder)
  return sorted(found)


def folder_dataset(folder, process_index=0, process_count=1):
  """Dataset of `{"image": bytes, "image/id": relpath}` for this process's share of the folder's images."""
  names = list_images(folder)[process_index::process_count]
  ds = tf.data.Dataset.from_tensor_slices({"image/id": names})

  def read(ex):
    return {"image": tf.io.read_file(tf.strings.join([folder.rstrip("/") + "/", ex["image/id"]])),
            "image/id": ex["image/id"]}
  return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True), len(names)
