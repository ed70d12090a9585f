#!/usr/bin/env bash
# Installs autoseg into ./.venv and runs the whole pipeline on the bundled Hippocampus subset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/autoseg demo --root "${1:-autoseg_demo}"
