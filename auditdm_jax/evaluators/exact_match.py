"""Exact-match accuracy (GQA, AI2D): prediction == answer after stripping and lower-casing."""
from auditdm_jax.evaluators import common


def normalize(text):
  """Lower-cased, whitespace collapsed, a trailing period dropped (models often end answers with one)."""
  text = " ".join(text.strip().lower().split())
  return text[:-1].rstrip() if text.endswith(".") else text


def exact_match(prediction, answer):
  return float(normalize(prediction) == normalize(answer))


class Evaluator(common.BaseEvaluator):
  """The pp_fn must keep `answer` (one string) and `question_id`."""
  fields = ("question_id", "question", "answer")

  def per_example(self, record, extra):
    return {"acc": exact_match(record["prediction"], record["answer"])}
