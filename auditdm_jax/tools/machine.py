"""The machine's state beside a benchmark figure: load average, cores and thread counts.

A figure taken on a machine busier than its cores measures the other jobs as much as the code (a loaded machine
slowed torch's threads far more than XLA's in this project's own CPU sampler benchmark), so every benchmark records
`load()` with its figures and `check_idle` warns, or refuses with `require_idle`; `best_of_alternating` times the
compared functions in turn, so that a load drifting during the run falls on all of them alike.
"""
import logging
import os
import sys
import time

log = logging.getLogger(__name__)


def load():
  """dict: 1/5/15-minute load averages, usable cores, this process's OS threads, torch's intra-op threads (when
  torch is imported) and the XLA/OpenMP thread settings from the environment."""
  one, five, fifteen = os.getloadavg()
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  out = dict(load_avg=[round(one, 2), round(five, 2), round(fifteen, 2)], cores=cores,
             process_threads=len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None,
             busy=one > cores)
  if "torch" in sys.modules:
    out["torch_threads"] = sys.modules["torch"].get_num_threads()
  for var in ("OMP_NUM_THREADS", "XLA_FLAGS"):
    if os.environ.get(var):
      out[var] = os.environ[var]
  return out


def check_idle(require_idle=False):
  """`load()`, after warning (or raising RuntimeError with `require_idle`) when the 1-minute load average exceeds
  the cores."""
  state = load()
  if state["busy"]:
    msg = (f"machine busy: load average {state['load_avg'][0]} over {state['cores']} cores; figures measure the "
           f"other jobs too")
    if require_idle:
      raise RuntimeError(msg + " (drop --require_idle to measure anyway)")
    log.warning(msg)
  return state


def best_of_alternating(fns, repeats):
  """[(result, best wall time of `repeats` calls)] per function, the functions called in turn each round so that
  a load that drifts during the run falls on all of them alike."""
  results, times = [None] * len(fns), [[] for _ in fns]
  for _ in range(repeats):
    for i, fn in enumerate(fns):
      start = time.perf_counter()
      results[i] = fn()
      times[i].append(time.perf_counter() - start)
  return [(r, min(t)) for r, t in zip(results, times)]
