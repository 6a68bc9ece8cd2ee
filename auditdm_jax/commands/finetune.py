"""`auditdm finetune`: fine-tune a PaliGemma VLM on a task (configs/paligemma2/transfers/*.py), resumable."""
import json

from auditdm_jax import distributed
from auditdm_jax.train import sft

HELP = "fine-tune a VLM on a task (PaliGemma2 transfers; rectification mixes in generated data); resumes"
WORKDIR_REQUIRED = True
DEFAULT_CONFIG = "configs/paligemma2/transfers/tiny.py"
CONFIG_KEYS = ("model", "input", "tokenizer")


def check_config(config):
  sft.check_config(config)


def run(args):
  distributed.initialize()
  results = sft.train(args.config, args.workdir, checked=True)  # main ran check_config before the workdir.
  print(json.dumps(results, indent=2, sort_keys=True))
