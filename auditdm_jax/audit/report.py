"""`auditdm report`: a self-contained HTML page (images and plots inlined) of what the audit found.

Input: the audited pairs (JSONL records written by `generate`, see `generate.RECORD_KEYS`), the auditor's training
metrics (metrics.jsonl) and an optional summary dict (the demo's numbers). Output: exemplars (original vs
counterfactual image, question, target vs reference answers), failure types found by clustering the failures'
questions/edits (scikit-learn TF-IDF + k-means, k by silhouette, named by top terms) with counts and examples,
reward / success-rate curves, the summary in percentages with the demo's targets (pass/fail) and a legend.
"""
import base64
import collections
import html
import io
import os
import re

import numpy as np
from sklearn import cluster, feature_extraction
from sklearn import metrics as sk_metrics

from auditdm_jax import io as io_lib
from auditdm_jax.data import jsonl_source

_STOP = ("a an the is are of to in on what which how there this that image picture does do any".split()
         + "make change turn add remove".split())  # Edit verbs say nothing about the kind of failure.

# The most failure types a report shows. k is chosen by silhouette below it, but on the templated texts of an audit
# the silhouette keeps rising with k, so the cap decides: it must leave neighbouring failures types of their own.
MAX_TYPES = 10


def read_records(path):
  """The records of a generated data.jsonl (errors name the file and line)."""
  return jsonl_source.read_jsonl(path, allow_empty=True)  # An audit may find nothing.


def cluster_texts(texts, max_k=MAX_TYPES, seed=0):
  """TF-IDF + k-means over `texts`, k in [2, max_k] chosen by silhouette (1 cluster when there are too few
  distinct texts). Returns (assignments [N], centroids [k, V], vocabulary)."""
  vec = feature_extraction.text.TfidfVectorizer(token_pattern=r"[a-z]+", stop_words=_STOP)
  try:
    x = vec.fit_transform(texts)
  except ValueError:  # Only stop words: nothing to cluster on.
    return np.zeros(len(texts), int), np.zeros((1, 1)), ["(no words)"]
  vocab = vec.get_feature_names_out()
  distinct = len({tuple(row) for row in x.toarray().round(6)})
  best = (None, np.zeros(len(texts), int), np.asarray(x.mean(0)))
  for k in range(2, min(max_k, distinct, len(texts) - 1) + 1):  # silhouette needs 2 <= k <= N - 1
    km = cluster.KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
    score = sk_metrics.silhouette_score(x, km.labels_, random_state=seed)
    if best[0] is None or score > best[0]:
      best = (score, km.labels_, km.cluster_centers_)
  return best[1], best[2], list(vocab)


def failure_types(records, k=MAX_TYPES, seed=0, top_terms=4):
  """Clusters the failures' question + edit/caption text (k <= `k`, by silhouette); each type is named by its
  centroid's top TF-IDF terms. Returns [{name, count, members}] largest first."""
  fails = [r for r in records if r.get("failure")]
  if not fails:
    return []
  assign, centroids, vocab = cluster_texts([f"{r.get('question', '')} {r.get('instruction') or ''}" for r in fails],
                                           k, seed)
  clusters = []
  for j, centroid in enumerate(centroids):
    members = [fails[i] for i in np.flatnonzero(assign == j)]
    if members:
      terms = [vocab[t] for t in np.argsort(-centroid)[:top_terms] if centroid[t] > 0]
      clusters.append(dict(name=" / ".join(terms) or "(no words)", count=len(members), members=members))
  return sorted(clusters, key=lambda c: -c["count"])


def type_purity(types):
  """How well the failure types separate the world's labels (a record's `skill`, e.g. a planted weakness): per
  label, the type that holds most of its failures, and that type's purity (the label's share of the type).
  Returns {label: {"type": index into `types`, "name", "failures": n of the label, "in_type", "purity"}}."""
  counts = collections.Counter(r["skill"] for t in types for r in t["members"] if r.get("skill"))
  out = {}
  for label, total in counts.items():
    j, in_type = max(((j, sum(r.get("skill") == label for r in t["members"])) for j, t in enumerate(types)),
                     key=lambda ji: ji[1])
    out[label] = dict(type=j, name=types[j]["name"], failures=total, in_type=in_type,
                      purity=in_type / types[j]["count"])
  return out


def _img_tag(record, key, root, size=128):
  path = record.get(key)
  if key == "image" and (not path or record.get("counterfactual") is False):
    return "<i>(original image)</i>"
  if not path:
    return ""
  full = path if os.path.isabs(path) else os.path.join(root, path)
  if not os.path.exists(full):
    return f"<i>missing {html.escape(path)}</i>"
  with open(full, "rb") as f:
    b64 = base64.b64encode(f.read()).decode("ascii")
  return f'<img src="data:image/png;base64,{b64}" width="{size}" height="{size}" style="image-rendering:pixelated">'


