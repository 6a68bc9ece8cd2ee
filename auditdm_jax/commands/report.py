"""`auditdm report`: a self-contained HTML report of an audit (exemplars, failure types, curves)."""
import json
import os

from auditdm_jax import metrics as metrics_lib
from auditdm_jax.audit import report

HELP = "render a self-contained HTML report from a generated dataset and the auditor's training metrics"


def add_arguments(parser):
  parser.add_argument("--records", required=True, help="data.jsonl (or shard .jsonl) written by `auditdm generate`")
  parser.add_argument("--metrics", default=None, help="the auditor's metrics.jsonl (training curves)")
  parser.add_argument("--summary", default=None, help="optional JSON file of headline numbers")
  parser.add_argument("--out", default=None, help="output .html (default: <workdir>/report.html)")
  parser.add_argument("--clusters", type=int, default=report.MAX_TYPES,
                      help="most failure types (k-means, k chosen by silhouette)")


def run(args):
  out = args.out or os.path.join(args.workdir or os.path.dirname(os.path.abspath(args.records)), "report.html")
  metrics = metrics_lib.read(args.metrics) if args.metrics else []
  summary = json.load(open(args.summary, encoding="utf-8")) if args.summary else None
  report.write(out, report.read_records(args.records), metrics, summary,
               root=os.path.dirname(os.path.abspath(args.records)), k=args.clusters)
  print(out)
