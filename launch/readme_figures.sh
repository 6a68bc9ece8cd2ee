#!/usr/bin/env bash
# The README's "Measured: the demo" on this machine: its five sweeps over seeds 0-2 (the table, comparison, image
# mode, three at once, the two drawn weaknesses), JOBS demo runs at a time. Each seed's models (tokenizer, base, references, auditor) are trained once, by the seed's first run,
# and copied to the other sweeps; each sweep command then runs once more to write its tables (finished runs are
# read back, not rerun). Rerunning the script resumes where it stopped.
# Usage: [ROOT=runs/figures] [JOBS=3] [SEEDS="0 1 2"] [CONFIG=configs/audit/demo.py] launch/readme_figures.sh
#   CONFIG=configs/audit/demo.py:fast SEEDS=0 runs the same plan with the tiny models (a quarter of an hour).
# Tables: $ROOT/<sweep>/sweep_summary.md and sweep.md; logs: $ROOT/logs/. The seeds 3 and 4 rows (models trained
# from scratch): auditdm sweep --workdir $ROOT/seeds34 --seeds 3 --weaknesses counting:shape=star,existence:color=red
# and --seeds 4 --weaknesses counting:shape=star,color:shape=star (docs/shapes_world.md).
set -euo pipefail -f  # -f: a bracketed weakness list is no file pattern
ROOT=${ROOT:-runs/figures}
JOBS=${JOBS:-3}
SEEDS=${SEEDS:-0 1 2}
CONFIG=${CONFIG:-configs/audit/demo.py}
# name|config arguments|more flags|weaknesses (space-separated; a bracketed list is planted at once)
SWEEPS=(
  "sweep|||counting:shape=star binding:color=red spatial:relation=left"
  "comparison|||comparison:shape=triangle"
  "edit_question|mode=edit_question||existence:shape=triangle"
  "three_at_once|diversity=1.0|--config.system.eval_batches=16|[counting:shape=star,binding:color=red,existence:shape=triangle]"
  "drawn|||existence:color=red color:shape=star"  # python -m auditdm_jax.tools.draw_weaknesses (README)
)
mkdir -p "$ROOT/logs"

config_with() {  # CONFIG with more config arguments
  if [[ -z $1 ]]; then echo "$CONFIG"; elif [[ $CONFIG == *:* ]]; then echo "$CONFIG,$1"; else echo "$CONFIG:$1"; fi
}

sweep() {  # sweep NAME ARGS FLAGS SEEDS WEAKNESSES(comma-separated)
  # shellcheck disable=SC2086  # FLAGS is a list of flags
  auditdm sweep --workdir "$ROOT/$1" --config "$(config_with "$2")" $3 --seeds "$4" --weaknesses "$5"
}

job() {  # job NAME ARGS FLAGS SEED WEAKNESS: one demo run in the background, at most JOBS at a time
  while (($(jobs -rp | wc -l) >= JOBS)); do sleep 2; done
  local log="$ROOT/logs/$1_seed$4_$(echo "$5" | tr -c 'a-z0-9\n' '_').log"
  echo "$(date +%T) start $1 seed $4 $5 (log: $log)"
  rm -f "$log.failed"
  (sweep "$1" "$2" "$3" "$4" "$5" >"$log" 2>&1 || touch "$log.failed") &
}

finish() {  # waits for every run; stops if one failed
  wait
  local failed
  failed=$(compgen -G "$ROOT/logs/*.failed" || true)
  if [[ -n $failed ]]; then
    echo "failed, see: ${failed//.failed/}" >&2
    exit 1
  fi
}

# 1. Each seed's models, with its first run of the first sweep.
IFS='|' read -r first args flags weaknesses <<<"${SWEEPS[0]}"
for seed in $SEEDS; do job "$first" "$args" "$flags" "$seed" "${weaknesses%% *}"; done
finish
# 2. Every other run; the other sweeps start from copies of the seeds' models.
for entry in "${SWEEPS[@]}"; do
  IFS='|' read -r name args flags weaknesses <<<"$entry"
  for seed in $SEEDS; do
    if [[ $name != "$first" && ! -d $ROOT/$name/seed$seed/pretrain ]]; then
      mkdir -p "$ROOT/$name/seed$seed" && cp -r "$ROOT/$first/seed$seed/pretrain" "$ROOT/$name/seed$seed/"
    fi
    for weakness in $weaknesses; do
      if [[ $name != "$first" || $weakness != "${weaknesses%% *}" ]]; then  # (Step 1 ran the first sweep's first.)
        job "$name" "$args" "$flags" "$seed" "$weakness"
      fi
    done
  done
done
finish
# 3. The tables, sweep by sweep.
for entry in "${SWEEPS[@]}"; do
  IFS='|' read -r name args flags weaknesses <<<"$entry"
  sweep "$name" "$args" "$flags" "$(echo $SEEDS | tr ' ' ,)" "$(echo $weaknesses | tr ' ' ,)" >>"$ROOT/logs/$name.tables.log" 2>&1
  echo "== $ROOT/$name/sweep_summary.md"
  cat "$ROOT/$name/sweep_summary.md"
done
