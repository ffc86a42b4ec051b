#!/usr/bin/env bash
# The GPU check of MedSAD-CLIP: the paper's model (ViT-L-14 at 224, random init, `full` preset,
# bf16, batch 32) on one GPU in under 8 minutes. Prints one `key=value` line per figure:
# training images/s, inference slices/s, peak GPU memory, the train-step/forward ratio, and a
# 2-minute learning smoke run on synthetic BMAD-layout data (its test Dice must be above 0).
#
#   bench/gpu_check.sh [options of bench/gpu_check.py]      # e.g. --smoke-minutes 2
#
# Python: $PYTHON, else .venv/bin/python, else python3. The GPU: CUDA_VISIBLE_DEVICES picks it.
# Exit status: 0 = every check passed; 1 = the smoke run did not learn; 2 = no CUDA device or
# an error (one `gpu_check: error: ...` line on stderr); 124 = over the time limit.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
LIMIT_S="${GPU_CHECK_LIMIT_S:-470}"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: error: no CUDA device ($PY: torch.cuda.is_available() is False or torch is missing)" >&2
    exit 2
fi
timeout --signal=TERM --kill-after=20 "$LIMIT_S" "$PY" bench/gpu_check.py "$@"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "gpu_check: error: did not finish within ${LIMIT_S} s" >&2
    exit 124
fi
exit "$rc"
