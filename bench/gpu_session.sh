#!/usr/bin/env bash
# Every GPU figure of docs/PERFORMANCE.md (target 6) in one session on a machine with a CUDA
# GPU, in order of what matters most if time runs out:
#   1. the tests that need CUDA: the fast path on cuBLAS, CPU vs CUDA agreement, CUDA-graph
#      replays vs eager steps (tests/test_fast_path.py, tests/test_cuda_graphs.py, with
#      BNVIZ_TEST_DEVICE=cuda);
#   2. the ways to the step's percentiles on the GPU, each checked against the sort (bench/gpu_probes.py);
#   3. where a step's time goes on the GPU, with and without CUDA graphs (bench/profile_step.py);
#   4. the bench's GPU rows: engine vs naive loop on cuda, engine on cuda vs on the CPU;
#   5. paper-fig1 on cuda: 5,000 steps extrapolated, then the whole 2 x 50,000 steps in the time left;
#   6. every test but the browser's with trainers on the GPU (device "auto"): on 2026-11-29 this found
#      five tests that assumed the CPU. Tests whose modules need packages the machine lacks (plotly,
#      streamlit) fail or do not load there; read the failures' reasons, not their count.
# Usage, from the repository root:  bash bench/gpu_session.sh [OUTDIR]   (default $OUT, else ./out/gpu)
# Each step's output lands in OUTDIR/gpu_session.tgz, rewritten after every step (one file, so a
# device tool that brings back few files brings back everything, also from a session cut short).
# BUDGET (seconds, default 540) bounds the whole session: each step's limit is cut to what is left.
# If the machine lacks pooch/platformdirs, put their wheels in .whl/ first (see docs/PERFORMANCE.md).
set -u
budget=${BUDGET:-540}
out=${1:-${OUT:-out/gpu}}
logs=$(mktemp -d)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/bnviz-site .whl/*.whl \
    && export PYTHONPATH=/tmp/bnviz-site${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi -L; $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"; \
  nproc; grep -m1 'model name' /proc/cpuinfo; } 2>&1 | tee "$logs/machine.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its output, go on whatever happens
  local name=$1 limit=$2; shift 2
  local left=$((budget - SECONDS - 5))
  ((limit > left)) && limit=$left
  ((limit < 10)) && { echo "=== $name: skipped, no time left"; return; }
  echo "=== $name ($(date +%T), limit ${limit} s)"
  timeout "$limit" "$@" > "$logs/$name.txt" 2>&1
  echo "=== $name: rc $?"
  tail -n "${TAIL:-6}" "$logs/$name.txt"
  tar czf "$out/gpu_session.tgz" -C "$logs" .
}

BNVIZ_TEST_DEVICE=cuda TAIL=12 step tests_cuda 240 $py -m pytest -q -p no:cacheprovider tests/test_fast_path.py \
  tests/test_cuda_graphs.py tests/test_norms.py -k "not browser"
TAIL=16 step gpu_probes 150 $py -m bench.gpu_probes
step profile_cuda 90 $py -m bench.profile_step --device cuda
step profile_cuda_eager 90 $py -m bench.profile_step --device cuda --graphs off
step profile_cuda_off 90 $py -m bench.profile_step --device cuda --probes off
step profile_cpu 90 $py -m bench.profile_step --device cpu
TAIL=12 step bench_gpu 240 $py -m bench --only gpu --json "$logs/bench_gpu.json"
TAIL=8 step bench_fig1_cuda_5k 120 $py -m bench --device cuda --only fig1 --fig1-steps 5000 --json "$logs/bench_fig1_cuda_5k.json"
TAIL=8 step bench_fig1_cuda 600 $py -m bench --device cuda --only fig1 --json "$logs/bench_fig1_cuda.json"
TAIL=30 step suite_cuda 150 $py -m pytest -q -p no:cacheprovider -n 12 --continue-on-collection-errors -rf \
  --tb=line tests -k "not browser"
