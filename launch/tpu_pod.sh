#!/usr/bin/env bash
# TPU VM pod: copy the repo to every worker, install, and run the same command on all hosts at once.
# jax.distributed initialises itself from the TPU metadata (TPU_WORKER_HOSTNAMES) on every worker.
# Usage: TPU_NAME=my-pod ZONE=us-central2-b launch/tpu_pod.sh train-auditor --config configs/audit/paper.py --workdir gs://bucket/run1
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REMOTE_DIR=${REMOTE_DIR:-auditdm_jax}
gcloud compute tpus tpu-vm scp --recurse --zone "$ZONE" --worker=all "$(dirname "$0")/.." "$TPU_NAME:$REMOTE_DIR"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "cd $REMOTE_DIR && pip install -q -e . 'jax[tpu]' && AUDITDM_MULTIHOST=1 auditdm $(printf '%q ' "$@")"
