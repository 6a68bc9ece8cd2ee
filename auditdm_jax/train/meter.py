"""Step timing -> step time, tokens/s and MFU, merged into the scalars given to `metrics.MetricWriter`."""
import time

import jax

from auditdm_jax.train import flops as flops_lib


class StepMeter:
  """Wall-clock per step (call `measure` right after the step's outputs were fetched, e.g. `jax.device_get`).

    meter = StepMeter(tokens_per_step=B * T, flops_per_step=flops.transformer_train_flops(...))
    for step ...:
      params, opt_state, m = train_step(...)
      writer.write(step, **jax.device_get(m), **meter.measure())
  """

  def __init__(self, tokens_per_step=None, flops_per_step=None, num_devices=None):
    self.tokens_per_step = tokens_per_step
    self.flops_per_step = flops_per_step
    self.num_devices = jax.device_count() if num_devices is None else num_devices
    self._last = time.perf_counter()

  def reset(self):
    """Restarts the clock (e.g. after an eval or a checkpoint wait that should not count as step time)."""
    self._last = time.perf_counter()

  def measure(self, steps=1):
    """Perf scalars for the `steps` steps since the last call: step_time [s], tokens_per_s, mfu (when known)."""
    now = time.perf_counter()
    step_time = (now - self._last) / steps
    self._last = now
    out = {"step_time": step_time}
    if self.tokens_per_step:
      out["tokens_per_s"] = self.tokens_per_step / step_time
    if self.flops_per_step:
      mfu = flops_lib.mfu(self.flops_per_step, step_time, self.num_devices)
      if mfu is not None:
        out["mfu"] = mfu
    return out
