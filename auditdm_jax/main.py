"""The `auditdm` command line.

Every module in `auditdm_jax/commands/` is one subcommand (file `train_auditor.py` -> `auditdm train-auditor`): a
registry by module name, as big_vision's. A command module defines `HELP` (one line, a string literal), optionally
`DEFAULT_CONFIG` (a config spec relative to the repository), `CONFIG_KEYS` (a tuple literal: the top-level keys its
config must have), `check_config(config)` and `check_args(args)` (raise on a bad config value or flag; all are
checked before the workdir is claimed), `DEFAULT_WORKDIR`, `WORKDIR_REQUIRED`, `add_arguments(parser)` and
`config_spec(args)` (the spec to resolve, when a flag picks it), and `run(args)`, where `args.config` is the
resolved ConfigDict (or None) and `args.workdir` exists and holds the resolved `config.json` (claimed by that
config: see auditdm_jax/workdir.py).

Only the module of the command being run is imported, so a command imports what it needs at module level. The
listing (`auditdm --help`, a missing or unknown command) reads each `HELP` from the module's source instead.

Errors: `run` raises; main prints one line `auditdm <cmd>: error: <what> (<file>:<line>)` and exits 1 (2 for bad
usage, a bad config or a workdir made by another config; 130 on Ctrl-C, 143 on SIGTERM); `--debug` shows the
traceback instead.

Config flags follow big_vision: `--config configs/x.py:arg` and any number of `--config.key=value` overrides.
"""
import argparse
import ast
import importlib
import importlib.util
import logging
import os
import pkgutil
import signal
import sys
import threading

from auditdm_jax import commands as commands_pkg
from auditdm_jax import compile_cache
from auditdm_jax import config as config_lib
from auditdm_jax import errors
from auditdm_jax import hugepages
from auditdm_jax import workdir as workdir_lib

log = logging.getLogger("auditdm")
REPO_ROOT = workdir_lib.REPO_ROOT


def discover():
  """{command name: module name} for every module in auditdm_jax/commands (none of them is imported)."""
  found = {}
  for info in pkgutil.iter_modules(commands_pkg.__path__):
    if not info.name.startswith("_"):
      found[info.name.replace("_", "-")] = f"{commands_pkg.__name__}.{info.name}"
  return dict(sorted(found.items()))


def read_constant(module_name, name):
  """A command module's module-level literal `name` (None if it has none), read from its source: listing the
  commands must not import them (and the model stack with them)."""
  path = importlib.util.find_spec(module_name).origin
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  for node in tree.body:
    if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:
      return ast.literal_eval(node.value)
  return None


def read_help(module_name):
  """A command module's `HELP`, read from its source."""
  text = read_constant(module_name, "HELP")
  if text is None:
    raise ValueError(f"{importlib.util.find_spec(module_name).origin} has no module-level `HELP = \"...\"`")
  return text


def check_config_kind(command, module, config, spec, commands):
  """Fails when `config` lacks a top-level key in the command's `CONFIG_KEYS` (e.g. the shapes world's pretraining
  config given to `auditdm demo`), naming the missing keys, the command's default config and the commands the
  config does fit (their keys read from source: only the running command's module is imported)."""
  missing = [k for k in getattr(module, "CONFIG_KEYS", ()) if k not in config]
  if not missing:
    return
  fits = [f"`auditdm {name}`" for name, module_name in commands.items()
          if name != command and (keys := read_constant(module_name, "CONFIG_KEYS")) and all(k in config for k in keys)]
  default = getattr(module, "DEFAULT_CONFIG", None)
  raise config_lib.ConfigError(
      f"{spec} is not a config for `auditdm {command}`: it has no {', '.join(missing)}" +
      (f" (its default config: {default})" if default else "") + (f"; it fits {', '.join(fits)}" if fits else ""))


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


