"""Progress bars for long loops: count, rate and ETA (tqdm) on stderr when it is a terminal; silent otherwise.

  for step in progress.track(range(start, total), total=total, initial=start, desc="GRPO", unit="step"):
    ...

The clock restarts after the first `warmup` items, so the rate (and the ETA from it) leaves out jit compile time.
"""
import sys

import tqdm


def track(iterable, total=None, desc=None, unit="it", initial=0, warmup=1, file=None):
  """Yields the items of `iterable` while a bar counts them from `initial` (items done before a resume) to
  `total` (default: initial + len(iterable) when it has a length)."""
  file = file or sys.stderr
  if total is None and hasattr(iterable, "__len__"):
    total = initial + len(iterable)
  kw = dict(total=total, desc=desc, unit=unit, file=file, dynamic_ncols=True,
            disable=not (hasattr(file, "isatty") and file.isatty()))
  bar = tqdm.tqdm(initial=initial, leave=False, **kw)  # Shown while the first items compile.
  try:
    for done, item in enumerate(iterable):
      if done == warmup:  # Compiled by now: a fresh bar restarts the clock at the current count.
        bar.close()
        bar = tqdm.tqdm(initial=initial + done, **kw)
      yield item
      bar.update(1)
  finally:
    bar.close()
