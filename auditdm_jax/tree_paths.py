"""Parameter names: "/"-joined paths (`llm/layers/attn/q_einsum/w`) and regex masks over them.

Sharding rules, weight-decay masks, frozen-parameter masks and LoRA targets all select parameters by these names.
"""
import re

import jax


def _key_name(key):
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_name(keypath):
  """`(DictKey('llm'), DictKey('w'))` -> `"llm/w"`."""
  return "/".join(_key_name(k) for k in keypath)


def tree_map_with_names(fn, tree, *rest, is_leaf=None):
  """Like `jax.tree.map` but `fn(name, leaf, *rest_leaves)` also receives the leaf's "/"-joined name."""
  return jax.tree_util.tree_map_with_path(
      lambda kp, x, *r: fn(path_name(kp), x, *r), tree, *rest, is_leaf=is_leaf)


def names(tree):
  """All leaf names of `tree`, in tree-flatten order."""
  return [path_name(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def compile_regex(pattern):
  """A regex, a list of regexes (joined with `|`) or None (matches nothing) -> compiled pattern or None."""
  if pattern is None or pattern == "" or pattern == []:
    return None
  if isinstance(pattern, re.Pattern):
    return pattern
  if not isinstance(pattern, str):
    pattern = "|".join(f"(?:{p})" for p in pattern)
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ValueError(f"bad parameter-name regex {pattern!r}: {e}") from e


def match_mask(tree, pattern):
  """Bool tree: True where the leaf name matches `pattern` (`re.search`). None pattern -> all False."""
  rx = compile_regex(pattern)
  return tree_map_with_names(lambda n, _: bool(rx is not None and rx.search(n)), tree)


def flatten(tree, prefix=""):
  """{"a": {"b": x}} -> {"a/b": x}."""
  out = {}
  for k, v in tree.items():
    path = f"{prefix}{k}"
    if hasattr(v, "items") and not hasattr(v, "shape"):
      out.update(flatten(v, path + "/"))
    else:
      out[path] = v
  return out


def unflatten(flat):
  """{"a/b": x} -> {"a": {"b": x}} (the inverse of `flatten`)."""
  tree = {}
  for path, v in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree
