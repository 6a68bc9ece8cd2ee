"""`auditdm generate`: new labelled pairs from an image pool with a trained auditor (resumable, sharded)."""
import json

from auditdm_jax.audit import config_check
from auditdm_jax.audit import generate

HELP = "generate a deduplicated, consensus-labelled dataset of new pairs with a trained auditor (resumable)"
WORKDIR_REQUIRED = True
DEFAULT_CONFIG = "configs/audit/demo.py"
CONFIG_KEYS = ("mode", "reward", "system", "generate")


def check_config(config):
  config_check.check(config, ("rollout", "generate"))


def add_arguments(parser):
  parser.add_argument("--ray", action="store_true", help="fan the shards out over Ray workers (needs ray)")


def run(args):
  print(json.dumps(generate.generate(args.config, args.workdir, use_ray=args.ray)))
