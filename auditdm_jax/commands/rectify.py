"""`auditdm rectify`: fine-tune the target on its original data mixed with generated pairs, then evaluate."""
import json

from auditdm_jax.audit import config_check
from auditdm_jax.audit import rectify

HELP = "fine-tune the target on original + generated data (--config.rectify.dataset=.../data.jsonl) and evaluate"
WORKDIR_REQUIRED = True
DEFAULT_CONFIG = "configs/audit/demo.py"
CONFIG_KEYS = ("system", "rectify")


def check_config(config):
  config_check.check(config, ("rectify",))


def run(args):
  print(json.dumps(rectify.rectify(args.config, args.workdir), indent=2))
