"""Figure 4's control (docs/RESULTS.md 13.3): P@5 of A-RFRS assuming 40 % Byzantine without any attack,
beside the attack-free undefended run and A-RFRS under 40 % gradient ascent, per dataset (mean ± std
over the seeds), from the committed results tables:

    python experiments/figure4_control.py
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).parent / "results"


def spread(x: pd.DataFrame) -> pd.Series:
    s = x.groupby("data.dataset")["precision@5"].agg(["mean", "std"])
    return s["mean"].map("{:.4f}".format) + " ± " + s["std"].map("{:.4f}".format)


def main() -> None:
    fig4 = pd.read_parquet(RESULTS / "figure4_converged" / "results.parquet")
    control = pd.read_parquet(RESULTS / "figure4_control" / "results.parquet")
    control = control[control.status == "done"]
    attacked = fig4[(fig4["attack.fraction"] == 0.4) & (fig4["defense.name"] == "a-rfrs")]
    table = pd.DataFrame({
        "no attack, no defense": spread(fig4[fig4["attack.name"] == "none"]),
        "no attack, A-RFRS (f = 40 %)": spread(control),
        "honest rejected": (control.groupby("data.dataset")["honest_rejected"].mean() * 100).map("{:.0f} %".format),
        "40 % gradient ascent, A-RFRS": spread(attacked),
        "honest rejected (attacked)": (attacked.groupby("data.dataset")["honest_rejected"].mean() * 100).map(
            "{:.0f} %".format
        ),
        "seeds": control.groupby("data.dataset")["train.seed"].nunique(),
    })  # fmt: skip
    print(table.to_markdown())


if __name__ == "__main__":
    main()
