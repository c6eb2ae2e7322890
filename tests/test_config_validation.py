"""Issue 9 item 6: every config key is checked up front, before any data loads or any run directory
exists, and a bad value is one line naming the key (exit 2 from the CLI), never a traceback, a crash
after round 1 or a run that finishes with a silently wrong result."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import Config, ConfigError, load_config

FED = "train.mode=federated"

# (override, words the one-line error must contain); the key itself is always checked
BAD = [
    ("model.dim=-1", []),  # was a traceback
    ("model.dim=0", []),  # was exit 0 on a dimension-0 model
    ("model.init_std=0", []),  # was exit 0: every row starts equal
    ("model.gamma=-1", []),
    ("train.negatives=0", []),  # was a traceback
    ("train.negatives=-2", []),
    ("train.weight_decay=-0.1", []),  # was exit 0
    ("train.lr=0", []),
    ("train.lr=.nan", []),
    ("train.eps=0", []),
    ("train.beta1=1", []),
    ("train.beta2=-0.1", []),
    ("train.seed=-1", []),
    ("data.test_fraction=0", []),
    ("data.test_fraction=1", []),
    ("data.split_seed=-3", []),
    ("federated.fraction=0", []),
    ("federated.fraction=1.5", []),
    ("federated.rounds=0", []),  # was "error: 2" and a run directory without a summary
    ("federated.rounds=-5", []),
    ("federated.epochs=0", []),
    ("federated.eval_every=0", []),  # was ZeroDivisionError
    ("federated.checkpoint_every=0", []),  # was ZeroDivisionError
    ("federated.momentum=1", []),
    ("federated.rho=1.5", []),
    ("attack.fraction=1.0", ["no benign clients to evaluate"]),  # was "no users with test items"
    ("attack.fraction=-0.1", []),
    ("defense.max_weight_share=0", []),  # was exit 0 with every honest upload rejected
    ("defense.max_weight_share=1.5", []),
    ("defense.max_grad=0", []),  # would reject every honest upload as a "magnitude"
    ("defense.max_grad=1e30", ["1e15"]),  # let g = 1e20 through: g^2 overflowed the state in float32
    ("run.threads=100000", ["1024"]),  # was a segfault (exit 139, no message)
    ("defense.weight_clip=0.5", []),  # would cut honest claims below the round's median
    ("defense.weighting=heavy", ["claimed", "uniform"]),
    ("defense.assumed_fraction=1", []),
    ("defense.f=-1", []),
    ("eval.ks=0", []),
    ("eval.ks=[]", []),
    ("eval.batch_size=0", []),
    ("train.optimizer=adamw", ["adam", "rmsprop"]),
    ("model.name=pop", ["fism", "mf"]),  # pop is centralized only
    ("attack.name=flood", ["gradient-ascent"]),
    ("attack.mode=steal", ["own", "inject"]),
    ("defense.name=krum2", ["a-rfrs", "cw-median"]),
    ("eval.protocol=sampled", ["full", "loo"]),
    ("run.device=tpu", ["cuda"]),
    ("data.dataset=movielens-1m", ["ml100k", ".inter"]),
    # issue 14's session's review: accepted, then a traceback, garbage, or a folder named "None"
    ("model.dim=9223372036854775808", ["2^62"]),  # was "Overflow when unpacking long long"
    ("federated.local_batch=9223372036854775808", ["2^62"]),  # was a RuntimeError in saga.py
    ("defense.f=100000000000000000000", ["2^62"]),  # made the grid's results table unwritable
    ("model.init_std=1e20", ["1e3"]),  # was a NaN model whose P@K was reported as trained
    ("run.threads=²", ["1024"]),  # "²".isdigit(): was "invalid literal for int()"
    ("attack.params.eps=100000000000000000000", ["2^62"]),  # was an OverflowError at round 1
    ("defense.params.tau=100000000000000000000", ["2^62"]),  # was an OverflowError traceback
]


@pytest.mark.parametrize(("override", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_value_ran_silently_or_crashed_later(override: str, words: list[str]) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as info:
        load_config(None, [FED, override])
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{key}="), msg
    for w in words:
        assert w in msg, msg


A = "attack.fraction=0.2"
# (overrides, the key the one-line error starts with, words it must contain)
PARAMS_BAD = [
    ([A, "attack.name=gradient-ascent", "attack.params.scale=0"], "attack.params", ["scale"]),
    ([A, "attack.name=noise", "attack.params.sigma=-1"], "attack.params", ["sigma"]),
    ([A, "attack.name=camouflage", "attack.params.select=nearest"], "attack.params", ["farthest"]),
    (
        [A, "attack.name=gradient-ascent", "attack.params.sigma=1"],
        "attack.params",
        ["no parameter sigma", "scale"],
    ),
    (["attack.name=none", "attack.params.scale=2"], "attack.params", ["none"]),
    (["defense.name=a-rfrs", "defense.params.m=0"], "defense.params", ["m must be in"]),
    (["defense.name=a-rfrs-outliers", "defense.params.c=0.5"], "defense.params", ["c must be >= 1"]),
    (["defense.name=a-rfrs", "defense.params.bogus=1"], "defense.params", ["no parameter bogus", "distance"]),
    (["defense.params=3"], "defense.params", ["mapping"]),
    # validation ran the rule once and never came back (1e9 passes over the uploads)
    (["defense.name=grad-cc", "defense.params.iters=1000000000"], "defense.params", ["iters", "1000"]),
    (["defense.name=grad-geomed", "defense.params.max_iter=1000000000000"], "defense.params", ["max_iter"]),
]


@pytest.mark.parametrize(("overrides", "key", "words"), PARAMS_BAD, ids=[" ".join(p[0]) for p in PARAMS_BAD])
def test_bad_rule_or_attack_parameter_is_one_line_naming_the_key(overrides, key, words) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [FED, *overrides])
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(key), msg
    for w in words:
        assert w in msg, msg


def test_rule_and_attack_parameters_pass_straight_through() -> None:
    """``--set defense.params.c=3`` reaches the rule, ``attack.params`` the attack, YAML or override."""
    from fedrec.federation.simulation import make_attack_from

    cfg = load_config(None, [FED, A, "defense.name=a-rfrs-outliers", "defense.params.c=3",
                             "attack.name=gradient-ascent", "attack.params.scale=2.5"])  # fmt: skip
    from fedrec.defenses import make_defense

    d = make_defense(cfg.defense.name, cfg.defense.params)
    assert d.params["c"] == 3 and d.spec.name == "multi-krum-outliers"
    assert make_attack_from(cfg).scale == 2.5


def test_momentum_space_defense_without_a_momentum_raised_in_round_1() -> None:
    with pytest.raises(ConfigError, match=r"^defense.name='momentum-krum': .*'sgd' keeps none"):
        load_config(None, [FED, "defense.name=momentum-krum", "train.optimizer=sgd"])


@pytest.mark.parametrize(
    "override", ["centralized.epochs=0", "centralized.lr=-1", "centralized.batch_users=0", "model.name=bpr"]
)
def test_bad_centralized_value_ran_silently(override: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{override.split('=')[0]}="):
        load_config(None, ["train.mode=centralized", override])


def test_every_numeric_key_has_a_domain() -> None:
    """A numeric key added to Config without a domain in fedrec.config.DOMAINS fails here."""
    from fedrec.config import DOMAINS

    numeric = set()
    for section in dataclasses.fields(Config):
        for name, hint in typing.get_type_hints(type(getattr(Config(), section.name))).items():
            args = {hint, *typing.get_args(hint)}
            if args & {int, float, list[int]} and bool not in args:
                numeric.add(f"{section.name}.{name}")
    assert numeric == set(DOMAINS)


def test_shipped_configs_and_defaults_pass() -> None:
    for path in Path("configs").glob("*.yaml"):
        for mode in ("federated", "centralized"):
            load_config(path, [f"train.mode={mode}"])
    load_config(None, [FED, "attack.name=noise", "attack.fraction=0.4", "defense.name=a-rfrs"])
    # the defense may assume less than the attack does: an experiment, not an error
    load_config(
        None,
        [
            FED,
            "attack.name=noise",
            "attack.fraction=0.8",
            "defense.name=a-rfrs",
            "defense.assumed_fraction=0.3",
        ],
    )


def _f_defenses() -> tuple[list[str], list[str]]:
    from fedrec.defenses import DEFENSES

    uses_f = [n for n, d in DEFENSES.items() if d.spec.min_n(8) > d.spec.min_n(0)]
    return uses_f, [n for n in DEFENSES if n not in uses_f]


@pytest.mark.parametrize("fraction_key", ["attack.fraction", "defense.assumed_fraction"])
def test_krum_type_defense_at_byzantine_majority_rejected_every_upload(fraction_key: str) -> None:
    """--byzantine 0.8 --defense a-rfrs ran every round rejecting every upload, without a warning."""
    uses_f, without_f = _f_defenses()
    assert "a-rfrs" in uses_f and "cw-median" in without_f
    # an attack needs Byzantine clients: with only an assumed fraction, the run is attack-free
    attack = "attack.name=noise" if fraction_key == "attack.fraction" else "attack.name=none"
    for name in uses_f:
        for fraction in (0.5, 0.8):
            with pytest.raises(ConfigError, match=re.escape(f"{fraction_key}={fraction}: defense {name!r}")):
                load_config(None, [FED, f"defense.name={name}", attack, f"{fraction_key}={fraction}"])
    for name in without_f:  # the median and RFA do not drop f uploads
        load_config(None, [FED, f"defense.name={name}", attack, f"{fraction_key}=0.8"])


def test_programmatic_config_is_validated_by_run_federated(tmp_path: Path) -> None:
    from fedrec.federation.runner import run_federated

    cfg = Config()
    cfg.run.out_dir = str(tmp_path / "out")
    cfg.model.dim = -4
    with pytest.raises(ConfigError, match=r"^model\.dim=-4"):
        run_federated(cfg)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- through the CLI

TRAIN = ["train", "--dataset", "ml100k", "--mode", "federated", "--rounds", "2", "--set", "model.dim=8"]


def _one_line_exit_2(args: list[str], out: Path, needle: str) -> None:
    res = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and "INFO" not in ln]
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert "Traceback" not in res.output
    assert not out.exists() or list(out.iterdir()) == [], "a run directory was left behind"


CLI_BAD = [
    (["--rounds", "0"], "federated.rounds=0"),
    (["--rounds", "-5"], "federated.rounds=-5"),
    (["--set", "model.dim=-1"], "model.dim=-1"),
    (["--set", "model.dim=0"], "model.dim=0"),
    (["--set", "train.negatives=0"], "train.negatives=0"),
    (["--set", "federated.eval_every=0"], "federated.eval_every=0"),
    (["--set", "federated.checkpoint_every=0"], "federated.checkpoint_every=0"),
    (["--set", "model.init_std=0"], "model.init_std=0"),
    (["--set", "train.weight_decay=-1e-4"], "train.weight_decay=-0.0001"),
    (["--set", "defense.max_weight_share=0"], "defense.max_weight_share=0"),
    (["--attack", "noise", "--byzantine", "1.0"], "no benign clients to evaluate"),
    (["--attack", "noise", "--byzantine", "0.8", "--defense", "a-rfrs"], "attack.fraction=0.8"),
    # once the data is loaded, still before any run directory (issue 14's session's review)
    (["--attack", "noise", "--byzantine", "0.0001"], "is no Byzantine client"),  # ran attack-free
    (["--attack", "noise", "--byzantine", "0.9999"], "no benign user"),  # failed at evaluation
    (["--set", "model.dim=100000000"], "model.dim=100000000, train.negatives=1: the run would need"),
    (["--set", "train.negatives=1000000000"], "train.negatives=1000000000: the run would need"),
    (  # 9.4e12 fake users: was an allocation traceback
        ["--attack", "noise", "--byzantine", "0.9999999999", "--set", "attack.mode=inject"],
        "attack.fraction=0.9999999999: the run would need",
    ),
    (["--set", "defense.max_weight_share=0.01"], "below 1/n = 1/9"),  # rejected every honest upload
    (["--set", "eval.protocol=loo", "--set", "eval.ks=101"], "ranks 100 candidates"),
]


LENGTH_BAD = [
    (["--epochs", "inf"], "--epochs=inf"),  # was an OverflowError traceback
    (["--epochs", "nan"], "--epochs=nan"),
    (["--epochs", "1e30"], "federated.epochs=1e+30"),  # was a TypeError traceback in round 1
    (["--rounds", "1000000000"], "federated.rounds=1000000000"),  # was an allocation traceback
    # epochs / fraction overflows to inf: was an OverflowError from math.ceil
    (["--epochs", "1e308", "--set", "federated.fraction=0.001"], "federated.epochs=1e+308"),
]


@pytest.mark.parametrize(("extra", "needle"), LENGTH_BAD, ids=[c[1] for c in LENGTH_BAD])
def test_cli_run_length_past_what_fits_is_one_line(tmp_path: Path, extra: list[str], needle: str) -> None:
    args = ["train", "--dataset", "ml100k", "--mode", "federated", "--set", "model.dim=8", *extra]
    _one_line_exit_2(args, tmp_path / "out", needle)


@pytest.mark.parametrize(
    ("text", "needle"),
    [("[" * 20000 + "]" * 20000, "nested too deeply"), ("train:\n  seed: " + "9" * 5000, "cannot be read")],
    ids=["20000-deep", "5000-digit-int"],
)
def test_cli_unreadable_yaml_is_one_line_naming_the_file(tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    _one_line_exit_2([*TRAIN, "-c", str(cfg)], tmp_path / "out", needle)
    res = CliRunner().invoke(app, [*TRAIN, "-c", str(cfg), "--out", str(tmp_path / "out")])
    assert "bad.yaml" in res.stderr


def test_cli_a_config_that_is_not_a_file_says_so(tmp_path: Path) -> None:
    _one_line_exit_2([*TRAIN, "-c", "/dev/null"], tmp_path / "out", "/dev/null: not a regular file")


@pytest.mark.parametrize(("extra", "needle"), CLI_BAD, ids=[c[1] for c in CLI_BAD])
def test_cli_bad_config_crashed_or_ran_silently(tmp_path: Path, extra: list[str], needle: str) -> None:
    _one_line_exit_2(TRAIN + extra, tmp_path / "out", needle)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--defense", "a-rfrs", "--set", "defense.f=5"], "defense.f=5"),  # f >= n/2, n = 9
        (["--defense", "grad-krum", "--set", "defense.f=4"], "defense.f=4"),  # n - f - 2 = 3: fine
        (["--defense", "trmean", "--set", "defense.f=5"], "defense.f=5"),
        # e = 0.003 gives n = 3 clients a round; 40 % makes f = 2, so Krum has n - f - 2 = -1
        (
            [
                "--attack",
                "noise",
                "--byzantine",
                "0.4",
                "--defense",
                "a-rfrs",
                "--set",
                "federated.fraction=0.003",
            ],
            "attack.fraction=0.4 (f = 2)",
        ),
    ],
    ids=["a-rfrs-f5", "grad-krum-f4-ok", "trmean-f5", "a-rfrs-derived-f"],
)
def test_defense_f_beyond_the_round_rejected_every_upload(
    tmp_path: Path, extra: list[str], needle: str
) -> None:
    """An f that leaves Krum nothing to choose from is refused once n is known, before round 1 and
    before the run directory exists."""
    if "grad-krum" in extra:  # the control: a valid f runs
        res = CliRunner().invoke(app, [*TRAIN, *extra, "--out", str(tmp_path / "out"), "--json"])
        assert res.exit_code == 0, res.output
        return
    _one_line_exit_2(TRAIN + extra, tmp_path / "out", needle)


def test_cli_non_utf8_data_file_gave_no_line_number(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.inter"
    bad.write_bytes(b"user_id:token\titem_id:token\n1\t2\nJos\xe9\t3\n")
    args = ["train", "--dataset", str(bad), "--mode", "federated", "--rounds", "2"]
    _one_line_exit_2(args, tmp_path / "out", f"{bad}:3: not UTF-8")


@pytest.mark.parametrize("key", ["__class__.data", "__dict__.x", "to_dict.x", "set.x"])
def test_a_key_naming_an_attribute_that_is_no_section_is_one_clear_error(key):
    """``__class__`` passed the dataclass check (it is the Config class) and then raised a KeyError."""
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(None, [f"{key}=1"])


@pytest.mark.parametrize("raw", ["maybe", "auto", "2", "ture"])
def test_a_yes_no_key_refuses_a_word_it_does_not_know(raw: str) -> None:
    for key in ("defense.verify", "run.compile"):  # a typo used to read as False
        with pytest.raises(ConfigError, match=re.escape(key)):
            load_config(None, [f"{key}={raw}"])


def test_a_yes_no_key_reads_the_usual_words() -> None:
    words = {"true": True, "yes": True, "On": True, "1": True, "false": False, "no": False, "OFF": False}
    for raw, want in words.items():
        assert load_config(None, [f"defense.verify={raw}"]).defense.verify is want
    assert load_config(None, ["run.compile=null"]).run.compile is None  # unset: decided per run


def test_a_positive_fraction_too_small_for_one_byzantine_client_says_the_least_that_makes_one() -> None:
    from fedrec.attacks.population import byzantine_count
    from fedrec.config import check_population

    cfg = load_config(None, [FED, "attack.name=noise", "attack.fraction=0.01"])
    assert check_population(cfg, 100, "x") == 100  # one of 100, kept as a real user
    cfg.attack.fraction = 0.0049
    with pytest.raises(ConfigError, match=r"at least 0\.005 makes one"):
        check_population(cfg, 100, "x")
    assert byzantine_count(100, 0.005) == 1  # what the message promises
    cfg.attack.mode, cfg.attack.fraction = "inject", 0.5
    assert check_population(cfg, 100, "x") == 200  # 100 fakes appended


def test_every_eval_protocol_is_one_the_evaluator_runs() -> None:
    from fedrec.config import EVAL_PROTOCOLS
    from fedrec.eval import PROTOCOLS

    assert EVAL_PROTOCOLS == PROTOCOLS


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("run.out_dir=null", "run.out_dir: cannot be null"),  # was a run directory under a folder "None"
        ("run.out_dir=", "run.out_dir: cannot be null"),
        ("eval.ks=[1.5, 2]", "eval.ks: cannot read [1.5, 2]"),  # was read as [1, 2]
        ("eval.ks=[1, 2.0]", None),  # an integral float is its integer, as for a scalar key
    ],
)
def test_a_value_that_is_not_of_the_key_type_is_refused(override: str, needle: str | None) -> None:
    if needle is None:
        assert load_config(None, [FED, override]).eval.ks == [1, 2]
        return
    with pytest.raises(ConfigError) as info:
        load_config(None, [FED, override])
    assert str(info.value).startswith(needle), info.value


def test_a_centralized_size_past_int64_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^centralized\.batch_users=.*2\^62"):
        load_config(None, ["train.mode=centralized", "centralized.batch_users=100000000000000000000"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--rounds", "100000000000"], "federated.rounds=100000000000"),  # was an 800 GB allocation
        (["--seed", "-1"], "train.seed=-1"),  # the demo skipped the config's checks
    ],
)
def test_the_camouflage_demo_checks_its_config_like_a_run(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    res = CliRunner().invoke(app, ["demo", "camouflage", *args, "--json"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and "INFO" not in ln]
    assert len(lines) == 1 and needle in lines[0], res.stderr


def test_a_parameter_in_exponent_form_is_the_number_it_spells() -> None:
    """PyYAML reads 1e3 as the text '1e3'; typed keys converted it, parameters passed it on as text."""
    cfg = load_config(
        None, [FED, "attack.name=gradient-ascent", "attack.fraction=0.2", "attack.params.scale=1e3"]
    )
    assert cfg.attack.params == {"scale": 1000.0}
    cfg = load_config(None, [FED, "defense.name=grad-cc", "defense.params={tau: 2e-1, iters: 1}"])
    assert cfg.defense.params == {"tau": 0.2, "iters": 1}


def test_a_recbole_seed_past_32_bits_is_refused_before_the_run_directory() -> None:
    with pytest.raises(ConfigError, match=r"^train\.seed=4294967296: recbole-bpr"):
        load_config(None, ["train.mode=centralized", "model.name=recbole-bpr", "train.seed=4294967296"])


def test_a_run_that_rejected_every_honest_upload_says_so(tmp_path: Path) -> None:
    """defense.max_grad=1e-12 rejected every honest upload as a magnitude: the model never moved, yet
    the table looked like any run's and nothing was said (no defense, no attack: no detection line)."""
    res = CliRunner().invoke(app, [*TRAIN, "--set", "defense.max_grad=1e-12", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "warning: every honest upload was rejected by the server's checks (magnitude 18)" in res.stderr
    assert "honest rejected 100.0%" in res.stdout
    summary = json.loads(next(tmp_path.glob("*/summary.json")).read_text())
    assert summary["warnings"] and summary["protocol"] == "full"
    res = CliRunner().invoke(app, [*TRAIN, "--out", str(tmp_path / "fine"), "--json"])
    assert json.loads(res.stdout)["warnings"] == []


def test_centralized_epochs_that_are_not_whole_are_refused(tmp_path: Path) -> None:
    """--epochs 2.7 ran 2 centralized epochs without a word (federated epochs may be fractional)."""
    _one_line_exit_2(["train", "--dataset", "ml100k", "--epochs", "2.7"], tmp_path / "out", "--epochs=2.7")
    # a federated run (the mode given by --set) takes a fraction of an epoch
    args = [
        "train",
        "--dataset",
        "ml100k",
        "--epochs",
        "0.02",
        "--set",
        "train.mode=federated",
        "--set",
        "model.dim=4",
    ]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "fed"), "--json"])
    assert res.exit_code == 0, res.output


