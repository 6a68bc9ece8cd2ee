#!/usr/bin/env bash
# One-process FLUX image service (one GPU, or CPU for tiny pipelines) on this machine.
# Usage: FLUX_DIR=/models/FLUX.1-dev KONTEXT_DIR=/models/FLUX.1-Kontext-dev launch/flux_service.sh [--port 8000 ...]
# Set AUDITDM_IMAGEGEN_TOKEN to require a bearer token; HOST=0.0.0.0 to listen beyond loopback.
set -euo pipefail
: "${FLUX_DIR:?set FLUX_DIR (local diffusers FluxPipeline directory)}"
: "${KONTEXT_DIR:?set KONTEXT_DIR (local diffusers FluxKontextPipeline directory)}"
exec auditdm serve-images --backend local --flux-dir "$FLUX_DIR" --kontext-dir "$KONTEXT_DIR" \
  --host "${HOST:-127.0.0.1}" "$@"
