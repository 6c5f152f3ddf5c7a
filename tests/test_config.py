"""YAML configs: inheritance, overrides, and errors that name the offending key."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from sparse_detector.cli import main
from sparse_detector.config import BackboneNorm, ConfigError, Precision, dump_config, load_config
from sparse_detector.engine.trainer import PRECISIONS, Trainer
from sparse_detector.models import build_model
from sparse_detector.models.backbone import NORM_LAYERS
from sparse_detector.models.registry import check_attention_config
from sparse_detector.models.transformer import Transformer

from .conftest import SMALL_TRANSFORMER


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


def test_a_base_is_relative_to_its_file_not_to_the_current_folder(tmp_path: Path, monkeypatch):
    """A `base.yaml` in the current folder was read instead of the one beside the file that names it."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.yaml").write_text("train:\n  epochs: 7\n")
    (tmp_path / "sub" / "child.yaml").write_text("_base_: base.yaml\n")
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 99\n")
    monkeypatch.chdir(tmp_path)
    assert load_config("sub/child.yaml").train.epochs == 7
    (tmp_path / "sub" / "preset_child.yaml").write_text("_base_: shapes_tiny\ntrain:\n  epochs: 3\n")
    config = load_config("sub/preset_child.yaml")
    assert (config.train.epochs, config.model.num_queries) == (3, load_config("shapes_tiny").model.num_queries)


def test_an_empty_override_is_the_empty_string():
    """`data.train.images=` (the JSON's own folder) is "", not YAML's None for an empty document."""
    config = load_config("shapes_tiny", ["data.train.images=", "data.val.images=  "])
    assert config.data.train.images == config.data.val.images == ""


def test_a_text_setting_takes_the_override_as_written():
    """YAML read `runs/x #1` as 'runs/x' (the run went to another folder), `2026-12-01` as a date and `on` as true,
    which a text setting refused or took wrongly; typed settings still read YAML."""
    overrides = ["train.output_dir=runs/x #1", "train.wandb_project=2026", "data.val.images=on", "train.device='cpu'"]
    config = load_config(None, [*overrides, "model.attention.encoder_self.activation=sparsemax", "train.epochs=3"])
    assert (config.train.output_dir, config.train.wandb_project, config.data.val.images) == ("runs/x #1", "2026", "on")
    assert config.train.device == "cpu" and config.train.epochs == 3
    assert config.model.attention["encoder_self"].activation == "sparsemax"
    assert load_config(None, ["train.output_dir=2026-12-01"]).train.output_dir == "2026-12-01"


