"""Trained demo models shipped with the package: a cache `pretrain.pretrain_all` reads before it trains.

A shipped set is a copy of a `<workdir>/pretrain/` folder (tokenizer.model + tokenizer.json, one folder per model
with params.npz, model_config.json and meta.json) under `ROOT/<set>/`. Models and tokenizers are found by the
digest of the config that trained them (the same digests that key a workdir's cache), so a config that differs in
anything that shapes a model never gets a shipped one; `--config.shipped=False` trains every model instead.
Each set's `shipped.json` names that config ({"config": spec, "overrides": [...]}) and the sha256 of every file
(`python -m auditdm_jax.tools.ship_demo_models` writes a set; `tests/test_shipped_models.py` checks them).
"""
import hashlib
import os
import shutil

from auditdm_jax import io

ROOT = os.path.join(os.path.dirname(__file__), "checkpoints")


MANIFEST = "shipped.json"


def _sets(root):
  if not os.path.isdir(root):
    return []
  return [os.path.join(root, name) for name in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, name))]


def recorded_digest(meta_path):
  """The digest a meta.json / tokenizer.json records, or None when the file is absent."""
  return io.read_json(meta_path).get("digest") if os.path.exists(meta_path) else None


def folder_digests(folder, names):
  """{"tokenizer": digest, model name: digest} recorded in a `pretrain/` folder or a set, for `names` (keys of
  `pretrain.digests`); None for what is missing."""
  path = lambda n: "tokenizer.json" if n == "tokenizer" else os.path.join(n, "meta.json")
  return {n: recorded_digest(os.path.join(folder, path(n))) for n in names}


def sets():
  """The shipped set folders."""
  return _sets(ROOT)


def file_hashes(folder):
  """{path relative to `folder`: sha256} of every file of a set but its MANIFEST."""
  out = {}
  for base, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(base, name)
      rel = os.path.relpath(path, folder)
      if rel != MANIFEST:
        with open(path, "rb") as f:
          out[rel] = hashlib.sha256(f.read()).hexdigest()
  return dict(sorted(out.items()))


def find_model(digest):
  """The shipped model folder trained with `digest`, or None."""
  for folder in _sets(ROOT):
    for model in _sets(folder):
      if recorded_digest(os.path.join(model, "meta.json")) == digest:
        return model
  return None


def find_tokenizer(digest):
  """The shipped set whose tokenizer.model was trained with `digest`, or None."""
  for folder in _sets(ROOT):
    if (recorded_digest(os.path.join(folder, "tokenizer.json")) == digest
        and os.path.exists(os.path.join(folder, "tokenizer.model"))):
      return folder
  return None


def copy_model(src, dst):
  """Copies a shipped model folder to `dst` (replacing what is there); meta.json last, as `save_model` writes it."""
  if os.path.isdir(dst):
    shutil.rmtree(dst)
  os.makedirs(dst)
  names = sorted(os.listdir(src), key=lambda n: n == "meta.json")
  for name in names:
    shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


def copy_tokenizer(src, dst):
  """Copies a shipped set's tokenizer.model and tokenizer.json (its digest, last) into folder `dst`."""
  os.makedirs(dst, exist_ok=True)
  for name in ("tokenizer.model", "tokenizer.json"):
    shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
