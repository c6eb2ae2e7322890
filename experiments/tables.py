"""Markdown tables for docs/RESULTS.md from finished run directories.

python experiments/tables.py centralized runs/centralized
python experiments/tables.py federated runs/federated runs/centralized
python experiments/tables.py detection runs/camouflage
python experiments/tables.py detection-forged runs/camouflage2
python experiments/tables.py detection-windows runs/camouflage2 50 100 200 1000
python experiments/tables.py accuracy runs/camouflage-10k
python experiments/tables.py figure4 runs/figure4
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


def detection_forged(root: str) -> None:
    """Detection against what was forged: counts, forged share rejected, substantial uploads."""
    print("| defense | seed | rounds | scope | Byz. rejected | honest rejected | forged share rejected |"
          " substantial Byz. | substantial rejected | P@5 | wall s |")  # fmt: skip
    print("|" + "---|" * 11)
    for s in summaries(root):
        d = s["detection"]
        for scope, key in (("all rounds", "all_rounds"), ("≤ f rounds", "rounds_with_at_most_f_byzantine")):
            x = d[key]
            print(f"| {s['defense']} | {s['seed']} | {s['rounds']} | {scope} | {x['recall']:.4f} | {x['false_rejection_rate']:.4f} | "
                  f"{x['forged_share_rejected']:.6f} | {x['substantial_byzantine']} | {x['substantial_recall']:.4f} | "
                  f"{s['metrics']['precision']['5']:.4f} | {s['seconds']:.0f} |")  # fmt: skip


def accuracy(root: str) -> None:
    """P@1..5 of each run with its detection rates over all rounds (attack runs of one dataset)."""
    print("| defense | seed | rounds | " + " | ".join(f"P@{k}" for k in KS) + " | Byz. rejected |"
          " honest rejected | forged share rejected | wall s |")  # fmt: skip
    print("|" + "---|" * (len(KS) + 7))
    for s in summaries(root):
        p, d = s["metrics"]["precision"], s["detection"]["all_rounds"]
        print(f"| {s['defense']} | {s['seed']} | {s['rounds']} | " + " | ".join(f"{p[str(k)]:.4f}" for k in KS)
              + f" | {d['recall']:.4f} | {d['false_rejection_rate']:.4f} | {d['forged_share_rejected']:.6f} | "
              f"{s['seconds']:.0f} |")  # fmt: skip


def detection_windows(root: str, *windows: str) -> None:
    """Detection over the rounds with at most f Byzantine clients among the first T rounds, counting
    every Byzantine upload, and only those that forged anything (|g~ - g| > 1e-6 |g|: the rest are
    honest uploads up to the float32 rounding of the moments)."""
    import pandas as pd

    print("| defense | seed | first T rounds | ≤ f rounds | Byz. uploads | rejected | forging uploads | rejected |"
          " honest rejected |")  # fmt: skip
    print("|" + "---|" * 9)
    for s in summaries(root):
        r = pd.read_parquet(Path(s["run_dir"]) / "rounds.parquet")
        r = r.join(r.groupby("t").byzantine.sum().rename("b"), on="t")
        for T in map(int, windows or ("100", "1000")):
            w = r[(r.b <= s["detection"]["f"]) & (r.t <= T)]
            byz, honest = w[w.byzantine], w[~w.byzantine]
            forging = byz[byz.forged > 1e-6 * byz.grad_norm]
            print(f"| {s['defense']} | {s['seed']} | {T} | {w.t.nunique()} | {len(byz)} | {(~byz.accepted).mean():.4f} | "
                  f"{len(forging)} | {(~forging.accepted).mean():.4f} | {(~honest.accepted).mean():.4f} |")  # fmt: skip


FIG4_DEFENSES = ("a-rfrs", "krum", "rfa", "trmean", "none")


def figure4(root: str) -> None:
    """Paper 000 Figure 4: P@1..5 mean ± std over seeds per dataset, Byzantine fraction and defense,
    detection rates (pooled per seed, then averaged), and whether A-RFRS has the best mean."""
    import statistics as st

    runs: dict[tuple[str, str, str], list[dict]] = {}
    for p in sorted(Path(root).glob("*.json")):
        ds, frac, defense = p.name.split(".")[0], ".".join(p.name.split(".")[1:-3]), p.name.split(".")[-3]
        runs.setdefault((ds, frac, defense), []).append(json.loads(p.read_text()))

    def ms(xs: list[float]) -> str:
        return f"{st.mean(xs):.4f} ± {st.stdev(xs) if len(xs) > 1 else 0.0:.4f}"

    means: dict[tuple[str, str, str], list[float]] = {}
    for ds in ("lastfm", "ml100k"):
        if not any(key[0] == ds for key in runs):
            continue
        print(f"\n**{ds}**\n")
        print("| Byzantine | defense | seeds | " + " | ".join(f"P@{k}" for k in KS)
              + " | Byz. rejected | honest rejected | wall s (mean) |")  # fmt: skip
        print("|" + "---|" * (len(KS) + 6))
        for frac in ("0", "0.2", "0.3", "0.4"):
            for defense in ("none",) if frac == "0" else FIG4_DEFENSES:
                rs = runs.get((ds, frac, defense), [])
                if not rs:
                    continue
                p = [[r["metrics"]["precision"][str(k)] for r in rs] for k in KS]
                means[(ds, frac, defense)] = [st.mean(x) for x in p]
                det = [r["detection"]["all_rounds"] for r in rs if "detection" in r]
                rejects = (
                    det and frac != "0" and defense not in ("rfa", "none")
                )  # RFA reweights, rejects none
                rec = f"{st.mean(x['recall'] for x in det):.3f}" if rejects else "—"
                frr = f"{st.mean(x['false_rejection_rate'] for x in det):.3f}" if rejects else "—"
                wall = st.mean(r["seconds"] for r in rs)
                label = "none (no attack)" if frac == "0" else defense
                print(f"| {float(frac):.0%} | {label} | {len(rs)} | " + " | ".join(ms(x) for x in p)
                      + f" | {rec} | {frr} | {wall:.0f} |")  # fmt: skip
    print("\nA-RFRS has the best mean P@K (cells where it does not):")
    for (ds, frac, defense), m in sorted(means.items()):
        if defense != "a-rfrs":
            continue
        for i, k in enumerate(KS):
            best = max(
                (means[(ds, frac, d)][i], d)
                for d in FIG4_DEFENSES
                if d != "a-rfrs" and (ds, frac, d) in means
            )
            if m[i] <= best[0]:
                print(f"- {ds} {float(frac):.0%} P@{k}: A-RFRS {m[i]:.4f} vs {best[1]} {best[0]:.4f}")
        best1 = max(
            (means[(ds, frac, d)][0], d) for d in FIG4_DEFENSES if d != "a-rfrs" and (ds, frac, d) in means
        )
        print(
            f"- gain on P@1, {ds} {float(frac):.0%}: {m[0] / best1[0] - 1:+.1%} over {best1[1]} ({best1[0]:.4f})"
        )


if __name__ == "__main__":
    {"centralized": centralized, "federated": federated, "detection": detection,
     "detection-forged": detection_forged, "accuracy": accuracy, "detection-windows": detection_windows, "figure4": figure4}[sys.argv[1]](*sys.argv[2:])  # fmt: skip
