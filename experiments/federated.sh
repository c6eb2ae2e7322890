#!/usr/bin/env bash
# Superseded by configs/grids/federated.yaml (fedrec experiment: parallel, resumable, one results table);
# kept because docs/RESULTS.md records this script's commands for the results it reports.
# A-FRS (federated FISM) against FMF (federated MF), both with Adam and paper 000 Appendix G settings,
# 100 epochs (10,000 rounds at e = 0.01), seed 0, on the datasets given (default: all four).
# Usage: FEDREC_DATA_DIR=... bash experiments/federated.sh OUT_DIR [DATASET ...]
set -euo pipefail
out=${1:-runs/federated}
shift || true
datasets=${*:-lastfm ml100k citeulike-a citeulike-t}
mkdir -p "$out"
for ds in $datasets; do
  for model in fism mf; do
    fedrec train -c "configs/$ds.yaml" --mode federated --model "$model" --optimizer adam --seed 0 \
      --out "$out" --json > "$out/$ds.$model.json"
  done
done
