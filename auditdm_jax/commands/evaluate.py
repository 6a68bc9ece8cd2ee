"""`auditdm evaluate`: run a config's evaluators on a checkpoint; writes predictions JSONL + metrics JSON."""
import json
import os

from auditdm_jax import distributed
from auditdm_jax import sharding
from auditdm_jax.models import vlm
from auditdm_jax.train import checkpoint as checkpoint_lib
from auditdm_jax.train import sft

HELP = "evaluate a VLM checkpoint with a config's evaluators (writes <eval>.predictions.jsonl/.metrics.json)"
WORKDIR_REQUIRED = True
DEFAULT_CONFIG = "configs/paligemma2/transfers/tiny.py"
CONFIG_KEYS = ("model", "tokenizer")


def add_arguments(parser):
  parser.add_argument("--checkpoint", required=True,
                      help="a finetune workdir (latest checkpoint), a .npz or a HF PaliGemma2 directory")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step in a finetune workdir (default latest)")


def check_config(config):
  if not config.get("evals"):
    raise ValueError("the config has no evals (config.evals: {name: dict(type, data, pp_fn, batch_size)})")
  sft.check_evals(config)


def load_checkpoint_params(config, path, step=None):
  """Params from a finetune workdir (orbax), a big_vision .npz or a HF directory, placed on the config's mesh."""
  cfg = sft.model_config(config)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    abstract = vlm.abstract_params(cfg)
    shardings = sharding.param_shardings(abstract, sharding.make_mesh(config.get("mesh")))
    with checkpoint_lib.Checkpointer(path, handle_sigterm=False) as ckpt:
      step = ckpt.latest_step() if step is None else step
      if step is None:
        raise FileNotFoundError(2, "no checkpoint in the finetune workdir", os.path.join(path, "checkpoints"))
      params = ckpt.restore(step, params=checkpoint_lib.abstract(abstract, shardings))["params"]
    return cfg, params, step
  config = config.copy_and_resolve_references()
  config.model_init = path
  params, _ = sft.load_params(config, cfg, vlm.get_model(cfg), sharding.make_mesh(config.get("mesh")), None)
  return cfg, params, None


def run(args):
  distributed.initialize()
  cfg, params, step = load_checkpoint_params(args.config, args.checkpoint, args.step)
  results = sft.evaluate(args.config, params, args.workdir, cfg=cfg, step=step)
  print(json.dumps(results, indent=2, sort_keys=True))
