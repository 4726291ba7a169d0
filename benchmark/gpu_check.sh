#!/usr/bin/env bash
# Every GPU speed figure in one call: pretraining steps of SSAST, MAE-AST and ASiT at base size (the recipe's
# batch and the largest batch that fits; model step and with the data path), frozen feature extraction clips/s
# and MFU of every base-size upstream, batched GPU fbank against one CPU core, each with and without
# torch.compile. Writes OUT/speed.json and OUT/speed.md (the markdown table for the README) and prints the table.
#
#   benchmark/gpu_check.sh [OUT] [extra options of `python -m benchmark.speed all`]
#   e.g. benchmark/gpu_check.sh speed-h200 --data /path/to/audio      # adds the 'with decoding' rows
#        benchmark/gpu_check.sh speed-smoke --device cpu --size mini --compile off    # a smoke run on a CPU
#
# Sized to finish in about 8 minutes on one H100/H200; a figure that fails (OOM, a compiler error) is listed under
# "Errors" and the others still run. Exit status 1 when any figure is missing. PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-speed-$(date -u +%Y%m%d-%H%M%S)}"
shift || true
python="${PYTHON:-python}"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
fi
case " $* " in
    *" --device "*) ;;  # another device asked for (the CPU smoke test: --device cpu --size mini)
    *) "$python" -c 'import sys, torch
sys.exit(0 if torch.cuda.is_available() else "no CUDA device: this check needs a GPU")' ;;
esac
exec "$python" -m benchmark.speed all --device cuda --size base --out "$out" "$@"
