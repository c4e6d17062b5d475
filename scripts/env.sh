#!/usr/bin/env bash
# Create or reuse the virtual environment at <repo>/.venv and install what the project needs.
# Re-installs only when pyproject.toml changed (its hash is stored in .venv/.deps-key).
# Sourced by scripts/demo.sh and scripts/test.sh; prints nothing when there is nothing to do.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
KEY="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[splitldm] creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.deps-key" 2>/dev/null || true)" != "$KEY" ]; then
  echo "[splitldm] installing dependencies into $VENV (first run: several minutes, ~6 GB for torch)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev,serve]"
  echo "$KEY" > "$VENV/.deps-key"
fi
# The editable install must point at this checkout (a cached environment may come from another clone).
# Checked from / so that the import goes through the installed package, not a ./splitldm in the cwd.
if ! (cd / && "$VENV/bin/python" - "$ROOT") <<'PY' 2>/dev/null
import sys, pathlib, splitldm
sys.exit(0 if pathlib.Path(splitldm.__file__).resolve().is_relative_to(pathlib.Path(sys.argv[1]).resolve()) else 1)
PY
then
  "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
fi
export PATH="$VENV/bin:$PATH"
