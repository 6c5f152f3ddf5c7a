"""Typed configuration: dataclasses, a YAML loader with ``_base_`` inheritance and dotted overrides.

Every key in a YAML file or override must exist in these dataclasses and have the right type; anything else is an
error naming the key. Presets live in ``sparse_detector/configs/*.yaml`` and can be named without a path.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from .data.labels import LabelMode
from .runs import CONFIG_FILE
from .text import closest_name, did_you_mean

PRESET_DIR = Path(__file__).parent / "configs"
T = TypeVar("T")

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


# The choices of text settings: a value outside them is a config error naming the key (:func:`_convert`).
BackboneName = Literal["resnet18", "resnet34", "resnet50", "resnet101"]
BackboneNorm = Literal["frozen_bn", "batch_norm"]
BackboneStage = Literal["stem", "layer1", "layer2", "layer3", "layer4"]
FeatureStage = Literal["layer1", "layer2", "layer3", "layer4"]  # stages whose features can feed the transformer
PositionEmbedding = Literal["sine", "learned"]
OnInvalid = Literal["error", "skip"]
OnNonfiniteLoss = Literal["error", "skip"]
Precision = Literal["fp32", "bf16", "fp16"]
WandbMode = Literal["offline", "online"]


def check_ranges(section: str, config: Any, ranges: Mapping[str, tuple[float, float]]) -> None:
    """Each named number of ``config`` lies in its closed ``(least, most)`` range, else an error naming the key: a
    wrong setting is a config error before anything runs, not a failure (or a silent misuse) mid-run."""
    for name, (least, most) in ranges.items():
        value = getattr(config, name)
        if isinstance(value, int | float) and not least <= value <= most:
            bounds = f">= {least:g}" if most == math.inf else f"in [{least:g}, {most:g}]"
            raise ConfigError(f"{section}.{name} must be {bounds}, got {value}")


def check_choice(value: Any, choices: Any, key: str) -> None:
    """``value`` is one of the ``Literal`` type ``choices`` (or a list of them, for a ``list[Literal]``), else the
    same :class:`ConfigError` loading a config gives: the check at build time of a config made in Python, which
    loading never saw."""
    _convert(value, choices, key)


DEFAULT_SCORE_THRESHOLD = 0.5  # of predict, detect and the queries visualize draws


def check_score_threshold(threshold: float) -> None:
    """Refuse a detection-score threshold outside [0, 1] (NaN too): it would keep every detection or none. The one
    check of ``detect``, ``predict_images`` and the command line's ``--threshold`` (which names the option)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(
            f"scores are from 0 to 1, got {threshold} for the score threshold (e.g. {DEFAULT_SCORE_THRESHOLD})"
        )


def check_image_sizes(section: str, config: Any, names: Iterable[str]) -> None:
    """Lists of image sizes in pixels: at least one, each at least 1."""
    for name in names:
        value = getattr(config, name)
        if not value:
            raise ConfigError(f"{section}.{name} is empty; give at least one value, e.g. {section}.{name}=[800]")
        if bad := [size for size in value if size < 1]:
            raise ConfigError(f"{section}.{name} holds {bad}: image sizes are pixels, at least 1, e.g. [800]")


@dataclass
class BackboneConfig:
    """``model.backbone``: the CNN and how much of it trains."""

    name: BackboneName = "resnet50"
    dilation: bool = False  # DC5: dilate the last stage instead of striding
    pretrained: bool = False  # ImageNet weights through torchvision's weights API (needs the internet once)
    lr: float = 1e-5  # 0 freezes the whole backbone (official semantics)
    norm: BackboneNorm = "frozen_bn"  # frozen_bn (official) | batch_norm (trainable, for from-scratch presets)
    trainable_layers: list[BackboneStage] = field(default_factory=lambda: ["layer2", "layer3", "layer4"])
    return_layer: FeatureStage = "layer4"  # stage whose features feed the transformer (layer3 = stride 16)

    def __post_init__(self) -> None:
        check_ranges("model.backbone", self, {"lr": (0, math.inf)})


