#!/usr/bin/env bash
# Run any auditdm subcommand on this machine (all local devices).
# Usage: launch/local.sh COMMAND --config configs/x.py[:arg] --workdir DIR [--config.key=value ...]
set -euo pipefail
exec auditdm "$@"
