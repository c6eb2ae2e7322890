"""Detection rates from the per-client round records, against hand counts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from fedrec.federation.detection import detection_summary, per_round


def test_rates_by_hand():
    rows = pd.DataFrame(
        {
            "t": [1, 1, 1, 1, 2, 2, 2, 2],
            "byzantine": [True, True, False, False, True, True, True, False],
            "accepted": [False, True, True, False, False, False, True, True],
        }
    )
    pr = per_round(rows)
    # round 1: 2 Byzantine (1 rejected), 2 honest (1 rejected): precision 1/2, recall 1/2, FRR 1/2
    assert pr.loc[0, ["precision", "recall", "false_rejection_rate"]].tolist() == [0.5, 0.5, 0.5]
    # round 2: 3 Byzantine (2 rejected), 1 honest (0 rejected)
    assert pr.loc[1, ["precision", "recall", "false_rejection_rate"]].tolist() == [1.0, 2 / 3, 0.0]
    s = detection_summary(rows, f=2)
    assert s["all_rounds"]["precision"] == 3 / 4 and s["all_rounds"]["recall"] == 3 / 5
    assert s["all_rounds"]["false_rejection_rate"] == 1 / 3
    within = s["rounds_with_at_most_f_byzantine"]  # only round 1 has <= 2 Byzantine
    assert within["rounds"] == 1 and within["recall"] == 0.5


def test_no_rejections_gives_nan_precision():
    rows = pd.DataFrame({"t": [1, 1], "byzantine": [False, True], "accepted": [True, True]})
    s = detection_summary(rows, f=1)["all_rounds"]
    assert math.isnan(s["precision"]) and s["recall"] == 0.0 and s["false_rejection_rate"] == 0.0


def test_per_round_equals_a_loop_over_rounds_on_a_long_record():
    """The grouped sum against counts taken round by round, on a record the size of a grid cell's
    (rounds with no Byzantine client, none rejected, all rejected)."""
    rng = np.random.default_rng(0)
    n_rounds, per = 3000, 9
    rows = pd.DataFrame(
        {
            "t": np.repeat(np.arange(1, n_rounds + 1), per),
            "byzantine": rng.random(n_rounds * per) < 0.3,
            "accepted": rng.random(n_rounds * per) < np.repeat(rng.random(n_rounds), per),
        }
    )
    pr = per_round(rows)
    assert pr.t.tolist() == list(range(1, n_rounds + 1))
    for col in ("byzantine", "honest", "rejected_byzantine", "rejected_honest"):
        assert pr[col].dtype == np.int64
    for t, x in list(rows.groupby("t"))[:: n_rounds // 300]:
        got = pr[pr.t == t].iloc[0]
        rej, byz = ~x.accepted, x.byzantine
        assert got.byzantine == byz.sum() and got.honest == (~byz).sum()
        assert got.rejected_byzantine == (rej & byz).sum() and got.rejected_honest == (rej & ~byz).sum()
    s = detection_summary(rows, f=3)
    assert s == detection_summary(rows, f=3, pr=pr)  # every rate finite here: dicts compare equal
    rej, byz = ~rows.accepted, rows.byzantine
    assert s["all_rounds"]["recall"] == (rej & byz).sum() / byz.sum()
