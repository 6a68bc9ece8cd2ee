"""`auditdm skills`: per-skill accuracy of the pretrained demo models on held-out shapes-world scenes."""
from auditdm_jax.worlds.shapes import pretrain
from auditdm_jax.worlds.shapes import skills

HELP = "per-skill accuracy of the demo target and references (the planted weakness must show as a gap)"
DEFAULT_CONFIG = "configs/demo/shapes.py"
CONFIG_KEYS = ("weakness", "base", "target", "references", "auditor", "tokenizer", "world", "eval")
DEFAULT_WORKDIR = "workdirs/demo"


def check_config(config):
  pretrain.check_config(config)


def run(args):
  result = skills.evaluate(args.config, args.workdir)
  print(f"weakness: {result['weakness']}")
  print(skills.format_table(result))
  check = result.get("competence")
  if check:
    print(f"references' competence check (validation, bar {100 * check['bar']:.0f}% on every skill): "
          f"base trained {check['base_round']} extra round(s); lowest skill per round: " +
          ", ".join(f"{100 * r['lowest']:.1f}%" for r in check["rounds"]))
  if result.get("auditor_well_formed"):
    print("auditor outputs that parse in the world's language:",
          ", ".join(f"{k} {100 * v:.0f}%" for k, v in result["auditor_well_formed"].items()))
