"""`auditdm sweep`: the shapes demo over seeds x planted weaknesses, with one JSON and one Markdown table.

Layout under the sweep's workdir:
  seed<S>/pretrain/            the models of seed S: tokenizer, references and auditor (trained once per seed: they
                               do not depend on the weakness) and one target per weakness, `target_<slug>`
  seed<S>/<slug>/              the demo run of (S, weakness) (`demo.run`: resumable stage by stage); its
                               "pretrain" time is what pretraining cost when it ran first (the seed's shared
                               models are paid by its first weakness)
  sweep.json, sweep.md         per run and mean +- std over runs (all runs, then per weakness over seeds)
  sweep_summary.md             the same for the headline figures only (SUMMARY), short enough for a README
A weakness may itself be a list planted at once ("[counting:shape=star,binding:color=red]").
"""
import logging
import os
import re
import time

import ml_collections
import numpy as np

from auditdm_jax import config as config_lib
from auditdm_jax import io as io_lib
from auditdm_jax.audit import config_check
from auditdm_jax.audit import rollout
from auditdm_jax.worlds.shapes import demo
from auditdm_jax.worlds.shapes import pretrain
from auditdm_jax.worlds.shapes import tasks

log = logging.getLogger(__name__)

STAGES = ("pretrain", "train_auditor", "audit", "generate", "rectify")
# (key, header, kind): the per-run figures, in table order. kind (`_FORMATS`) "pct" prints a rate as a percentage,
# "pt" a difference of two rates in percentage points.
COLUMNS = (
    ("success_rate_trained", "success trained", "pct"), ("success_rate_baseline", "success baseline", "pct"),
    ("success_ratio", "ratio", "x"), ("precision_trained", "precision", "pct"),
    *((f"flagged_{c}", f"flagged {c.replace('_', ' ')}", "int") for c in rollout.FLAG_CATEGORIES),
    ("genuine_min", "genuine per weakness (min)", "int"), ("purity_min", "type purity (min)", "pct"),
    ("target_weakness_before", "weakness before", "pct"), ("target_weakness_after", "weakness after", "pct"),
    ("reference_weakness", "weakness refs", "pct"), ("weakness_gap_closed", "gap closed", "pct"),
    ("target_outside_weakness_before", "outside before", "pct"),
    ("target_outside_weakness_after", "outside after", "pct"),
    ("target_outside_weakness_change", "outside change", "pt"),
    ("target_outside_weakness_change_se", "outside change s.e.", "pct"),
    *((f"seconds_{s}", f"{s} s", "int") for s in STAGES),
)
SUMMARY = ("success_rate_trained", "success_rate_baseline", "success_ratio", "precision_trained",
           "target_weakness_before", "target_weakness_after", "reference_weakness", "weakness_gap_closed",
           "target_outside_weakness_change")


def parse_list(text, convert=str):
  """ "0,1,2" -> [0, 1, 2]; commas inside brackets stay (a weakness list planted at once)."""
  try:
    items = [convert(p) for p in config_lib.split_top_level(text or "")]
  except ValueError:
    items = None
  if not items:
    raise ValueError(f"expected a comma-separated list{' of integers' if convert is int else ''}, got {text!r}")
  return items


def seeds_and_weaknesses(seeds, weaknesses, default_weakness):
  """The runs' seeds (integers >= 0) and weaknesses (`--weaknesses`, else the config's), each spec checked."""
  seeds = parse_list(seeds, int)
  if min(seeds) < 0:
    raise ValueError(f"seeds must be >= 0, got {seeds}")
  weaknesses = parse_list(weaknesses) if weaknesses else [default_weakness]
  for weakness in weaknesses:
    tasks.check_weakness(weakness)
  return seeds, weaknesses


def slug(weakness):
  return re.sub(r"[^a-z0-9]+", "_", ",".join(tasks.weakness_specs(weakness))).strip("_")


def _pretrain_config(config, seed, weakness):
  pre = config_lib.resolve(config_lib.find_spec(config.pretrain_config), [f"weakness={weakness}", f"seed={seed}"])
  pre.target.name = f"target_{slug(weakness)}"
  return pre


def run_config(config, seed, weakness, models_dir):
  """The demo config of one run: seed `seed` everywhere, the planted `weakness`, the seed's shared models."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.seed = c.system.seed = seed
  c.system.weakness = weakness
  c.system.models_dir = models_dir
  c.system.target = f"target_{slug(weakness)}"
  return c


def row(summary, seed, weakness, pretrain_seconds):
  """One run's figures (COLUMNS keys) from its demo summary."""
  out = dict(seed=seed, weakness=weakness, **{k: summary.get(k) for k, _, _ in COLUMNS if k in summary})
  for c in rollout.FLAG_CATEGORIES:
    out[f"flagged_{c}"] = (summary.get("flagged_trained") or {}).get(c, 0)
  genuine = (summary.get("genuine_per_weakness") or {}).values()
  types = (summary.get("weakness_types") or {}).values()
  out["genuine_min"] = min(genuine) if genuine else None
  out["purity_min"] = min(t["purity"] for t in types) if types and all(types) else None
  before, after = summary.get("target_outside_weakness_before"), summary.get("target_outside_weakness_after")
  out["target_outside_weakness_change"] = after - before if None not in (before, after) else None
  seconds = dict(summary["stage_seconds"], pretrain=pretrain_seconds)
  out.update({f"seconds_{s}": seconds[s] for s in STAGES})
  return out


