"""The dense digits testbed's grids (fedrec.testbed) in the papers' own settings, 5 seeds per cell.

    OMP_NUM_THREADS=1 python experiments/testbed_grid.py OUT [--grid resam|signguard|brvr|mixtailor|all]
        [--jobs 2]
        [--seeds 5] [--steps N] [--model softmax|mlp] [--only RULE/ATTACK ...] [--estimate] [--table]

(a) ``resam`` (RESAM section 9.1, feed-forward setting: n = 15, f = 5, gamma = 0.5, batch 25, C = 2,
    l2 = 1e-4, 800 steps): beta in {0, 0.99} x rules {mean, cw-trmean, cw-median, meamed, krum-star,
    multi-krum-star, geomed, mda, cc, cge} x attacks {none, alie, ipm, sign-flip, label-flip}; metric:
    the final test accuracy. Plus the benchmark: mean, no Byzantine worker (f = 0).
(b) ``signguard`` (SignGuard section 9.3, scaled to digits: n = 50, f = 10 (20 %), lr 0.1, batch 16 of
    a worker's 28 samples, momentum 0.9 AT THE WORKERS (SignGuard's code applies it at the server),
    weight decay 5e-4, 600 steps): rules {signguard, krum, cw-median, cw-trmean, mean} x attacks
    {none, gaussian, label-flip, byzmean, sign-flip, alie, min-max, min-sum}; metric: the best test
    accuracy during training (SignGuard Table I), evaluated every 20 steps.

(c) ``brvr`` (paper 003 section 6, scaled to digits: W = 30 on label-sorted shards, B = 6, softmax,
    gamma = 0.5, batch 32, 500 steps): SGD + geometric median (Byrd-SGD), SAGA + geometric median
    (Byrd-SAGA) and SAGA + resampling (s = 2) + geometric median (the paper's method) x attacks {none,
    sign-flip c = -5, gaussian sigma = 100, sample-duplicate (Byzantine = the first 6 workers, classes
    0-1)}; metric: the final test accuracy.
(d) ``mixtailor`` (paper 004 section 5, scaled: n = 12, f = 2, iid, 500 steps): MixTailor and its pool's
    rules {krum, cw-median, geomed, bulyan} x attacks {none, ipm eps = 0.1, ipm eps = 10} (the tailored
    -eps * honest mean), benchmark the mean of 12 honest workers; metric: the final test accuracy.

Each cell runs in its own process (``--jobs`` at a time) and writes a run directory under
``OUT/<grid>/<cell>/`` like ``fedrec testbed``; a cell with a summary.json is skipped, so the script can
be rerun after an interruption. A cell whose rule or attack is not registered is reported and skipped.
``--estimate`` times one seed of a few cells and projects the grid's wall time; ``--table`` prints the
Markdown tables (mean +- std over seeds) from what is finished.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

RESAM_RULES = [
    "mean",
    "cw-trmean",
    "cw-median",
    "meamed",
    "krum-star",
    "multi-krum-star",
    "geomed",
    "mda",
    "cc",
    "cc:tau=0.5",
    "cge",
]
RESAM_ATTACKS = ["none", "alie", "ipm", "sign-flip", "label-flip"]
SIGNGUARD_RULES = ["signguard", "krum", "cw-median", "cw-trmean", "mean"]
SIGNGUARD_ATTACKS = ["none", "gaussian", "label-flip", "byzmean", "sign-flip", "alie", "min-max", "min-sum"]

# The papers' attack parameters where they differ from the attack's defaults (parameter names of the
# attacks in fedrec/attacks; ALGORITHMS.md section 7).
RESAM_ATTACK_PARAMS: dict[str, dict[str, Any]] = {
    "alie": {"z": 1.0},  # "little" with zeta = 1 (the usual mu - z sigma reading)
    "ipm": {"eps": 0.1},  # "empire" with zeta = 1.1, i.e. each Byzantine sends -0.1 * honest mean
}
SIGNGUARD_ATTACK_PARAMS: dict[str, dict[str, Any]] = {
    "alie": {"z": 0.3},  # SignGuard's experiments: z = 0.3
    "byzmean": {"z": 0.3},  # eq. (8) with g_m1 the LIE vector (same z)
    "gaussian": {"sigma": 0.5},  # "Random": N(0, 0.5^2)
}


# paper 003 (BRVR section 6, scaled to digits): W = 30 workers on label-sorted shards (three per class),
# B = 6, softmax regression, gamma = 0.5, batch 32, no momentum; methods = (estimator, pre-step, rule)
BRVR_METHODS: dict[str, dict[str, Any]] = {
    "sgd-geomed": {"rule": "geomed", "estimator": "sgd"},  # Byrd-SGD
    "byrd-saga": {"rule": "geomed", "estimator": "saga"},  # Byrd-SAGA: SAGA + geometric median
    "saga-rs-geomed": {"rule": "geomed", "estimator": "saga", "pre": "resample", "rule_params": {"s": 2}},
}
BRVR_ATTACKS = ["none", "sign-flip", "gaussian", "sample-duplicate"]
BRVR_ATTACK_PARAMS: dict[str, dict[str, Any]] = {
    "sign-flip": {"c": -5.0},  # BRVR: the true message times -5
    "gaussian": {"sigma": 100.0},  # BRVR: N(0, 10^4)
}
# BRVR's sample-duplicating run makes "the workers holding two classes" Byzantine: the first 6 of the
# sorted shards (classes 0 and 1 vanish, best accuracy about 0.8); the other attacks place them at random
BRVR_ATTACK_CONFIG: dict[str, dict[str, Any]] = {"sample-duplicate": {"byzantine": "first"}}

# paper 004 (MixTailor section 5, scaled to digits): n = 12, f = 2, iid, the tailored -eps * honest-mean
# attack with eps = 0.1 (breaks Krum) and eps = 10 (breaks the median); MixTailor against its pool's rules
MIXTAILOR_RULES = ["mixtailor", "krum", "cw-median", "geomed", "bulyan"]
MIXTAILOR_ATTACKS = ["none", "ipm:eps=0.1", "ipm:eps=10", "random-eps"]
# random-eps: eps = 0.1 or 10 each step, by a fair coin (Fig. 4a). mixtailor-adaptive (Appendix A.4) is
# left out: it aggregates 17 candidate eps through the 34 distinct members of the pool every step, about
# 1 s a step here (one run of 500 steps took 479 s; --only mixtailor/mixtailor-adaptive with the entry added)


GRIDS: dict[str, dict[str, Any]] = {
    "resam": {
        "base": dict(n=15, f=5, lr=0.5, batch=25, clip=2.0, weight_decay=1e-4, steps=800, eval_every=100),
        "betas": [0.0, 0.99],
        "rules": RESAM_RULES,
        "attacks": RESAM_ATTACKS,
        "attack_params": RESAM_ATTACK_PARAMS,
        "metric": "final_accuracy",
        "benchmark": True,
    },
    "signguard": {
        "base": dict(n=50, f=10, lr=0.1, batch=16, weight_decay=5e-4, steps=600, eval_every=20),
        "betas": [0.9],
        "rules": SIGNGUARD_RULES,
        "attacks": SIGNGUARD_ATTACKS,
        "attack_params": SIGNGUARD_ATTACK_PARAMS,
        "metric": "max_accuracy",
        "benchmark": True,
    },
    "brvr": {
        "base": dict(
            n=30,
            f=6,
            lr=0.5,
            batch=32,
            weight_decay=0.0,
            steps=500,
            eval_every=50,
            shards="sorted",
            byzantine="random",
        ),
        "betas": [0.0],
        "rules": list(BRVR_METHODS),
        "methods": BRVR_METHODS,
        "attacks": BRVR_ATTACKS,
        "attack_params": BRVR_ATTACK_PARAMS,
        "attack_config": BRVR_ATTACK_CONFIG,
        "metric": "final_accuracy",
        "benchmark": True,
    },
    "mixtailor": {
        "base": dict(n=12, f=2, lr=0.5, batch=25, weight_decay=1e-4, steps=500, eval_every=50),
        "betas": [0.0],
        "rules": MIXTAILOR_RULES,
        "attacks": MIXTAILOR_ATTACKS,
        "attack_params": {},
        "metric": "final_accuracy",
        "benchmark": True,  # the mean of 12 honest workers: the omniscient average (paper: of the 10 honest)
    },
}


def cells(grid: str, seeds: int, only: list[str] | None) -> list[dict[str, Any]]:
    """Every (rule, attack, beta, seed) of ``grid`` as a config dict with its cell name."""
    g = GRIDS[grid]
    out = []
    combos = [(r, a) for r in g["rules"] for a in g["attacks"]]
    if g["benchmark"]:
        combos.insert(0, ("mean", "benchmark"))
    for rule, attack in combos:
        if only and f"{rule}/{attack}" not in only:
            continue
        for beta in g["betas"]:
            for seed in range(1, seeds + 1):  # RESAM's seeds 1-5
                name, params = _parse(rule)  # "cc:tau=1": a rule with parameters
                cfg = {**g["base"], "rule": name, "rule_params": params, "momentum": beta, "seed": seed}
                cfg.update(g.get("methods", {}).get(rule, {}))  # a method: estimator, pre-step, rule
                if attack == "benchmark":
                    cfg.update(f=0, attack="none", rule="mean", rule_params={}, estimator="sgd", pre=None)
                else:
                    a_name, a_params = _parse(attack)  # "ipm:eps=10": an attack with parameters
                    a_params = {**g["attack_params"].get(a_name, {}), **a_params}
                    cfg.update(
                        attack=a_name, attack_params=a_params, **g.get("attack_config", {}).get(a_name, {})
                    )
                out.append(
                    {
                        "grid": grid,
                        "name": f"{_label(rule)}__{_label(attack)}__b{beta}__s{seed}",
                        "config": cfg,
                    }
                )
    return out


def _parse(entry: str) -> tuple[str, dict[str, float]]:
    """``"cc:tau=0.5"`` -> ``("cc", {"tau": 0.5})``."""
    name, _, given = entry.partition(":")
    return name, {k: float(v) for k, v in (p.split("=") for p in given.split(",") if p)}


def _label(rule: str) -> str:
    """A grid entry as it names its run folders and table rows: ``cc:tau=0.5`` -> ``cc-tau0.5``."""
    return rule.replace(":", "-").replace("=", "").replace(",", "-")


def finished(cell_dir: Path) -> Path | None:
    found = sorted(cell_dir.glob("*/summary.json"))
    return found[-1] if found else None


def missing(cfg: dict[str, Any]) -> str | None:
    """Why a cell cannot run here (its rule or attack is not registered), else None."""
    import fedrec.attacks
    import fedrec.defenses  # noqa: F401
    from fedrec.attacks.base import ATTACKS
    from fedrec.defenses.base import RULES

    if cfg["rule"] not in RULES:
        return f"rule {cfg['rule']!r} not registered"
    if cfg["attack"] != "none" and cfg["attack"] not in ATTACKS:
        return f"attack {cfg['attack']!r} not registered"
    return None


def run_cell(cell: dict[str, Any], out: str, overrides: dict[str, Any]) -> tuple[str, float, str | None]:
    """One cell in this process: ``(name, seconds, error or None)``."""
    import torch

    torch.set_num_threads(1)
    from fedrec.testbed import TestbedConfig, run_testbed

    start = time.perf_counter()
    try:
        cfg = TestbedConfig(**{**cell["config"], **overrides})
        run_testbed(cfg, Path(out) / cell["grid"] / cell["name"])
    except Exception as e:  # a failed cell is reported, the grid goes on
        return cell["name"], time.perf_counter() - start, f"{type(e).__name__}: {e}"
    return cell["name"], time.perf_counter() - start, None


def run_grid(todo: list[dict[str, Any]], out: Path, jobs: int, overrides: dict[str, Any]) -> None:
    done = 0
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_cell, c, str(out), overrides) for c in todo]
        for fut in as_completed(futures):
            name, secs, error = fut.result()
            done += 1
            status = f"FAILED {error}" if error else "ok"
            print(f"[{done}/{len(todo)}] {name} {secs:.1f}s {status}", file=sys.stderr, flush=True)


def estimate(todo: list[dict[str, Any]], overrides: dict[str, Any], jobs: int) -> None:
    """Time one seed of every (rule, attack) pair's first beta in-process and project the grid."""
    from fedrec.testbed import TestbedConfig, simulate

    simulate(TestbedConfig(rule="mean", steps=20))  # warm-up: imports, first calls
    seen, per_pair = set(), {}
    for c in todo:
        cfg = c["config"]
        key = (c["grid"], cfg["rule"], cfg["attack"], cfg["momentum"], cfg["f"])
        if key in seen:
            continue
        seen.add(key)
        short = {**cfg, **overrides, "steps": min(100, {**cfg, **overrides}["steps"])}
        start = time.perf_counter()
        simulate(TestbedConfig(**short))
        per_pair[key] = (time.perf_counter() - start) / short["steps"] * {**cfg, **overrides}["steps"]
    keys = [(c["grid"], *(c["config"][k] for k in ("rule", "attack", "momentum", "f"))) for c in todo]
    total = sum(per_pair[k] for k in keys)
    for (grid, rule, attack, beta, f), s in sorted(per_pair.items()):
        print(
            f"{grid:10s} {rule:16s} {attack:12s} f={f:<3} beta={beta:<5} {s:6.2f} s per run", file=sys.stderr
        )
    print(
        f"{len(todo)} runs: {total / 60:.1f} min on one core, about {total / 60 / jobs:.1f} min with --jobs {jobs} "
        "(if the cores are free)",
        file=sys.stderr,
    )


