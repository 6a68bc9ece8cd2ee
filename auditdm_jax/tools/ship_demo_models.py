"""Makes a shipped set of demo models (`worlds/shapes/shipped.py`) from a workdir that `demo-pretrain` trained.

  python -m auditdm_jax.tools.ship_demo_models --workdir W --name seed0 [--config configs/demo/shapes.py] [k=v ...]
Copies the tokenizer and every model the config names from `W/pretrain/`, after checking that each was trained
with the digest the config gives it, and writes `shipped.json` (the config, its overrides, each file's sha256).
"""
import argparse
import os

from auditdm_jax import config as config_lib
from auditdm_jax import io
from auditdm_jax.worlds.shapes import pretrain
from auditdm_jax.worlds.shapes import shipped


def ship(workdir, name, config="configs/demo/shapes.py", overrides=(), root=None):
  """Copies the config's tokenizer and models from `workdir/pretrain/` into `<root>/<name>/`; returns the folder."""
  cfg = config_lib.resolve(config_lib.find_spec(config), list(overrides))
  src = os.path.join(workdir, "pretrain")
  keys = pretrain.digests(cfg)
  found = shipped.folder_digests(src, keys)
  wrong = sorted(m for m in keys if found[m] != keys[m])
  if wrong:
    raise ValueError(f"{src}: {wrong} not trained by {config} {list(overrides)} (digests {found} != {keys})")
  dst = os.path.join(root or shipped.ROOT, name)
  if os.path.exists(dst):
    raise FileExistsError(f"shipped set {dst} exists")
  os.makedirs(dst)
  shipped.copy_tokenizer(src, dst)
  for m in keys:
    if m != "tokenizer":
      shipped.copy_model(os.path.join(src, m), os.path.join(dst, m))
  io.write_json(os.path.join(dst, shipped.MANIFEST),
                {"config": config, "overrides": list(overrides), "files": shipped.file_hashes(dst)})
  return dst


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--name", required=True, help="the set's folder name under the package's shipped sets")
  parser.add_argument("--config", default="configs/demo/shapes.py")
  parser.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. seed=1)")
  args = parser.parse_args(argv)
  print(ship(args.workdir, args.name, args.config, args.overrides))


if __name__ == "__main__":
  main()