@dataclass
class TransformerConfig:
    """``model.transformer``: sizes of the encoder-decoder."""

    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    pre_norm: bool = False

    def __post_init__(self) -> None:
        check_ranges("model.transformer", self, {"dropout": (0, 1)})


@dataclass
class AttentionSiteConfig:
    """``model.attention.<site>``: the attention map of one site and its options."""

    activation: str = "softmax"  # softmax | sparsemax | entmax15 | alpha_entmax | tvmax
    alpha_init: float = 1.5  # alpha_entmax: initial alpha of every head
    tvmax_lambda: float = 0.1  # tvmax: weight of the total-variation term


MAP_OPTIONS = {"alpha_entmax": "alpha_init", "tvmax": "tvmax_lambda"}  # the AttentionSiteConfig option of each map


def site_activation(attention: Mapping[str, AttentionSiteConfig], site: str) -> str:
    """The attention map of ``site`` under ``model.attention`` (a site not named keeps softmax)."""
    return attention.get(site, AttentionSiteConfig()).activation


@dataclass
class DeformableConfig:
    """Deformable DETR only (``model.arch: deformable_detr``), official names and defaults."""

    num_feature_levels: int = 4  # C3-C5 plus extra stride-2 levels on top (1 = C5 only)
    enc_n_points: int = 4  # sampling points per head per level in the encoder
    dec_n_points: int = 4  # ... and in the decoder's cross-attention
    with_box_refine: bool = False  # iterative box refinement: each decoder layer refines the previous boxes
    two_stage: bool = False  # encoder proposals pick the decoder's initial boxes (needs with_box_refine)


@dataclass
class ModelConfig:
    """``model``: the architecture and its parts."""

    arch: str = "detr"  # the registered model builder (sparse_detector.models.available_models())
    num_classes: int = 91  # DETR: class_embed has num_classes + 1 outputs (the last is "no object")
    num_queries: int = 100
    aux_loss: bool = True
    position_embedding: PositionEmbedding = "sine"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    # One entry per attention site of the model, by the site's name (e.g. encoder_self, decoder_self,
    # decoder_cross for DETR); sites not named use the defaults (softmax). Checked against the built model's sites.
    attention: dict[str, AttentionSiteConfig] = field(default_factory=dict)
    deformable: DeformableConfig = field(default_factory=DeformableConfig)


@dataclass
class LossConfig:
    """``loss``: matching costs and loss weights."""

    set_cost_class: float = 1.0
    set_cost_bbox: float = 5.0
    set_cost_giou: float = 2.0
    ce_loss_coef: float = 1.0
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    eos_coef: float = 0.1  # weight of the "no object" class in the cross-entropy
    focal_alpha: float = 0.25  # Deformable DETR: alpha of the sigmoid focal loss (ce_loss_coef weighs it)

    def __post_init__(self) -> None:
        weights = [f.name for f in dataclasses.fields(self) if f.name != "focal_alpha"]
        check_ranges("loss", self, {**dict.fromkeys(weights, (0, math.inf)), "focal_alpha": (0, 1)})


@dataclass
class SplitConfig:
    """``data.train`` / ``data.val``: one split's image folder and COCO annotations."""

    images: str = ""  # folder the JSON's file_name entries are relative to ("" = the JSON's own folder)
    annotations: str = ""  # COCO instances JSON


