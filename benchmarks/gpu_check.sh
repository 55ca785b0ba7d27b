#!/usr/bin/env bash
# One GPU check of kiln, for a machine with an NVIDIA GPU, CuPy and a CUDA build of PyTorch:
# the GPU-marked tests, the quick GPU benchmark without torch.compile, then the full benchmark.
# Each part has its own time limit, so the whole check ends within 6 minutes.
#
#   bash benchmarks/gpu_check.sh OUT_DIR     # logs: OUT_DIR/gpu_tests.log,
#                                            # compile_gpu_quick.log, compile_gpu_full.log
#
# Prints each part's exit code at the end (124: it ran out of time) and exits non-zero if any
# part failed. Without a GPU the tests skip and compile_gpu.py exits 2 at once.
set -u

if [ $# -ne 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUT_DIR" >&2
    exit 64
fi
mkdir -p "$1"
out=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."                      # the checkout's root
export PYTHONPATH=.

nvidia-smi > "$out/nvidia_smi.txt" 2>&1 || echo "no nvidia-smi" >> "$out/nvidia_smi.txt"

names=()
codes=()
run_part() {        # run_part NAME SECONDS LOG COMMAND...
    local name=$1 limit=$2 log=$3
    shift 3
    echo "== $name (limit ${limit}s): $* > $log"
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" > "$out/$log" 2>&1
    local code=$?
    echo "   exit $code after $((SECONDS - start))s; last lines:"
    tail -n 3 "$out/$log" | sed 's/^/   | /'
    names+=("$name")
    codes+=("$code")
}

run_part "gpu tests" 130 gpu_tests.log python -m pytest -q -m gpu
run_part "compile_gpu quick" 60 compile_gpu_quick.log \
    python benchmarks/compile_gpu.py --quick --no-inductor
run_part "compile_gpu full" 140 compile_gpu_full.log python benchmarks/compile_gpu.py

echo "== summary (logs in $out)"
status=0
for i in "${!names[@]}"; do
    printf '   %-20s exit %s\n' "${names[$i]}" "${codes[$i]}"
    [ "${codes[$i]}" -eq 0 ] || status=1
done
exit $status
