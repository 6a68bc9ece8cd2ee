"""big_vision-style Python configs: `path/to/config.py:arg`, `--config.key=value` overrides, JSON dumps.

A config file defines `get_config(arg=None) -> ml_collections.ConfigDict`. `arg` is a free string that the file
usually parses with `parse_arg(arg, res=448, ...)` into typed keyword arguments.
"""
import ast
import importlib.util
import json
import os

import ml_collections

from auditdm_jax import io as io_lib

CONFIG_NAME = "config.json"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # Config specs fall back to it.


class ConfigError(ValueError):
  """A config spec, argument string or override is invalid."""


def fail(key, want, value):
  """Raises ConfigError: `key` must be `want`, got `value`."""
  raise ConfigError(f"config {key} must be {want}, got {value!r}")


def check_count(section, key, prefix="", low=1):
  """section[key] must be an int >= `low` (named `prefix + key` in the error)."""
  value = section[key]
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    fail(prefix + key, f"an int >= {low}", value)


def check_number(section, key, prefix, ok, want):
  """section[key] must be a number for which `ok(value)` holds (`want` says which, in the error)."""
  value = section[key]
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
    fail(prefix + key, want, value)


def _convert(key, raw, default):
  """Converts the string `raw` to the type of `default` (or guesses it when there is none)."""
  if isinstance(default, bool):
    low = raw.lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise ConfigError(f"{key}: expected a bool, got {raw!r}")
  if default is None or isinstance(default, (tuple, list, dict)):
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    if isinstance(default, (tuple, list)) and not isinstance(value, (tuple, list)):
      raise ConfigError(f"{key}: expected a {type(default).__name__}, got {raw!r}")
    if isinstance(default, dict) and not isinstance(value, dict):
      raise ConfigError(f"{key}: expected a dict, got {raw!r}")
    return type(default)(value) if isinstance(default, (tuple, list)) else value
  if isinstance(default, int):  # Whole numbers only (1e4 is one): 2.5 or True must not become 2 or 1.
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = None
    if type(value) is float and value.is_integer():  # pylint: disable=unidiomatic-typecheck
      value = int(value)
    if type(value) is not int:  # pylint: disable=unidiomatic-typecheck
      raise ConfigError(f"{key}: expected int, got {raw!r}")
    return value
  if isinstance(default, (float, str)):
    try:
      return type(default)(raw)
    except ValueError:
      raise ConfigError(f"{key}: expected {type(default).__name__}, got {raw!r}") from None
  raise ConfigError(f"{key}: cannot override a value of type {type(default).__name__} from the command line")


def parse_arg(arg, lazy=False, **spec):
  """Parses `"a=1,b=x"` into a ConfigDict typed after the defaults in `spec` (as big_vision's `parse_arg`).

  Unknown keys are an error unless `lazy`, in which case they are kept with a guessed type.
  """
  out = ml_collections.ConfigDict(dict(spec))
  if not arg:
    return out
  for item in split_top_level(arg):
    if "=" not in item:
      # A bare word is a bool flag set to True (big_vision convention).
      key, raw = item, "True"
    else:
      key, raw = item.split("=", 1)
    key = key.strip()
    if key not in spec and not lazy:
      raise ConfigError(f"unknown config argument {key!r}; known: {sorted(spec)}")
    out[key] = _convert(key, raw.strip(), spec.get(key))
  return out


def split_top_level(text, sep=","):
  """Splits on `sep` outside brackets and quotes (so `sizes=(1,2)` stays whole); strips and drops empty parts."""
  parts, depth, quote, cur = [], 0, None, []
  for ch in text:
    if quote:
      quote = None if ch == quote else quote
    elif ch in "\"'":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == sep and depth == 0:
      parts.append("".join(cur))
      cur = []
      continue
    cur.append(ch)
  parts.append("".join(cur))
  return [p.strip() for p in parts if p.strip()]


def split_list(text):
  """A config-arg list: "a,b", "[a,b]" or "(a,b)" (the bracketed forms survive `parse_arg`) -> ["a", "b"]; items
  lose surrounding quotes. Commas inside inner brackets stay."""
  text = (text or "").strip()
  if text[:1] + text[-1:] in ("[]", "()"):
    text = text[1:-1]
  return [p.strip("\"' ") for p in split_top_level(text)]


def parse_weights(text):
  """ "spatial:3" or "[spatial:3,counting:0.5]" -> {"spatial": 3.0, "counting": 0.5}; the names are the caller's
  to check. A ConfigError names an item that is not name:number or a name given twice."""
  weights = {}
  for item in split_list(text):
    name, _, raw = (p.strip() for p in item.partition(":"))
    try:
      weight = float(raw)
    except ValueError:
      raise ConfigError(f"weight {item!r} is not name:number") from None
    if name in weights:
      raise ConfigError(f"weight for {name!r} given twice in {text!r}")
    weights[name] = weight
  return weights


def find_spec(spec):
  """Config paths are tried relative to the working directory, then to the repository root."""
  path, sep, arg = spec.partition(":")
  if not os.path.isfile(path) and os.path.isfile(os.path.join(REPO_ROOT, path)):
    path = os.path.join(REPO_ROOT, path)
  return path + sep + arg


def load(spec):
  """Loads `path/to/file.py[:arg]` and returns its `get_config(arg)`."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file not found: {path!r}")
  module_name = "auditdm_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} defines no get_config(arg=None)")
  config = module.get_config(arg or None)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict, got {type(config).__name__}")
  return config


def override(config, items):
  """Applies `["a.b=1", "lr=1e-5"]` in place, typed after the current values; returns `config`."""
  for item in items:
    if "=" not in item:
      raise ConfigError(f"override {item!r} is not of the form key=value")
    dotted, raw = item.split("=", 1)
    node, keys = config, dotted.split(".")
    for i, key in enumerate(keys):
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        raise ConfigError(f"unknown config key {'.'.join(keys[:i + 1])!r} in override {item!r}")
      if i < len(keys) - 1:
        node = node[key]
    current = node[keys[-1]]
    if isinstance(current, ml_collections.ConfigDict):
      raise ConfigError(f"{dotted!r} is a config block; override its fields, e.g. {dotted}.<field>=...")
    node[keys[-1]] = _convert(dotted, raw, current)
  return config


def resolve(spec, overrides=()):
  """`load(spec)` then `override(...)`."""
  return override(load(spec), overrides)


def to_dict(config):
  """A JSON-serialisable plain dict of the config."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def dump(config, workdir, name=CONFIG_NAME):
  """Writes the resolved config as JSON into `workdir` (atomically); returns the path."""
  path = os.path.join(workdir, name)
  io_lib.write_json(path, to_dict(config))
  return path
