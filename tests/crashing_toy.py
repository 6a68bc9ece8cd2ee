"""audit_toy's system whose pool kills its own process the first time shard `crash_shard` is read (marker file
`crash_marker`): a Ray worker dying mid-run, for the `generate --ray` test. A `config.system.module`."""
import dataclasses
import os
import signal

import audit_toy


class CrashingPool:

  def __init__(self, pool, crash_shard, marker):
    self.pool, self.crash_shard, self.marker = pool, crash_shard, marker

  def __len__(self):
    return len(self.pool)

  def __getitem__(self, k):
    if k == self.crash_shard and not os.path.exists(self.marker):
      with open(self.marker, "w", encoding="utf-8") as f:
        f.write(str(os.getpid()))
      os.kill(os.getpid(), signal.SIGKILL)
    return self.pool[k]


def build(config, workdir):
  system = audit_toy.build(config, workdir)
  return dataclasses.replace(system, pool=CrashingPool(system.pool, config.crash_shard, config.crash_marker))
