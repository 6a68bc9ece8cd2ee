"""The package's structure: lower layers never import higher ones, no import cycles, few in-function imports."""
import ast
import os
import pkgutil
import subprocess
import sys

import auditdm_jax

# Layers, bottom to top (DESIGN.md): a module may import its own layer or lower ones only.
LAYERS = [
    ("auditdm_jax", "auditdm_jax.io", "auditdm_jax.config", "auditdm_jax.tree_paths", "auditdm_jax.images",
     "auditdm_jax.distributed", "auditdm_jax.metrics", "auditdm_jax.sharding"),
    ("auditdm_jax.models",),
    ("auditdm_jax.sampling",),
    ("auditdm_jax.decode",),
    ("auditdm_jax.data", "auditdm_jax.evaluators", "auditdm_jax.imagegen"),
    ("auditdm_jax.train",),
    ("auditdm_jax.audit",),
    ("auditdm_jax.serving",),
    ("auditdm_jax.worlds",),
    ("auditdm_jax.commands", "auditdm_jax.main", "auditdm_jax.tools"),
]

# In-function imports of the project's own modules, {(importer, imported): one-line reason}; at most 5. main.py
# imports only the command being run, so command modules import at module level like every other module.
IN_FUNCTION_IMPORTS = {}


def _modules():
  root = os.path.dirname(auditdm_jax.__file__)
  out = {"auditdm_jax": os.path.join(root, "__init__.py")}
  for info in pkgutil.walk_packages([root], "auditdm_jax."):
    rel = info.name.split(".")[1:]
    path = os.path.join(root, *rel)
    out[info.name] = os.path.join(path, "__init__.py") if info.ispkg else path + ".py"
  return out


def _imports(path, name):
  """(module-level imports, in-function imports) of project modules, as absolute module names."""
  tree = ast.parse(open(path, encoding="utf-8").read())
  top, inner = set(), set()
  def visit(node, nested):
    for child in ast.iter_child_nodes(node):
      is_fn = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
      targets = []
      if isinstance(child, ast.Import):
        targets = [a.name for a in child.names]
      elif isinstance(child, ast.ImportFrom):
        base = child.module or ""
        if child.level:  # Relative import.
          pkg = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
          base = ".".join(pkg.split(".")[:len(pkg.split(".")) - child.level + 1] + ([base] if base else []))
        targets = [f"{base}.{a.name}" for a in child.names]
      for t in targets:
        if t.startswith("auditdm_jax"):
          (inner if nested else top).add(t)
      visit(child, nested or is_fn)
  visit(tree, False)
  return top, inner


def _resolve(target, modules):
  """`auditdm_jax.x.y` (a module, or a name in module `auditdm_jax.x`) -> the module's name."""
  while target not in modules:
    target = target.rsplit(".", 1)[0]
  return target


def _layer(name):
  best = max(((i, p) for i, group in enumerate(LAYERS) for p in group if name == p or name.startswith(p + ".")),
             key=lambda ip: len(ip[1]))
  return best[0]


def _graph():
  modules = _modules()
  top, inner = {}, {}
  for name, path in modules.items():
    t, i = _imports(path, name)
    top[name] = {_resolve(x, modules) for x in t} - {name}
    inner[name] = {_resolve(x, modules) for x in i} - {name}
  return top, inner


def test_no_upward_imports():
  top, inner = _graph()
  upward = sorted((m, d) for m, deps in top.items() for d in deps | inner[m] if _layer(d) > _layer(m)
                  and not (m == "auditdm_jax" and d.startswith("auditdm_jax.")))
  assert not upward, f"imports of a higher layer: {upward}"
  assert _layer("auditdm_jax.worlds.shapes.system") > _layer("auditdm_jax.audit.trainer")  # The table is applied.


def test_no_import_cycles():
  top, _ = _graph()
  state, cycles = {}, []
  def visit(m, stack):
    state[m] = "open"
    for d in sorted(top[m]):
      if state.get(d) == "open":
        cycles.append(stack[stack.index(d):] + [d])
      elif d not in state:
        visit(d, stack + [d])
    state[m] = "done"
  for m in sorted(top):
    if m not in state:
      visit(m, [m])
  assert not cycles, f"import cycles: {cycles}"


def test_in_function_imports_are_few_and_explained():
  _, inner = _graph()
  found = {(m, d) for m, deps in inner.items() for d in deps}
  assert found == set(IN_FUNCTION_IMPORTS), f"in-function project imports changed: {sorted(found)}"
  assert len(IN_FUNCTION_IMPORTS) <= 5


# Configs import config.py, the pp-string helpers of data/transfers.py and the VLM variant table of
# models/variants.py (for Gemma3's image-token ids); the last two import nothing beyond config.py.
CONFIG_IMPORTS = {"auditdm_jax.config", "auditdm_jax.data.transfers", "auditdm_jax.models.variants"}


def test_configs_import_nothing_heavier_than_config():
  repo, modules = os.path.dirname(os.path.dirname(auditdm_jax.__file__)), _modules()
  for folder, _, files in os.walk(os.path.join(repo, "configs")):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(folder, f)
        top, inner = _imports(path, "configs")
        top, inner = {_resolve(x, modules) for x in top}, {_resolve(x, modules) for x in inner}
        allowed = {"auditdm_jax.config"} if "audit" in folder else CONFIG_IMPORTS
        assert top | inner <= allowed, f"{f} imports {sorted(top | inner)}"
  top, _ = _graph()
  assert top["auditdm_jax.data.transfers"] == {"auditdm_jax.config"}
  assert not top["auditdm_jax.models.variants"]


def test_loading_every_config_imports_no_jax():
  """What the AST check above cannot see: the libraries config.py and its helpers pull in when run."""
  repo = os.path.dirname(os.path.dirname(auditdm_jax.__file__))
  script = ("import glob, sys\nfrom auditdm_jax import config\n"
            "for path in sorted(glob.glob('configs/**/*.py', recursive=True)):\n  config.load(path)\n"
            "print(*sys.modules)")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=repo,
                        timeout=60)
  loaded = set(proc.stdout.split())
  assert "auditdm_jax.models.variants" in loaded  # The configs were loaded.
  heavy = loaded & {"jax", "flax", "auditdm_jax.models.vlm"}
  assert not heavy, sorted(heavy)
