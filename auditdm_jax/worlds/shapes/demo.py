"""The whole AuditDM loop on the shapes world: pretrain (cached) -> train auditor -> audit vs baseline ->
generate -> rectify -> report. Every stage resumes (checkpoints, `workdir.stage` records keyed by the config), so a
rerun with the same config skips finished work.

Measured and printed:
  - failure-search success rate of the trained auditor vs the prompt-only baseline (initial auditor, p^b prompts),
  - audit precision against ground truth (flagged pairs where the target is truly wrong and the consensus right),
  - target accuracy on the planted-weakness slice and overall, before/after rectification, and the share of the
    weakness gap (references' weakness accuracy - target's) closed.
"""
import json
import logging
import os

import ml_collections
import numpy as np

from auditdm_jax import config as config_lib
from auditdm_jax import io as io_lib
from auditdm_jax import metrics as metrics_lib
from auditdm_jax import workdir as workdir_lib
from auditdm_jax.audit import config_check
from auditdm_jax.audit import generate as generate_lib
from auditdm_jax.audit import rectify as rectify_lib
from auditdm_jax.audit import report
from auditdm_jax.audit import rollout
from auditdm_jax.audit import trainer
from auditdm_jax.worlds.shapes import pretrain
from auditdm_jax.worlds.shapes import system as shapes_system
from auditdm_jax.worlds.shapes import tasks

log = logging.getLogger(__name__)


def ensure_models(config, models_dir):
  """Makes sure the demo models of `config.system` exist in `models_dir` (pretraining them if not); returns it."""
  names = [config.system.auditor, config.system.target, *config.system.references]
  if os.path.exists(os.path.join(models_dir, "tokenizer.model")) and all(
      os.path.exists(os.path.join(models_dir, n, "meta.json")) for n in names):
    return models_dir  # Given with --config.system.models_dir, or cached by an earlier run.
  # Same as `auditdm demo-pretrain --workdir <workdir>` (models cached under <workdir>/pretrain/<name>/), without
  # overwriting this run's config.json: the pretraining config is written beside its models.
  spec = config_lib.find_spec(config.pretrain_config)
  pre_config = config_lib.resolve(spec, [f"weakness={config.system.weakness}"])
  config_lib.dump(pre_config, models_dir)
  pretrain.pretrain_all(pre_config, os.path.dirname(models_dir))
  return models_dir