def _results(out: Path, grid: str) -> dict[tuple[str, str, float], list[float]]:
    """The grid's metric of every finished run, by (rule, attack, beta)."""
    results: dict[tuple[str, str, float], list[float]] = {}
    for path in sorted((out / grid).glob("*/*/summary.json")):
        rule, attack, beta, _ = path.parent.parent.name.split("__")
        value = json.loads(path.read_text()).get(GRIDS[grid]["metric"])
        results.setdefault((rule, attack, float(beta[1:])), []).append(
            float("nan") if value is None else value
        )
    return results


def table(out: Path, grid: str) -> str:
    """Markdown: rows = rules, columns = attacks, cell = mean +- std of the grid's metric over seeds."""
    g = GRIDS[grid]
    results = _results(out, grid)
    lines = []
    for beta in g["betas"]:
        lines.append(f"\n**{grid}, beta = {beta}: {g['metric']} (%), mean ± std over seeds (runs)**\n")
        lines.append("| rule | " + " | ".join(map(_label, g["attacks"])) + " |")
        lines.append("|---|" + "---|" * len(g["attacks"]))
        rows = [("mean (no Byzantine)", "mean", ["benchmark"] * len(g["attacks"]))] if g["benchmark"] else []
        rows += [(_label(r), _label(r), [_label(a) for a in g["attacks"]]) for r in g["rules"]]
        for label, rule, attacks in rows:
            cells_ = []
            for a in attacks:
                v = results.get((rule, a, beta), [])
                if not v:
                    cells_.append("–")
                elif len(v) == 1:
                    cells_.append(f"{100 * v[0]:.1f} (1)")
                else:
                    cells_.append(
                        f"{100 * statistics.mean(v):.1f} ± {100 * statistics.stdev(v):.1f} ({len(v)})"
                    )
            lines.append(f"| {label} | " + " | ".join(cells_) + " |")
    return "\n".join(lines)


