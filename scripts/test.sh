#!/usr/bin/env bash
# Installs autoseg with its test dependencies into ./.venv (CPU torch, never a CUDA build)
# and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python -m pytest -q tests "$@"
