"""ANLS (DocVQA): max over reference answers of 1 - normalised Levenshtein distance, 0 when that distance >= τ."""
from auditdm_jax.evaluators import common

THRESHOLD = 0.5


def levenshtein(a, b):
  """Edit distance (insertions, deletions, substitutions all cost 1)."""
  if len(a) < len(b):
    a, b = b, a
  prev = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    cur = [i]
    for j, cb in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
    prev = cur
  return prev[-1]


def _norm(text):
  return " ".join(text.strip().lower().split())


def anls(prediction, answers, threshold=THRESHOLD):
  """Average Normalised Levenshtein Similarity of one question (as the DocVQA challenge computes it)."""
  if not answers:
    raise ValueError("anls needs at least one reference answer")
  pred, best = _norm(prediction), 0.0
  for answer in answers:
    gt = _norm(answer)
    dist = levenshtein(pred, gt) / max(len(pred), len(gt), 1)
    best = max(best, 1.0 - dist if dist < threshold else 0.0)
  return best


class Evaluator(common.BaseEvaluator):
  """DocVQA. The pp_fn must keep `answers` and `question_id`."""
  fields = ("question_id", "question", "answers")

  def per_example(self, record, extra):
    return {"anls": anls(record["prediction"], record["answers"])}