def aggregate(rows):
  """{key: {"mean", "std", "n"}} over the runs' numeric COLUMNS (None values, e.g. an undefined gap, skipped)."""
  out = {}
  for key, _, _ in COLUMNS:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    if values:
      out[key] = dict(mean=float(np.mean(values)), std=float(np.std(values)), n=len(values))
  return out


# kind -> (scale, unit, digits of one run's value, sign): one table for the runs' cells and the mean ± std cells.
_FORMATS = {"pct": (100, "%", 1, ""), "pt": (100, " pt", 1, "+"), "x": (1, "x", 2, ""), "int": (1, "", 0, "")}


def _number(value, scale, digits, sign=""):
  return f"{round(scale * value, digits) + 0.0:{sign}.{digits}f}"  # + 0.0: no "-0.0".


def _cell(value, kind):
  if value is None:
    return "n/a"
  scale, unit, digits, sign = _FORMATS[kind]
  return _number(value, scale, digits, sign) + unit


def _mean_cell(stats, kind):
  if stats is None:
    return "n/a"
  scale, unit, digits, sign = _FORMATS[kind]
  digits = max(digits, 1)  # A mean of counts or seconds keeps one decimal.
  return f"{_number(stats['mean'], scale, digits, sign)} ± {_number(stats['std'], scale, digits)}{unit}"


def markdown(result, keys=None):
  """The sweep as a Markdown table: one line per run, then mean ± std (all runs, then per weakness).
  keys: the COLUMNS to show (default all)."""
  columns = [c for c in COLUMNS if keys is None or c[0] in keys]
  head = ["seed", "weakness"] + [h for _, h, _ in columns]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in result["runs"]:
    lines.append(f"| {r['seed']} | `{r['weakness']}` | " + " | ".join(_cell(r.get(k), kind) for k, _, kind in columns)
                 + " |")
  order = result.get("weaknesses") or list(result["per_weakness"])  # The sweep's order, also from a sorted JSON.
  groups = [("all runs", result["mean"])] + [(f"`{w}`", result["per_weakness"][w]) for w in order]
  for name, stats in groups:
    lines.append(f"| **mean ± std** | {name} | " + " | ".join(_mean_cell(stats.get(k), kind)
                                                              for k, _, kind in columns) + " |")
  return "\n".join(lines) + "\n"


def run(config, workdir, seeds, weaknesses):
  """Runs the demo for every (seed, weakness) and writes sweep.json / sweep.md / sweep_summary.md; returns the
  result dict.

  config: the demo config (`configs/audit/demo.py[:fast]`). Every weakness is checked before anything trains.
  """
  config_check.check(config)
  for w in weaknesses:
    tasks.check_weakness(w)
  rows = []
  for seed in seeds:
    seed_dir = os.path.join(workdir, f"seed{seed}")
    for weakness in weaknesses:
      log.info("sweep: seed %d, weakness %s", seed, weakness)
      run_dir = os.path.join(seed_dir, slug(weakness))
      timing = os.path.join(run_dir, "pretrain_seconds.json")
      t0 = time.time()
      pre = _pretrain_config(config, seed, weakness)
      pretrain.pretrain_all(pre, seed_dir)  # Shared models come from the cache after the first weakness.
      if not os.path.exists(timing):  # A rerun loads the cache: keep the first (training) time.
        config_lib.dump(pre, os.path.join(seed_dir, "pretrain"), name=f"config_{slug(weakness)}.json")
        io_lib.write_json(timing, dict(seconds=time.time() - t0))
      summary = demo.run(run_config(config, seed, weakness, os.path.join(seed_dir, "pretrain")), run_dir)
      rows.append(row(summary, seed, weakness, io_lib.read_json(timing)["seconds"]))
  result = dict(seeds=list(seeds), weaknesses=list(weaknesses), runs=rows, mean=aggregate(rows),
                per_weakness={w: aggregate([r for r in rows if r["weakness"] == w]) for w in weaknesses})
  io_lib.write_json(os.path.join(workdir, "sweep.json"), result)
  io_lib.write_text(os.path.join(workdir, "sweep.md"), markdown(result))
  io_lib.write_text(os.path.join(workdir, "sweep_summary.md"), markdown(result, SUMMARY))
  return result
