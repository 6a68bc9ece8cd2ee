"""Metric writer: JSONL always (one object per step), TensorBoard when a writer backend is installed."""
import json
import logging
import os
import time

import numpy as np

log = logging.getLogger(__name__)


def _scalar(value):
  value = np.asarray(value)
  if value.size != 1:
    raise ValueError(f"metrics must be scalars, got shape {value.shape}")
  return value.item()


class MetricWriter:
  """Appends `{"step": s, "time": t, **scalars}` lines to `<workdir>/metrics.jsonl` and mirrors to TensorBoard."""

  def __init__(self, workdir, tensorboard=True, filename="metrics.jsonl"):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, filename)
    self._file = open(self.path, "a", encoding="utf-8")
    self._tb = None
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
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


def read(path):
  """Reads a metrics.jsonl file back into a list of dicts."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
