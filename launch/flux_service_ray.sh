#!/usr/bin/env bash
# FLUX image service on Ray Serve: NUM_REPLICAS GPU replicas (one GPU each) behind one HTTP endpoint.
# Single node: just run it. Multi node: `ray start --head` here, `ray start --address=HEAD:6379` on the others, then
# run this on the head (serve joins the running cluster). Needs `pip install -e '.[service,ray]'`.
# Usage: FLUX_DIR=... KONTEXT_DIR=... NUM_REPLICAS=16 launch/flux_service_ray.sh [--port 8000 --max-batch-size 4 ...]
# The model directories must exist at the same path on every node (shared filesystem or a copy per node).
set -euo pipefail
: "${FLUX_DIR:?set FLUX_DIR (local diffusers FluxPipeline directory)}"
: "${KONTEXT_DIR:?set KONTEXT_DIR (local diffusers FluxKontextPipeline directory)}"
exec auditdm serve-images --backend ray --num-replicas "${NUM_REPLICAS:-1}" \
  --flux-dir "$FLUX_DIR" --kontext-dir "$KONTEXT_DIR" --host "${HOST:-127.0.0.1}" "$@"
