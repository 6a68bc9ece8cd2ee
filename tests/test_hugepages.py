"""auditdm_jax/hugepages.py: when the command line restarts itself with glibc's huge-page tunable, that the restart
keeps the process and its command line, and that the tunable removes XLA's per-call page faults."""
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from auditdm_jax import hugepages

ON = "glibc.malloc.hugetlb=1"


def clean_env(**extra):
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hugepages.ENV)}
  return {**env, **extra}


@pytest.mark.parametrize("environ, thp, glibc, tunables, why", [
    ({"HOME": "/h"}, "madvise", (2, 36), ON, "on"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise", (2, 35), f"glibc.malloc.arena_max=2:{ON}", "on"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", (2, 36), None, "set by GLIBC_TUNABLES"),
    ({hugepages.ENV: "off"}, "madvise", (2, 36), None, "off (AUDITDM_JAX_HUGEPAGES)"),
    ({}, "always", (2, 36), None, "transparent huge pages: always"),
    ({}, "never", (2, 36), None, "transparent huge pages: never"),
    ({}, None, (2, 36), None, "transparent huge pages: absent"),
    ({}, "madvise", (2, 34), None, "needs glibc >= 2.35"),
    ({}, "madvise", None, None, "needs glibc >= 2.35"),  # musl, macOS.
])
def test_plan(environ, thp, glibc, tunables, why):
  env, reason = hugepages.plan(environ, thp, glibc)
  assert why in reason
  if tunables is None:
    assert env is None
  else:
    assert env == {**environ, "GLIBC_TUNABLES": tunables}


def test_thp_mode_reads_the_bracketed_word(tmp_path):
  (tmp_path / "enabled").write_text("always [madvise] never\n")
  assert hugepages.thp_mode(tmp_path / "enabled") == "madvise"
  assert hugepages.thp_mode(tmp_path / "absent") is None


def test_glibc_version_matches_platform():
  lib, version = platform.libc_ver()
  expected = tuple(int(p) for p in version.split(".")[:2]) if lib == "glibc" else None
  assert hugepages.glibc_version() == expected


def test_status_names_the_environment(monkeypatch):
  monkeypatch.setenv("GLIBC_TUNABLES", ON)
  assert hugepages.status() == "on (GLIBC_TUNABLES)"
  monkeypatch.delenv("GLIBC_TUNABLES")
  monkeypatch.setenv(hugepages.ENV, "off")
  assert hugepages.status() == "off (AUDITDM_JAX_HUGEPAGES)"
  monkeypatch.delenv(hugepages.ENV)
  monkeypatch.setattr(hugepages, "thp_mode", lambda: "madvise")
  monkeypatch.setattr(hugepages, "glibc_version", lambda: (2, 36))
  assert hugepages.status().startswith("off in this process")  # Not restarted: a caller's process, not a program.


def test_reexec_keeps_the_process_and_its_command_line(tmp_path):
  (tmp_path / "enabled").write_text("always [madvise] never\n")
  code = textwrap.dedent(f"""
      import os, sys
      from auditdm_jax import hugepages
      hugepages.THP_MODE_FILE = {str(tmp_path / "enabled")!r}
      hugepages.glibc_version = lambda: (2, 36)
      print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], flush=True)
      hugepages.reexec_if_useful()
      print("done", os.getpid(), os.environ["KEEP"])
  """)
  out = subprocess.run([sys.executable, "-c", code, "demo", "--workdir", "w"], env=clean_env(KEEP="yes"),
                       capture_output=True, text=True, check=True).stdout.splitlines()
  pid = out[0].split()[1]
  assert out == [f"start {pid} None ['demo', '--workdir', 'w']", f"start {pid} {ON} ['demo', '--workdir', 'w']",
                 f"done {pid} yes"]


FAULTS = """
import resource, sys
import jax, jax.numpy as jnp, numpy as np
f = jax.jit(lambda x, w: jnp.sin(x) @ w)  # sin(x): a 64 MB temporary, allocated on every call.
x, w = jnp.linspace(0, 1, 4096 * 4096).reshape(4096, 4096), jnp.ones((4096, 8))
out = f(x, w).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  out = f(x, w).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5, float(np.asarray(out).sum()))
"""


@pytest.mark.skipif(hugepages.plan({}, hugepages.thp_mode(), hugepages.glibc_version())[0] is None,
                    reason="the tunable does nothing here (glibc < 2.35 or THP not in madvise mode)")
def test_tunable_removes_per_call_page_faults():
  def run(**env):
    out = subprocess.run([sys.executable, "-c", FAULTS], env=clean_env(**env), capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[0]), out[1]

  faults_off, value_off = run()
  faults_on, value_on = run(GLIBC_TUNABLES=ON)
  assert value_on == value_off  # Same result, bit for bit.
  assert faults_off > 64 * 2 ** 20 / 4096 / 2  # Most 4 KiB pages of the temporary are faulted in on each call.
  assert faults_on < faults_off / 10