def test_a_switch_takes_yaml_booleans_and_one_or_zero():
    """`train.deterministic=1` was 'expected bool, got 1 (int)'; 2 is still refused."""
    switches = ["train.deterministic=1", "model.aux_loss=0", "data.normalize=no", "train.tensorboard=yes"]
    config = load_config(None, switches)
    assert (config.train.deterministic, config.model.aux_loss, config.data.normalize) == (True, False, False)
    assert config.train.tensorboard is True
    with pytest.raises(ConfigError, match="train.deterministic: expected bool, got 2"):
        load_config(None, ["train.deterministic=2"])


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
        ("train.eval_every=0", "train.eval_every must be >= 1, got 0"),  # a ZeroDivisionError after epoch 1
        ("train.log_every=0", "train.log_every must be >= 1"),  # a ZeroDivisionError at the first step
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("train.keep_last=-1", "train.keep_last must be >= 0"),
        # settings out of their range were accepted (hflip_prob=2 flipped every image) or failed later without a key
        ("data.hflip_prob=2", "data.hflip_prob must be in [0, 1], got 2.0"),
        ("data.train_scales=[]", "data.train_scales is empty"),
        ("data.train_scales=[0,64]", "data.train_scales holds [0]: image sizes are pixels, at least 1"),
        ("data.crop_resize_scales=[-8]", "data.crop_resize_scales holds [-8]"),
        ("model.transformer.dropout=1.5", "model.transformer.dropout must be in [0, 1], got 1.5"),
        ("optim.lr=-1e-4", "optim.lr must be >= 0, got -0.0001"),
        ("optim.lr_drop=0", "optim.lr_drop must be >= 1, got 0"),
        ("model.backbone.lr=-1", "model.backbone.lr must be >= 0"),
        ("loss.eos_coef=-0.1", "loss.eos_coef must be >= 0"),
        ("loss.focal_alpha=1.5", "loss.focal_alpha must be in [0, 1]"),
        (
            "model.attention.encoder_self=sparsemax",
            "model.attention.encoder_self is a section of settings ['activation', 'alpha_init', 'tvmax_lambda'], not "
            "a value (got 'sparsemax'); set one of them, e.g. model.attention.encoder_self.activation=sparsemax",
        ),
        ("optim.lr=nan", "optim.lr: expected a finite number, got 'nan'"),  # was accepted: a run of nan losses
        ("loss.eos_coef=.inf", "loss.eos_coef: expected a finite number, got inf"),
        ("optim.lr=true", "optim.lr: expected float, got True"),
    ],
)
def test_bad_keys_and_types_are_named(override: str, named: str):
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("override", "error"),
    [
        (
            "model.backbone.norm=batchnorm",
            "model.backbone.norm: unknown value 'batchnorm' (did you mean 'batch_norm'?)",
        ),
        ("model.backbone.name=resnet5", "model.backbone.name: unknown value 'resnet5' (did you mean 'resnet50'?)"),
        ("model.backbone.trainable_layers=[layer1,layr2]", "trainable_layers[1]: unknown value 'layr2' (did you mean"),
        ("model.backbone.return_layer=stem", "model.backbone.return_layer: unknown value 'stem'; choose one of"),
        ("model.position_embedding=Sine", "model.position_embedding: unknown value 'Sine' (did you mean 'sine'?)"),
        ("data.label_mode=cocoids", "data.label_mode: unknown value 'cocoids' (did you mean 'coco_ids'?)"),
        ("data.on_invalid=skp", "data.on_invalid: unknown value 'skp' (did you mean 'skip'?)"),
        ("train.on_nonfinite_loss=skp", "train.on_nonfinite_loss: unknown value 'skp' (did you mean 'skip'?)"),
        ("train.precision=FP16", "train.precision: unknown value 'FP16' (did you mean 'fp16'?)"),
        ("train.wandb_mode=ofline", "train.wandb_mode: unknown value 'ofline' (did you mean 'offline'?)"),
    ],
)
def test_a_mistyped_choice_is_refused_at_load_with_the_closest(override: str, error: str):
    """A choice such as model.backbone.norm was checked only when the model was built or training started, after the
    data had been read and checked, and without the closest name; it is a config error at load now."""
    with pytest.raises(ConfigError, match=re.escape(error)):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("section", "key", "value", "error"),
    [
        ("backbone", "norm", "batchnorm", "model.backbone.norm: unknown value 'batchnorm' (did you mean 'batch_norm'"),
        ("backbone", "name", "resnet5", "model.backbone.name: unknown value 'resnet5' (did you mean 'resnet50'?)"),
        ("backbone", "trainable_layers", ["layer1", "layr2"], "trainable_layers[1]: unknown value 'layr2' (did you"),
        ("backbone", "return_layer", "stem", "model.backbone.return_layer: unknown value 'stem'; choose one of"),
        (None, "position_embedding", "Sine", "model.position_embedding: unknown value 'Sine' (did you mean 'sine'?)"),
    ],
)
def test_a_mistyped_choice_in_a_config_made_in_python_gets_the_load_message(section, key, value, error):
    """The model build checks a choice against the config's own Literal: the message of a config loaded from YAML
    (each build check had its own wording, without the closest name)."""
    config = load_config("shapes_tiny")
    setattr(getattr(config.model, section) if section else config.model, key, value)
    with pytest.raises(ConfigError, match=re.escape(error)):
        build_model(config)


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("on_nonfinite_loss", "skp", "train.on_nonfinite_loss: unknown value 'skp' (did you mean 'skip'?)"),
        ("precision", "FP16", "train.precision: unknown value 'FP16' (did you mean 'fp16'?)"),
    ],
)
def test_a_mistyped_training_choice_in_a_config_made_in_python_gets_the_load_message(tmp_path, key, value, error):
    """`Trainer` checks the training choices against the config's own Literal, before it claims the run directory:
    the message of a config loaded from YAML (it had its own wording, without the closest name)."""
    config = load_config("shapes_tiny")
    setattr(config.train, key, value)
    with pytest.raises(ConfigError, match=re.escape(error)):
        Trainer(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_mistyped_choice_in_a_yaml_file_names_the_file(tmp_path: Path, capsys):
    """Before any data is read: `train` on data that does not exist still names the setting, not the data."""
    (tmp_path / "my.yaml").write_text("_base_: shapes_tiny\nmodel:\n  backbone:\n    norm: batchnorm\n")
    argv = ["train", "--config", str(tmp_path / "my.yaml"), "--output-dir", str(tmp_path / "run")]
    assert main([*argv, "--set", "data.train.annotations=absent.json"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'my.yaml'}: model.backbone.norm: unknown value 'batchnorm' (did you mean 'batch_norm'?)" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_the_choices_of_the_config_are_those_the_model_and_trainer_take():
    assert set(NORM_LAYERS) == set(typing.get_args(BackboneNorm))
    assert set(PRECISIONS) == set(typing.get_args(Precision))


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("train.epochz=3", "did you mean train.epochs?"),
        ("trian.epochs=3", "did you mean train?"),
        ("model.nheads=4", "did you mean model.transformer.nheads?"),
        ("train.lr=1e-4", "did you mean model.backbone.lr or optim.lr?"),
        ("model.attention.encoder_self.activaton=sparsemax", "did you mean model.attention.encoder_self.activation?"),
    ],
)
def test_an_unknown_key_suggests_the_nearest(override: str, suggestion: str):
    """A misspelt or misplaced key named only the valid keys of its section; now it names the key most likely meant."""
    with pytest.raises(ConfigError, match=re.escape(suggestion)):
        load_config(None, [override])


