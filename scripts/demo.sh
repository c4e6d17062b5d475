#!/usr/bin/env bash
# The main job: `splitldm demo` on the shipped checkpoints. Extra arguments go to it (e.g. --out DIR).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1
exec splitldm demo "$@"