def _plot(metrics, keys, title):
  """A PNG line plot (base64 <img>) of metrics[key] against step; '' when none of the keys were logged."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  series = {k: [(m["step"], m[k]) for m in metrics if k in m] for k in keys}
  series = {k: v for k, v in series.items() if v}
  if not series:
    return ""
  fig, ax = plt.subplots(figsize=(5, 3), dpi=90)
  for k, pts in series.items():
    ax.plot(*zip(*pts), label=k)
  ax.set_xlabel("step")
  ax.set_title(title)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  plt.close(fig)
  return f'<img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _row(r, root):
  refs = r.get("reference_answers") or {}
  ref_txt = "<br>".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in refs.items())
  instr = html.escape(r.get("instruction") or "")
  truth = f"<br>truth: <b>{html.escape(str(r['truth']))}</b>" if r.get("truth") is not None else ""
  truth += _category_tag(r)
  return (f"<tr><td>{_img_tag(r, 'source_image', root)}</td><td>{_img_tag(r, 'image', root)}</td>"
          f"<td>{instr}</td><td>{html.escape(r.get('question', ''))}</td>"
          f"<td class=bad>{html.escape(str(r.get('target_answer')))}</td>"
          f"<td>{ref_txt}<br>consensus: <b>{html.escape(str(r.get('label')))}</b>{truth}</td></tr>")


_HEAD = ("<tr><th>original</th><th>counterfactual</th><th>edit / caption</th><th>question</th><th>target</th>"
         "<th>references</th></tr>")
_CSS = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px;vertical-align:top;font-size:13px}.bad{color:#b00}.pass{color:#070}"
        "h2{border-bottom:1px solid #999}")


def render(records, metrics=(), summary=None, root=".", title="AuditDM report", k=MAX_TYPES, examples_per_type=3,
           max_exemplars=12, seed=0):
  """The report as one HTML string. Image paths in records are resolved against `root`."""
  fails = [r for r in records if r.get("failure")]
  parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
           f"<p>{len(records)} audited pairs, {len(fails)} failures of the target "
           f"({100.0 * len(fails) / max(len(records), 1):.1f}%).</p>"]
  if summary:
    parts.append("<h2>Summary</h2><table>" + "".join(
        f"<tr><td>{html.escape(str(k_))}</td><td>{html.escape(fmt(k_, v))}</td></tr>" for k_, v in _flat(summary).items())
        + "</table>" + _weakness_section(summary))
    checks = check_targets(summary)
    if checks:
      parts.append("<h2>Targets</h2><table><tr><th>target</th><th>measured</th><th>goal</th><th></th></tr>" + "".join(
          f"<tr><td>{html.escape(t['name'])}</td><td>{html.escape(t['value'])}</td><td>{html.escape(t['goal'])}</td>"
          f"<td class={'pass' if t['passed'] else 'bad'}>{'pass' if t['passed'] else 'FAIL'}</td></tr>"
          for t in checks) + "</table>")
  parts.append(_LEGEND)
  plots = [_plot(list(metrics), ["reward", "reward_baseline"], "mean reward"),
           _plot(list(metrics), ["success_rate", "success_rate_baseline"], "failure-search success rate")]
  if any(plots):
    parts.append("<h2>Training curves</h2>" + "".join(plots))
  skills = collections.Counter(r["skill"] for r in fails if r.get("skill"))
  if skills:
    parts.append("<h2>Failures by skill (world parser)</h2><table>" + "".join(
        f"<tr><td>{html.escape(s)}</td><td>{n}</td></tr>" for s, n in skills.most_common()) + "</table>")
  types = failure_types(records, k=k, seed=seed)
  if types:
    parts.append(f"<h2>Failure types ({len(types)} clusters of questions/edits)</h2>")
    for i, c in enumerate(types):
      parts.append(f"<h3>Type {i + 1}: {html.escape(c['name'])} ({c['count']})</h3><table>{_HEAD}"
                   + "".join(_row(r, root) for r in c["members"][:examples_per_type]) + "</table>")
    purity = sorted(type_purity(types).items(), key=lambda lp: -lp[1]["failures"])
    if purity:
      parts.append("<h2>Types vs the world's labels</h2><table><tr><th>label</th><th>failures</th><th>its main "
                   "type</th><th>purity (the label's share of that type)</th></tr>" + "".join(
                       f"<tr><td>{html.escape(label)}</td><td>{p['failures']}</td><td>{p['type'] + 1}: "
                       f"{html.escape(p['name'])}</td><td>{100 * p['purity']:.1f}%</td></tr>" for label, p in purity)
                   + "</table>")
  parts.append(f"<h2>Exemplars</h2><table>{_HEAD}" + "".join(_row(r, root) for r in fails[:max_exemplars])
               + "</table></body></html>")
  return "\n".join(parts)


_PERCENT = re.compile(r"rate|precision|weakness|overall|gap|accuracy")


def fmt(key, value):
  """A summary value for people: fractions as percentages, ratios as `x`, seconds rounded, dicts inline."""
  if isinstance(value, dict):
    return ", ".join(f"{k} {fmt(key, v)}" for k, v in value.items())
  if not isinstance(value, float):
    return "n/a" if value is None else str(value)
  if "ratio" in key:
    return f"{value:.2f}x"
  if "seconds" in key:
    return f"{value:.0f} s"
  if _PERCENT.search(key):
    return f"{100 * value:.1f}%"
  return f"{value:.4g}"


# The demo's targets (README): (name, value of the summary or None when not measured, goal, formatted, passes).
TARGETS = (
    ("failure-search success, trained vs baseline", lambda s: s.get("success_ratio"), ">= 4x",
     lambda v: f"{v:.2f}x", lambda v: v >= 4.0),
    ("audit precision vs ground truth (trained)", lambda s: s.get("precision_trained"), ">= 85%",
     lambda v: f"{100 * v:.1f}%", lambda v: v >= 0.85),
    ("weakness gap closed by rectification", lambda s: s.get("weakness_gap_closed"), ">= 50%",
     lambda v: f"{100 * v:.1f}%", lambda v: v >= 0.5),
    ("target outside the weakness, after - before",
     lambda s: (s["target_outside_weakness_after"] - s["target_outside_weakness_before"]
                if "target_outside_weakness_after" in s else None), ">= -1 point (no regression)",
     lambda v: f"{100 * v:+.1f} points", lambda v: v >= -0.01),
    ("wall time", lambda s: sum(s["stage_seconds"].values()) / 60 if "stage_seconds" in s else None, "<= 30 min",
     lambda v: f"{v:.1f} min", lambda v: v <= 30),
)


def check_targets(summary, targets=TARGETS):
  """[{name, value, goal, passed}] for the targets the summary measures."""
  out = []
  for name, get, goal, show, passes in targets:
    value = get(summary)
    if value is not None:
      out.append(dict(name=name, value=show(value), goal=goal, passed=bool(passes(value))))
  return out


_LEGEND = """<h2>Legend</h2><dl>
<dt>failure</dt><dd>the target's answer differs from the references' consensus answer (the label).</dd>
<dt>consensus</dt><dd>the references agree (above the reward's threshold); their answer is the label.</dd>
<dt>success rate</dt><dd>share of the auditor's samples that are failures; the baseline is the initial auditor
with the prompt-only instructions.</dd>
<dt>precision</dt><dd>share of flagged failures where the world's ground truth says the target is wrong and the
consensus right.</dd>
<dt>original / counterfactual</dt><dd>the source image and the image the auditor's edit or caption produced
("(original image)" when the question is about the source).</dd>
<dt>failure types</dt><dd>k-means clusters (k by silhouette) of the TF-IDF of the failures' questions and edits,
named by their top terms.</dd>
<dt>ground truth</dt><dd>each flagged pair's category from the world's truth: genuine target failure,
reference error (the consensus is wrong) or unanswerable.</dd></dl>"""


_CATEGORY_NAMES = {"genuine": "genuine target failure", "reference_error": "reference error",
                   "unanswerable": "unanswerable"}


def _category_tag(record):
  """The ground-truth category of a flagged pair (`rollout.flag_category`, in records from `generate`)."""
  category = record.get("category")
  return f"<br>ground truth: <b>{html.escape(_CATEGORY_NAMES.get(category, category))}</b>" if category else ""


def _flat(summary):
  """The summary with nested dicts as "key/sub" rows, less the per-skill accuracies (`_weakness_section`)."""
  out = {}
  for k, v in summary.items():
    if k not in ("target_before", "target_after"):
      out.update({f"{k}/{sub}": x for sub, x in v.items()} if isinstance(v, dict) else {k: v})
  return out


def _weakness_section(summary):
  """The planted weakness(es) and the target's accuracy per skill / per weakness before and after rectification
  (from the demo summary's `weakness`, `target_before`, `target_after`); '' when the summary has none."""
  before, after = (summary or {}).get("target_before"), (summary or {}).get("target_after")
  if not summary or not summary.get("weakness") or not before:
    return ""
  specs = str(summary["weakness"]).split(",")  # The demo writes the canonical comma-separated specs.
  keys = sorted(k for k in before if k.startswith("skill/")) + sorted(
      k for k in before if k.startswith("weakness")) + ["outside_weakness", "overall"]
  pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"
  rows = "".join(f"<tr><td>{html.escape(k.replace('skill/', ''))}</td><td>{pct(before.get(k))}</td>"
                 f"<td>{pct((after or {}).get(k))}</td></tr>" for k in keys if k in before)
  return ("<h2>Planted weakness</h2><p>" + ", ".join(f"<code>{html.escape(w)}</code>" for w in specs) + "</p>"
          "<table><tr><th>target accuracy</th><th>before rectification</th><th>after</th></tr>" + rows + "</table>")


def write(path, records, metrics=(), summary=None, root=None, **kw):
  """Renders and writes the report atomically; returns the path."""
  io_lib.write_text(path, render(records, metrics, summary, root=root or os.path.dirname(path), **kw))
  return path
