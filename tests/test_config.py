"""YAML configs: inheritance, overrides, and errors that name the offending key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparse_detector.config import ConfigError, dump_config, load_config
from sparse_detector.models.registry import check_attention_config
from sparse_detector.models.transformer import Transformer


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


def test_an_empty_override_is_the_empty_string():
    """`data.train.images=` (the JSON's own folder) is "", not YAML's None for an empty document."""
    config = load_config("shapes_tiny", ["data.train.images=", "data.val.images=  "])
    assert config.data.train.images == config.data.val.images == ""


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


def test_attention_sites_are_a_mapping_checked_against_the_model():
    config = load_config(None, ["model.attention.decoder_cross.activation=sparsemax"])
    assert config.model.arch == "detr" and config.model.attention["decoder_cross"].activation == "sparsemax"
    assert "decoder_cross:\n      activation: sparsemax" in dump_config(config)
    with pytest.raises(ConfigError, match=r"model\.attention\.decoder_cross\.activaton"):
        load_config(None, ["model.attention.decoder_cross.activaton=sparsemax"])
    sites = {site.name: site for site in Transformer(d_model=8, nhead=2, dim_feedforward=8).attention_sites()}
    site_error = r"model\.attention\.decoder_crosss: .*\['encoder_self', 'decoder_self', 'decoder_cross'\]"
    map_error = (
        r"decoder_self\.activation: tvmax .* keys of decoder_self are queries; .*'encoder_self', 'decoder_cross'"
    )
    cases = {
        "decoder_crosss.activation=tvmax": site_error,
        "decoder_self.activation=tvmax": map_error,
        "decoder_self.activation=soft": r"model\.attention\.decoder_self\.activation: unknown map 'soft'",
    }
    for override, error in cases.items():
        with pytest.raises(ConfigError, match=error):
            check_attention_config(load_config(None, [f"model.attention.{override}"]).model.attention, sites)
