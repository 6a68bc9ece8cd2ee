"""OK-VQA accuracy: the VQAv2 metric (same normalisation, leave-one-out over the 10 answers)."""
from auditdm_jax.evaluators import vqa


class Evaluator(vqa.Evaluator):
  """OK-VQA. The pp_fn must keep `answers` and `question_id`."""
