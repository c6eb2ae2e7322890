#!/usr/bin/env bash
# Superseded by configs/grids/centralized.yaml (fedrec experiment: parallel, resumable, one results table);
# kept because docs/RESULTS.md records this script's commands for the results it reports.
# Centralized upper bounds and reference baselines on all four datasets (issue: foundation).
# Usage: FEDREC_DATA_DIR=... bash experiments/centralized.sh [OUT_DIR]
set -euo pipefail
out=${1:-runs/centralized}
for ds in lastfm ml100k citeulike-a citeulike-t; do
  for model in pop fism mf implicit-bpr recbole-bpr; do
    fedrec train -c "configs/$ds.yaml" --mode centralized --model "$model" --seed 0 --out "$out" --json \
      > "$out.$ds.$model.json"
  done
done
fedrec report "$out"/*/ --markdown
