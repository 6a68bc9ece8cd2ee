"""`auditdm show-config`: resolve a config (file, arg, overrides) and print it as JSON."""
import json

from auditdm_jax import config as config_lib

HELP = "resolve a config file with its arg and --config.* overrides and print it as JSON"


def run(args):
  if args.config is None:
    raise config_lib.ConfigError("--config is required")
  print(json.dumps(config_lib.to_dict(args.config), indent=2, sort_keys=True))
