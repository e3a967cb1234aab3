#!/usr/bin/env bash
# The GPU check, as one short script: CUDA training throughput, CUDA sampling latency, then a
# centralized training run on the GPU with the quality figures (point prediction vs ridge-HRF,
# EEG-informed and noise ceilings) on held-out subjects.
#
#   benchmarks/gpu.sh OUT_DIR [MINUTES] [PRESET]
#
# Writes at most eight files to OUT_DIR (the quality run's per-site reports stay under
# $GPU_WORK). Each step has its own time limit and a failing step does not stop the next one;
# the exit code is the number of steps that failed. PYTHON picks the interpreter (default python3).
set -u
out=${1:?usage: benchmarks/gpu.sh OUT_DIR [MINUTES] [PRESET]}
minutes=${2:-2.5}
preset=${3:-base}
py=${PYTHON:-python3}
work=${GPU_WORK:-/tmp/fedneurogen-gpu}
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONUNBUFFERED=1
mkdir -p "$out" "$work"
failed=0

step() {  # step NAME SECONDS COMMAND...: run one step under a time limit, log it, count a failure
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s) $(date -u +%H:%M:%S)"
    local started=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$out/gpu_log.txt"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - started))s" | tee -a "$out/gpu_log.txt"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_log.txt"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$out/gpu_log.txt"

step training_efficiency 120 "$py" "$here/training_efficiency.py" --device cuda --quick --out "$out/training_efficiency_cuda.json"
step synthesis_latency 90 "$py" "$here/synthesis_latency.py" --device cuda --repeats 3 --out "$out/synthesis_latency_cuda.json"
step quality "$(awk -v m="$minutes" 'BEGIN { print int(m * 60 + 240) }')" \
    "$py" "$here/quality.py" --preset "$preset" --minutes "$minutes" --seed 7 --work "$work" --out "$work/quality_fmri_cuda.json"
cp "$work/quality_fmri_cuda.json" "$out/" 2>/dev/null
echo "failed steps: $failed"
exit "$failed"
