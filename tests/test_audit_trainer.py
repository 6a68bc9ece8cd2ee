"""A short CPU GRPO run of the real trainer on a toy auditor: the mean reward rises; checkpoints resume."""
import os
import sys

import numpy as np

from auditdm_jax import metrics as metrics_lib
from auditdm_jax.audit import trainer

sys.path.insert(0, os.path.dirname(__file__))
import audit_toy  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def test_grpo_run_raises_mean_reward_and_resumes(tmp_path):
  system = audit_toy.build(audit_toy.get_config(), None)
  params, _ = trainer.train(audit_toy.get_config(10), str(tmp_path), system)
  # Resume: same workdir, more steps -> continues from checkpoint 10, not from scratch.
  params, _ = trainer.train(audit_toy.get_config(25), str(tmp_path), system)
  m = metrics_lib.read(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in m] == list(range(1, 26))
  first, last = np.mean([r["reward"] for r in m[:3]]), np.mean([r["reward"] for r in m[-3:]])
  assert last > first + 0.5, (first, last)
  assert {"kl", "clip_fraction", "success_rate", "time/rollout", "time/answer", "time/train", "lr",
          "format_penalty", "length/action0"} <= set(m[-1])
  # The trained auditor finds failures far more often than the untrained one; its flags are true failures.
  cfg = audit_toy.get_config()
  trained, _ = trainer.evaluate(system, params, cfg)
  untrained, _ = trainer.evaluate(system, system.policy.init(), cfg, baseline=True)
  assert trained["success_rate"] > 3 * max(untrained["success_rate"], 0.05)
  assert trained["precision"] == 1.0
