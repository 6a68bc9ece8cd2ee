"""`auditdm finetune`: fine-tune a PaliGemma VLM on a task (configs/paligemma2/transfers/*.py), resumable."""
import json

from auditdm_jax import distributed

HELP = "fine-tune a VLM on a task (PaliGemma2 transfers; rectification mixes in generated data); resumes"
DEFAULT_CONFIG = "configs/paligemma2/transfers/tiny.py"
DEFAULT_WORKDIR = None


def run(args):
  from auditdm_jax.train import sft  # pylint: disable=g-import-not-at-top
  if not args.workdir:
    raise SystemExit("auditdm finetune: --workdir is required (checkpoints, metrics and evals go there)")
  distributed.initialize()
  results = sft.train(args.config, args.workdir)
  print(json.dumps(results, indent=2, sort_keys=True))
