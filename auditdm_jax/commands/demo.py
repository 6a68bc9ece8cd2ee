"""`auditdm demo`: the whole AuditDM loop on the embedded shapes world, on CPU (resumable stage by stage)."""
import os

HELP = "run the whole loop on the shapes world: pretrain -> GRPO auditor -> generate -> rectify -> report"
DEFAULT_CONFIG = "configs/audit/demo.py"
DEFAULT_WORKDIR = "runs/demo"


def add_arguments(parser):
  parser.add_argument("--fast", action="store_true",
                      help="the config's `fast` argument, e.g. configs/audit/demo.py:fast (a small, minutes-long run)")


def config_spec(args):
  """--fast adds the `fast` argument to the config spec (so the workdir records the fast config)."""
  if not args.fast:
    return args.config
  return args.config + (",fast" if ":" in args.config else ":fast")


def run(args):
  from auditdm_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from auditdm_jax import main  # pylint: disable=g-import-not-at-top
  from auditdm_jax.audit import demo  # pylint: disable=g-import-not-at-top
  from auditdm_jax.demo import pretrain as pretrain_lib  # pylint: disable=g-import-not-at-top
  config = args.config

  def ensure_models(models_dir):
    names = [config.system.auditor, config.system.target, *config.system.references]
    if os.path.exists(os.path.join(models_dir, "tokenizer.model")) and all(
        os.path.exists(os.path.join(models_dir, n, "model_config.json")) for n in names):
      return models_dir  # Given with --config.system.models_dir, or cached by an earlier run.
    # Same as `auditdm demo-pretrain --workdir <workdir>` (models cached under <workdir>/pretrain/<name>/), without
    # overwriting this run's config.json: the pretraining config is written beside its models.
    spec = main._resolve_spec(config.pretrain_config)  # pylint: disable=protected-access
    pre_config = config_lib.resolve(spec, [f"weakness={config.system.weakness}"])
    config_lib.dump(pre_config, models_dir)
    pretrain_lib.pretrain_all(pre_config, os.path.dirname(models_dir))
    return models_dir

  summary = demo.run(config, args.workdir, ensure_models)
  print(demo.format_summary(summary))
  print(f"report: {os.path.join(args.workdir, 'report.html')}")
