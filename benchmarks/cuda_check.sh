#!/usr/bin/env bash
# The CUDA checks and GPU timings, in one call, for a machine with an NVIDIA GPU and PyTorch but no internet:
# the CUDA tests (tests/test_cuda.py, skipped elsewhere), the attention maps against softmax and AdaSplash on the
# GPU, and the whole-model training step. Packages the machine lacks travel as wheels in .whl/, fetched where pip
# works (its Python version and platform given):
#
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl pycocotools entmax adasplash
#   bash benchmarks/cuda_check.sh [OUTPUT_DIR]      # logs and tables there (default: cuda_check/)
#
# Takes about 5-8 minutes on one H200; each step has its own time limit and a failed step does not stop the rest.
set -uo pipefail
out=${1:-cuda_check}
mkdir -p "$out"
python=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/cuda_check_site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/cuda_check_site:$PWD/src
else
    export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run, log to $out/NAME.log, report the status
    local name=$1 seconds=$2
    shift 2
    echo "== $name: $*"
    timeout "$seconds" "$@" 2>&1 | tee "$out/$name.log"
    echo "== $name: exit status ${PIPESTATUS[0]}"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.log"
"$python" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.log"
step tests 240 "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py
adasplash=$("$python" -c "import adasplash" 2>/dev/null && echo --adasplash)
step activations 420 "$python" benchmarks/activations.py --device cuda --repeats 20 --warmup 3 \
    --alphas 1.01 1.05 1.1 1.3 1.5 1.7 2 $adasplash
step train_step 180 "$python" benchmarks/train_step.py --device cuda --repeats 20 --warmup 3 --cases detr_r50_coco \
    --variants softmax encoder_self=alpha_entmax decoder_cross=tvmax --set model.attention.encoder_self.alpha_init=1.1
