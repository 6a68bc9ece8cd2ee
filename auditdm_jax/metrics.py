"""Metric writer: JSONL always (one object per step), TensorBoard when a writer backend is installed."""
import json
import logging
import os
import time

import numpy as np

from auditdm_jax import io

log = logging.getLogger(__name__)


def _scalar(value):
  value = np.asarray(value)
  if value.size != 1:
    raise ValueError(f"metrics must be scalars, got shape {value.shape}")
  return value.item()


class MetricWriter:
  """Appends `{"step": s, "time": t, **scalars}` lines to `<workdir>/metrics.jsonl` and mirrors to TensorBoard.

  `after_step` (a run resumed from that step's checkpoint): the rows of later steps, logged before the stop and
  about to be logged again, are dropped first (TensorBoard: purged).
  """

  def __init__(self, workdir, tensorboard=True, filename="metrics.jsonl", after_step=None):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, filename)
    if after_step is not None and os.path.exists(self.path):
      with open(self.path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
      kept = [line for line in lines if _step(line) is not None and _step(line) <= after_step]
      if len(kept) < len(lines):
        log.info("dropping %d metric rows past step %d from %s", len(lines) - len(kept), after_step, self.path)
        io.write_text(self.path, "".join(line if line.endswith("\n") else line + "\n" for line in kept))
    self._file = open(self.path, "a", encoding="utf-8")
    self._tb = None
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        purge = {} if after_step is None else {"purge_step": after_step + 1}
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), **purge)
      except ImportError:
        log.info("tensorboardX not installed: metrics go to %s only", self.path)

  def write(self, step, **scalars):
    record = {"step": int(step), "time": time.time()}
    record.update({k: _scalar(v) for k, v in scalars.items()})
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in record.items():
        if k not in ("step", "time") and isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, int(step))
    return record

  def close(self):
    self._file.close()
    if self._tb is not None:
      self._tb.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _step(line):
  """The step of a metrics.jsonl line; None for a line torn by a kill mid-write."""
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError, TypeError):
    return None


def read(path):
  """Reads a metrics.jsonl file back into a list of dicts."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
