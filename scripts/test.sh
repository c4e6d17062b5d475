#!/usr/bin/env bash
# Run the test suite (CPU only, offline). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# pytest exits 5 when it collected no test: that is a failure here, like any non-zero code.
exec python -m pytest -q -p no:cacheprovider "$@"
