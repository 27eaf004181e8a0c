#!/usr/bin/env bash
# The GPU check: the layer tests on the GPU under each Keras backend that imports here,
# then benchmarks/gpu_check.py (every implementation in float32 / mixed_float16 /
# mixed_bfloat16 against the NumPy reference, a LambdaResNet50 fit of a few steps, and
# the layer against lucidrains and timm on the same GPU), then, where JAX and timm
# import, benchmarks/same_models.py (LambdaResNet26T and LambdaResNet50TS against timm's
# same models, within $SAME_MODELS_BUDGET_S seconds; 0 skips it). Results go to $RESULTS.
#
#   bash benchmarks/gpu_check.sh                      # backends: tensorflow jax torch
#   BACKENDS="jax torch" RESULTS=/tmp/gpu bash benchmarks/gpu_check.sh
#   BACKENDS=jax GPU_CHECK_ARGS="--parts speed" LAYER_TESTS=mixed_precision \
#     SAME_MODELS_BUDGET_S=360 bash benchmarks/gpu_check.sh   # the short run of the speed check
#
# Keras and its dependencies that the GPU machine lacks (namex, optree) are installed
# first, e.g. from wheels (pip install --no-index --no-deps --target DIR *.whl, then
# PYTHONPATH=DIR).
#
# The tests compare float32 with a float64 reference at 1e-5, so they run with TF32
# off (NVIDIA_TF32_OVERRIDE=0, JAX_DEFAULT_MATMUL_PRECISION=highest); the benchmark
# runs with each framework's default precision and records the error it gives.
set -u
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-benchmarks/results/gpu}
BACKENDS=${BACKENDS:-tensorflow jax torch}
LAYER_TESTS=${LAYER_TESTS:-matches_numpy_reference or paper_defaults_at_30x30 or same_gradients or strides_two or mixed_precision or average_pooling}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RESULTS/gpu.txt"
status=0
for backend in $BACKENDS; do
  if ! KERAS_BACKEND=$backend python3 -c "import keras, lambda_keras" 2>/dev/null; then
    echo "== $backend: Keras does not import with this backend here; skipped" | tee -a "$RESULTS/gpu.txt"
    continue
  fi
  echo "== $backend: layer tests on the GPU"
  NVIDIA_TF32_OVERRIDE=0 JAX_DEFAULT_MATMUL_PRECISION=highest KERAS_BACKEND=$backend \
    python3 -m pytest -q -p no:cacheprovider tests/test_lambda_layer.py -k "$LAYER_TESTS" \
    2>&1 | tee "$RESULTS/pytest_$backend.log" | tail -4
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  echo "== $backend: benchmarks/gpu_check.py"
  KERAS_BACKEND=$backend python3 benchmarks/gpu_check.py --out "$RESULTS" ${GPU_CHECK_ARGS:-} \
    > "$RESULTS/gpu_check_$backend.log" 2>&1 || status=1
  tail -3 "$RESULTS/gpu_check_$backend.log"
done
if [ "${SAME_MODELS_BUDGET_S:-600}" != 0 ] && KERAS_BACKEND=jax python3 -c "import keras, timm" 2>/dev/null; then
  echo "== benchmarks/same_models.py (JAX against timm)"
  python3 benchmarks/same_models.py --device gpu --budget-s "${SAME_MODELS_BUDGET_S:-600}" --out "$RESULTS" \
    > "$RESULTS/same_models_gpu.log" 2>&1 || status=1
  tail -12 "$RESULTS/same_models_gpu.log"
fi
exit $status
