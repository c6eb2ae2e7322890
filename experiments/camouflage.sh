#!/usr/bin/env bash
# Superseded by configs/grids/camouflage.yaml (fedrec experiment: parallel, resumable, one results table);
# kept because docs/RESULTS.md records this script's commands for the results it reports.
# Camouflage on Last.fm at 40 % Byzantine (paper 000 Section 4.1 and 5): A-RFRS (gradient-space
# Multi-Krum, keeping n - f; keeping up to n and rejecting score outliers only, on l2 or l-infinity
# distances) against paper 000's parameter-space Krum, Flower-style Krum (one client) and no defense.
# Usage: FEDREC_DATA_DIR=... bash experiments/camouflage.sh OUT_DIR [ROUNDS]
# DEFENSES and SEEDS narrow or widen the grid (defaults: the six defenses below, seed 0); JOBS runs in
# parallel (default 1), each on one thread; a finished run is skipped, so the grid can be restarted.
set -euo pipefail
out=${1:-runs/camouflage}
rounds=${2:-1000}
mkdir -p "$out"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
run() {
  local defense=$1 seed=$2 out=$3 rounds=$4
  local name="$out/lastfm.$defense.json"
  [ "$seed" = 0 ] || name="$out/lastfm.$defense.$seed.json"
  [ -s "$name" ] && return 0
  fedrec train -c configs/lastfm.yaml --attack camouflage --byzantine 0.4 --defense "$defense" \
    --rounds "$rounds" --set federated.eval_every=$((rounds < 500 ? rounds : 500)) --seed "$seed" \
    --out "$out" --json > "$name.part" && mv "$name.part" "$name"
}
export -f run
for seed in ${SEEDS:-0}; do
  for defense in ${DEFENSES:-a-rfrs a-rfrs-outliers a-rfrs-linf krum theta-krum none}; do
    echo "$defense $seed"
  done
done | xargs -P "${JOBS:-1}" -L 1 bash -c 'run "$@" '"$out $rounds" _
