"""Detection rates from the per-client round records, against hand counts."""

from __future__ import annotations

import math

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
