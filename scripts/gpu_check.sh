#!/usr/bin/env bash
# `make gpu-check`: see infer/bench/gpu_check.py. Installs nothing: runs .venv's Python when there is one,
# else $PY (default python3, e.g. the GPU machines' system Python with JAX preinstalled).
#   GPU_CHECK_SIZE=full (default) | cpu    GPU_CHECK_OUT=results/gpu-check (default)
#   GPU_CHECK_BUDGET=570 (seconds for the whole check)    GPU_CHECK_STAGES=a,b (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON="${PY:-python3}"; fi
exec "$PYTHON" -m infer.bench.gpu_check --size "${GPU_CHECK_SIZE:-full}" --out "${GPU_CHECK_OUT:-results/gpu-check}" \
  --budget "${GPU_CHECK_BUDGET:-570}" ${GPU_CHECK_STAGES:+--stages "$GPU_CHECK_STAGES"}
