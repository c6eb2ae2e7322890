"""The worst-case table (fedrec/experiments/worstcase.py): hand-computed ratios, the worst cell per
defense with its attack, seeds averaged, and one clear line for what is missing."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.experiments.plots import load_results
from fedrec.experiments.worstcase import heatmap_figure, markdown, worst_case


def _row(ds, attack, fraction, defense, seed, p5, status="done"):
    return {"data.dataset": ds, "attack.name": attack, "attack.fraction": fraction, "defense.name": defense,
            "train.seed": seed, "status": status, "precision@5": p5}  # fmt: skip


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        [
            _row("a", "none", 0.0, "none", 0, 0.4), _row("a", "none", 0.0, "none", 1, 0.2),  # baseline 0.3
            _row("b", "none", 0.0, "none", 0, 0.1),
            _row("a", "alie", 0.4, "krum", 0, 0.15), _row("a", "alie", 0.4, "krum", 1, 0.09),  # 0.12 / 0.3
            _row("a", "ipm", 0.4, "krum", 0, 0.27),
            _row("b", "alie", 0.2, "krum", 0, 0.05),
            _row("a", "alie", 0.4, "cge", 0, 0.24), _row("a", "ipm", 0.4, "cge", 0, 0.3),
            _row("b", "alie", 0.2, "cge", 0, 0.09),
            _row("b", "alie", 0.2, "cge", 1, 0.0, status="failed"),  # a failed cell is left out
        ]
    )  # fmt: skip


def test_ratios_worst_cells_and_order_are_the_hand_computed_ones():
    wc = worst_case(_table())
    assert wc.baselines == pytest.approx({"a": 0.3, "b": 0.1})
    assert wc.relative.loc["krum", "a · alie 40%"] == pytest.approx(0.4)
    assert wc.relative.loc["krum", "b · alie 20%"] == pytest.approx(0.5)
    worst = wc.worst.set_index("defense")
    assert worst.loc["krum", "worst"] == pytest.approx(0.4) and worst.loc["krum", "where"] == "a · alie 40%"
    assert worst.loc["cge", "worst"] == pytest.approx(0.8) and worst.loc["cge", "where"] == "a · alie 40%"
    assert worst.loc["krum", "mean"] == pytest.approx((0.4 + 0.9 + 0.5) / 3)
    assert list(wc.worst["defense"]) == ["cge", "krum"]  # best worst case first
    assert wc.seeds == 2
    md = markdown(wc)
    assert "| cge | 0.800 | a · alie 40% |" in md and md.index("| cge") < md.index("| krum")
    fig = heatmap_figure(wc)
    shown = fig.axes[0].images[0].get_array()
    assert shown[0, 0] == pytest.approx(0.8) and shown[0, 1] == pytest.approx(0.4)  # worst-case row
    assert shown[1, 1] == pytest.approx(0.4)  # krum, a · alie 40 %


def test_an_attack_parameter_the_grid_varies_is_its_own_attack_not_a_seed():
    """Spattack-L dense (its default: no parameter) and popularity-sampled are two columns: averaged
    together they would be one column of two "seeds" (0.05 and 0.25 -> 0.5 of the baseline)."""
    rows = [_row("a", "none", 0.0, "none", 0, 0.3),
            {**_row("a", "spattack-l", 0.4, "krum", 0, 0.05), "attack.params.items": None},
            {**_row("a", "spattack-l", 0.4, "krum", 0, 0.25), "attack.params.items": "popular"},
            {**_row("a", "alie", 0.4, "krum", 0, 0.27), "attack.params.items": None}]  # fmt: skip
    wc = worst_case(pd.DataFrame(rows))
    assert sorted(wc.relative.columns) == [
        "a · alie 40%",
        "a · spattack-l 40%",
        "a · spattack-l items=popular 40%",
    ]
    assert wc.relative.loc["krum", "a · spattack-l 40%"] == pytest.approx(0.05 / 0.3)
    assert wc.relative.loc["krum", "a · spattack-l items=popular 40%"] == pytest.approx(0.25 / 0.3)
    assert wc.seeds == 1
    assert wc.worst.set_index("defense").loc["krum", "where"] == "a · spattack-l 40%"


def test_a_defense_setting_that_varies_is_its_own_defense_and_other_settings_are_refused():
    """Krum with c = 3, with a resampling step, and with neither are three defenses; a table mixing
    learning rates is refused (its attack-free baseline would be one of them, or their mean)."""
    rows = [_row("a", "none", 0.0, "none", 0, 0.3),
            _row("a", "alie", 0.4, "krum", 0, 0.03),
            {**_row("a", "alie", 0.4, "krum", 0, 0.15), "defense.params.c": 3},
            {**_row("a", "alie", 0.4, "krum", 0, 0.27), "defense.pre": "resample"}]  # fmt: skip
    wc = worst_case(pd.DataFrame(rows))
    worst = wc.worst.set_index("defense")["worst"]
    assert worst.to_dict() == pytest.approx({"krum pre=resample": 0.9, "krum c=3": 0.5, "krum": 0.1})
    assert wc.seeds == 1
    with pytest.raises(ValueError, match=r"mix train\.lr \(0\.001, 0\.01\)"):
        worst_case(pd.DataFrame([{**r, "train.lr": 0.01 if i else 0.001} for i, r in enumerate(rows)]))
    # a setting with one value throughout names nothing
    same = worst_case(pd.DataFrame([{**r, "attack.params.scale": 2.0} for r in rows[:2]]))
    assert list(same.relative.columns) == ["a · alie 40%"] and list(same.worst["defense"]) == ["krum"]


def test_summaries_keep_the_attack_parameters_apart(tmp_path):
    """Run folders read through their summary.json: dense and popularity-sampled Spattack-L, otherwise
    alike, are two attacks (the summary once kept the attack's name only, and they were two seeds)."""

    def summary(attack, p5, params=None, defense="krum"):
        return {"dataset": "ml100k", "model": "fism", "optimizer": "adam", "seed": 0, "defense": defense,
                "attack": {"name": attack, "fraction": 0.4 if attack != "none" else 0.0,
                           **({"params": params} if params is not None else {})},
                "metrics": {"precision": {"5": p5}}}  # fmt: skip

    runs = [summary("none", 0.3, defense="none"), summary("spattack-l", 0.05, {}),
            summary("spattack-l", 0.25, {"items": "popular"})]  # fmt: skip
    for i, s in enumerate(runs):
        (tmp_path / f"r{i}.json").write_text(json.dumps(s))
    res = CliRunner().invoke(app, ["plot", "worstcase", str(tmp_path), "--out", str(tmp_path), "--name", "w"])
    assert res.exit_code == 0, res.output
    assert "| krum | 0.167 | ml100k · spattack-l 40% |" in res.stdout and "up to 1 seed(s)" in res.stdout
    wc = worst_case(load_results(tmp_path))
    assert wc.relative.loc["krum", "ml100k · spattack-l items=popular 40%"] == pytest.approx(0.25 / 0.3)


def test_a_missing_baseline_or_column_is_one_clear_error(tmp_path):
    t = _table()
    with pytest.raises(ValueError, match=r"attack-free undefended run .* for b"):
        worst_case(t[~((t["data.dataset"] == "b") & (t["attack.name"] == "none"))])
    with pytest.raises(ValueError, match="no column precision@7"):
        worst_case(t, "precision@7")
    path = tmp_path / "results.parquet"
    t.to_parquet(path)
    res = CliRunner().invoke(app, ["plot", "worstcase", str(path), "--out", str(tmp_path), "--name", "w"])
    assert res.exit_code == 0, res.output
    assert "| cge | 0.800 |" in res.stdout and (tmp_path / "w.png").stat().st_size > 0
    res = CliRunner().invoke(
        app, ["plot", "worstcase", str(path), "--metric", "recall@9", "--out", str(tmp_path)]
    )
    assert res.exit_code != 0 and "recall@9" in res.output and "Traceback" not in res.output


def test_a_table_mixing_models_or_optimizers_is_refused():
    t = _table()
    t["model.name"] = "fism"
    t.loc[0, "model.name"] = "mf"
    with pytest.raises(ValueError, match=r"mix model\.name \(fism, mf\)"):
        worst_case(t)


def _one_line_exit_2(args: list[str], needle: str) -> None:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in res.output, res.output


@pytest.mark.parametrize("metric", ["status", "data.dataset", "attack.name"])
def test_a_text_metric_is_one_line(tmp_path, metric):
    """``--metric status`` (a text column) was a ``TypeError: agg function failed`` traceback."""
    path = tmp_path / "results.parquet"
    _table().to_parquet(path)
    _one_line_exit_2(
        ["plot", "worstcase", str(path), "--metric", metric, "--out", str(tmp_path)],
        f"--metric {metric}: not a numeric metric column (the table has precision@5)",
    )
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("baseline", [0.0, float("nan")])
def test_a_zero_or_missing_baseline_is_one_line(tmp_path, baseline):
    """A baseline of NaN was ``KeyError: nan``; one of 0 printed ``inf`` ratios."""
    t = _table()
    t.loc[(t["data.dataset"] == "b") & (t["attack.name"] == "none"), "precision@5"] = baseline
    path = tmp_path / "results.parquet"
    t.to_parquet(path)
    _one_line_exit_2(
        ["plot", "worstcase", str(path), "--out", str(tmp_path)],
        f"the attack-free undefended run is 0 or has no value for b (precision@5 = {baseline:g})",
    )


def test_a_defense_with_no_value_in_any_cell_is_listed_last():
    """A defense whose every attacked run has a NaN metric was ``KeyError: nan``."""
    t = _table()
    t.loc[t["defense.name"] == "krum", "precision@5"] = float("nan")
    wc = worst_case(t)
    assert list(wc.worst["defense"]) == ["cge", "krum"] and wc.worst["where"].iloc[1] == "no value"
    assert "| krum | nan | no value |" in markdown(wc)
    heatmap_figure(wc)


def test_the_worst_case_per_dataset_and_fraction_is_the_hand_computed_one():
    """krum: a 40 % min(alie 0.12/0.3, ipm 0.27/0.3) = 0.4 (alie), b 20 % 0.05/0.1 = 0.5; cge: 0.8, 0.9."""
    wc = worst_case(_table())
    assert list(wc.by_setting.columns) == ["a 40%", "b 20%"]
    assert list(wc.by_setting.index) == list(wc.worst["defense"])  # best worst case first
    assert wc.by_setting.loc["krum"].tolist() == pytest.approx([0.4, 0.5])
    assert wc.by_setting.loc["cge"].tolist() == pytest.approx([0.8, 0.9])
    assert wc.by_setting_attack.loc["krum", "a 40%"] == "alie"
    md = markdown(wc)
    assert "| cge | **0.800 (alie)** | **0.900 (alie)** |" in md
    assert "| krum | 0.400 (alie) | 0.500 (alie) |" in md


def _settings_table() -> pd.DataFrame:
    """Dataset a at 5 % and 40 % (per-fraction worst cases must not merge, and 5 % sorts first as a
    number), krum without any value at 5 %, and Spattack-L dense and popularity-sampled."""
    rows = [_row("a", "none", 0.0, "none", 0, 0.2),
            _row("a", "alie", 0.05, "krum", 0, float("nan")), _row("a", "alie", 0.05, "cge", 0, 0.18),
            _row("a", "ipm", 0.05, "cge", 0, 0.16),
            _row("a", "alie", 0.4, "krum", 0, 0.1), _row("a", "alie", 0.4, "cge", 0, 0.12),
            {**_row("a", "spattack-l", 0.4, "krum", 0, 0.02), "attack.params.items": None},
            {**_row("a", "spattack-l", 0.4, "krum", 0, 0.04), "attack.params.items": "popular"},
            {**_row("a", "spattack-l", 0.4, "cge", 0, 0.06), "attack.params.items": "popular"}]  # fmt: skip
    return pd.DataFrame(rows)


def test_fractions_of_one_dataset_are_their_own_columns_in_numeric_order():
    wc = worst_case(_settings_table())
    assert list(wc.by_setting.columns) == ["a 5%", "a 40%"]  # as text, "a 40%" would come first
    assert wc.by_setting.loc["cge"].tolist() == pytest.approx([0.8, 0.3])  # ipm 0.16, popular 0.06
    assert wc.by_setting_attack.loc["cge"].tolist() == ["ipm", "spattack-l items=popular"]
    assert wc.by_setting.loc["krum", "a 40%"] == pytest.approx(0.1)  # dense spattack-l 0.02 / 0.2
    assert pd.isna(wc.by_setting.loc["krum", "a 5%"])  # its only cell there has no value
    md = markdown(wc)
    assert "| krum | – | 0.100 (spattack-l) |" in md
    assert "| cge | **0.800 (ipm)** | **0.300 (spattack-l items=popular)** |" in md


def test_leaving_an_attack_out_takes_its_variants_and_is_named_on_the_output(tmp_path):
    wc = worst_case(_settings_table(), without=("spattack-l",))
    assert wc.by_setting.loc["krum", "a 40%"] == pytest.approx(0.5)  # alie: both forms left out
    assert wc.by_setting.loc["cge", "a 40%"] == pytest.approx(0.6)
    assert not any("spattack" in c for c in wc.relative.columns)
    assert markdown(wc).splitlines()[0].endswith("; without spattack-l")
    assert "without spattack-l" in heatmap_figure(wc).axes[0].get_title()
    path = tmp_path / "results.parquet"
    _settings_table().to_parquet(path)
    res = CliRunner().invoke(
        app, ["plot", "worstcase", str(path), "--without", "spattack-l", "--out", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    # its own file: the full table's figure (worstcase.png) is not overwritten by a reduced one
    assert (tmp_path / "worstcase-without-spattack-l.png").is_file() and not (
        tmp_path / "worstcase.png"
    ).exists()


def test_leaving_an_attack_out_changes_the_worst_cases_and_a_wrong_name_is_one_line(tmp_path):
    wc = worst_case(_table(), without=("alie",))
    assert list(wc.by_setting.columns) == ["a 40%"]  # b was attacked by alie only
    assert wc.by_setting.loc["krum", "a 40%"] == pytest.approx(0.9)
    assert wc.by_setting_attack.loc["krum", "a 40%"] == "ipm"
    assert wc.worst.set_index("defense").loc["cge", "worst"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no finished attacked run is left once --without alie, ipm"):
        worst_case(_table(), without=("alie", "ipm"))
    path = tmp_path / "results.parquet"
    _table().to_parquet(path)
    res = CliRunner().invoke(
        app, ["plot", "worstcase", str(path), "--without", "ipm", "--out", str(tmp_path), "--name", "w"]
    )
    assert res.exit_code == 0, res.output
    assert "| krum | 0.400 (alie) | 0.500 (alie) |" in res.stdout and "ipm" in res.stdout.splitlines()[0]
    assert "(ipm)" not in res.stdout and "· ipm" not in res.stdout
    for wrong, needle in [("ipn", "--without ipn: no attack of that name in the table (it has alie, ipm;"),
                          ("none", "--without none: the attack-free runs are the baseline")]:  # fmt: skip
        _one_line_exit_2(["plot", "worstcase", str(path), "--without", wrong, "--out", str(tmp_path)], needle)


def test_no_valued_attacked_cell_prints_no_empty_per_setting_table():
    t = _table()
    t.loc[t["attack.name"] != "none", "precision@5"] = float("nan")
    md = markdown(worst_case(t))
    assert "| defense |  |" not in md and "per dataset and attack fraction" not in md


@pytest.mark.parametrize(
    ("column", "value", "needle"),
    [
        ("attack.fraction", float("nan"), "attack.fraction has nan"),  # was KeyError: 'worst'
        ("data.dataset", None, "data.dataset has None"),  # was TypeError in a join
    ],
)
def test_a_key_without_a_usable_value_crashed(column, value, needle):
    table = _table()
    table[column] = value
    with pytest.raises(ValueError, match=needle):
        worst_case(table)


def test_a_list_valued_config_column_crashed():
    """A list in a config column (TypeError: unhashable) is compared as its text."""
    table = _table().assign(**{"train.lr": [[0.1]] * len(_table())})
    assert worst_case(table).worst["defense"].tolist() == worst_case(_table()).worst["defense"].tolist()
