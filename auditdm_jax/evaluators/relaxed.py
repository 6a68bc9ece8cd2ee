"""ChartQA relaxed accuracy: numbers may be off by 5% relative to the answer; other answers must match exactly."""
from auditdm_jax.evaluators import common

MAX_RELATIVE_CHANGE = 0.05


def _to_float(text):
  try:
    return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
  except ValueError:
    return None


def relaxed_correctness(prediction, answer, max_relative_change=MAX_RELATIVE_CHANGE):
  """As in the ChartQA / Pix2Struct evaluation: a numeric answer (not 0) allows a relative error up to 5%."""
  prediction, answer = prediction.strip(), answer.strip()
  p, t = _to_float(prediction), _to_float(answer)
  if p is not None and t:
    return float(abs(p - t) / abs(t) <= max_relative_change)
  return float(prediction.lower() == answer.lower())


class Evaluator(common.BaseEvaluator):
  """ChartQA. The pp_fn must keep `answer` and `question_id`."""
  fields = ("question_id", "question", "answer")

  def per_example(self, record, extra):
    return {"relaxed_acc": relaxed_correctness(record["prediction"], record["answer"])}
