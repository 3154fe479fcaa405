#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one short run (under 10 minutes; on an H100 with
# jax 0.11.2, hf_peer's batch 1 took ~150 s, mostly compilation, and test_t5 plus the first 16
# decoding tests ~300 s):
#   1. bench/hf_peer.py --device cuda: our engine vs transformers, both on the GPU, same
#      weights and greedy outputs, plus SpecDecode's speed-up and its bounds;
#   2. the pure-JAX exactness tests (T5 blocks at per-row offsets vs teacher forcing, every
#      decoding method's exactness and greedy equalities) with jax on the GPU.
#
#   bash bench/gpu_check.sh [OUT_DIR]        (default OUT_DIR: gpu_check_out)
#
# Needs python3 with jax (CUDA), flax, scipy, pytest, torch (CUDA) and transformers. Wheels
# for anything missing (e.g. gin-config) can be put in .whl/ and are installed to a
# temporary folder first. Float32 matmuls run at full precision in both frameworks (no TF32),
# as the tests' tolerances and the benchmark's token-for-token comparison assume.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check_out}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/spec_cascade_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/spec_cascade_site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 JAX_DEFAULT_MATMUL_PRECISION=highest
# torch shares the GPU: jax allocates as it goes instead of taking 75 % of the memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import jax, flax, torch, transformers; print('jax', jax.__version__, jax.devices(),
'flax', flax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$out/gpu.txt"

status=0
timeout "${BENCH_TIMEOUT_S:-260}" python3 bench/hf_peer.py --device cuda --batches "${BATCHES:-1,8}" \
  --trials 3 --ours_trials 5 2>&1 | tee "$out/hf_peer.log" || status=1
timeout "${TEST_TIMEOUT_S:-300}" python3 -m pytest -q -p no:cacheprovider \
  tests/test_t5.py tests/test_decoding.py 2>&1 | tee "$out/tests.log" || status=1
exit $status