def _parser():
  """The top-level parser and its subparsers."""
  parser = argparse.ArgumentParser(prog="auditdm", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  return parser, parser.add_subparsers(dest="command", metavar="COMMAND", required=True)


def listing_parser(commands):
  """Every command by name and HELP, without their flags: prints `auditdm --help` and usage errors, and finds the
  command in argv."""
  parser, sub = _parser()
  for name, module_name in commands.items():
    sub.add_parser(name, help=read_help(module_name), add_help=False)  # `<cmd> --help` is build_parser's.
  return parser


def build_parser(name, module):
  """The parser of command `name` (its imported module), with all of its flags."""
  parser, sub = _parser()
  default_config = getattr(module, "DEFAULT_CONFIG", None)
  p = sub.add_parser(name, help=module.HELP, description=module.HELP)
  p.add_argument("--workdir", default=getattr(module, "DEFAULT_WORKDIR", None),
                 help="output directory (resolved config, checkpoints, metrics)")
  p.add_argument("--config", default=default_config,
                 help="config spec path/to/config.py[:arg]" + (f" (default {default_config})" if default_config
                                                               else ""))
  change = p.add_mutually_exclusive_group()
  change.add_argument("--resume-with-changes", dest="on_change", action="store_const", const="resume",
                      default="refuse", help="the workdir was made by another config: keep its data and go on")
  change.add_argument("--overwrite", dest="on_change", action="store_const", const="overwrite",
                      help="the workdir was made by another config: delete its contents and start over")
  p.add_argument("--log-level", default="INFO")
  p.add_argument("--debug", action="store_true", help="show the traceback of an error")
  if hasattr(module, "add_arguments"):
    module.add_arguments(p)
  return parser


def _prepare(module, args, overrides, commands):
  """Resolves the config, checks that it is one for the command and claims the workdir (auditdm_jax/workdir.py)."""
  if getattr(module, "WORKDIR_REQUIRED", False) and not args.workdir:
    raise errors.InputError("--workdir is required (outputs, checkpoints and metrics go there)")
  spec = module.config_spec(args) if hasattr(module, "config_spec") else args.config
  args.config_spec = spec
  if spec:
    args.config = config_lib.resolve(_resolve_spec(spec), overrides)
    check_config_kind(args.command, module, args.config, spec, commands)
    if hasattr(module, "check_config"):
      module.check_config(args.config)
  elif overrides:
    raise config_lib.ConfigError(f"--config.* overrides given but `{args.command}` takes no --config")
  if hasattr(module, "check_args"):
    module.check_args(args)
  if args.workdir:
    args.workdir = os.path.abspath(os.path.expanduser(args.workdir))
    if args.config is not None:
      log.info("resolved config written to %s",
               workdir_lib.claim(args.workdir, args.config, args.command, args.on_change))
    else:
      os.makedirs(args.workdir, exist_ok=True)


def _one_line(exc):
  """The error message of `exc` on one line, with the file (and line) it points at."""
  if isinstance(exc, OSError) and exc.strerror:
    text = exc.strerror
  elif isinstance(exc, SyntaxError):
    text = f"syntax error: {exc.msg}"
  elif isinstance(exc, (OSError, ValueError, KeyError, ImportError)):  # InputError and ConfigError are ValueErrors.
    text = str(exc) or type(exc).__name__
  else:  # Not an expected failure: name the exception type, and say how to see where it came from.
    text = f"{type(exc).__name__}: {exc} (--debug shows the traceback)"
  text = " ".join(text.split())
  text = text if len(text) <= 600 else text[:597] + "..."
  where = errors.location(exc)
  return f"{text} ({where})" if where and where not in text else text


class _Interrupts:
  """Ctrl-C while a checkpointing loop runs asks it to save and stop (as its SIGTERM handler does, see
  train/checkpoint.py); a second Ctrl-C, or one outside such a loop, stops at once (KeyboardInterrupt)."""

  def __init__(self):
    self.count, self._previous = 0, None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._on_sigint)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)

  def _on_sigint(self, signum, frame):
    self.count += 1
    on_sigterm = signal.getsignal(signal.SIGTERM)
    if self.count > 1 or not callable(on_sigterm):
      raise KeyboardInterrupt
    log.warning("Ctrl-C: saving a checkpoint at the end of this step, then stopping (Ctrl-C again: stop now)")
    on_sigterm(signum, frame)


def main(argv=None):
  """Runs one command; returns its exit code: 0, 1 (error), 2 (bad usage, config or workdir), 128 + the signal
  (130: Ctrl-C; 143: SIGTERM, after a training loop saved its checkpoint)."""
  if argv is None:  # A program's entry point (not a caller's): restarts once with huge pages where they help.
    hugepages.reexec_if_useful()
  argv = sys.argv[1:] if argv is None else list(argv)
  commands = discover()
  listing = listing_parser(commands)
  try:
    argv, overrides = _split_overrides(argv)
  except config_lib.ConfigError as e:
    listing.exit(2, f"auditdm: error: {e}\n")
  # The listing exits on --help and on a missing or unknown command; otherwise it names the one module to import.
  command = listing.parse_known_args(argv)[0].command
  module = importlib.import_module(commands[command])
  args = build_parser(command, module).parse_args(argv)
  logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                      format="%(asctime)s %(levelname).1s %(name)s] %(message)s", datefmt="%H:%M:%S",
                      force=True)  # absl (imported by jax/tf) installs a WARNING handler first
  logging.getLogger("absl").setLevel(max(logging.WARNING, logging.getLogger().level))  # orbax's chatter
  if "jax" in sys.modules:  # The command's module imported it: programs compiled by earlier runs are read back.
    compile_cache.enable()
  prefix = f"auditdm {args.command}"
  # The error boundary: failures are one line, never a traceback (unless --debug).
  usage_error = True  # Until the config is resolved and the workdir claimed.
  try:
    with _Interrupts():
      _prepare(module, args, overrides, commands)
      usage_error = False
      rc = module.run(args) or 0
  except KeyboardInterrupt as e:  # Ctrl-C, or checkpoint_lib.Preempted after a SIGTERM / Ctrl-C save.
    if args.debug:
      raise
    signum = getattr(e, "signum", signal.SIGINT)
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    print(f"{prefix}: {what}; finished work is saved, rerun the same command to resume", file=sys.stderr)
    return 128 + signum
  except Exception as e:  # pylint: disable=broad-except
    if args.debug:
      raise
    print(f"{prefix}: error: {_one_line(e)}", file=sys.stderr)
    return 2 if usage_error else 1
  return rc


if __name__ == "__main__":
  sys.exit(main())