@dataclass
class DataConfig:
    """``data``: the data set, its splits and augmentation."""

    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    label_mode: LabelMode = "contiguous"  # contiguous (0..C-1, category map in checkpoints) | coco_ids (official, 91)
    on_invalid: OnInvalid = "error"  # error | skip (invalid annotations and unreadable images dropped, counted, logged)
    check_images: bool = False  # decode every image before training / evaluation starts (finds unreadable ones)
    bit_depth: int = 0  # deep grayscale's white is 2**bit_depth - 1 for every image; 0: per image (README)
    train_scales: list[int] = field(default_factory=lambda: list(range(480, 801, 32)))  # shorter side choices
    max_size: int = 1333  # longer side cap
    random_crop: bool = True  # official resize -> random crop -> resize branch (taken half of the time)
    crop_resize_scales: list[int] = field(default_factory=lambda: [400, 500, 600])
    crop_min: int = 384
    crop_max: int = 600
    val_size: int = 800
    hflip_prob: float = 0.5
    normalize: bool = True  # ImageNet mean/std
    num_workers: int = 2

    def __post_init__(self) -> None:
        check_ranges("data", self, {"hflip_prob": (0, 1), "num_workers": (0, math.inf)})
        check_ranges("data", self, dict.fromkeys(("max_size", "crop_min", "crop_max", "val_size"), (1, math.inf)))
        check_image_sizes("data", self, ("train_scales", "crop_resize_scales"))
        if self.bit_depth and not 8 <= self.bit_depth <= 32:
            raise ConfigError(
                f"data.bit_depth must be 0 (found per image) or the images' depth in bits, 8 to 32 (e.g. 12 for a "
                f"12-bit camera's 16-bit PNGs), got {self.bit_depth}"
            )


@dataclass
class OptimConfig:
    """``optim``: optimiser and learning-rate schedule."""

    lr: float = 1e-4  # transformer and heads (the backbone uses model.backbone.lr)
    weight_decay: float = 1e-4
    lr_drop: int = 200  # epochs between learning-rate drops (StepLR)
    lr_gamma: float = 0.1
    clip_max_norm: float = 0.1  # 0 disables gradient clipping
    alpha_lr_mult: float = 10.0  # learning-rate multiplier of learnable entmax alphas (no weight decay)
    alpha_lr_drop: bool = True  # false keeps the alphas' learning rate constant through lr drops
    lr_linear_proj_mult: float = 0.1  # Deformable DETR: lr multiplier of sampling offsets and reference points

    def __post_init__(self) -> None:
        rates = ("lr", "weight_decay", "clip_max_norm", "alpha_lr_mult", "lr_linear_proj_mult")
        check_ranges("optim", self, {**dict.fromkeys(rates, (0, math.inf)), "lr_gamma": (0, math.inf)})
        check_ranges("optim", self, {"lr_drop": (1, math.inf)})  # epochs between drops: a divisor


@dataclass
class TrainConfig:
    """``train``: the training loop, evaluation, checkpoints and logging."""

    epochs: int = 300
    batch_size: int = 2
    eval_batch_size: int = 2
    seed: int = 42
    device: str = "auto"  # auto (cuda -> mps -> cpu) | cpu | cuda | cuda:N | mps
    output_dir: str = "runs/detr"
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    log_every: int = 20  # steps between training log lines in metrics.jsonl
    max_steps_per_epoch: int = 0  # 0 = the whole training set every epoch
    deterministic: bool = False  # torch.use_deterministic_algorithms, for exactly repeatable runs
    on_nonfinite_loss: OnNonfiniteLoss = "error"  # error | skip (the step is skipped, counted and logged)
    precision: Precision = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 adds a gradient scaler); losses stay in fp32
    compile: bool = False  # torch.compile the model (falls back to eager, with a warning, where it fails)
    keep_last: int = 1  # numbered end-of-epoch checkpoints kept beside checkpoint_last.pt (for a corrupt last one)
    keep_every: int = 0  # keep every N-th epoch's checkpoint for good (0 = none); those before lr drops are kept
    tensorboard: bool = False  # also write TensorBoard event files to the run directory
    diagnostics_every: int = 0  # steps between training diagnostics (weights, gradients, entropy); 0 = off
    wandb: bool = False  # also log to Weights & Biases (pip install 'sparse-detector[wandb]')
    wandb_project: str = "sparse-detector"
    wandb_mode: WandbMode = "offline"  # offline (files in the run directory, sync later with `wandb sync`) | online

    def __post_init__(self) -> None:
        """Counts that a run divides by or loops over: a wrong one is a config error, not a failure mid-run."""
        counts = ("epochs", "batch_size", "eval_batch_size", "eval_every", "log_every")
        check_ranges("train", self, dict.fromkeys(counts, (1, math.inf)))
        optional = ("max_steps_per_epoch", "keep_last", "keep_every", "diagnostics_every")  # 0 = none / off
        check_ranges("train", self, dict.fromkeys(optional, (0, math.inf)))


