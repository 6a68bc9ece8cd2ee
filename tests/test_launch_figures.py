"""launch/readme_figures.sh's plan, run against a stand-in `auditdm` that records its calls: each seed's models
first, copies of them for the other sweeps, every run once, then each sweep's tables; a failed run stops it."""
import os
import subprocess

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "launch", "readme_figures.sh")
# Records its arguments; `sweep` makes the seed's models on its first run, and the tables.
STAND_IN = r"""#!/usr/bin/env bash
echo "$*" >> "$CALLS"
while (($#)); do case $1 in --workdir) w=$2; shift;; --seeds) s=$2; shift;; --weaknesses) k=$2; shift;; esac; shift; done
[[ -n ${FAIL_ON:-} && $k == "$FAIL_ON" ]] && exit 1
[[ $s == *,* ]] && { echo "table of $w" > "$w/sweep_summary.md"; exit 0; }
mkdir -p "$w/seed$s/pretrain" && touch "$w/seed$s/pretrain/models_of_$(basename "$w")"
"""


def _run(tmp_path, **env):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  (bin_dir / "auditdm").write_text(STAND_IN)
  (bin_dir / "auditdm").chmod(0o755)
  calls = tmp_path / "calls.log"
  calls.write_text("")
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", CALLS=str(calls), ROOT=str(tmp_path / "figs"),
             SEEDS="0 1", JOBS="2", CONFIG="configs/audit/demo.py:fast", **env)
  out = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True)
  return out, [line.split() for line in calls.read_text().splitlines()]


def test_the_plan(tmp_path):
  out, calls = _run(tmp_path)
  assert out.returncode == 0, out.stderr
  root = tmp_path / "figs"
  first = calls[:2]
  assert sorted(c[c.index("--seeds") + 1] for c in first) == ["0", "1"]
  assert all(c[c.index("--weaknesses") + 1] == "counting:shape=star" for c in first)
  runs = [c for c in calls if "," not in c[c.index("--seeds") + 1]]
  key = lambda c: (c[c.index("--workdir") + 1], c[c.index("--seeds") + 1], c[c.index("--weaknesses") + 1])
  assert len(runs) == 2 * 8 and len({key(c) for c in runs}) == len(runs)  # Every run once: 3+1+1+1+2 per seed.
  for name in ("comparison", "edit_question", "three_at_once", "drawn"):
    for seed in (0, 1):  # Copies of the seed's models, made by the first sweep.
      assert (root / name / f"seed{seed}" / "pretrain" / "models_of_sweep").exists()
  tables = calls[-5:]
  assert [c[c.index("--workdir") + 1] for c in tables] == [str(root / n) for n in (
      "sweep", "comparison", "edit_question", "three_at_once", "drawn")]
  assert tables[0][-1] == "counting:shape=star,binding:color=red,spatial:relation=left"
  assert tables[2][tables[2].index("--config") + 1] == "configs/audit/demo.py:fast,mode=edit_question"
  assert "--config.system.eval_batches=16" in tables[3]
  assert tables[3][-1] == "[counting:shape=star,binding:color=red,existence:shape=triangle]"
  assert tables[4][-1] == "existence:color=red,color:shape=star"
  assert all(c[c.index("--seeds") + 1] == "0,1" for c in tables)
  assert out.stdout.count("table of") == 5


def test_a_failed_run_stops_it_and_names_its_log(tmp_path):
  out, calls = _run(tmp_path, FAIL_ON="comparison:shape=triangle")
  assert out.returncode == 1
  assert "failed, see:" in out.stderr and "comparison_seed0_comparison_shape_triangle.log" in out.stderr
  assert not any("," in c[c.index("--seeds") + 1] for c in calls)  # No tables from a plan with a failed run.
