"""Typed YAML configs: defaults <- base <- YAML <- ``key=value``, type checks, unknown keys, atomic dump."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from common.config import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    merge_config,
)


@dataclass
class Inner:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["cosine", "constant"] = "cosine"
    clip: float | None = None

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass
class Outer:
    name: str = "run"
    steps: int = 10
    flag: bool = False
    layers: list[int] = field(default_factory=lambda: [1, 2])
    extra: dict = field(default_factory=lambda: {"family": "ssast", "nested": {"a": 1}})
    inner: Inner = field(default_factory=Inner)
    tag: str | None = None


def write(tmp_path, text: str, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_yaml_overrides_in_order(tmp_path):
    path = write(tmp_path, "steps: 20\ninner:\n  lr: 1e-4\n  betas: [0.95, 0.999]\nextra:\n  mask: 400\n")
    cfg = load_config(Outer, path, ["inner.lr=5e-5", "steps=30", "extra.nested.b=2", "layers=[3, 4, 5]"])
    assert cfg.steps == 30 and cfg.inner.lr == 5e-5  # CLI beats YAML beats defaults
    assert cfg.inner.betas == (0.95, 0.999) and isinstance(cfg.inner.betas, tuple)
    assert cfg.layers == [3, 4, 5] and cfg.name == "run" and cfg.inner.schedule == "cosine"
    assert cfg.extra == {"family": "ssast", "nested": {"a": 1, "b": 2}, "mask": 400}  # dicts merge per key


def test_values_are_typed(tmp_path):
    cfg = load_config(Outer, None, ["inner.lr=1", "flag=true", "name=007", "tag=null", "inner.clip=3",
                                    "inner.schedule=constant", "extra.x=[1, 2]"])
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)  # int accepted for float
    assert cfg.flag is True and cfg.name == "007" and cfg.tag is None  # str keeps the text as typed
    assert cfg.inner.clip == 3.0 and cfg.inner.schedule == "constant" and cfg.extra["x"] == [1, 2]
    assert load_config(Outer, None, ["inner.clip=None"]).inner.clip is None


def test_base_layer_sits_under_the_yaml(tmp_path):
    path = write(tmp_path, "extra:\n  token: patch\n")
    cfg = load_config(Outer, path, base={"extra": {"family": "mae_ast"}, "steps": 5})
    assert cfg.extra["family"] == "mae_ast" and cfg.extra["token"] == "patch" and cfg.steps == 5


@pytest.mark.parametrize("override, words", [
    ("steps=1.5", ["steps", "int", "1.5"]),
    ("flag=yes please", ["flag", "bool", "yes please"]),
    ("inner.lr=fast", ["inner.lr", "float", "fast"]),
    ("inner.schedule=linear", ["inner.schedule", "cosine", "linear"]),
    ("inner.betas=[0.9]", ["inner.betas", "tuple"]),
    ("layers=[1, x]", ["layers", "list"]),
    ("inner=3", ["inner", "Inner"]),
])
def test_wrong_type_names_key_type_and_value(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(Outer, None, [override])
    for w in words:
        assert w in str(err.value)
    assert "command-line override" in str(err.value)


def test_unknown_keys_are_rejected_with_close_matches(tmp_path):
    path = write(tmp_path, "inner:\n  lrr: 1.0\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.lrr' in config file .*c\.yaml.*'lr'"):
        load_config(Outer, path)
    with pytest.raises(ConfigError, match=r"unknown config key 'stpes'.*did you mean 'steps'"):
        load_config(Outer, None, ["stpes=3"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Outer, None, ["steps"])
    with pytest.raises(ConfigError, match="'name.x' cannot be set"):
        load_config(Outer, None, ["name.x=1"])


def test_bad_files_and_post_init_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, write(tmp_path, "a: [1,\n"))
    with pytest.raises(ConfigError, match="lr must be positive"):
        load_config(Outer, None, ["inner.lr=-1"])
    assert load_config(Outer, write(tmp_path, "")).steps == 10  # an empty file is an empty mapping


def test_required_fields():
    @dataclass
    class Needs:
        path: str
        n: int = 1

    with pytest.raises(ConfigError, match="'path' is required"):
        load_config(Needs)
    assert load_config(Needs, None, ["path=/x"]).path == "/x"


def test_dump_round_trips_and_is_atomic(tmp_path):
    cfg = load_config(Outer, None, ["inner.betas=[0.5, 0.6]", "extra.k=v"])
    path = tmp_path / "sub" / "config.yaml"
    dump_config(cfg, path)
    assert not list(path.parent.glob("*.tmp"))
    data = yaml.safe_load(path.read_text())
    assert data == config_to_dict(cfg) and data["inner"]["betas"] == [0.5, 0.6]
    assert load_config(Outer, path) == cfg
    assert config_from_dict(Outer, data) == cfg
    assert merge_config(cfg, ["steps=3"]).steps == 3 and cfg.steps == 10
