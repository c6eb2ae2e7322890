"""The server's Adam second moment v at the end of a run, per row (RESULTS 12.3: what one round with a
Byzantine majority of large-noise uploads leaves in v):

    python experiments/adam_state.py RUN_DIR [RUN_DIR ...]

prints, per run directory, the 50 / 90 / 99 % quantiles and the maximum of the row means of v, and how
many rows have v above 1e-2 (where Adam's step is ~10x smaller than at a typical honest v of 1e-4).
"""

from __future__ import annotations

import sys

import torch

from fedrec.federation.checkpoint import load_checkpoint


def main(run_dirs: list[str]) -> None:
    for d in run_dirs:
        sd = load_checkpoint(f"{d}/checkpoint.pt")
        if "v" not in sd["state"]:
            print(f"{d}: no second moment (optimizer without v)")
            continue
        rows = sd["state"]["v"].double().mean(1)
        q = torch.quantile(rows, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)).tolist()
        print(
            f"{d}: round {sd['t']}, row-mean v at 50/90/99 % {q[0]:.2e} / {q[1]:.2e} / {q[2]:.2e}, "
            f"max {float(rows.max()):.2e}, rows with v > 1e-2: {int((rows > 1e-2).sum())} of {rows.numel()}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
