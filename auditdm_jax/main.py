"""The `auditdm` command line.

Every module in `auditdm_jax/commands/` is one subcommand (file `train_auditor.py` -> `auditdm train-auditor`). A
command module defines `HELP` (one line), optionally `DEFAULT_CONFIG` (a config spec relative to the repository),
`DEFAULT_WORKDIR`, `WORKDIR_REQUIRED` and `add_arguments(parser)`, and `run(args)`, where `args.config` is the
resolved ConfigDict (or None) and `args.workdir` exists and holds the resolved `config.json`.

Config flags follow big_vision: `--config configs/x.py:arg` and any number of `--config.key=value` overrides.
"""
import argparse
import importlib
import logging
import os
import pkgutil
import sys

from auditdm_jax import commands as commands_pkg
from auditdm_jax import config as config_lib

log = logging.getLogger("auditdm")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def discover():
  """{command name: module} for every module in auditdm_jax/commands."""
  found = {}
  for info in pkgutil.iter_modules(commands_pkg.__path__):
    if not info.name.startswith("_"):
      found[info.name.replace("_", "-")] = f"{commands_pkg.__name__}.{info.name}"
  return dict(sorted(found.items()))


_resolve_spec = config_lib.find_spec  # Config paths: the working directory, then the repository root.


def _split_overrides(argv):
  """Pulls `--config.k=v` / `--config.k v` out of argv; returns (rest, overrides)."""
  rest, overrides, i = [], [], 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config."):
      body = a[len("--config."):]
      if "=" not in body:
        if i + 1 >= len(argv):
          raise config_lib.ConfigError(f"{a} needs a value")
        body, i = f"{body}={argv[i + 1]}", i + 1
      overrides.append(body)
    else:
      rest.append(a)
    i += 1
  return rest, overrides


def build_parser(modules):
  parser = argparse.ArgumentParser(prog="auditdm", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  for name, module in modules.items():
    default_config = getattr(module, "DEFAULT_CONFIG", None)
    p = sub.add_parser(name, help=module.HELP, description=module.HELP)
    p.add_argument("--workdir", default=getattr(module, "DEFAULT_WORKDIR", None),
                   help="output directory (resolved config, checkpoints, metrics)")
    p.add_argument("--config", default=default_config,
                   help="config spec path/to/config.py[:arg]" + (f" (default {default_config})" if default_config
                                                                 else ""))
    p.add_argument("--log-level", default="INFO")
    if hasattr(module, "add_arguments"):
      module.add_arguments(p)
  return parser


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  modules = {name: importlib.import_module(path) for name, path in discover().items()}
  parser = build_parser(modules)
  try:
    argv, overrides = _split_overrides(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname).1s %(name)s] %(message)s", datefmt="%H:%M:%S",
                        force=True)  # absl (imported by jax/tf) installs a WARNING handler first
    logging.getLogger("absl").setLevel(max(logging.WARNING, logging.getLogger().level))  # orbax's chatter
    args.config_spec = args.config
    if args.config:
      args.config = config_lib.resolve(_resolve_spec(args.config), overrides)
    elif overrides:
      raise config_lib.ConfigError(f"--config.* overrides given but `{args.command}` takes no --config")
  except config_lib.ConfigError as e:
    parser.exit(2, f"auditdm: config error: {e}\n")
  if getattr(modules[args.command], "WORKDIR_REQUIRED", False) and not args.workdir:
    parser.exit(2, f"auditdm {args.command}: --workdir is required (outputs, checkpoints and metrics go there)\n")
  if args.workdir:
    args.workdir = os.path.abspath(os.path.expanduser(args.workdir))
    os.makedirs(args.workdir, exist_ok=True)
    if args.config is not None:
      log.info("resolved config written to %s", config_lib.dump(args.config, args.workdir))
  return modules[args.command].run(args) or 0


if __name__ == "__main__":
  sys.exit(main())
