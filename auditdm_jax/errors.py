"""Errors a user can fix (bad input, a workdir made by another config), and where they point.

The CLI prints these as one line, `auditdm <cmd>: error: <message> (<file>:<line>)`, without a traceback.
"""


class InputError(ValueError):
  """Bad input data or files: `path` and, for line-based files, the 1-based `line` it was found at."""

  def __init__(self, message, path=None, line=None):
    super().__init__(message)
    self.path, self.line = path, line

  def where(self):
    """`file:line`, `file` or None."""
    if self.path is None:
      return None
    return f"{self.path}:{self.line}" if self.line is not None else str(self.path)


class WorkdirMismatch(InputError):
  """A workdir (or a stage in it) was made by a different config than the one given now."""


def location(exc):
  """`file[:line]` an exception points at, when it says: InputError, OSError (filename), SyntaxError."""
  if isinstance(exc, InputError):
    return exc.where()
  if isinstance(exc, SyntaxError) and exc.filename:
    return f"{exc.filename}:{exc.lineno}" if exc.lineno else exc.filename
  if isinstance(exc, OSError) and exc.filename:
    return str(exc.filename)
  return None
