#!/usr/bin/env bash
# nnU-Net v2, for side-by-side benchmarks only (never a dependency of autoseg), in its own venv:
#   bash bench/setup_nnunet.sh VENV          (or with $NNUNET_VENV set, which the benchmarks then read)
# torch is pinned to the local CPU build first, so pip does not fetch a CUDA torch for nnunetv2.
set -euo pipefail
VENV="${1:-${NNUNET_VENV:-}}"
if [ -z "$VENV" ]; then
    echo "usage: bash bench/setup_nnunet.sh VENV (a new folder for nnU-Net's venv), or set NNUNET_VENV" >&2
    exit 2
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0
# torch named again in the same command: otherwise pip may upgrade it for nnunetv2 (seen: 2.15.0+cu132)
"$VENV/bin/pip" install -q nnunetv2==2.8.1 torch==2.13.0
"$VENV/bin/python" -c "import nnunetv2, torch; print('nnunetv2 ready, torch', torch.__version__)"
