"""`auditdm generate`: the trained auditor turns an image pool into new labelled (image, question, answer) pairs.

Each source batch of the system's pool is one shard: the auditor proposes K pairs per source example
(`generate.samples_per_source`), target and references answer, pairs are labelled by the reference consensus and
kept per `generate.keep` ("consensus": the references agree, the paper's training data; "failures": only pairs the
target gets wrong; "all"). Layout under `<workdir>/dataset/`:
  shard-00007.jsonl            records of shard 7 (written atomically once its images are on disk)
  images/00007/<sha1>.png      content-addressed images
  data.jsonl                   all shards, deduplicated in shard order (rows: image, question, answer, ...)
Resumable: a shard whose JSONL exists is done; a killed run loses at most the shard in flight and a rerun redoes
it identically (per-shard seeds), so there is neither loss nor duplication. `--ray` fans the shards out over Ray
workers (each builds the system from the config once; `ray.init()` joins the cluster at $RAY_ADDRESS, else starts a
local one); a shard whose worker dies is retried elsewhere, and the records equal a single-process run's.
"""
import collections
import functools
import hashlib
import json
import logging
import os

import jax
import numpy as np

from auditdm_jax import config as config_lib
from auditdm_jax import images as images_lib
from auditdm_jax import io as io_lib
from auditdm_jax import progress
from auditdm_jax import workdir as workdir_lib
from auditdm_jax.audit import divergence
from auditdm_jax.audit import rollout
from auditdm_jax.audit import trainer
from auditdm_jax.errors import InputError
from auditdm_jax.train import checkpoint as checkpoint_lib

log = logging.getLogger(__name__)

KEEP = ("consensus", "failures", "all")
RAY_RETRIES = 3  # Retries of a shard whose Ray worker died.
RECORD_KEYS = ("id", "source_id", "mode", "instruction", "question", "answer", "image", "source_image",
               "counterfactual", "target_answer", "reference_answers", "label", "agreement", "failure", "reward",
               "truth", "category", "skill")


def _save_png(root, shard, data):
  rel = os.path.join("images", f"{shard:05d}", hashlib.sha1(data).hexdigest() + ".png")
  path = os.path.join(root, rel)
  if not os.path.exists(path):
    io_lib.write_bytes(path, data)
  return rel


def dedup_key(record):
  """Two records are duplicates when they ask the same (normalised) question about the same image."""
  return f"{os.path.basename(record['image'])}|{divergence.normalize_answer(record['question'])}"


def shard_records(samples, shard, root, keep="consensus", skill_fn=None):
  """Rollout samples -> deduplicated records (images written under root)."""
  if keep not in KEEP:
    raise ValueError(f"generate.keep must be one of {KEEP}, got {keep!r}")
  out, seen = [], set()
  for s in samples:
    if not (s.valid and s.well_formed):
      continue
    if (keep == "consensus" and not s.consensus) or (keep == "failures" and not s.failure):
      continue
    source_rel = _save_png(root, shard, images_lib.png_bytes(s.source_image))
    cf = s.image is not None
    image_rel = _save_png(root, shard, images_lib.png_bytes(s.image)) if cf else source_rel
    rec = dict(source_id=s.source_id, mode=s.mode, instruction=s.instruction, question=s.question,
               answer=s.label, image=image_rel, source_image=source_rel, counterfactual=cf,
               target_answer=s.target_answer, reference_answers=s.reference_answers, label=s.label,
               agreement=s.agreement, failure=s.failure, reward=s.reward, truth=s.truth,
               category=rollout.flag_category(s) if s.judged and s.failure else None,
               skill=skill_fn(s.question) if skill_fn else None)
    key = dedup_key(rec)
    if key in seen:
      continue
    seen.add(key)
    rec["id"] = hashlib.sha1(key.encode()).hexdigest()[:16]
    out.append(rec)
  return out


def shard_path(root, shard):
  return os.path.join(root, f"shard-{shard:05d}.jsonl")


