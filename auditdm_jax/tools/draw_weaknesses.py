"""Draws planted weaknesses at random, so that audits can be run on specs nobody picked.

  python -m auditdm_jax.tools.draw_weaknesses --n 2 --seed 20261207 [--exclude counting:shape=star,...]
Prints a comma-separated list for `auditdm sweep --weaknesses`: `--n` specs drawn without replacement (Python's
`random.Random(seed)`) from every one-skill, one-condition spec the shapes world has questions for
(`tasks.single_condition_specs`, 71 of them), less the excluded ones.
"""
import argparse
import random

from auditdm_jax.worlds.shapes import tasks


def draw(n, seed, exclude=None):
  """`n` specs drawn from the world's single-condition specs that are not in `exclude` (a weakness value:
  comma-separated text or a list; every spec in it is validated)."""
  exclude = set(tasks.weakness_specs(exclude))
  pool = [s for s in tasks.single_condition_specs() if s not in exclude]
  if not 0 < n <= len(pool):
    raise ValueError(f"--n must be in 1..{len(pool)} (specs left after the exclusions), got {n}")
  return random.Random(seed).sample(pool, n)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--n", type=int, default=1, help="how many specs")
  parser.add_argument("--seed", type=int, required=True)
  parser.add_argument("--exclude", default="", help="comma-separated specs not to draw (e.g. those already run)")
  args = parser.parse_args(argv)
  try:
    specs = draw(args.n, args.seed, args.exclude)
  except ValueError as e:
    parser.error(str(e))
  print(",".join(specs))


if __name__ == "__main__":
  main()
