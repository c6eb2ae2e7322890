"""Config: YAML sections, --set overrides with type coercion, one-line errors for bad keys and values."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrec.config import Config, ConfigError, load_config, parse_override

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_every_shipped_config_loads_and_names_its_dataset():
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = load_config(path)
        name = path.stem.removesuffix("-converged")  # issue 15's settings for the same dataset
        assert cfg.data.dataset == {"demo": "ml100k"}.get(name, name)  # make demo's short run


def test_overrides_apply_after_file_and_coerce_types(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 0.5\neval:\n  ks: [1, 2]\n")
    cfg = load_config(p, ["train.lr=0.01", "eval.ks=3,7", "data.data_dir=/x", "data.rating_threshold=4"])
    assert cfg.train.lr == 0.01 and cfg.eval.ks == [3, 7]
    assert cfg.data.data_dir == "/x" and cfg.data.rating_threshold == 4.0
    assert load_config(p).train.lr == 0.5


def test_roundtrip_through_yaml(tmp_path):
    cfg = load_config(None, ["model.name=mf", "centralized.epochs=3"])
    p = tmp_path / "resolved.yaml"
    p.write_text(cfg.to_yaml())
    assert load_config(p) == cfg


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("nosuch.key=1", "unknown config key 'nosuch.key'"),
        ("centralized.epochs=abc", "centralized.epochs: cannot read 'abc' as int"),
        ("centralized.epochs=2.5", "cannot read 2.5 as int"),
        ("train.lr", "not of the form"),
    ],
)
def test_bad_overrides_give_one_line_errors(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bad_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  lr: 0.1\n  seed: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(p)
    p.write_text("train:\n  nope: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'train.nope'"):
        load_config(p)


def test_parse_override_reads_yaml_scalars():
    assert parse_override("a.b=0.5") == ("a.b", 0.5)
    assert load_config(None, ["train.lr=1e-3"]).train.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string
    assert parse_override("a.b=null") == ("a.b", None)
    assert Config().model.dim == 64
