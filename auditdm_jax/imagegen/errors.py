"""The error of one image-generation item, shared by the client and the generators (the service's request errors
are in `auditdm_jax.httpserve`)."""


class GenerationError(Exception):
  """One item could not be generated. Generators return it in place of that item's image (they never raise for
  one bad item), so callers can skip the item and keep the rest of the batch.

  Attributes: `status` (HTTP status of the last attempt, or None), `attempts` (requests made), `ill_posed` (True
  when the text itself has no rendering, e.g. an edit naming an object the image lacks: the author's fault, which
  the audit penalises like an ill-posed question, not a failure of the generator, which it drops).
  """
  ill_posed = False

  def __init__(self, message, status=None, attempts=0):
    super().__init__(message)
    self.status = status
    self.attempts = attempts