@dataclass
class Config:
    """A whole run's configuration, one field per top-level YAML section."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ----------------------------------------------------------------------------------------------------------------
# Loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp`` (recursing into dataclasses and lists); return the converted value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {_type_name(tp)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        meant = did_you_mean(str(value), choices)
        raise ConfigError(f"{key}: unknown value {value!r}{meant}; choose one of {list(choices)}")
    if dataclasses.is_dataclass(tp):
        value = {} if value is None else value  # a YAML section whose settings are all commented out
        if not isinstance(value, Mapping):
            fields = [f.name for f in dataclasses.fields(tp)]
            raise ConfigError(
                f"{key} is a section of settings {fields}, not a value (got {value!r}); set one of them, e.g. "
                f"{key}.{fields[0]}={value}"
            )
        return _build_dataclass(tp, value, key)
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        value = {} if value is None else value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(tp) or (Any, Any)
        return {_convert(k, key_type, key): _convert(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int | float | str) and not isinstance(value, bool):
        try:  # YAML 1.1 reads exponent forms without a dot ("1e-4") as strings
            number: float | None = float(value)
        except ValueError:
            number = None
        if number is not None and not math.isfinite(number):  # a nan learning rate trains nothing, silently
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        if number is not None:
            return number
    if tp in (int, str, bool) and type(value) is tp:
        return value
    if tp is bool and type(value) is int and value in (0, 1):  # train.wandb=1, as on many command lines
        return bool(value)
    if tp is Any:
        return value
    hint = f"; quote it in YAML: {key.rsplit('.', 1)[-1]}: '...'" if tp is str else ""
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__}){hint}")


def _schema_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a config dataclass, sections included (``train``, ``train.epochs``, ...)."""
    keys = []
    for name, tp in typing.get_type_hints(cls).items():
        keys.append(f"{prefix}{name}")
        if dataclasses.is_dataclass(tp):
            keys += _schema_keys(tp, f"{prefix}{name}.")
    return keys


def _nearest_key(key: str, names: Iterable[str], prefix: str) -> str | None:
    """The key a misspelt or misplaced ``prefix.key`` most likely meant: a close spelling in the same section, else
    the same name in other sections of :class:`Config` (``train.lr`` -> ``model.backbone.lr or optim.lr``)."""
    if close := closest_name(key, names):
        return f"{prefix}{close}"
    elsewhere = [k for k in _schema_keys(Config) if k.rsplit(".", 1)[-1] == key]
    return " or ".join(elsewhere) or None