def test_run_warnings_count_the_server_checks_on_honest_uploads_only() -> None:
    """A Krum that keeps one upload of nine turns eight down by design; Byzantine uploads the checks
    reject say nothing of honest training."""
    import pandas as pd

    from fedrec.federation.runner import run_warnings

    krum = pd.DataFrame({"byzantine": [False] * 9, "reason": [""] + ["filtered"] * 8})
    assert run_warnings(krum) == []
    attacked = pd.DataFrame({"byzantine": [True] * 6 + [False] * 3, "reason": ["magnitude"] * 6 + [""] * 3})
    assert run_warnings(attacked) == []
    stalled = pd.DataFrame({"byzantine": [False] * 4, "reason": ["non-finite"] * 3 + ["filtered"]})
    assert run_warnings(stalled) == [
        "75% of the honest uploads were rejected by the server's checks (non-finite 3): the model barely trained"
    ]


def test_an_attack_defined_for_some_optimizers_is_refused_with_the_others() -> None:
    """The camouflage attack is defined for Adam; with SGD it passed the checks and raised in round 1,
    after the run directory existed (and failed every such grid cell)."""
    from fedrec.attacks import ATTACKS
    from fedrec.optim import RULES

    limited = 0
    for name, attack in ATTACKS.items():
        rules = getattr(attack, "optimizers", None)
        for opt in RULES:
            if rules is None or opt in rules:
                continue
            limited += 1
            with pytest.raises(ConfigError, match=r"defined for train\.optimizer"):
                load_config(
                    None, [FED, f"attack.name={name}", "attack.fraction=0.2", f"train.optimizer={opt}"]
                )
    assert limited >= len(RULES) - 1  # camouflage, at least


