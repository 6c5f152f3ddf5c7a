"""YAML configs: inheritance, overrides, and errors that name the offending key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparse_detector.config import ConfigError, dump_config, load_config


def test_defaults_are_official_detr():
    config = load_config()
    assert config.model.transformer.hidden_dim == 256 and config.model.num_queries == 100
    assert config.model.backbone.name == "resnet50" and config.loss.eos_coef == 0.1


def test_base_inheritance_and_overrides(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("model:\n  num_queries: 50\n  transformer:\n    nheads: 4\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nmodel:\n  transformer:\n    enc_layers: 2\n")
    config = load_config(tmp_path / "child.yaml", ["model.transformer.nheads=2", "loss.eos_coef=0.2"])
    assert config.model.num_queries == 50
    assert config.model.transformer.enc_layers == 2
    assert config.model.transformer.nheads == 2
    assert config.loss.eos_coef == 0.2
    assert "num_queries: 50" in dump_config(config)


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert load_config(None, ["loss.eos_coef=1"]).loss.eos_coef == 1.0
    assert load_config(None, ["optim.lr=5e-4"]).optim.lr == 5e-4  # YAML 1.1 reads "5e-4" as a string
    with pytest.raises(ConfigError, match="model.num_queries"):
        load_config(None, ["model.num_queries=1.5"])


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model.transformer.nhead=4", "model.transformer.nhead"),
        ("model.backbone.dilation=maybe", "model.backbone.dilation"),
        ("model.backbone.trainable_layers=layer2", "model.backbone.trainable_layers"),
        ("nonsense=1", "nonsense"),
    ],
)
def test_bad_keys_and_types_are_named(override: str, named: str):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["model.num_queries"])
