#!/bin/bash
# One prepared pass on a machine with a CUDA GPU (DESIGN.md: CI has none): the test suite's cuda paths,
# then the GPU benchmarks, each under its own time limit, every result written to $OUT:
#
#     FEDREC_DATA_DIR=... OUT=gpu-out bash benchmarks/gpu_check.sh
#
# Uses the python3 on PATH (torch with CUDA, pytest, hypothesis, pandas, pyyaml, typer, rich, scipy,
# scikit-learn); fedrec is imported from this checkout.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 CI=true
step() { echo "== $1 ($(date -u +%T))"; }

step machine
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())" \
  | tee -a "$OUT/gpu.txt"

step "tests: the cuda paths"
timeout 200 python3 -m pytest -q -p no:cacheprovider -rfEs tests/test_cuda_rounds.py tests/test_optim.py \
  tests/test_defenses_rules.py tests/test_signguard.py tests/test_resam_rules.py -k "cuda or resam" 2>&1 \
  | tee "$OUT/tests.txt" | tail -25

step "bench_round (compiled rule check)"
timeout 150 python3 benchmarks/bench_round.py --device cuda --seconds 2 --json \
  --datasets ml100k lastfm citeulike-a citeulike-t | tee "$OUT/round_cuda.json"

step "bench_round on the same machine's CPU, one thread (a GPU / CPU ratio measured in one pass)"
timeout 90 env OMP_NUM_THREADS=1 python3 benchmarks/bench_round.py --device cpu --seconds 1 --json \
  --datasets ml100k citeulike-t | tee "$OUT/round_cpu.json"

step "bench_syncs"
timeout 60 python3 benchmarks/bench_syncs.py --datasets ml100k lastfm --rounds 10 | tee "$OUT/syncs.txt"
timeout 40 python3 benchmarks/bench_syncs.py --datasets lastfm --attack gradient-ascent --byzantine 0.4 \
  --defense a-rfrs --rounds 10 | tee -a "$OUT/syncs.txt"

step "bench_stacked (15 runs: 5 seeds x 3 fractions)"
timeout 100 python3 benchmarks/bench_stacked.py --device cuda --json --rounds 20 --datasets ml100k lastfm \
  | tee "$OUT/stacked_cuda.json"

step "fedrec train, ML-100K, 2,000 rounds on cuda (start-up and compilation included)"
start=$SECONDS
timeout 90 env OMP_NUM_THREADS=1 python3 -m fedrec train --dataset ml100k --mode federated --rounds 2000 \
  --device cuda --out /tmp/fedrec-runs --json > "$OUT/train_cuda.json" 2> "$OUT/train_cuda.err"
echo "cuda: exit $?, $((SECONDS - start)) s wall"; tail -2 "$OUT/train_cuda.err"

# how a grid would use the machine: 1 and 8 runs at once (1,000 rounds, eager check), on the GPU and
# on one CPU core each; the summary's rounds_per_second per run
for dev in cuda cpu; do
  for n in 1 8; do
    step "$n runs at once on $dev"
    start=$SECONDS
    for j in $(seq 1 "$n"); do
      timeout 120 env OMP_NUM_THREADS=1 python3 -m fedrec train --dataset ml100k --mode federated \
        --rounds 1000 --seed "$j" --device "$dev" --out "/tmp/par-$dev-$n" --json \
        > "/tmp/par-$dev-$n-$j.json" 2>/dev/null &
    done
    wait
    echo "$dev x$n: $((SECONDS - start)) s wall"
    python3 -c "import json, sys; print([round(json.load(open(f))['rounds_per_second'], 1) for f in sys.argv[1:]])" \
      /tmp/par-"$dev"-"$n"-*.json
  done
done 2>&1 | tee "$OUT/parallel.txt"
step done
