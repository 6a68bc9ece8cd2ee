"""`auditdm demo`: the whole AuditDM loop on the embedded shapes world, on CPU (resumable stage by stage)."""
import os

from auditdm_jax.audit import config_check
from auditdm_jax.worlds.shapes import demo

HELP = "run the whole loop on the shapes world: pretrain -> GRPO auditor -> generate -> rectify -> report"
DEFAULT_CONFIG = "configs/audit/demo.py"
CONFIG_KEYS = ("mode", "reward", "loss", "system", "generate", "rectify", "pretrain_config")
DEFAULT_WORKDIR = "runs/demo"


def check_config(config):
  config_check.check(config, config_check.ALL)


def add_arguments(parser):
  parser.add_argument("--fast", action="store_true",
                      help="the config's `fast` argument, e.g. configs/audit/demo.py:fast (a small, minutes-long run)")


def config_spec(args):
  """--fast adds the `fast` argument to the config spec (so the workdir records the fast config)."""
  if not args.fast:
    return args.config
  return args.config + (",fast" if ":" in args.config else ":fast")


def run(args):
  summary = demo.run(args.config, args.workdir)
  print(demo.format_summary(summary))
  print(f"report: {os.path.join(args.workdir, 'report.html')}")
