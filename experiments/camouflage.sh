#!/usr/bin/env bash
# Camouflage detection on Last.fm at 40 % Byzantine (paper 000 Section 4.1 and 5): A-RFRS (gradient-space
# Multi-Krum, keeping n - f; and keeping up to n, rejecting score outliers only) against paper 000's parameter-space Krum, Flower-style Krum (one client) and no defense.
# Usage: FEDREC_DATA_DIR=... bash experiments/camouflage.sh OUT_DIR [ROUNDS]
set -euo pipefail
out=${1:-runs/camouflage}
rounds=${2:-1000}
mkdir -p "$out"
for defense in a-rfrs a-rfrs-outliers a-rfrs-linf krum theta-krum none; do
  fedrec train -c configs/lastfm.yaml --attack camouflage --byzantine 0.4 --defense "$defense" \
    --rounds "$rounds" --set federated.eval_every=500 --seed 0 --out "$out" --json > "$out/lastfm.$defense.json"
done