def _build_dataclass(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names, key=str)
    if unknown:
        where = f"{prefix}." if prefix else ""
        nearest = _nearest_key(str(unknown[0]), names, where)
        hint = f" (did you mean {nearest}?)" if nearest else ""
        raise ConfigError(f"unknown config key {where}{unknown[0]}{hint}; valid keys here: {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _convert(value, hints[name], f"{prefix}.{name}" if prefix else name)
    return cls(**kwargs)


def _deep_merge(base: dict, update: Mapping) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_config_path(path: str | Path, relative_to: Path | None = None) -> Path:
    """A file path (relative to ``relative_to`` when given: a ``_base_`` is relative to its file, not to the current
    folder), or a preset name (``detr_r50`` or ``detr_r50.yaml``)."""
    candidates = [Path(path) if relative_to is None else relative_to / path]
    name = str(path) if str(path).endswith(".yaml") else f"{path}.yaml"
    candidates.append(PRESET_DIR / name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    presets = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    close = closest_name(Path(path).stem, presets)
    if (run_config := candidates[0] / CONFIG_FILE).is_file():  # a run directory: its config
        close = str(run_config)
    hint = f" (did you mean {close}?)" if close else ""
    raise ConfigError(f"config {str(candidates[0])!r} is neither a file nor a preset{hint}; presets: {presets}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error (PyYAML keeps the last silently: a
    second ``train:`` section drops every setting of the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice in one mapping; merge the two", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """A YAML file's content (an empty file is ``{}``); a syntax error or a key given twice is one line naming the
    file, line and column."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}  # a SafeLoader
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not a YAML text file (byte {err.object[err.start]:#x} at offset {err.start} is not UTF-8); "
            "give a config YAML (saved as UTF-8) or a preset name"
        ) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = err.problem or err.context or "syntax error"
        hint = "; YAML indents with spaces, not tabs" if "\\t" in problem else ""
        raise ConfigError(f"{where}: not valid YAML: {problem}{hint}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None


def _read_yaml_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML file and merge it over its ``_base_`` file(s)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"circular _base_ chain: {' -> '.join(str(p) for p in (*seen, path))}")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    try:  # this file's own keys and types, so that an error names the file that holds the mistake
        config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    merged: dict = {}
    for base in bases:
        merged = _deep_merge(merged, _read_yaml_tree(resolve_config_path(base, path.parent), (*seen, path)))
    return _deep_merge(merged, data)


def _schema_type(parts: list[str]) -> Any:
    """The schema's type of a dotted key (``["train", "output_dir"]`` -> ``str``); ``None`` where it has none."""
    tp: Any = Config
    for part in parts:
        if dataclasses.is_dataclass(tp):
            tp = typing.get_type_hints(tp).get(part)
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    return tp


def _override_value(raw: str, tp: Any) -> Any:
    """An override's value: YAML (``true``, ``[64, 96]``, ``null``), but a text setting takes the text as written
    (YAML would read ``runs/x #1`` as ``runs/x``, ``2026-12-01`` as a date, ``on`` as true); quotes are YAML's."""
    if not raw.strip():
        return ""  # key= is the empty string (YAML would read None)
    quoted = raw.strip()[:1] in ("'", '"')
    if (tp is str or typing.get_origin(tp) is Literal) and not quoted:
        return raw.strip()
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _apply_override(tree: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    dotted, raw = override.split("=", 1)
    value = _override_value(raw, _schema_type(dotted.strip().split(".")))
    node = tree
    *parents, leaf = dotted.strip().split(".")
    if not all([*parents, leaf]):
        raise ConfigError(f"override {override!r}: the key {dotted.strip()!r} has an empty part; e.g. train.epochs=5")
    for part in parents:
        if node.get(part) is None:  # absent, or a YAML section left empty
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    node[leaf] = value


def without_pretrained(config: Config) -> Config:
    """A copy of ``config`` whose backbone starts from random weights: for a model whose every weight a checkpoint
    then replaces (evaluation, ``--resume``, ``--init-from``) or that is only built to check it, the ImageNet ones
    would be downloaded for nothing, and offline not at all (the random initialisation's draws are the same)."""
    config = copy.deepcopy(config)
    config.model.backbone.pretrained = False
    return config


def config_from_dict(tree: Mapping[str, Any]) -> Config:
    """Validate a nested mapping against the schema (unknown keys and wrong types are errors)."""
    return _build_dataclass(Config, tree)


def dataclass_from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """Any settings dataclass (a study's, ...) from a mapping, its keys and types checked as a config's are."""
    return _build_dataclass(cls, values)


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load a YAML config (file path or preset name; ``None`` = defaults) and apply ``key.sub=value`` overrides."""
    return _overridden(_read_yaml_tree(resolve_config_path(path)) if path is not None else {}, overrides)


def override_config(config: Config, overrides: Iterable[str]) -> Config:
    """A copy of ``config`` with ``key.sub=value`` overrides applied (and validated)."""
    return _overridden(config_to_dict(config), overrides)


def load_run_config(run_dir: Path, overrides: Iterable[str] = ()) -> Config:
    """A run directory's ``config.yaml`` with its data paths as they lead now (:func:`run_config_here`), then
    ``key.sub=value`` overrides applied."""
    return _overridden(run_config_here(_read_yaml_tree(run_dir / CONFIG_FILE), run_dir), overrides)


def _overridden(tree: dict, overrides: Iterable[str]) -> Config:
    """The config of ``tree`` with ``key.sub=value`` overrides applied (``tree`` changed in place)."""
    for override in overrides:
        _apply_override(tree, override)
    return config_from_dict(tree)


def run_config_here(tree: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """A run's stored config (its ``config.yaml`` or a checkpoint's, as a tree) as it leads from where the run is now,
    ``run_dir``: its data paths absolute, as the data loader reads them, and ``train.output_dir`` naming ``run_dir``
    where it named the run's folder elsewhere (train, quickstart and study store it absolute).

    A folder moved or copied with a run and its data inside (a quickstart's, a study's; taken from a cluster,
    renamed) leaves the run's data paths leading nowhere. Such a path, under a folder (not the root) that held the
    run too when it was written (``train.output_dir``), is read at the same place under the folder holding
    ``run_dir`` now in the same way (the same folder names down to the run), where it is there; one line says so per
    move. A path that exists is kept, as is one that exists in neither place (the data loader then names it)."""
    tree = copy.deepcopy(dict(tree))
    train = tree.get("train") or {}
    stored_run = Path(str(train.get("output_dir", "")))
    stored_run = stored_run.resolve() if stored_run.is_absolute() else None  # resolved as far as it still exists
    run_now = Path(run_dir).resolve()
    for paths in (tree.get("data") or {}).values():
        if not isinstance(paths, dict):  # the splits are data's only sections
            continue
        for key, value in paths.items():
            if isinstance(value, str) and value:
                paths[key] = str(_data_path_here(Path(value).resolve(), stored_run, run_now))
    if stored_run is not None and stored_run != run_now:
        train["output_dir"] = str(Path(run_dir).absolute())
    return tree


def _data_path_here(stored: Path, stored_run: Path | None, run_now: Path) -> Path:
    """``stored``, or where it is now that the run was moved with it from ``stored_run`` to ``run_now``
    (:func:`run_config_here`); paths absolute."""
    if stored.exists() or stored_run is None:
        return stored
    shared = Path(os.path.commonpath([stored, stored_run]))
    below = stored_run.relative_to(shared).parts  # the run's folders below the one it shared with its data
    kept = len(run_now.parts) - len(below)
    if shared == Path(shared.anchor) or kept < 1 or run_now.parts[kept:] != below:
        return stored  # nothing shared but the root (not moved with the run), or the run is elsewhere below it now
    shared_now = Path(*run_now.parts[:kept])
    here = shared_now / stored.relative_to(shared)
    if not here.exists():
        return stored
    _say_moved(shared, shared_now)
    return here


@functools.cache
def _say_moved(old: Path, new: Path) -> None:
    """The one line that says a moved run's data is read where it was moved to (once per move and process)."""
    log.warning("moved run: its data under %s, which leads nowhere now, is read under %s", old, new)


def config_to_dict(config: Any) -> dict:
    """A config (or any section of it) as nested plain dicts and lists, as ``config.yaml`` holds it."""
    return dataclasses.asdict(config)


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs between two config trees (as
    :func:`config_to_dict` makes them), in the schema's order; an attention site that one tree does not name counts
    as the default map."""
    sites = [*old.get("model", {}).get("attention", {}), *new.get("model", {}).get("attention", {})]
    return _tree_differences(_every_site_named(old, sites), _every_site_named(new, sites))


def _every_site_named(tree: Mapping[str, Any], sites: Iterable[str]) -> dict[str, Any]:
    model = tree.get("model", {})
    attention, default = model.get("attention", {}), dataclasses.asdict(AttentionSiteConfig())
    return {**tree, "model": {**model, "attention": {site: {**default, **attention.get(site, {})} for site in sites}}}


def _tree_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    changes = []
    for key in [*new, *(k for k in old if k not in new)]:
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changes += _tree_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changes


def dump_config(config: Config) -> str:
    """The YAML text of a config (the schema's key order)."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
