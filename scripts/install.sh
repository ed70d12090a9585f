#!/usr/bin/env bash
# Creates ./.venv and installs autoseg into it (editable, with test extras).
# A plain 'torch' requirement would make pip fetch a multi-GB CUDA build on a machine without
# torch, so the CPU build torch==2.13.0 is installed first when no torch is present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "torch==2.13.0"
fi
.venv/bin/pip install -q -e ".[test]"
