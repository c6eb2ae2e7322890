"""Pairwise client distances on one round of real uploads: by pairs of listers per row against dense
blocks over the union of listed rows, for the l2 (Gram), l-infinity and l_p distances of Krum, A-RFRS
-linf and MixTailor's pool, all in one run, with the ratios and the largest difference; and MDA with its
subsets kept across rounds against built every round:

    FEDREC_DATA_DIR=... python benchmarks/bench_distances.py [--datasets ml100k lastfm citeulike-t] [--attackers 2]

The round: paper settings (FISM, d = 64, Adam), one round of honest uploads in gradient space
(``bench_itemwise.round_vectors``); then the same round with ``--attackers`` clients listing every row
of the table (an attacker's densest upload; their values random). Real datasets are read through
FEDREC_DATA_DIR when set; otherwise a synthetic dataset of the same shape stands in, and the output
says so. On Citeulike-t the dense way takes minutes a call (it is timed once there).
"""

from __future__ import annotations

import argparse

import torch
from bench_itemwise import round_vectors, timed
from bench_round import SHAPES

from fedrec.defenses import assumed_f
from fedrec.defenses import mda as mda_module
from fedrec.defenses.vectors import ClientVectors, gram, sq_linf_distances, sq_lp_distances

DISTANCES = {
    "l2 (Gram)": lambda v, m: gram(v, method=m),
    "linf": lambda v, m: sq_linf_distances(v, method=m),
    "l1.5": lambda v, m: sq_lp_distances(v, 1.5, method=m),
}


def with_dense_clients(v: ClientVectors, k: int, seed: int = 0) -> ClientVectors:
    """``v`` with its first ``k`` clients listing every row (random values at the scale of the honest
    ones), the others as they were."""
    gen = torch.Generator().manual_seed(seed)
    counts = v.counts().tolist()
    rows, values, ptr = [], [], [0]
    scale = float(v.values.float().std())
    for i, c in enumerate(counts):
        if i < k:
            r = torch.arange(v.n_rows, device=v.device)
            x = (torch.randn(v.n_rows, v.d, generator=gen) * scale).to(v.values)
        else:
            lo = int(v.ptr[i])
            r, x = v.rows[lo : lo + c], v.values[lo : lo + c]
        rows.append(r)
        values.append(x)
        ptr.append(ptr[-1] + r.shape[0])
    return ClientVectors(torch.tensor(ptr, device=v.device), torch.cat(rows), torch.cat(values), v.n_rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["ml100k", "lastfm"], choices=list(SHAPES))
    ap.add_argument("--fraction", type=float, default=0.01, help="clients per round (paper 000: 0.01)")
    ap.add_argument("--attackers", type=int, default=2, help="clients listing every row in the second round")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seconds", type=float, default=1.0, help="minimum timing window per measurement")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.datasets:
        honest, source, table = round_vectors(name, args.fraction, device)
        for label, v in (
            ("honest", honest),
            (f"{args.attackers} listing every row", with_dense_clients(honest, args.attackers)),
        ):
            _, c = torch.unique(v.rows, return_counts=True)
            print(
                f"\n{name} ({source}), table {table}, {v.n} clients, {label}: {v.rows.shape[0]} uploaded rows "
                f"over {c.numel()} listed rows (sum c_r^2 = {int((c.double() ** 2).sum())})"
            )
            for dist, fn in DISTANCES.items():
                ms = {
                    m: timed(lambda m=m, fn=fn, v=v: fn(v, m), device, args.seconds, once_past=args.seconds)
                    * 1e3
                    for m in ("pairs", "blocks", "auto")
                }
                diff = float((fn(v, "pairs") - fn(v, "blocks")).abs().max())
                print(
                    f"  {dist:<10} pairs {ms['pairs']:9.2f} ms  blocks {ms['blocks']:9.2f} ms  auto {ms['auto']:9.2f} ms"
                    f"  blocks / pairs {ms['blocks'] / ms['pairs']:7.1f}x  max |pairs - blocks| {diff:.1e}"
                )
            bench_mda(v, device, args.seconds)


def bench_mda(v: ClientVectors, device: torch.device, seconds: float) -> None:
    """MDA at f = ceil(0.4 n): its (n - f)-subsets generated every call (as before they were kept)
    against kept across calls."""
    f = assumed_f(v.n, 0.4)
    if f == 0 or 2 * f + 1 > v.n:
        return

    def fresh() -> None:
        mda_module._subsets.cache_clear()
        mda_module.mda(v, f)

    ms_fresh = timed(fresh, device, seconds, once_past=seconds) * 1e3
    ms_kept = timed(lambda: mda_module.mda(v, f), device, seconds, once_past=seconds) * 1e3
    print(
        f"  MDA, n = {v.n}, f = {f}: subsets built every call {ms_fresh:.2f} ms, kept {ms_kept:.2f} ms "
        f"({ms_fresh / ms_kept:.1f}x)"
    )


if __name__ == "__main__":
    main()
