"""`auditdm iterate`: N refinement iterations (train auditor -> generate -> rectify), resumable per stage."""
import json

from auditdm_jax import config as config_lib
from auditdm_jax.audit import config_check
from auditdm_jax.audit import rectify

HELP = "run --config.iterations refinement iterations of train-auditor -> generate -> rectify (resumable)"
WORKDIR_REQUIRED = True
DEFAULT_CONFIG = "configs/audit/demo.py"
CONFIG_KEYS = ("mode", "reward", "loss", "system", "generate", "rectify", "iterations")


def check_config(config):
  config_check.check(config, config_check.ALL)
  config_lib.check_count(config, "iterations")


def run(args):
  print(json.dumps(rectify.iterate(args.config, args.workdir), indent=2))
