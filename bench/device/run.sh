#!/usr/bin/env bash
# Run THERE (the GPU machine), from the repository root, through the device tool, after
# bench/device/prepare.sh here:  command "bash bench/device/run.sh", carry [".gpu_bundle"], timeout_s 570.
#
# One lease, in the order that tells most if it is cut short: transferkit's default fit (3 seeds)
# and the synthetic ceiling first (about a minute), then the PyTorch tutorial loop (3 seeds, about
# 50 s each on an H100), then the scaling rows (2k / 10k / 20k images, 1 epoch each). Each part has
# its own time limit, and a part that fails does not stop the next. Everything printed is also
# written to $OUT/gpu_bench.log, which comes back. With arguments, runs just `bench/gpu.py ARGS`.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/tk-device-out}
mkdir -p "$OUT"
PY=${PY:-python3}
if ls .gpu_bundle/whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/tk-site .gpu_bundle/whl/*.whl || exit 1
fi
export PYTHONPATH="/tmp/tk-site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRANSFERKIT_CACHE_DIR=/tmp/tk-cache
data=.gpu_bundle/data/hymenoptera
[ -d "$data" ] || data=../shared/data/hymenoptera
log="$OUT/gpu_bench.log"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch, timm, accelerate, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), '| timm', timm.__version__, '| accelerate', accelerate.__version__, '| transformers', transformers.__version__)"
} 2>&1 | tee "$log"
part() {  # part SECONDS ARGS...: one bench/gpu.py run, cut at SECONDS
  local limit=$1; shift
  echo -e "\n=== bench/gpu.py $* (limit ${limit} s)" | tee -a "$log"
  timeout "$limit" "$PY" bench/gpu.py --data "$data" "$@" 2>&1 | tee -a "$log"
  echo "=== exit ${PIPESTATUS[0]}" | tee -a "$log"
}
if [ $# -gt 0 ]; then
  part 560 "$@"
else
  part 150 --only fit synthetic
  part 240 --only tutorial
  part 150 --only scale
fi
