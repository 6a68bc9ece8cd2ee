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

  def ensure_models(models_dir):
    names = [config.system.auditor, config.system.target, *config.system.references]
    if os.path.exists(os.path.join(models_dir, "tokenizer.model")) and all(
        os.path.exists(os.path.join(models_dir, n, "meta.json")) for n in names):
      return models_dir  # Given with --config.system.models_dir, or cached by an earlier run.
    # Same as `auditdm demo-pretrain --workdir <workdir>` (models cached under <workdir>/pretrain/<name>/), without
    # overwriting this run's config.json: the pretraining config is written beside its models.
    spec = config_lib.find_spec(config.pretrain_config)
    pre_config = config_lib.resolve(spec, [f"weakness={config.system.weakness}"])
    config_lib.dump(pre_config, models_dir)
    demo.pretrain.pretrain_all(pre_config, os.path.dirname(models_dir))
    return models_dir

  summary = demo.run(config, args.workdir, ensure_models)
  print(demo.format_summary(summary))
  print(f"report: {os.path.join(args.workdir, 'report.html')}")
