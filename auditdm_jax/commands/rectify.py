"""`auditdm rectify`: fine-tune the target on its original data mixed with generated pairs, then evaluate."""
import json

HELP = "fine-tune the target on original + generated data (--config.rectify.dataset=.../data.jsonl) and evaluate"
WORKDIR_REQUIRED = True
DEFAULT_CONFIG = "configs/audit/demo.py"


def run(args):
  from auditdm_jax.audit import rectify  # pylint: disable=g-import-not-at-top
  print(json.dumps(rectify.rectify(args.config, args.workdir), indent=2))
