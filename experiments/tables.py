"""Markdown tables for docs/RESULTS.md from finished run directories.

python experiments/tables.py centralized runs/centralized
python experiments/tables.py federated runs/federated runs/centralized
python experiments/tables.py detection runs/camouflage
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KS = (1, 2, 3, 4, 5)
ORDER = ("lastfm", "ml100k", "citeulike-a", "citeulike-t")


def summaries(root: str) -> list[dict]:
    out = []
    for p in sorted(Path(root).glob("*/summary.json")):
        s = json.loads(p.read_text())
        s["_dir"] = p.parent.name
        out.append(s)
    return out


def cells(s: dict) -> list[str]:
    m = s["metrics"]
    return [f"{m[name][str(k)]:.4f}" for name in ("precision", "recall") for k in KS]


def header(first: list[str]) -> str:
    cols = first + [f"P@{k}" for k in KS] + [f"R@{k}" for k in KS] + ["wall s"]
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


def centralized(root: str) -> None:
    rows = sorted(summaries(root), key=lambda s: (ORDER.index(s["dataset"]), s["model"]))
    print(header(["dataset", "model", "epochs"]))
    for s in rows:
        print(
            "| "
            + " | ".join([s["dataset"], s["model"], str(s["epochs"]), *cells(s), f"{s['seconds']:.0f}"])
            + " |"
        )


def federated(root: str, central_root: str) -> None:
    fed = {(s["dataset"], s["model"]): s for s in summaries(root)}
    cen = {(s["dataset"], s["model"]): s for s in summaries(central_root)}
    print(header(["dataset", "system", "rounds"]))
    for ds in ORDER:
        for label, key, src in (("A-FRS (FISM)", "fism", fed), ("FMF (MF)", "mf", fed),
                                ("centralized FISM", "fism", cen), ("centralized MF", "mf", cen)):  # fmt: skip
            s = src.get((ds, key))
            if s is None:
                continue
            length = str(s.get("rounds", f"{s['epochs']} ep"))
            print("| " + " | ".join([ds, label, length, *cells(s), f"{s['seconds']:.0f}"]) + " |")


def detection(root: str) -> None:
    from fedrec.defenses import DEFENSES

    print("| defense | space | P@5 | Byz. rejected (all) | honest rejected (all) | Byz. rejected (≤ f rounds) |"
          " honest rejected (≤ f rounds) | precision (all) | wall s |")  # fmt: skip
    print("|" + "---|" * 9)
    for s in summaries(root):
        d = s["detection"]
        a, w = d["all_rounds"], d["rounds_with_at_most_f_byzantine"]
        print(f"| {s['defense']} | {DEFENSES[s['defense']].space} | {s['metrics']['precision']['5']:.4f} | {a['recall']:.3f} | "
              f"{a['false_rejection_rate']:.3f} | {w['recall']:.3f} | {w['false_rejection_rate']:.3f} | "
              f"{a['precision']:.3f} | {s['seconds']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    {"centralized": centralized, "federated": federated, "detection": detection}[sys.argv[1]](*sys.argv[2:])