def run(config, workdir):
  """The whole loop in `workdir`; returns the summary (also written to summary.json)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config_check.check(config)  # A bad value fails before pretraining.
  if not config.system.models_dir:
    config.system.models_dir = os.path.join(workdir, "pretrain")
  stage = lambda name, fn, cfg=config: workdir_lib.stage(os.path.join(workdir, name), cfg, fn)
  stages = [stage("pretrain", lambda: dict(models_dir=ensure_models(config, config.system.models_dir)))]
  system = shapes_system.build(config.system, workdir)

  aud_dir = os.path.join(workdir, "auditor")
  stages.append(stage("train_auditor", lambda: trainer.train(config, aud_dir, system)[1]))
  params = generate_lib.load_auditor(system, aud_dir)

  specs = tasks.weakness_specs(config.system.weakness)

  def audit():
    trained, samples = trainer.evaluate(system, params, config)
    baseline, _ = trainer.evaluate(system, system.params, config, baseline=True)
    genuine = [s for s in samples if s.failure and s.judged and rollout.flag_category(s) == "genuine"]
    trained["genuine_per_weakness"] = {w: sum(tasks.in_weakness(s.question, w) for s in genuine) for w in specs}
    return dict(trained=trained, baseline=baseline)
  audit_res = stage("audit", audit)

  gen_cfg = ml_collections.ConfigDict(config.to_dict())
  gen_cfg.generate.auditor_workdir = aud_dir
  gen_dir = os.path.join(workdir, "generate")
  gen = stage("generate", lambda: generate_lib.generate(gen_cfg, gen_dir, system), gen_cfg)

  def rect():
    if gen["records"]:
      out = rectify_lib.rectify(config, os.path.join(workdir, "rectify_run"), system, gen["dataset"])
    else:  # e.g. a barely trained auditor (fast configs) whose outputs never parse: nothing to fine-tune on.
      log.warning("no generated pairs: the target is not fine-tuned")
      before = system.rectification.evaluate_target(None)
      out = dict(generated_pairs=0, training_rows=0, before=before, after=before, target_npz=None)
    test_sets = system.require("test_sets", "the references' weakness accuracy")
    out["reference_weakness"] = float(np.mean([
        shapes_system.accuracy(r, test_sets[1]) for r in system.references.references]))
    return out
  rect_res = stage("rectify", rect)

  records = report.read_records(os.path.join(gen_dir, "dataset", "data.jsonl"))
  purity = report.type_purity(report.failure_types(records))
  tr, bl = audit_res["trained"], audit_res["baseline"]
  before, after = rect_res["before"], rect_res["after"]
  gap = rect_res["reference_weakness"] - before["weakness"]
  summary = {
      "weakness": ",".join(tasks.weakness_specs(config.system.weakness)),
      "success_rate_trained": tr["success_rate"], "success_rate_baseline": bl["success_rate"],
      "success_ratio": tr["success_rate"] / max(bl["success_rate"], 1e-9),
      "precision_trained": tr.get("precision"), "precision_baseline": bl.get("precision"),
      "flagged_trained": tr.get("flagged"), "flagged_baseline": bl.get("flagged"),
      "generated_pairs": gen["records"],
      # Per planted weakness: flagged genuine failures in the audit, and how well the report's failure types
      # separate it (its main type and that type's purity, `report.type_purity`).
      "genuine_per_weakness": tr.get("genuine_per_weakness"),
      "weakness_types": {w: purity.get(shapes_system.weakness_label(w)) for w in specs},
      "target_weakness_before": before["weakness"], "target_weakness_after": after["weakness"],
      "reference_weakness": rect_res["reference_weakness"],
      "weakness_gap_closed": (after["weakness"] - before["weakness"]) / gap if gap > 0 else None,
      "target_overall_before": before["overall"], "target_overall_after": after["overall"],
      "target_outside_weakness_before": before["outside_weakness"],
      "target_outside_weakness_after": after["outside_weakness"],
      "target_outside_weakness_change_se": after.get("outside_weakness_change_se"),
      "target_before": before, "target_after": after,  # Per skill and per weakness spec.
      "stage_seconds": {name: st["seconds"] for name, st in zip(
          ("pretrain", "train_auditor", "audit", "generate", "rectify"), stages + [audit_res, gen, rect_res])},
  }
  io_lib.write_json(os.path.join(workdir, "summary.json"), summary)
  metrics = metrics_lib.read(os.path.join(aud_dir, "metrics.jsonl"))
  if metrics:  # The baseline as flat reference lines on the curves.
    for m in (metrics[0], metrics[-1]):
      m["success_rate_baseline"] = bl["success_rate"]
      m["reward_baseline"] = bl["reward"]
  report.write(os.path.join(workdir, "report.html"), records, metrics, summary,
               root=os.path.join(gen_dir, "dataset"), title="AuditDM demo: shapes world")
  return summary


def format_summary(s):
  pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"
  return "\n".join([
      f"failure-search success rate: trained {pct(s['success_rate_trained'])} vs baseline "
      f"{pct(s['success_rate_baseline'])} ({s['success_ratio']:.2f}x)",
      f"audit precision (ground truth): trained {pct(s['precision_trained'])}, baseline "
      f"{pct(s['precision_baseline'])}",
      f"generated pairs: {s['generated_pairs']}",
      f"target on planted weakness: {pct(s['target_weakness_before'])} -> {pct(s['target_weakness_after'])} "
      f"(references {pct(s['reference_weakness'])}; gap closed {pct(s['weakness_gap_closed'])})",
      f"target overall: {pct(s['target_overall_before'])} -> {pct(s['target_overall_after'])}; outside the "
      f"weakness {pct(s['target_outside_weakness_before'])} -> {pct(s['target_outside_weakness_after'])} (standard "
      f"error of the change {pct(s['target_outside_weakness_change_se'])})",
      f"time per stage (s): {json.dumps({k: round(v) for k, v in s['stage_seconds'].items()})}, total "
      f"{sum(s['stage_seconds'].values()) / 60:.1f} min",
      json.dumps(s),
  ])
