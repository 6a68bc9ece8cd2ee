"""Workdir identity and the one stage runner: outputs are reused only by the config that made them.

A workdir the CLI writes to holds `config.json` (the resolved config) and `workdir.json` (its digest, the commit of
the code and the command). `claim` compares a new config with the recorded one; when they differ it refuses with a
one-line diff of the changed keys, unless told what to do:
  "resume"     keep the data (checkpoints, shards, finished stages' outputs) and go on with the new config;
  "overwrite"  delete the workdir's contents and start over.

`stage(path, config, fn)` runs one unit of work once per config: `<path>/done.json` records the result, the config
and its digest; a rerun with the same config returns the recorded result, another config is refused the same way
(under "resume" the stage runs again and resumes from whatever checkpoints / shards it left).
"""
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time

import ml_collections

from auditdm_jax import config as config_lib
from auditdm_jax import io as io_lib
from auditdm_jax.errors import InputError, WorkdirMismatch

log = logging.getLogger(__name__)

IDENTITY = "workdir.json"
DONE = "done.json"
ON_CHANGE = ("refuse", "resume", "overwrite")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HINT = "rerun with --resume-with-changes (keep its data) or --overwrite (start over)"
_on_change = "refuse"  # What `stage` does on a mismatch: set by `claim`, i.e. once per CLI command.


def plain(config):
  """A config (ConfigDict or dict) as the plain JSON-able dict it is recorded as."""
  if isinstance(config, ml_collections.ConfigDict):
    return config_lib.to_dict(config)
  return json.loads(json.dumps(config, sort_keys=True, default=str))


def digest(config):
  return hashlib.sha256(json.dumps(plain(config), sort_keys=True).encode()).hexdigest()[:16]


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and v:
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def diff(old, new, limit=8):
  """One line naming the changed keys: `lr 0.0002 -> 0.001, group_size 8 -> 4, +new_key, -gone_key`."""
  a, b = _flatten(plain(old)), _flatten(plain(new))
  items = [f"{k} {json.dumps(a[k])} -> {json.dumps(b[k])}" for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]
  items += [f"+{k}" for k in sorted(b.keys() - a.keys())] + [f"-{k}" for k in sorted(a.keys() - b.keys())]
  more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
  return ", ".join(items[:limit]) + more


def commit():
  """The git commit of the code (with `+dirty` when it has uncommitted changes), or None outside a checkout."""
  try:
    head = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    if head.returncode:
      return None
    dirty = subprocess.run(["git", "-C", REPO_ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.TimeoutExpired):
    return None
  return head.stdout.strip() + ("+dirty" if dirty else "")


def _read_json(path):
  try:
    return io_lib.read_json(path)
  except json.JSONDecodeError as e:
    raise InputError(f"not valid JSON: {e.msg}", path, e.lineno) from None


def recorded_config(workdir):
  """The config (a dict) a CLI command recorded in `workdir`, None when there is none."""
  path = os.path.join(workdir, config_lib.CONFIG_NAME)
  return _read_json(path) if os.path.exists(path) else None


def claim(workdir, config, command=None, on_change="refuse"):
  """Makes `workdir` the home of `config` (writes config.json and workdir.json); returns the config.json path.

  Raises WorkdirMismatch when the workdir holds another config and `on_change` is "refuse". Also sets what
  `stage` does on a mismatch for the rest of the process.
  """
  global _on_change
  if on_change not in ON_CHANGE:
    raise ValueError(f"on_change must be one of {ON_CHANGE}, got {on_change!r}")
  _on_change = on_change
  cfg_path = os.path.join(workdir, config_lib.CONFIG_NAME)
  old = recorded_config(workdir)
  if old is not None:
    if digest(old) != digest(config):
      if on_change == "refuse":
        raise WorkdirMismatch(f"{workdir} was made by another config ({diff(old, config)}); {_HINT}", cfg_path)
      if on_change == "overwrite":
        log.warning("--overwrite: deleting the contents of %s (%s)", workdir, diff(old, config))
        clear(workdir)
      else:
        log.warning("--resume-with-changes: keeping the data of %s (%s)", workdir, diff(old, config))
  os.makedirs(workdir, exist_ok=True)
  io_lib.write_json(os.path.join(workdir, IDENTITY), dict(config_digest=digest(config), commit=commit(),
                                                          command=command))
  return config_lib.dump(config, workdir)


def clear(workdir):
  """Deletes everything inside `workdir` (the directory itself stays)."""
  for name in os.listdir(workdir):
    path = os.path.join(workdir, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    else:
      os.unlink(path)


def stage(path, config, fn):
  """`fn() -> dict` run once per config in directory `path`; returns its result, with its wall time as "seconds".

  The result is recorded in `<path>/done.json` with the config that made it; a rerun with the same config returns
  the record, another config raises WorkdirMismatch (naming the changed keys) unless the workdir was claimed with
  "resume", in which case the stage runs again (resuming from the checkpoints / shards it left) and its "seconds"
  add up the wall time of every run that made the result.
  """
  marker = os.path.join(path, DONE)
  earlier = 0.0
  if os.path.exists(marker):
    done = _read_json(marker)
    if done.get("config_digest") == digest(config):
      log.info("stage %s: done before, skipped", path)
      return done["result"]
    change = diff(done["config"], config) if "config" in done else "recorded without its config"
    if _on_change == "refuse":
      raise WorkdirMismatch(f"stage {path} was made by another config ({change}); {_HINT}", marker)
    log.warning("stage %s was made by another config (%s): running it again", path, change)
    earlier = done.get("result", {}).get("seconds", 0.0)
  os.makedirs(path, exist_ok=True)
  t0 = time.time()
  result = dict(fn())
  result["seconds"] = earlier + time.time() - t0
  io_lib.write_json(marker, dict(config_digest=digest(config), config=plain(config), result=result))
  log.info("stage %s: %.0f s", path, result["seconds"])
  return result
