#!/usr/bin/env bash
# One GPU check of kiln, for a machine with an NVIDIA GPU, CuPy and a CUDA build of PyTorch:
# first a preflight (benchmarks/gpu_preflight.py: Triton's and CuPy's versions, kiln's launch
# arguments against this Triton's launcher, one kernel launched on the device; if it fails, the
# check stops there, since every later part would fail the same way); then the GPU-marked tests
# (in 8 concurrent shards: a cold run is mostly kernel builds on the host);
# the quick GPU benchmark without torch.compile (every row, sizes / 8,
# each fused kernel's bandwidth); the function rows (GELU, softmax, layer_norm) at full size
# with torch.compile in its default and reduce-overhead modes; the CNN's convolutions alone
# (implicit GEMM vs unfold + matmul vs cuDNN; the faster kiln route is recorded, so the steps
# after compile with it); then the training steps (MLP and CNN with Adam) at full size with
# both torch.compile modes; then an eager step captured by the user as a CUDA graph
# (kiln.cuda.graph vs torch.cuda.graph); then a cProfile of the compiled MLP step's host time.
# Each part has its own time limit, so the whole check ends within 8 minutes (the limits sum
# to 455 s); output is unbuffered, so a part cut short
# still logs the rows it finished.
#
#   bash benchmarks/gpu_check.sh OUT_DIR     # logs: OUT_DIR/preflight.log,
#                                            # gpu_tests.log (gpu_tests_shard.log.K per shard),
#                                            # compile_gpu_quick.log, compile_gpu_functions.log,
#                                            # compile_gpu_conv.log, compile_gpu_steps.log,
#                                            # cuda_graphs_gpu.log, profile_gpu_step.log
#
# Prints each part's exit code at the end (124: it ran out of time) and exits non-zero if any
# part failed. Without a GPU the preflight fails on its device step and the check stops there.
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

python -c 'import triton; print("triton", triton.__version__)'
python -c 'import cupy; print("cupy", cupy.__version__)' || echo "cupy: cannot import"
run_part "preflight" 60 preflight.log python -u benchmarks/gpu_preflight.py
if [ "${codes[0]}" -ne 0 ]; then
    echo "preflight failed (exit ${codes[0]}): see $out/preflight.log; the later parts would fail" \
         "the same way, so the check stops here" >&2
    exit 1
fi
run_part "gpu tests" 110 gpu_tests.log \
    python -u benchmarks/gpu_tests.py --shards 8 --log "$out/gpu_tests_shard.log"
run_part "compile_gpu quick" 30 compile_gpu_quick.log \
    python -u benchmarks/compile_gpu.py --quick --no-inductor
run_part "compile_gpu functions" 60 compile_gpu_functions.log \
    python -u benchmarks/compile_gpu.py --only functions
run_part "compile_gpu conv" 35 compile_gpu_conv.log \
    python -u benchmarks/compile_gpu.py --only conv
run_part "compile_gpu steps" 100 compile_gpu_steps.log \
    python -u benchmarks/compile_gpu.py --only steps --no-kernels
run_part "cuda graphs (eager)" 20 cuda_graphs_gpu.log \
    python -u benchmarks/cuda_graphs_gpu.py --quick
run_part "profile" 40 profile_gpu_step.log \
    python -u benchmarks/profile_gpu_step.py

echo "== summary (logs in $out)"
status=0
for i in "${!names[@]}"; do
    printf '   %-20s exit %s\n' "${names[$i]}" "${codes[$i]}"
    [ "${codes[$i]}" -eq 0 ] || status=1
done
exit $status
