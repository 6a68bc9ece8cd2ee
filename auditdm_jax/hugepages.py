"""Transparent huge pages for XLA's CPU buffers: the command line re-executes itself once with glibc's
`glibc.malloc.hugetlb=1` tunable.

Why: XLA on CPU allocates a program's temporaries afresh on every call (the demo base model's train step: one
154 MB block), glibc serves a block that large with a fresh `mmap` and returns it with `munmap`, so every 4 KiB page
of it is faulted in again on the next call: ~40k page faults per step, a third of the process's CPU time spent in
the kernel. Where the kernel's transparent huge pages are in `madvise` mode (a common default), the tunable makes
glibc advise them for its large blocks: ~90x fewer faults, and the demo's base pretraining ~12% faster with
bit-identical results (where a buffer lies does not change what XLA computes). docs/cli.md has the measurements.

glibc reads tunables only at process start, hence the re-exec: same process id, same command line,
`GLIBC_TUNABLES` extended (child processes inherit it). `AUDITDM_JAX_HUGEPAGES=off` turns it off; nothing happens
where it cannot help (not glibc, glibc < 2.35, THP `always` or `never`) or when `GLIBC_TUNABLES` already sets it.
"""
import os
import re
import sys

ENV = "AUDITDM_JAX_HUGEPAGES"
TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)  # The first glibc with the tunable.


def thp_mode(path=None):
  """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'), or None where there is none."""
  try:
    with open(path or THP_MODE_FILE, encoding="ascii") as f:
      found = re.search(r"\[(\w+)\]", f.read())
  except OSError:
    return None
  return found.group(1) if found else None


def glibc_version():
  """(major, minor) of the C library when it is glibc, else None."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  except (AttributeError, ValueError, OSError):
    return None
  return tuple(int(p) for p in version.split(".")[:2]) if name == "glibc" else None


def plan(environ, thp, glibc):
  """(environment to re-execute with, or None; why) for a process started with `environ`."""
  tunables = environ.get("GLIBC_TUNABLES", "")
  if f"{TUNABLE}=1" in tunables.split(":"):
    return None, "on (GLIBC_TUNABLES)"
  if TUNABLE in tunables:
    return None, f"set by GLIBC_TUNABLES ({tunables})"
  if environ.get(ENV, "").strip().lower() in ("off", "0", "false", "no"):
    return None, f"off ({ENV})"
  if glibc is None or glibc < MIN_GLIBC:
    return None, "off (needs glibc >= 2.35)"
  if thp != "madvise":
    return None, f"off (transparent huge pages: {thp or 'absent'}; only 'madvise' mode needs the advice)"
  env = dict(environ)
  env["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, f"{TUNABLE}=1"]))
  return env, "on"


def status():
  """One line for `auditdm info`: whether this process runs with the tunable, or why not."""
  env, why = plan(os.environ, thp_mode(), glibc_version())
  return why if env is None else "off in this process (`auditdm` started as a program turns it on)"


def reexec_if_useful():
  """Replaces this process by itself with the tunable set, when `plan` says it helps; returns otherwise.

  For a program's entry point only (it restarts the interpreter on `sys.orig_argv`), before any work is done.
  """
  env, _ = plan(os.environ, thp_mode(), glibc_version())
  if env is None or not sys.executable:  # An embedded interpreter cannot be restarted.
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)
