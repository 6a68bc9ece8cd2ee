"""Errors of the image-generation layer, shared by the service, the client and the backends."""


class GenerationError(Exception):
  """One item could not be generated. Generators return it in place of that item's image (they never raise for
  one bad item), so callers can skip the item and keep the rest of the batch.

  Attributes: `status` (HTTP status of the last attempt, or None), `attempts` (requests made).
  """

  def __init__(self, message, status=None, attempts=0):
    super().__init__(message)
    self.status = status
    self.attempts = attempts


class InvalidRequest(ValueError):
  """A request the service rejects as malformed (HTTP 400); the message names the field."""


class QueueFull(RuntimeError):
  """The service's queue is at its bound (HTTP 429): retry later."""


class Unavailable(RuntimeError):
  """The service cannot take the request now (HTTP 503): shutting down, or the mode's pipeline is not loaded."""
