"""`auditdm demo`: the whole AuditDM loop on the embedded shapes world, on CPU (resumable stage by stage)."""
import os

from auditdm_jax import config as config_lib

HELP = "run the whole loop on the shapes world: pretrain -> GRPO auditor -> generate -> rectify -> report"
DEFAULT_CONFIG = "configs/audit/demo.py"
DEFAULT_WORKDIR = "runs/demo"


def add_arguments(parser):
  parser.add_argument("--fast", action="store_true",
                      help="shorthand for --config configs/audit/demo.py:fast (a small, minutes-long run)")


def run(args):
  # In run(): `auditdm --help` imports every command module and must not load the model stack.
  from auditdm_jax.worlds.shapes import demo  # pylint: disable=g-import-not-at-top
  config = args.config
  if args.fast:
    config = config_lib.load(config_lib.find_spec(DEFAULT_CONFIG + ":fast"))
    config_lib.dump(config, args.workdir)
  summary = demo.run(config, args.workdir)
  print(demo.format_summary(summary))
  print(f"report: {os.path.join(args.workdir, 'report.html')}")
