"""Per-skill accuracy of the demo models on held-out scenes (the planted weakness shows as a gap)."""
import collections
import os

import jax
import numpy as np

from auditdm_jax import io
from auditdm_jax.audit import prompts
from auditdm_jax.worlds.shapes import scenes as shapes
from auditdm_jax.worlds.shapes import language as lang
from auditdm_jax.worlds.shapes import tasks
from auditdm_jax.worlds.shapes import pretrain

WEAKNESS_ROW = "weakness"


def test_set(cfg):
  """Held-out balanced questions (scenes from a seed disjoint from training): list of tuples (scene, question,
  answer, skill, in_weakness)."""
  return tasks.balanced_test([cfg.seed, cfg.eval.seed], cfg.eval.per_skill, cfg.weakness, cfg.world.min_objects,
                             cfg.world.max_objects)


def accuracy_table(answers, test, weakness=None):
  """{skill: accuracy} over the test rows (+ "weakness": the slices, "weakness/<spec>" per spec when `weakness`
  lists several, "counting=<n>": counting rows outside the slices by true count, "spatial=<relation>": spatial rows
  outside the slices by relation, "overall": all rows outside the slices)."""
  groups = collections.defaultdict(list)
  specs = tasks.weakness_specs(weakness)
  for pred, (_, question, gold, skill, weak) in zip(answers, test):
    ok = pred == gold
    groups[WEAKNESS_ROW if weak else skill].append(ok)
    if weak:
      groups[skill + "@weak"].append(ok)
      for spec in specs if len(specs) > 1 else ():
        if tasks.in_weakness(question, spec):
          groups[f"{WEAKNESS_ROW}/{spec}"].append(ok)
    else:
      groups["overall"].append(ok)
      if skill == "counting":
        groups[f"counting={gold}"].append(ok)
      elif skill == "spatial":
        groups[f"spatial={lang.parse_question(question).arg}"].append(ok)
  return {k: float(np.mean(v)) for k, v in sorted(groups.items())}, {k: len(v) for k, v in groups.items()}


def evaluate(cfg, workdir):
  """Answers the held-out test with every VQA model (the target trained on `cfg.weakness`, references); writes
  `<workdir>/skills.json` (with the references' competence check, `pretrain.competence_record`)."""
  test = test_set(cfg)
  images = np.stack([shapes.render(t[0], cfg.image_size) for t in test])
  questions = [t[1] for t in test]
  result = {"weakness": cfg.weakness, "models": {}, "counts": None}
  models = pretrain.load_demo_models(workdir, roles=("base", "target", "reference"), target_weakness=cfg.weakness)
  for name, (role, model) in models.items():
    acc, counts = accuracy_table(model.answer(images, questions), test, cfg.weakness)
    result["models"][name] = {"role": role, "accuracy": acc}
    result["counts"] = counts
  result["competence"] = pretrain.competence_record(workdir)
  result["auditor_well_formed"] = auditor_validity(cfg, workdir, num=cfg.eval.auditor_samples)
  io.write_json(os.path.join(workdir, "skills.json"), result)
  return result


def auditor_validity(cfg, workdir, num=32, max_new_tokens=64, temperature=1.0):
  """Fraction of the auditor's sampled outputs that parse in the world's language, per prompt (p_c, p_e, p_q and
  the baselines): {"caption": f, "caption_baseline": f, ...}."""
  models = pretrain.load_demo_models(workdir, roles=("auditor",))
  if not models:
    return {}
  _, auditor = next(iter(models.values()))
  rng = np.random.default_rng([cfg.seed, cfg.eval.seed, 1])
  scenes = [shapes.sample_scene(rng, cfg.world.min_objects, cfg.world.max_objects) for _ in range(num)]
  images = np.stack([shapes.render(s, cfg.image_size) for s in scenes])
  parse = {"caption": lang.parse_caption, "edit": lang.parse_edit, "question": lang.parse_question}
  out = {}
  for kind, fn in parse.items():
    for baseline in (False, True):
      texts = auditor.generate(images, [prompts.get(kind, baseline)] * num, max_new_tokens=max_new_tokens,
                               temperature=temperature, rng=jax.random.PRNGKey(cfg.seed))
      ok = 0
      for t in texts:
        try:
          fn(t)
          ok += 1
        except lang.LanguageError:
          pass
      out[kind + ("_baseline" if baseline else "")] = ok / num
  return out


def format_table(result):
  """Markdown table: one row per skill (+ weakness slice, overall), one column per model."""
  names = list(result["models"])
  by_count = sorted((r for r in result["counts"] if r.startswith("counting=")), key=lambda r: int(r.split("=")[1]))
  breakdown = {"counting": by_count, "spatial": [f"spatial={r}" for r in lang.RELATIONS]}  # Rows under a skill.
  rows = ([r for s in lang.SKILLS for r in [s] + breakdown.get(s, [])] + [WEAKNESS_ROW] +
          sorted(r for r in result["counts"] if r.startswith(WEAKNESS_ROW + "/")))
  rows.append("overall")
  lines = ["| skill | n | " + " | ".join(f"{n} ({result['models'][n]['role']})" for n in names) + " |",
           "|---|---|" + "---|" * len(names)]
  for r in rows:
    if r not in result["counts"]:
      continue
    cells = [f"{100 * result['models'][n]['accuracy'].get(r, float('nan')):.1f}" for n in names]
    lines.append(f"| {r} | {result['counts'][r]} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
