"""`auditdm train-auditor`: GRPO training of the auditor (resumes from the latest checkpoint in --workdir)."""
import json

from auditdm_jax import distributed
from auditdm_jax.audit import config_check
from auditdm_jax.audit import trainer

HELP = "train the auditor with GRPO to find target failures (reference consensus vs target divergence)"
WORKDIR_REQUIRED = True
DEFAULT_CONFIG = "configs/audit/demo.py"
CONFIG_KEYS = ("mode", "reward", "loss", "system")


def check_config(config):
  config_check.check(config, ("rollout", "train"))


def run(args):
  distributed.initialize()
  system = trainer.build_system(args.config, args.workdir)
  params, _ = trainer.train(args.config, args.workdir, system)
  trained, _ = trainer.evaluate(system, params, args.config)
  baseline, _ = trainer.evaluate(system, system.params, args.config, baseline=True)
  print(json.dumps({"trained": trained, "baseline": baseline}, indent=2))
