"""`auditdm sweep`: the shapes demo for every (seed, planted weakness) pair, summarised in one JSON and one table.

  auditdm sweep --workdir runs/sweep --seeds 0,1,2 --weaknesses counting:shape=star,binding:color=red
  auditdm sweep --workdir runs/sweep_fast --config configs/audit/demo.py:fast --seeds 0,1 --weaknesses A,B
A weakness planted together with others is a bracketed list: --weaknesses "[counting:shape=star,binding:color=red]".
"""
from auditdm_jax.audit import config_check
from auditdm_jax.worlds.shapes import sweep

HELP = "run the shapes demo over seeds x planted weaknesses; write sweep.json and sweep.md (mean +- std)"
DEFAULT_CONFIG = "configs/audit/demo.py"
CONFIG_KEYS = ("mode", "reward", "loss", "system", "generate", "rectify", "pretrain_config")
DEFAULT_WORKDIR = "runs/sweep"


def check_config(config):
  config_check.check(config, config_check.ALL)


def check_args(args):
  sweep.seeds_and_weaknesses(args.seeds, args.weaknesses, args.config.system.weakness)


def add_arguments(parser):
  parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
  parser.add_argument("--weaknesses", default=None,
                      help="comma-separated weakness specs, one run each (default: the config's system.weakness)")


def run(args):
  seeds, weaknesses = sweep.seeds_and_weaknesses(args.seeds, args.weaknesses, args.config.system.weakness)
  result = sweep.run(args.config, args.workdir, seeds, weaknesses)
  print(sweep.markdown(result, sweep.SUMMARY))
  print(f"written: {args.workdir}/sweep.json, {args.workdir}/sweep.md, {args.workdir}/sweep_summary.md")
