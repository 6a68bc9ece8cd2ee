"""The roles of one audit as a typed interface, checked when a system is built (Tunix-style: one small role each).

A world (`auditdm_jax/worlds/<name>/system.py`) provides `build(system_config, workdir) -> System`;
`config.system.module` names that module. The audit loop knows only these roles:
  policy      the auditor (`Policy`), and `params` its initial params
  target      the answerer under audit (`Answerer`); references: the reference ensemble (`References`)
  generator   the image generator (`imagegen.Generator`); None for a world that only asks questions
  data        `data(step) -> source batch` (dict image [B, H, W, 3] uint8, id [B], and for the fixed-question modes
              question [B]), deterministic in the step (exact resume); eval_data: a fixed list of source batches
              (success-rate evaluation); pool: `len(pool)` / `pool[k]`, the batches `generate` turns into new pairs
World knowledge, None when a world has none: `truth_fn(image, question) -> answer | None` (ground truth),
`format_fn(text, kind) -> bool` (the world's grammar), `posed_fn(image, question) -> bool` (whether the question
has a defined answer on that image: an ill-posed pair earns no reward), `skill_fn(question) -> skill name` (the
report's labels; it may name a planted weakness), `type_fn(question) -> question type` (the reward's diversity
term, `divergence.spread`; it must not know any planted weakness).
What one command needs beyond the roles is explicit and checked where it is used (`System.require`):
`rectification` (`auditdm rectify` / `iterate`) and `test_sets` (the shapes demo's fixed evaluation sets).
"""
import dataclasses
from typing import Any, Callable, Optional, Protocol, runtime_checkable


@runtime_checkable
class Policy(Protocol):
  """The auditor. sample: images [B, H, W, 3] uint8 and B instructions -> `rollout.Completions` with N = B *
  num_samples rows (the samples of one image contiguous); logprobs: [N, L] log-probabilities of batch["tokens"]
  (pure and jittable in params)."""

  def sample(self, params, images, instructions, num_samples, rng): ...

  def logprobs(self, params, batch): ...


@runtime_checkable
class Answerer(Protocol):
  """answer(images, questions) -> one answer per item, None where that item failed (dropped and counted)."""
  name: str

  def answer(self, images, questions): ...


@runtime_checkable
class References(Protocol):
  """The reference ensemble: `names` and answer(images, questions) -> one answer list per reference."""

  @property
  def names(self): ...

  def answer(self, images, questions): ...


@runtime_checkable
class Generator(Protocol):
  """Image generation: every returned item is an image or a `GenerationError` in its place."""

  def generate(self, prompts, seeds=None): ...

  def edit(self, images, instructions, seeds=None): ...


@dataclasses.dataclass(frozen=True)
class Rectification:
  """What rectification needs from a world (see audit/rectify.py).

  target_spec: dict(model=dict(variant, res, llm, img), model_init=.npz path, tokenizer=.model path);
  original_data: SFT sources (dicts with jsonl/name, weight, pp) of the target's training set;
  evaluate_target(params or None for the current target) -> dict of accuracies;
  with_target(npz path) -> System auditing the rectified target (the next refinement iteration).
  """
  target_spec: dict
  original_data: list
  evaluate_target: Callable[[Any], dict]
  with_target: Callable[[str], "System"]


@dataclasses.dataclass(frozen=True)
class System:
  """The roles of one audit (module docstring). Built once per run; raises TypeError on a missing role."""
  policy: Policy
  params: Any
  target: Answerer
  references: References
  generator: Optional[Generator]
  data: Callable[[int], dict]
  eval_data: list
  pool: Any = None
  truth_fn: Optional[Callable[[Any, str], Optional[str]]] = None
  format_fn: Optional[Callable[[str, str], bool]] = None
  posed_fn: Optional[Callable[[Any, str], bool]] = None
  skill_fn: Optional[Callable[[str], str]] = None
  type_fn: Optional[Callable[[str], str]] = None
  rectification: Optional[Rectification] = None
  test_sets: Any = None

  def __post_init__(self):
    roles = [("policy", Policy), ("target", Answerer), ("references", References)]
    if self.generator is not None:
      roles.append(("generator", Generator))
    for name, kind in roles:
      if not isinstance(getattr(self, name), kind):
        raise TypeError(f"System.{name} must implement {kind.__name__} ({kind.__doc__.split('.')[0]}); got "
                        f"{type(getattr(self, name)).__name__}")
    for name in ("data", "truth_fn", "format_fn", "posed_fn", "skill_fn", "type_fn"):
      value = getattr(self, name)
      if (name == "data" or value is not None) and not callable(value):
        raise TypeError(f"System.{name} must be callable, got {type(value).__name__}")
    if not isinstance(self.eval_data, list):
      raise TypeError(f"System.eval_data must be a list of source batches, got {type(self.eval_data).__name__}")

  def require(self, extra, purpose):
    """The world-specific extra `extra` (e.g. "rectification"); a clear error when this world has none."""
    value = getattr(self, extra)
    if value is None:
      raise ValueError(f"{purpose} needs `{extra}` from the system, which this world's build() does not provide")
    return value
