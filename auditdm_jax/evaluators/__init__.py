"""Task evaluators, looked up by module name: `type="vqa"` -> `auditdm_jax.evaluators.vqa.Evaluator`."""
import importlib


def get(type_name):
  """The `Evaluator` class of evaluator module `type_name` (a module in this package or a full module path)."""
  path = type_name if "." in type_name else f"{__name__}.{type_name}"
  try:
    module = importlib.import_module(path)
  except ModuleNotFoundError as e:
    if e.name != path:
      raise
    raise ValueError(f"unknown evaluator type {type_name!r} (no module {path})") from None
  if not hasattr(module, "Evaluator"):
    raise ValueError(f"evaluator module {path} defines no Evaluator class")
  return module.Evaluator
