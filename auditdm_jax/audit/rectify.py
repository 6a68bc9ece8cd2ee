"""`auditdm rectify` / `auditdm iterate`: fine-tune the target on its original data mixed with the auditor's pairs.

Rectification = the SFT loop (`train/sft.py`, the PaliGemma transfer recipe) over
`[original split (weight 1 - mix), generated data.jsonl (weight mix)]`, starting from the target's weights, then an
evaluation of the fine-tuned target. What is model/world specific comes from the system's `rectification`
(`audit.system.Rectification`: target_spec, original_data, evaluate_target, with_target).
`rectify.balance_answers` (B > 1) evens out the generated pairs' consensus answers within each question type
(`System.type_fn`): a trained auditor tends to find one direction of a failure ("no" where the target says "yes"),
and fine-tuning on those alone teaches the answer, not the skill. Each (type, answer) group is written
min(B, round(largest group of its type / its size)) times; no record is dropped.
`iterate` runs N refinement iterations (train auditor -> generate -> rectify), each a `workdir.stage` in its own
directory: a rerun with the same config skips finished stages and resumes the unfinished one from its checkpoints.
"""
import collections
import json
import logging
import os

import jax
import ml_collections

from auditdm_jax import io as io_lib
from auditdm_jax import workdir as workdir_lib
from auditdm_jax.audit import divergence
from auditdm_jax.audit import generate as generate_lib
from auditdm_jax.audit import trainer
from auditdm_jax.data import jsonl_source
from auditdm_jax.data import transfers
from auditdm_jax.models import checkpoints
from auditdm_jax.models import vlm
from auditdm_jax.train import checkpoint as checkpoint_lib
from auditdm_jax.train import sft

log = logging.getLogger(__name__)

PREFIX_PP = 'strfmt("answer en {question}", outkey="prefix")'


def check_balance_answers(max_repeat):
  """`rectify.balance_answers` must be an int >= 1 (1: off)."""
  if not isinstance(max_repeat, int) or isinstance(max_repeat, bool) or max_repeat < 1:
    raise ValueError(f"rectify.balance_answers must be an int >= 1 (1: off), got {max_repeat!r}")


def answer_repeats(records, type_fn=None, max_repeat=1):
  """How many copies of each record balance the consensus answers within each question type (at most
  `max_repeat`; type_fn None: one type). Returns [int] aligned with `records`."""
  check_balance_answers(max_repeat)
  keys = [(type_fn(r["question"]) if type_fn else "", divergence.normalize_answer(r["answer"])) for r in records]
  sizes = collections.Counter(keys)
  largest = collections.Counter()
  for (kind, _), n in sizes.items():
    largest[kind] = max(largest[kind], n)
  return [min(max_repeat, round(largest[k[0]] / sizes[k])) for k in keys]


def read_generated(dataset_jsonl):
  """The records of a data.jsonl written by `auditdm generate`; SourceError (file:line) on a bad one."""
  records = []
  for line, r in jsonl_source.read_jsonl(dataset_jsonl, with_lines=True):
    missing = [k for k in ("image", "question", "answer", "id") if k not in r]
    if missing:
      raise jsonl_source.SourceError(f"record has no {missing} (not written by `auditdm generate`?)",
                                     dataset_jsonl, line)
    records.append(r)
  return records


def write_training_jsonl(records, dataset_jsonl, out_path, type_fn=None, balance_answers=1):
  """`read_generated(dataset_jsonl)` records -> rows {image (path relative to out_path's dir), question, answer}
  for the SFT input, each written `answer_repeats` times. Returns the number of rows written."""
  src_dir, out_dir = os.path.dirname(os.path.abspath(dataset_jsonl)), os.path.dirname(os.path.abspath(out_path))
  rows = []
  for r, copies in zip(records, answer_repeats(records, type_fn, balance_answers)):
    image = os.path.relpath(os.path.join(src_dir, r["image"]), out_dir)
    rows += [json.dumps(dict(image=image, question=r["question"], answer=r["answer"], id=r["id"])) + "\n"] * copies
  io_lib.write_text(out_path, "".join(rows))
  return len(rows)


