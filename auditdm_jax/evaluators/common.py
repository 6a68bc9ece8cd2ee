"""What every evaluator shares: run a predict function over an eval split, gather records, write outputs.

A predict function maps `(params, batch) -> list[str]` (one decoded prediction per row of the batch, e.g. the
sampler's greedy output). An evaluator subclass names the batch fields it keeps in each record (`fields`) and
the ones it only needs for scoring (`score_fields`, e.g. full-resolution masks), and defines
`per_example(record, extra) -> dict of scores` and optionally `aggregate(records)` for corpus-level metrics.
"""
import json
import logging
import os
import time

import numpy as np

from auditdm_jax import io as io_lib
from auditdm_jax import progress
from auditdm_jax.data import tfds_input

log = logging.getLogger(__name__)


def to_python(value):
  """numpy/bytes batch values -> JSON-able Python (bytes -> str, arrays -> lists, "" padding dropped in lists)."""
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, np.ndarray):
    if value.ndim == 0:
      return to_python(value.item())
    items = [to_python(v) for v in value]
    return [v for v in items if v != ""] if value.dtype == object else items
  if isinstance(value, np.generic):
    return value.item()
  return value


def gather_records(records):
  """All processes' records, in process order (every process gets the full list)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return records
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  blob = np.frombuffer(json.dumps(records).encode("utf-8"), np.uint8)
  sizes = multihost_utils.process_allgather(np.int64(blob.size))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[:blob.size] = blob
  blobs = multihost_utils.process_allgather(padded)
  out = []
  for size, b in zip(sizes, blobs):
    out.extend(json.loads(bytes(b[:int(size)]).decode("utf-8")))
  return out


class BaseEvaluator:
  """Runs `predict_fn` over `data` (a source dict, see tfds_input) preprocessed by `pp_fn`, then scores.

  Args:
    predict_fn: `(params, batch) -> list[str]`.
    data: source dict, e.g. {"name": "vqav2", "split": "validation", "data_dir": ...}.
    pp_fn: pp string producing the model inputs plus the fields the metric needs.
    batch_size: global eval batch size.
    outdir: where `<name>.predictions.jsonl` and `<name>.metrics.json` are written (None: not written).
    name: the eval's name (prefix of the metric keys).
    max_examples: evaluate only the first N examples (None: all).
  """
  fields = ()  # batch keys copied into each record (and the predictions JSONL)
  score_fields = ()  # batch keys passed to per_example but not stored

  def __init__(self, predict_fn, data, pp_fn, batch_size, outdir=None, name=None, max_examples=None, **kwargs):
    if kwargs:
      raise ValueError(f"{type(self).__module__}: unknown evaluator arguments {sorted(kwargs)}")
    self.predict_fn, self.data, self.pp_fn, self.batch_size = predict_fn, dict(data), pp_fn, batch_size
    self.outdir, self.name, self.max_examples = outdir, name or type(self).__module__.rsplit(".", 1)[-1], max_examples

  def predict(self, params):
    """Per-example records `{**fields, "prediction": str, "scores": {...}}` of this process."""
    records = []
    for batch, valid in progress.track(tfds_input.eval_batches(self.data, self.pp_fn, self.batch_size),
                                       desc=f"eval {self.name}", unit="batch"):
      missing = [f for f in self.fields + self.score_fields if f not in batch]
      if missing:
        raise ValueError(f"eval {self.name}: pp_fn must keep {missing} for the metric; batch has {sorted(batch)}")
      texts = self.predict_fn(params, batch)
      for i in range(valid):
        rec = {f: to_python(batch[f][i]) for f in self.fields}
        rec["prediction"] = texts[i]
        rec["scores"] = self.per_example(rec, {f: batch[f][i] for f in self.score_fields})
        records.append(rec)
      if self.max_examples and len(records) >= self.max_examples:
        break
    return records[:self.max_examples] if self.max_examples else records

  def per_example(self, record, extra):
    """Scores of one record, e.g. {"acc": 1.0} (the metric is their mean); `extra` holds the score_fields."""
    raise NotImplementedError

  def aggregate(self, records):
    """Metrics over all records: means of the per-example scores (subclasses add corpus-level metrics)."""
    keys = records[0]["scores"].keys() if records else ()
    return {k: float(np.mean([r["scores"][k] for r in records])) for k in keys}

  def run(self, params):
    """Predicts, scores, writes predictions JSONL + metrics JSON (process 0); returns {name/metric: value}."""
    import jax  # pylint: disable=g-import-not-at-top
    start = time.time()
    records = gather_records(self.predict(params))
    metrics = {f"{self.name}/{k}": v for k, v in self.aggregate(records).items()}
    metrics[f"{self.name}/num_examples"] = len(records)
    if self.outdir and jax.process_index() == 0:
      io_lib.write_text(os.path.join(self.outdir, f"{self.name}.predictions.jsonl"),
                        "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
      io_lib.write_json(os.path.join(self.outdir, f"{self.name}.metrics.json"), metrics)
    log.info("eval %s: %s (%d examples, %.1fs)", self.name, metrics, len(records), time.time() - start)
    return metrics
