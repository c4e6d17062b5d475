#!/usr/bin/env bash
# Run the test suite (CPU only, offline), then the wheel smoke test (scripts/wheel_smoke.sh: the package
# built, installed in a fresh environment and used from outside the repository). Extra arguments go to
# pytest and skip the wheel smoke test (a targeted run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# pytest exits 5 when it collected no test: that is a failure here, like any non-zero code.
python -m pytest -q -p no:cacheprovider "$@"
if [ "$#" -eq 0 ]; then
  bash scripts/wheel_smoke.sh
fi
