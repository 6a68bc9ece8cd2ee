"""progress.track: count, rate and ETA on a terminal, the rate without the first (compile) step; silent otherwise."""
import io
import re
import time

from auditdm_jax import progress


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_bar_counts_from_a_resume_point_and_leaves_compile_time_out_of_the_rate():
  out = _Terminal()
  seen = []
  for step in progress.track(range(5, 25), total=25, initial=5, desc="GRPO", unit="step", file=out):
    time.sleep(1.0 if step == 5 else 0.01)  # The first step compiles.
    seen.append(step)
  assert seen == list(range(5, 25))
  final = out.getvalue().split("\r")[-1]
  assert final.startswith("GRPO: 100%") and "25/25" in final
  rate = float(re.search(r"([\d.]+)step/s", final).group(1))
  assert rate > 30, final  # Counting the compile step too it would be ~20 steps / 1.2 s < 17.
  assert re.search(r"\d+/25 \[00:00<00:0\d", out.getvalue())  # An ETA while running.


def test_silent_when_not_a_terminal_and_closed_on_break():
  out = io.StringIO()
  for i in progress.track(iter(range(100)), desc="x", file=out):
    if i == 3:
      break
  assert out.getvalue() == ""
