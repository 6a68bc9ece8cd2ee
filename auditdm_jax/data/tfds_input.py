"""Per-host input pipelines: TFDS / JSONL / image-folder sources, weighted mixing, exact resume, eval batches.

A source is a dict (a ConfigDict works), one of:
  {"name": "vqav2", "split": "train", "data_dir": None, "weight": 1.0, "pp": None}   a TFDS dataset
  {"jsonl": "/path/gen.jsonl", "weight": 0.5, "pp": None}                           JSONL rows (jsonl_source.py)
  {"folder": "/path/images"}                                                        an image folder
`pp` overrides the pipeline's common pp string for that source (sources may have different fields; each must
produce the same keys/shapes after its pp).

Training input (`TrainInput`) is infinite: each source is sharded per process (jax.process_index), shuffled with a
seed, repeated, preprocessed, and the sources are interleaved by a seeded stateless categorical draw per example.
Its state is the number of examples this process has consumed; `TrainInput(..., state=s)` resumes exactly by
skipping that many raw (undecoded) examples in each source, so no image is decoded twice.
"""
import atexit
import logging
import weakref

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from auditdm_jax.data import builders  # noqa: F401  (registers the benchmark builders with TFDS)
from auditdm_jax.data import jsonl_source
from auditdm_jax.data.builders import catalog
from auditdm_jax.data import pp as pp_lib

log = logging.getLogger(__name__)

_MIX_BLOCK = 4096  # mixing choices are drawn in blocks of this many examples
_RUNNING = weakref.WeakSet()  # The numpy iterators of tf.data pipelines, until they finish or are closed.


def _iterate(ds):
  """`iter(tfds.as_numpy(ds))`, closed at interpreter exit if it is still running (`_close_running`)."""
  it = iter(tfds.as_numpy(ds))
  _RUNNING.add(it)
  return it


@atexit.register
def _close_running():
  """Stops the pipelines still running when the interpreter exits (a script's TrainInput, or one a traceback
  keeps alive): one whose pp calls Python (`tok`) can otherwise hang the exit for ever."""
  for it in list(_RUNNING):
    it.close()


def _process():
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index(), jax.process_count()


def _get(source, key, default=None):
  return source[key] if key in source and source[key] is not None else default


def source_kind(source):
  kinds = [k for k in ("name", "jsonl", "folder") if _get(source, k)]
  if len(kinds) != 1:
    raise ValueError(f"a data source needs exactly one of name/jsonl/folder, got {dict(source)}")
  return kinds[0]


def raw_dataset(source, process_index=0, process_count=1, shuffle_files=False, seed=0):
  """This process's share of a source as an ordered, finite dataset of raw examples; returns (ds, num_examples).

  TFDS images stay encoded (the `decode` pp op decodes them) so skipping and shuffling are cheap. A source's
  `transform` names a dataset-level function of `builders.catalog.TRANSFORMS` (e.g. "refcoco_flat": one example
  per referring expression), applied before counting.
  """
  ds, n = _read(source, process_index, process_count, shuffle_files, seed)
  transform = _get(source, "transform")
  if transform:
    if transform not in catalog.TRANSFORMS:
      raise ValueError(f"unknown source transform {transform!r}; known: {sorted(catalog.TRANSFORMS)}")
    ds = catalog.TRANSFORMS[transform](ds)
    n = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
  return ds, n


def _read(source, process_index, process_count, shuffle_files, seed):
  kind = source_kind(source)
  if kind == "jsonl":
    return jsonl_source.jsonl_dataset(source["jsonl"], image_key=_get(source, "image_key", "image"),
                                      process_index=process_index, process_count=process_count,
                                      on_missing_image=_get(source, "on_missing_image", "skip"))
  if kind == "folder":
    return jsonl_source.folder_dataset(source["folder"], process_index, process_count)
  builder = tfds.builder(source["name"], data_dir=_get(source, "data_dir"))
  split = _get(source, "split", "train")
  if process_count > 1:
    split = tfds.even_splits(split, n=process_count)[process_index]
  decoders = {k: tfds.decode.SkipDecoding() for k, f in builder.info.features.items()
              if isinstance(f, tfds.features.Image)}
  read_config = tfds.ReadConfig(shuffle_seed=seed, skip_prefetch=True, add_tfds_id=False)
  ds = builder.as_dataset(split=split, shuffle_files=shuffle_files, decoders=decoders, read_config=read_config)
  n = int(ds.cardinality())
  if n < 0:
    n = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
  return ds, n


def _attach_rng(seed, source_id):
  def fn(i, ex):
    ex = dict(ex)
    ex["_rng"] = tf.stack([tf.constant(seed * 1000 + source_id, tf.int64), i])
    return ex
  return fn


def _options():
  opts = tf.data.Options()
  opts.deterministic = True
  opts.experimental_optimization.map_parallelization = True
  return opts


def _mix_choices(block, weights, seed):
  """Source ids of the `_MIX_BLOCK` examples of mixing block `block` [_MIX_BLOCK] (stateless, seeded)."""
  u = tf.random.stateless_uniform([_MIX_BLOCK], seed=tf.stack([tf.constant(seed, tf.int64), block]))
  cum = tf.constant(np.cumsum(weights) / np.sum(weights), tf.float32)
  return tf.minimum(tf.searchsorted(cum, u, side="right"), len(weights) - 1)


