#!/usr/bin/env bash
# Superseded by configs/grids/figure4.yaml (fedrec experiment: parallel, resumable, one results table);
# kept because docs/RESULTS.md records this script's commands for the results it reports.
# Paper 000 Figure 4: gradient ascent at 20 / 30 / 40 % Byzantine on Last.fm and ML100K, A-RFRS against
# parameter-space Krum, RFA, Trmean and no defense, 5 seeds, plus the attack-free run per seed.
# Usage: FEDREC_DATA_DIR=... bash experiments/figure4.sh OUT_DIR ROUNDS LR [DATASET ...]
# JOBS runs in parallel (default 2), each on one thread; SEEDS and FRACTIONS narrow the grid.
set -euo pipefail
out=${1:-runs/figure4}
rounds=${2:-2000}
lr=${3:-0.01}
shift 3 || true
datasets=${*:-lastfm ml100k}
mkdir -p "$out"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
jobs() {
  for seed in ${SEEDS:-0 1 2 3 4}; do
    for ds in $datasets; do
      echo "$ds 0 none $seed"
      for frac in ${FRACTIONS:-0.2 0.3 0.4}; do
        for defense in a-rfrs krum rfa trmean none; do
          echo "$ds $frac $defense $seed"
        done
      done
    done
  done
}
run() {
  local ds=$1 frac=$2 defense=$3 seed=$4 out=$5 rounds=$6 lr=$7
  local name="$out/$ds.$frac.$defense.$seed.json"
  [ -s "$name" ] && return 0  # finished earlier: the grid can be restarted
  local attack=(--attack gradient-ascent --byzantine "$frac" --defense "$defense")
  [ "$frac" = 0 ] && attack=()
  fedrec train -c "configs/$ds.yaml" "${attack[@]}" --rounds "$rounds" --seed "$seed" \
    --set train.lr="$lr" --set federated.eval_every="$rounds" --set federated.checkpoint_every="$rounds" \
    --out "$out/runs" --json > "$name.part" 2> "$out/$ds.$frac.$defense.$seed.log" && mv "$name.part" "$name"
}
export -f run
jobs | xargs -P "${JOBS:-2}" -L 1 bash -c 'run "$@" '"$out $rounds $lr" _