def test_an_out_folder_the_system_refuses_is_one_line() -> None:
    """/sys: os.access calls it writable for root, then mkdir raised EPERM in a traceback."""
    res = CliRunner().invoke(app, [*TRAIN, "--out", "/sys/fedrec-test-out"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "/sys/fedrec-test-out" in res.stderr


def test_a_diverged_centralized_run_is_one_line_and_leaves_no_folder(tmp_path: Path) -> None:
    """implicit-bpr at a learning rate of 1 raised ModelFitError (NaN factors) in a traceback and left
    a folder holding only config.yaml; a centralized FISM whose loss went NaN was scored as trained."""
    args = ["train", "--mode", "centralized", "--dataset", "ml100k", "--model", "implicit-bpr",
            "--set", "centralized.implicit_iterations=3", "--set", "centralized.implicit_lr=1"]  # fmt: skip
    _one_line_exit_2(args, tmp_path / "out", "implicit-bpr diverged")
    from fedrec.baselines.centralized import train_centralized
    from fedrec.data import split_per_user, synthetic

    split = split_per_user(synthetic(30, 40, mean_items=6, seed=0), seed=0)
    with pytest.raises(ValueError, match="diverged at epoch 1"):
        train_centralized(split, model="fism", dim=4, init_std=1e30, lr=1e30, epochs=3)


def test_recbole_bpr_refuses_a_user_with_too_few_unseen_items(tmp_path: Path) -> None:
    """RecBole's negative sampler redraws without a limit: a user holding 198 of 200 items hung it."""
    rows = [f"0\t{i}" for i in range(199)] + [f"{u}\t{i}" for u in range(1, 6) for i in range(3)]
    path = tmp_path / "dense.inter"
    path.write_text("user_id:token\titem_id:token\n" + "\n".join(rows) + "\n")
    args = ["train", "--mode", "centralized", "--dataset", str(path), "--model", "recbole-bpr",
            "--set", "data.test_fraction=0.0001", "--set", "eval.ks=[1]"]  # fmt: skip
    _one_line_exit_2(args, tmp_path / "out", "too few unseen ones")
