"""A toy config showing the conventions: `parse_arg` for the `:arg` string, nested blocks, overridable leaves."""
import ml_collections

from auditdm_jax.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, res=224, steps=10, final=False)
  c = ml_collections.ConfigDict()
  c.res = arg.res
  c.total_steps = arg.steps
  c.lr = 1e-5
  c.wd = 0.0
  c.schedule = dict(decay_type="cosine", warmup_percent=0.1)
  c.input = dict(batch_size=256, split="train" if arg.final else "train[:90%]")
  c.tags = ("a", "b")
  return c