def mix_counts(num_examples, weights, seed):
  """How many examples each source contributed to the first `num_examples` mixed examples [len(weights)]."""
  counts = np.zeros(len(weights), np.int64)
  full, rest = divmod(num_examples, _MIX_BLOCK)
  for b in range(full + (rest > 0)):
    ids = _mix_choices(tf.constant(b, tf.int64), weights, seed).numpy()
    ids = ids[:rest] if b == full else ids
    counts += np.bincount(ids, minlength=len(weights))
  return counts


class TrainInput:
  """Infinite, shuffled, per-process batches (numpy dicts) over weighted sources, with exact resume.

  Args:
    sources: list of source dicts (see module doc); `weight` defaults to 1.
    pp: the common pp string (a source's own `pp` takes precedence).
    batch_size: GLOBAL batch size; each process yields batch_size // process_count examples per batch.
    seed: shuffling/mixing/pp randomness seed.
    state: a `state()` dict from an earlier run to resume from.
  """

  def __init__(self, sources, pp, batch_size, seed=0, shuffle_buffer=10_000, prefetch=2, state=None,
               process_index=None, process_count=None):
    if not sources:
      raise ValueError("TrainInput needs at least one source")
    if process_index is None:
      process_index, process_count = _process()
    if batch_size % process_count:
      raise ValueError(f"batch size {batch_size} is not divisible by the process count {process_count}")
    self.sources = [dict(s) for s in sources]
    weights = [_get(s, "weight", 1.0) for s in self.sources]
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
      raise ValueError(f"source weights must be numbers, got {weights}")
    self.weights = [float(w) for w in weights]
    if not all(0 <= w < float("inf") for w in self.weights) or sum(self.weights) <= 0:  # NaN fails 0 <= w.
      raise ValueError(f"source weights must be finite and >= 0 with a positive sum, got {self.weights}")
    self.pp, self.seed = pp, seed
    self.local_batch_size = batch_size // process_count
    self.shuffle_buffer, self.prefetch = shuffle_buffer, prefetch
    self.process_index, self.process_count = process_index, process_count
    self.consumed = int((state or {}).get("consumed", 0))
    self._iter = None

  def state(self):
    """JSON-serialisable resume state: examples consumed by this process so far."""
    return {"consumed": self.consumed}

  def _source_dataset(self, i, source, skip):
    ds, n = raw_dataset(source, self.process_index, self.process_count, shuffle_files=True, seed=self.seed + i)
    ds = ds.shuffle(min(self.shuffle_buffer, n), seed=self.seed + i, reshuffle_each_iteration=True).repeat()
    ds = ds.enumerate().skip(skip).map(_attach_rng(self.seed, i))
    fn = pp_lib.get_preprocess_fn(_get(source, "pp", self.pp))
    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def dataset(self):
    """The tf.data pipeline starting after `self.consumed` examples."""
    live = [i for i, w in enumerate(self.weights) if w > 0]
    weights = [self.weights[i] for i in live]
    if len(live) == 1:
      ds = self._source_dataset(live[0], self.sources[live[0]], self.consumed)
    else:
      skips = mix_counts(self.consumed, weights, self.seed)
      datasets = [self._source_dataset(i, self.sources[i], int(k)) for i, k in zip(live, skips)]
      first_block = self.consumed // _MIX_BLOCK
      choices = tf.data.Dataset.range(first_block, 2**62).map(
          lambda b: tf.cast(_mix_choices(b, weights, self.seed), tf.int64)).unbatch().skip(self.consumed % _MIX_BLOCK)
      ds = tf.data.Dataset.choose_from_datasets(datasets, choices, stop_on_empty_dataset=True)
    ds = ds.batch(self.local_batch_size, drop_remainder=True).prefetch(self.prefetch)
    return ds.with_options(_options())

  def __iter__(self):
    return self

  def __next__(self):
    if self._iter is None:
      self._iter = _iterate(self.dataset())
    batch = next(self._iter)
    self.consumed += self.local_batch_size
    return batch


def eval_batches(source, pp, batch_size, process_index=None, process_count=None):
  """Yields (numpy batch dict, num_valid) over this process's share of `source`, once, in order.

  Every process yields the same number of batches (padded with copies marked invalid: `batch["_valid"]`
  is False there), so sharded eval steps stay in lock-step across hosts. `batch_size` is GLOBAL.
  """
  if process_index is None:
    process_index, process_count = _process()
  local = batch_size // process_count
  ds, n = raw_dataset(source, process_index, process_count)
  num_batches = -(-n // local)
  if process_count > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    num_batches = int(np.max(multihost_utils.process_allgather(np.int32(num_batches))))
  ds = ds.map(pp_lib.get_preprocess_fn(_get(source, "pp", pp)), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  # padded_batch: variable-length fields (e.g. a list of reference answers) are padded with "" / 0.
  ds = ds.padded_batch(local).prefetch(2).with_options(_options())
  yielded = 0
  for batch in _iterate(ds):
    valid = len(next(iter(batch.values())))
    yield _pad(batch, local, valid), valid
    yielded += 1
  while yielded < num_batches:  # other processes have one more batch
    yield _pad(_first(batch), local, 0), 0
    yielded += 1


def _first(batch):
  return {k: v[:1] for k, v in batch.items()}


def _pad(batch, size, valid):
  """Pads every array of `batch` to `size` rows by repeating its first row; adds `_valid` [size] bool."""
  out = {}
  for k, v in batch.items():
    reps = size - len(v)
    out[k] = np.concatenate([v, np.repeat(v[:1], reps, axis=0)]) if reps else v
  out["_valid"] = np.arange(size) < valid
  return out