def selection(out: Path, grid: str) -> str:
    """Markdown: per rule x attack, the share of Byzantine / honest messages the rule accepted over every
    step and seed (SignGuard Table II's M / H), for the rules that say whom they accept."""
    import pandas as pd

    rates: dict[tuple[str, str], list[pd.DataFrame]] = {}
    for path in sorted((out / grid).glob("*/*/selection.parquet")):
        rule, attack, _, _ = path.parent.parent.name.split("__")
        rates.setdefault((rule, attack), []).append(pd.read_parquet(path))
    g = GRIDS[grid]
    attacks = [_label(a) for a in g["attacks"] if a != "none"]
    lines = [f"\n**{grid}: Byzantine accepted / honest accepted (all steps and seeds)**\n",
             "| rule | " + " | ".join(attacks) + " |", "|---|" + "---|" * len(attacks)]  # fmt: skip
    for rule in map(_label, g["rules"]):
        cells_ = []
        for a in attacks:
            if (rule, a) not in rates:
                cells_.append("–")
                continue
            df = pd.concat(rates[(rule, a)])
            byz, hon = df[df.byzantine].accepted.mean(), df[~df.byzantine].accepted.mean()
            cells_.append(f"{byz:.2f} / {hon:.2f}")
        if any(c != "–" for c in cells_):
            lines.append(f"| {rule} | " + " | ".join(cells_) + " |")
    return "\n".join(lines)


