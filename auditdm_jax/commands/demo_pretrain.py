"""`auditdm demo-pretrain`: trains (or loads cached) tiny VLMs of the shapes-world demo."""
import json

from auditdm_jax.worlds.shapes import pretrain

HELP = "pretrain the shapes-world demo models (target with a planted weakness, references, auditor) on CPU"
DEFAULT_CONFIG = "configs/demo/shapes.py"
CONFIG_KEYS = ("weakness", "base", "target", "references", "auditor", "tokenizer", "world")
DEFAULT_WORKDIR = "workdirs/demo"


def check_config(config):
  pretrain.check_config(config)


def run(args):
  manifest = pretrain.pretrain_all(args.config, args.workdir)
  print(json.dumps(manifest, indent=2))