def generate_shard(system, params, config, shard, root):
  """Audits pool[shard] and writes its shard file; returns the number of records."""
  g = config.generate
  run_rollout = rollout.Rollout.from_config(system, config, group_size=g.samples_per_source)
  res = run_rollout(params, system.pool[shard], jax.random.fold_in(jax.random.PRNGKey(config.seed), shard),
                    seed=config.seed * 100_003 + shard, baseline=g.baseline)
  records = shard_records(res.samples, shard, root, g.keep, system.skill_fn)
  io_lib.write_text(shard_path(root, shard), "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
  return len(records), res.counters


def consolidate(root, num_shards):
  """Merges all shard files into data.jsonl, deduplicated in shard order; returns the record count."""
  seen, lines = set(), []
  for k in range(num_shards):
    with open(shard_path(root, k), encoding="utf-8") as f:
      for line in f:
        rec = json.loads(line)
        key = dedup_key(rec)
        if key not in seen:
          seen.add(key)
          lines.append(json.dumps(rec, sort_keys=True) + "\n")
  io_lib.write_text(os.path.join(root, "data.jsonl"), "".join(lines))
  return len(lines)


def check_auditor_mode(config):
  """Refuses an auditor (`generate.auditor_workdir`, a `train-auditor` workdir: its config.json) trained in another
  rollout mode than `config.mode`: GRPO trained that mode's actions only, so the others would still be the
  initial auditor's. Workdirs without a config.json (the demo's, iterate's) are not checked."""
  workdir = config.generate.auditor_workdir
  trained = (workdir_lib.recorded_config(workdir) or {}).get("mode") if workdir else None
  if trained not in (None, config.mode):
    raise InputError(f"generate.auditor_workdir holds an auditor trained in mode {trained!r}, not this config's "
                     f"mode {config.mode!r}: pass --config.mode={trained}, or train an auditor in mode "
                     f"{config.mode!r}", os.path.join(workdir, config_lib.CONFIG_NAME))


def load_auditor(system, auditor_workdir):
  """The auditor params of the latest checkpoint in `auditor_workdir` ("" = the system's initial params)."""
  if not auditor_workdir:
    return system.params
  if not os.path.isdir(os.path.join(auditor_workdir, "checkpoints")):
    raise FileNotFoundError(2, "no auditor checkpoints (generate.auditor_workdir must be a train-auditor workdir)",
                            os.path.join(auditor_workdir, "checkpoints"))
  ckpt = checkpoint_lib.Checkpointer(auditor_workdir, handle_sigterm=False)
  # Restored onto one device, whatever mesh the auditor was trained on (rollouts run unsharded here).
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=device),
                        system.params)
  restored = ckpt.restore_latest(params=target)
  ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"no auditor checkpoint in {auditor_workdir}/checkpoints")
  log.info("auditor from %s step %d", auditor_workdir, restored["step"])
  return restored["params"]


@functools.lru_cache(maxsize=1)
def _worker_system(config_json, workdir):
  """(config, system, auditor params), built once per Ray worker process and reused for its next shards."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(json.loads(config_json))
  system = trainer.build_system(config, workdir)
  return config, system, load_auditor(system, config.generate.auditor_workdir)


def _ray_shard(config_json, workdir, shard, root):
  config, system, params = _worker_system(config_json, workdir)
  return generate_shard(system, params, config, shard, root)


def generate(config, workdir, system=None, use_ray=False):
  """Generates every missing shard, then consolidates. Returns dict(records, shards, done_before, dataset,
  failures: image_failures / answer_failures / reference_failures / malformed summed over the shards generated by this call)."""
  root = os.path.join(workdir, "dataset")
  os.makedirs(root, exist_ok=True)
  if use_ray:
    try:
      import ray  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError("--ray needs Ray: pip install 'ray[default]' (or run without --ray)") from None
  system = system or trainer.build_system(config, workdir)
  num = len(system.pool)
  todo = [k for k in range(num) if not os.path.exists(shard_path(root, k))]
  log.info("%d/%d shards to generate in %s", len(todo), num, root)
  totals = collections.Counter()
  if use_ray:
    # A shard whose worker dies is retried on another worker; it rewrites the same file from the same seeds.
    remote = ray.remote(max_retries=RAY_RETRIES)(_ray_shard)
    for _, counters in ray.get([remote.remote(config.to_json(), workdir, k, root) for k in todo]):
      totals.update(counters)
  else:
    params = load_auditor(system, config.generate.auditor_workdir)
    for k in progress.track(todo, initial=num - len(todo), desc="generate", unit="shard"):
      n, counters = generate_shard(system, params, config, k, root)
      totals.update(counters)
      log.info("shard %d: %d records %s", k, n, counters)
  records = consolidate(root, num)
  return dict(records=records, shards=num, done_before=num - len(todo), dataset=os.path.join(root, "data.jsonl"),
              failures=dict(totals))