def plot(out: Path, grid: str, folder: Path) -> list[Path]:
    """One heatmap per beta: mean of the grid's metric over seeds, rules x attacks (benchmark first)."""
    from heatmap import heatmap

    g = GRIDS[grid]
    results = _results(out, grid)
    made = []
    for beta in g["betas"]:
        rows = (["mean (no Byzantine)"] if g["benchmark"] else []) + [_label(r) for r in g["rules"]]
        values = []
        for label in rows:
            rule = "mean" if label.startswith("mean (") else label
            values.append([
                100 * statistics.mean(v) if (v := results.get((rule, "benchmark" if label != rule else _label(a), beta)))
                else float("nan") for a in g["attacks"]
            ])  # fmt: skip
        n, f = g["base"]["n"], g["base"]["f"]
        title = f"digits testbed, {grid} grid: {g['metric'].replace('_', ' ')} (%), n = {n}, f = {f}, beta = {beta}"
        made.append(heatmap(values, rows, list(g["attacks"]), title, folder / f"testbed-{grid}-beta{beta}.png",
                            vmin=0, vmax=100, label="accuracy (%)"))  # fmt: skip
    return made


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--grid", choices=[*GRIDS, "all"], default="all")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="override every cell's steps")
    p.add_argument("--model", choices=["softmax", "mlp"], default="softmax")
    p.add_argument("--only", nargs="*", help="RULE/ATTACK pairs to run (e.g. cw-median/alie mean/benchmark)")
    p.add_argument("--estimate", action="store_true", help="time a short run per cell, project, run nothing")
    p.add_argument("--table", action="store_true", help="print the Markdown tables of finished cells")
    p.add_argument("--plot", type=Path, help="write heatmap PNGs of finished cells into this folder")
    a = p.parse_args(argv)
    grids = list(GRIDS) if a.grid == "all" else [a.grid]
    if a.table or a.plot:
        for g in grids:
            print(table(a.out, g))
            print(selection(a.out, g))
            for path in plot(a.out, g, a.plot) if a.plot else []:
                print(path)
        return
    overrides: dict[str, Any] = {"model": a.model}
    if a.steps is not None:
        overrides["steps"] = a.steps
    todo, skipped = [], {}
    for g in grids:
        for c in cells(g, a.seeds, a.only):
            if (why := missing(c["config"])) is not None:
                skipped[why] = skipped.get(why, 0) + 1
            elif finished(a.out / g / c["name"]) is None:
                todo.append(c)
    for why, k in sorted(skipped.items()):
        print(f"skipped {k} runs: {why}", file=sys.stderr)
    if a.estimate:
        estimate(todo, overrides, a.jobs)
        return
    print(f"{len(todo)} runs to do", file=sys.stderr)
    run_grid(todo, a.out, a.jobs, overrides)
    for g in grids:
        print(table(a.out, g))


if __name__ == "__main__":
    main()
