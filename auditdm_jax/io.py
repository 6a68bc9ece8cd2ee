"""Atomic file writes: a crash never leaves a half-written output behind."""
import json
import os
import tempfile

_UMASK = os.umask(0)
os.umask(_UMASK)


def usual_permissions(path):
  """Gives a file made private (mkstemp and safetensors make 0600 files) the permissions the umask gives."""
  os.chmod(path, 0o666 & ~_UMASK)


def write_bytes(path, data):
  """Writes `data` to `path` via a temporary file in the same directory and an atomic rename."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
  try:
    usual_permissions(tmp)
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.unlink(tmp)
    if isinstance(e, OSError) and e.filename is None:  # E.g. a full disk: say which file could not be written.
      raise OSError(e.errno, e.strerror, path) from e
    raise


def write_text(path, text):
  write_bytes(path, text.encode("utf-8"))


def write_json(path, obj, indent=2):
  write_text(path, json.dumps(obj, indent=indent, sort_keys=True, default=str) + "\n")


def read_json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)
