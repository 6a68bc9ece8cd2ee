"""`auditdm report`: a self-contained HTML page (images and plots inlined) of what the audit found.

Input: the audited pairs (JSONL records written by `generate`, see `generate.RECORD_KEYS`), the auditor's training
metrics (metrics.jsonl) and an optional summary dict (the demo's numbers). Output: exemplars (original vs
counterfactual image, question, target vs reference answers), failure types found by clustering the failures'
questions/edits (TF-IDF bag of words + k-means, numpy only) with counts and examples, and reward / success-rate
curves.
"""
import base64
import collections
import html
import io
import json
import os
import re

import numpy as np

from auditdm_jax import io as io_lib

_STOP = frozenset("a an the is are of to in on what which how there this that image picture does do any".split())


def read_records(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _tokens(text):
  return [w for w in re.findall(r"[a-z]+", (text or "").lower()) if w not in _STOP]


def tfidf(texts):
  """Bag-of-words TF-IDF of `texts` -> ([N, V] L2-normalised float32, vocabulary list)."""
  docs = [_tokens(t) for t in texts]
  vocab = sorted({w for d in docs for w in d})
  index = {w: i for i, w in enumerate(vocab)}
  x = np.zeros((len(docs), max(len(vocab), 1)), np.float32)
  for i, d in enumerate(docs):
    for w in d:
      x[i, index[w]] += 1.0
  df = (x > 0).sum(0)
  x *= np.log((1.0 + len(docs)) / (1.0 + df)) + 1.0
  x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)
  return x, vocab


def kmeans(x, k, iters=50, seed=0):
  """k-means++ initialised Lloyd iterations on rows of x [N, D] -> (assignments [N], centroids [k, D])."""
  n = x.shape[0]
  k = max(1, min(k, n))
  rng = np.random.default_rng(seed)
  centroids = [x[rng.integers(n)]]
  for _ in range(1, k):
    d2 = np.min(((x[:, None] - np.stack(centroids)[None]) ** 2).sum(-1), axis=1)
    if d2.sum() <= 0:
      break
    centroids.append(x[rng.choice(n, p=d2 / d2.sum())])
  c = np.stack(centroids)
  assign = np.zeros(n, int)
  for _ in range(iters):
    new = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
    if _ and np.array_equal(new, assign):
      break
    assign = new
    c = np.stack([x[assign == j].mean(0) if np.any(assign == j) else c[j] for j in range(len(c))])
  return assign, c


def failure_types(records, k=6, seed=0, top_terms=4):
  """Clusters the failures' question + edit/caption text. Returns [{name, count, members}] largest first."""
  fails = [r for r in records if r.get("failure")]
  if not fails:
    return []
  x, vocab = tfidf([f"{r.get('question', '')} {r.get('instruction') or ''}" for r in fails])
  assign, centroids = kmeans(x, k, seed=seed)
  clusters = []
  for j in range(len(centroids)):
    members = [fails[i] for i in np.flatnonzero(assign == j)]
    if members:
      terms = [vocab[t] for t in np.argsort(-centroids[j])[:top_terms] if centroids[j][t] > 0]
      clusters.append(dict(name=" / ".join(terms) or "(no words)", count=len(members), members=members))
  return sorted(clusters, key=lambda c: -c["count"])


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
        "td,th{border:1px solid #ccc;padding:4px;vertical-align:top;font-size:13px}.bad{color:#b00}"
        "h2{border-bottom:1px solid #999}")


def render(records, metrics=(), summary=None, root=".", title="AuditDM report", k=6, examples_per_type=3,
           max_exemplars=12, seed=0):
  """The report as one HTML string. Image paths in records are resolved against `root`."""
  fails = [r for r in records if r.get("failure")]
  parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
           f"<p>{len(records)} audited pairs, {len(fails)} failures of the target "
           f"({100.0 * len(fails) / max(len(records), 1):.1f}%).</p>"]
  if summary:
    parts.append("<h2>Summary</h2><table>" + "".join(
        f"<tr><td>{html.escape(str(k_))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k_, v in _flat(summary).items())
        + "</table>" + _weakness_section(summary))
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
  parts.append(f"<h2>Exemplars</h2><table>{_HEAD}" + "".join(_row(r, root) for r in fails[:max_exemplars])
               + "</table></body></html>")
  return "\n".join(parts)


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


def _fmt(v):
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def write(path, records, metrics=(), summary=None, root=None, **kw):
  """Renders and writes the report atomically; returns the path."""
  io_lib.write_text(path, render(records, metrics, summary, root=root or os.path.dirname(path), **kw))
  return path