def test_bad_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=re.escape("'shapes_tiney' is neither a file nor a preset (did you mean")):
        load_config("shapes_tiney")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match=re.escape(f"(did you mean {tmp_path / 'run' / 'config.yaml'}?)")):
        load_config(tmp_path / "run")  # a run directory
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("_base_: parent.yaml\n")  # named with its folder, not bare
    with pytest.raises(ConfigError, match=re.escape(f"'{tmp_path / 'sub' / 'parent.yaml'}' is neither")):
        load_config(tmp_path / "sub" / "child.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["model.num_queries"])


def test_yaml_mistakes_name_the_file_and_line(tmp_path: Path):
    """A YAML syntax error printed PyYAML's several lines with '<unicode string>' for the file; an unknown key in a
    file (or in its _base_) did not name the file at all."""
    (tmp_path / "indent.yaml").write_text("train:\n  epochs: 3\n   batch_size: 2\n")
    (tmp_path / "tab.yaml").write_text("train:\n\tepochs: 3\n")
    (tmp_path / "base.yaml").write_text("model:\n  backbone:\n    pretrianed: false\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ntrain:\n  epochs: 3\n")
    (tmp_path / "twice.yaml").write_text("train:\n  epochs: 3\nmodel:\n  num_queries: 5\ntrain:\n  batch_size: 2\n")
    cases = {
        "twice.yaml": "twice.yaml, line 5, column 1: not valid YAML: 'train' is given twice",  # train.epochs was lost
        "indent.yaml": "indent.yaml, line 3, column 14: not valid YAML: mapping values are not allowed here",
        "tab.yaml": "tab.yaml, line 2, column 1: not valid YAML: found character '\\t' that cannot start any token; "
        "YAML indents with spaces, not tabs",
        "child.yaml": "base.yaml: unknown config key model.backbone.pretrianed (did you mean model.backbone.pretrained",
    }
    (tmp_path / "image.yaml").write_bytes(b"\x89PNG\r\n\x1a\n")  # a picture given as --config
    cases["image.yaml"] = "image.yaml: not a YAML text file (byte 0x89 at offset 0 is not UTF-8)"  # was: codec error
    (tmp_path / "empty_section.yaml").write_text("train:\n  # epochs: 3\nmodel:\n  backbone:\n  attention:\n")
    assert load_config(tmp_path / "empty_section.yaml").train.epochs == 300  # was: 'expected a mapping', got None
    overridden = load_config(tmp_path / "empty_section.yaml", ["model.attention.decoder_cross.activation=sparsemax"])
    assert overridden.model.attention["decoder_cross"].activation == "sparsemax"  # not 'attention is not a section'
    for name, message in cases.items():
        with pytest.raises(ConfigError) as error:
            load_config(tmp_path / name)
        assert message in str(error.value) and "\n" not in str(error.value)


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


@pytest.mark.parametrize(
    ("override", "error"),
    [
        (
            "model.attention.decoder_cross.activation=sparsmax",
            "model.attention.decoder_cross.activation: unknown attention activation 'sparsmax' (did you mean "
            "'sparsemax'?); choose one of",
        ),
        (  # another letter case shares no letter with the name meant: it got no suggestion
            "model.attention.decoder_cross.activation=SPARSEMAX",
            "model.attention.decoder_cross.activation: unknown attention activation 'SPARSEMAX' (did you mean "
            "'sparsemax'?); choose one of",
        ),
        (
            "model.attention.decoder_crosss.activation=sparsemax",
            "model.attention.decoder_crosss: this model has no such attention site (did you mean 'decoder_cross'?)",
        ),
    ],
)
def test_a_mistyped_map_or_site_gets_the_closest_name(override: str, error: str):
    """A misspelt map or site listed the choices only (and the map's error named model.attention.decoder_cross, not
    its activation key)."""
    config = load_config("shapes_tiny_deformable", [*SMALL_TRANSFORMER, override])
    with pytest.raises(ConfigError, match=re.escape(error)):
        build_model(config)


#: The official training settings (facebookresearch/detr and fundamentalvision/Deformable-DETR main.py defaults,
#: their configs/*.sh and READMEs), as our config keys.
OFFICIAL_DETR = {
    "model.num_classes": 91,
    "model.num_queries": 100,
    "model.aux_loss": True,
    "model.position_embedding": "sine",
    "model.backbone.name": "resnet50",
    "model.backbone.pretrained": True,
    "model.backbone.dilation": False,
    "model.backbone.norm": "frozen_bn",
    "model.backbone.trainable_layers": ["layer2", "layer3", "layer4"],
    "model.backbone.lr": 1e-5,
    "model.transformer.hidden_dim": 256,
    "model.transformer.nheads": 8,
    "model.transformer.enc_layers": 6,
    "model.transformer.dec_layers": 6,
    "model.transformer.dim_feedforward": 2048,
    "model.transformer.dropout": 0.1,
    "model.transformer.pre_norm": False,
    "loss.set_cost_class": 1.0,
    "loss.set_cost_bbox": 5.0,
    "loss.set_cost_giou": 2.0,
    "loss.ce_loss_coef": 1.0,
    "loss.bbox_loss_coef": 5.0,
    "loss.giou_loss_coef": 2.0,
    "loss.eos_coef": 0.1,
    "data.label_mode": "coco_ids",
    "data.train_scales": list(range(480, 801, 32)),
    "data.max_size": 1333,
    "data.random_crop": True,
    "data.crop_resize_scales": [400, 500, 600],
    "data.crop_min": 384,
    "data.crop_max": 600,
    "data.val_size": 800,
    "data.hflip_prob": 0.5,
    "data.normalize": True,
    "optim.lr": 1e-4,
    "optim.weight_decay": 1e-4,
    "optim.lr_drop": 200,
    "optim.lr_gamma": 0.1,
    "optim.clip_max_norm": 0.1,
    "train.epochs": 300,
    "train.batch_size": 2,
    "train.seed": 42,
}
OFFICIAL_DEFORMABLE = {
    **{k: v for k, v in OFFICIAL_DETR.items() if not k.startswith("loss.")},
    "model.arch": "deformable_detr",
    "model.num_queries": 300,
    "model.backbone.lr": 2e-5,
    "model.transformer.dim_feedforward": 1024,
    "model.deformable.num_feature_levels": 4,
    "model.deformable.enc_n_points": 4,
    "model.deformable.dec_n_points": 4,
    "model.deformable.with_box_refine": False,
    "model.deformable.two_stage": False,
    "loss.set_cost_class": 2.0,
    "loss.set_cost_bbox": 5.0,
    "loss.set_cost_giou": 2.0,
    "loss.ce_loss_coef": 2.0,
    "loss.bbox_loss_coef": 5.0,
    "loss.giou_loss_coef": 2.0,
    "loss.focal_alpha": 0.25,
    "optim.lr": 2e-4,
    "optim.lr_drop": 40,
    "optim.lr_linear_proj_mult": 0.1,
    "train.epochs": 50,
}
OFFICIAL_RECIPES = {
    "detr_r50": OFFICIAL_DETR,
    # DC5: dilated last stage; the released DC5 models were trained with 1 image per GPU (official README).
    "detr_r50_dc5": {**OFFICIAL_DETR, "model.backbone.dilation": True, "train.batch_size": 1},
    "deformable_detr_r50": OFFICIAL_DEFORMABLE,
    "deformable_detr_r50_box_refine": {**OFFICIAL_DEFORMABLE, "model.deformable.with_box_refine": True},
    "deformable_detr_r50_two_stage": {
        **OFFICIAL_DEFORMABLE,
        "model.deformable.with_box_refine": True,
        "model.deformable.two_stage": True,
    },
}


@pytest.mark.parametrize("preset", sorted(OFFICIAL_RECIPES))
def test_presets_are_the_official_recipes(preset: str):
    config = load_config(preset)
    for key, official in OFFICIAL_RECIPES[preset].items():
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        assert value == official, f"{preset}: {key} is {value!r}, officially {official!r}"


def test_the_readme_names_the_short_run_setting_in_a_train_command_that_loads():
    """`train.max_steps_per_epoch` (a short try-out run) was in no part of the README; each README train command's
    --set overrides load on its preset as written."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    commands = re.findall(r"^sparse-detector train --config (\w+) --set (.+?) --output-dir", readme, re.MULTILINE)
    assert any("train.max_steps_per_epoch=" in overrides for _, overrides in commands)
    for preset, overrides in commands:
        load_config(preset, overrides.split())
    short = load_config("shapes_tiny", ["train.max_steps_per_epoch=5"])
    assert short.train.max_steps_per_epoch == 5


def test_a_config_file_that_is_not_a_mapping_is_named(tmp_path: Path, capsys):
    """A YAML list (or a lone value) where a config's sections belong: one line naming the file, no traceback."""
    (tmp_path / "my.yaml").write_text("- model\n- train\n")
    assert main(["train", "--config", str(tmp_path / "my.yaml"), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'my.yaml'}: the top level must be a mapping, got list" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