def sft_config(target_spec, original_data, generated_jsonl, rc):
  """The SFT config of a rectification run. rc: config.rectify (mix, steps, lr, wd, batch_size, text_len, ...)."""
  res = target_spec["model"]["res"]
  c = ml_collections.ConfigDict()
  c.model = target_spec["model"]
  c.model_init = target_spec["model_init"]
  c.tokenizer = target_spec["tokenizer"]
  m = c.model
  cfg = vlm.get_config(m["variant"], res=res, llm=dict(m.get("llm") or {}), img=dict(m.get("img") or {}))
  if cfg.family == "gemma3":  # Chat template; text_len must fit the image's placeholder tokens.
    train_pp = "|".join([transfers.image_pp(res), transfers.gemma3_text_pp(
        c.tokenizer, rc.text_len, cfg.image_token_id, cfg.mm_tokens_per_image)])
  else:
    train_pp = "|".join([transfers.image_pp(res), PREFIX_PP, 'copy("answer", "suffix")',
                         transfers.train_text_pp(c.tokenizer, rc.text_len)])
  original = [dict(s, weight=(1.0 - rc.mix) * s.get("weight", 1.0), pp=s.get("pp") or train_pp)
              for s in original_data]
  c.input = dict(data=original + [dict(jsonl=generated_jsonl, weight=rc.mix, pp=train_pp)], pp=train_pp,
                 batch_size=rc.batch_size, shuffle_buffer=rc.get("shuffle_buffer", 10_000))
  c.total_steps = rc.steps
  c.optimizer, c.lr, c.wd, c.grad_clip_norm = "adamw", rc.lr, rc.wd, 1.0
  c.schedule = dict(decay_type="cosine", warmup_percent=rc.get("warmup_percent", 0.05))
  c.grad_accum_steps, c.mesh, c.seed = 1, rc.get("mesh", dict(data=-1)), rc.get("seed", 0)
  c.log_every_steps, c.ckpt_every_steps, c.keep_ckpts = rc.get("log_every", 50), rc.steps, 1
  c.evals = {}
  return c


def finetune(target_spec, original_data, generated_jsonl, rc, workdir):
  """Runs the SFT loop (resumable) and returns (host params of the rectified target, its .npz path)."""
  c = sft_config(target_spec, original_data, generated_jsonl, rc)
  sft.train(c, workdir)
  cfg = sft.model_config(c)
  ckpt = checkpoint_lib.Checkpointer(workdir, handle_sigterm=False)
  params = ckpt.restore_latest(params=vlm.abstract_params(cfg))["params"]
  ckpt.close()
  npz = os.path.join(workdir, "target.npz")
  checkpoints.save_npz(npz, params)
  return jax.device_get(params), npz


def rectify(config, workdir, system=None, dataset_jsonl=None):
  """Fine-tunes the system's target on original + generated data; returns before/after evaluations."""
  dataset_jsonl = dataset_jsonl or config.rectify.dataset
  if not dataset_jsonl or not os.path.exists(dataset_jsonl):
    raise FileNotFoundError(2, "generated dataset not found: set --config.rectify.dataset=<generate workdir>/"
                            "dataset/data.jsonl", dataset_jsonl)
  balance = config.rectify.get("balance_answers", 1)
  check_balance_answers(balance)  # Bad settings or data fail here, before any model is loaded.
  records = read_generated(dataset_jsonl)
  system = system or trainer.build_system(config, workdir)
  train_jsonl = os.path.join(workdir, "rectify_data", "generated.jsonl")
  rows = write_training_jsonl(records, dataset_jsonl, train_jsonl, system.type_fn, balance)
  log.info("rectifying with %d generated pairs in %d rows (answers balanced, at most %d copies; mix %.2f)",
           len(records), rows, balance, config.rectify.mix)
  hooks = system.require("rectification", "rectification")
  before = hooks.evaluate_target(None)
  params, npz = finetune(hooks.target_spec, hooks.original_data, train_jsonl, config.rectify,
                         os.path.join(workdir, "rectify"))
  after = hooks.evaluate_target(params)
  out = dict(generated_pairs=len(records), training_rows=rows, before=before, after=after, target_npz=npz)
  io_lib.write_json(os.path.join(workdir, "rectify_results.json"), out)
  return out


def iterate(config, workdir, system=None):
  """`config.iterations` refinement iterations: train auditor on the latest target -> generate -> rectify."""
  system = system or trainer.build_system(config, workdir)
  history = []
  for it in range(config.iterations):
    base = os.path.join(workdir, f"iter{it}")
    aud_dir = os.path.join(base, "auditor")
    workdir_lib.stage(aud_dir, config, lambda: trainer.train(config, aud_dir, system)[1])
    gen_cfg = ml_collections.ConfigDict(config.to_dict())
    gen_cfg.generate.auditor_workdir = aud_dir
    gen = workdir_lib.stage(os.path.join(base, "generate"), gen_cfg,
                            lambda: generate_lib.generate(gen_cfg, os.path.join(base, "generate"), system))
    rect = workdir_lib.stage(os.path.join(base, "rectify"), config,
                             lambda: rectify(config, os.path.join(base, "rectify"), system, gen["dataset"]))
    history.append(dict(iteration=it, generated=gen["records"], before=rect["before"], after=rect["after"]))
    system = system.require("rectification", "the next refinement iteration").with_target(rect["target_npz"])
  io_lib.write_json(os.path.join(workdir, "iterate_results.json"), history)
  return history
