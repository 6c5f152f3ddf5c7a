"""DETR checkpoints in the Hugging Face ``transformers`` format, read as official facebookresearch/detr ones.

A model folder as ``save_pretrained`` writes it and the hub serves it (``facebook/detr-resnet-50``): ``config.json``
beside ``model.safetensors`` or ``pytorch_model.bin``. :func:`read_huggingface_checkpoint` renames its weights to
the official names (``transformers`` keeps separate q/k/v projections where the official model has one
``in_proj_weight``) and returns what ``config.json`` tells that the weights do not show as the official training
scripts' stored ``args`` (``nheads``, ``dilation``), so every official-checkpoint reader takes it unchanged. Its
class names (``id2label``) name the model's labels (:func:`huggingface_label_map`).

Supported: ``DetrForObjectDetection`` with a timm ResNet-18/34/50/101 backbone (``use_timm_backbone: true``, as the
``facebook/detr-resnet-*`` models; timm's ResNets use torchvision's layer names).
"""

from __future__ import annotations

import json
import pickle
import re
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ..data.labels import LabelMap

CONFIG_FILE = "config.json"
#: The weights files of a model folder, in the order they are taken.
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
#: Suffixes of weights files written by ``transformers`` (read with ``config.json`` beside them).
WEIGHTS_SUFFIXES = (".safetensors", ".bin")
SUPPORTED_ARCHITECTURE = "DetrForObjectDetection"
SUPPORTED_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
SUPPORTED = (
    f"supported: {SUPPORTED_ARCHITECTURE} (model_type 'detr') with a timm ResNet-18/34/50/101 backbone "
    "(use_timm_backbone: true), as facebook/detr-resnet-50 and facebook/detr-resnet-101"
)

# transformers prefix -> official prefix, for the modules outside the transformer layers. The learned position
# embedding is under model.backbone in transformers 4 files and under model in those transformers 5 writes.
_RENAMED_PREFIXES = (
    ("model.backbone.conv_encoder.model.", "backbone.0.body."),
    ("model.backbone.position_embedding.row_embeddings.", "backbone.1.row_embed."),
    ("model.backbone.position_embedding.column_embeddings.", "backbone.1.col_embed."),
    ("model.position_embedding.row_embeddings.", "backbone.1.row_embed."),
    ("model.position_embedding.column_embeddings.", "backbone.1.col_embed."),
    ("model.input_projection.", "input_proj."),
    ("model.query_position_embeddings.", "query_embed."),
    ("model.decoder.layernorm.", "transformer.decoder.norm."),
    ("class_labels_classifier.", "class_embed."),
    ("bbox_predictor.", "bbox_embed."),
)
_LAYER_KEY = re.compile(r"model\.(encoder|decoder)\.layers\.(\d+)\.([a-z_0-9]+)\.(.+)")
# transformers module of a transformer layer -> the official one, per stack.
_LAYER_MODULES = {
    "encoder": {
        "self_attn": "self_attn",
        "self_attn_layer_norm": "norm1",
        "fc1": "linear1",
        "fc2": "linear2",
        "final_layer_norm": "norm2",
    },
    "decoder": {
        "self_attn": "self_attn",
        "self_attn_layer_norm": "norm1",
        "encoder_attn": "multihead_attn",
        "encoder_attn_layer_norm": "norm2",
        "fc1": "linear1",
        "fc2": "linear2",
        "final_layer_norm": "norm3",
    },
}
_PROJECTIONS = ("q_proj", "k_proj", "v_proj")  # stacked in this order into the official in_proj_weight / _bias


class HuggingFaceCheckpointError(ValueError):
    """A Hugging Face checkpoint that cannot be read as an official DETR one: what is wrong and what is supported."""


def huggingface_files(path: str | Path) -> tuple[Path, Path] | None:
    """``(config.json, weights file)`` of a Hugging Face model folder or weights file (``.safetensors``, ``.bin``);
    None for anything else (a run directory, a ``.pt`` / ``.pth`` checkpoint). A folder with ``config.json`` and no
    weights file, or a weights file without ``config.json`` beside it, is an error saying what is missing."""
    path = Path(path)
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            return None
        weights = next((path / name for name in WEIGHTS_FILES if (path / name).is_file()), None)
        if weights is None:
            raise HuggingFaceCheckpointError(
                f"{path} holds {CONFIG_FILE} but none of {', '.join(WEIGHTS_FILES)}: download the model's weights "
                "file into it (weights sharded into several files are not supported)"
            )
        return path / CONFIG_FILE, weights
    if path.suffix not in WEIGHTS_SUFFIXES or not path.is_file():
        return None
    if not (path.parent / CONFIG_FILE).is_file():
        raise HuggingFaceCheckpointError(
            f"{path} is read as a Hugging Face transformers weights file, which needs the model's {CONFIG_FILE} beside "
            "it (the number of heads, dilation and class names are in it): download it into the same folder"
        )
    return path.parent / CONFIG_FILE, path


def read_huggingface_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """A Hugging Face DETR checkpoint (folder or weights file, see :func:`huggingface_files`) as an official one:
    ``{"model": state dict with official names, "args": {"nheads": ..., "dilation": ...}}``; None when ``path`` is
    no Hugging Face checkpoint."""
    files = huggingface_files(path)
    if files is None:
        return None
    config_file, weights_file = files
    config = _read_config(config_file)
    nheads, dilation = _checked_settings(config, config_file)
    state_dict = official_state_dict(_read_weights(weights_file), str(weights_file))
    _check_class_count(config, state_dict, config_file)
    return {"model": state_dict, "args": {"nheads": nheads, "dilation": dilation}}


def huggingface_label_map(path: str | Path) -> LabelMap | None:
    """The labels of a Hugging Face checkpoint: its ``id2label`` ids are the labels (``coco_ids`` mode: 0..90 with
    "N/A" for the unused ids in ``facebook/detr-resnet-50``), named as there; None for another checkpoint or one
    whose ``config.json`` has no ``id2label``."""
    files = huggingface_files(path)
    if files is None or not (id2label := _read_config(files[0]).get("id2label")):
        return None
    return LabelMap("coco_ids", len(id2label), {}, _class_names(id2label, files[0]))


def official_state_dict(weights: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """``transformers`` DETR weights under the official facebookresearch/detr names; an error names the keys that
    have no official counterpart (another architecture or backbone) instead of leaving them out."""
    official: dict[str, Tensor] = {}
    projections: dict[str, dict[str, Tensor]] = defaultdict(dict)
    unknown = []
    for key, value in weights.items():
        if match := _LAYER_KEY.fullmatch(key):
            stack, index, module, rest = match.groups()
            if module not in _LAYER_MODULES[stack]:
                unknown.append(key)
                continue
            prefix = f"transformer.{stack}.layers.{index}.{_LAYER_MODULES[stack][module]}"
            projection, _, tensor = rest.partition(".")
            if projection in _PROJECTIONS:
                projections[f"{prefix}.in_proj_{tensor}"][projection] = value
            else:
                official[f"{prefix}.{rest}"] = value
        elif renamed := next((new + key[len(old) :] for old, new in _RENAMED_PREFIXES if key.startswith(old)), None):
            official[renamed] = value
        else:
            unknown.append(key)
    if unknown:
        raise HuggingFaceCheckpointError(
            f"{source} has {len(unknown)} weights that are not those of a transformers DETR with a timm ResNet "
            f"backbone (first: {unknown[:3]}); {SUPPORTED}"
        )
    for name, parts in projections.items():
        if missing := [p for p in _PROJECTIONS if p not in parts]:
            raise HuggingFaceCheckpointError(f"{source} lacks the {'/'.join(missing)} weights of {name}")
        official[name] = torch.cat([parts[p] for p in _PROJECTIONS])
    return official


def _read_config(config_file: Path) -> dict[str, Any]:
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HuggingFaceCheckpointError(f"{config_file} is not valid JSON ({err}): download it again") from None
    if not isinstance(config, dict):
        raise HuggingFaceCheckpointError(f"{config_file} is not a transformers model config (a JSON object)")
    return config


def _checked_settings(config: Mapping[str, Any], config_file: Path) -> tuple[int, bool]:
    """``(nheads, dilation)`` of a supported DETR config; an error naming the setting this package cannot build."""
    model_type = config.get("model_type")
    architectures = config.get("architectures") or [SUPPORTED_ARCHITECTURE]
    if model_type != "detr" or architectures != [SUPPORTED_ARCHITECTURE]:
        raise HuggingFaceCheckpointError(
            f"{config_file} describes a transformers {model_type} model ({', '.join(map(str, architectures))}); "
            f"{SUPPORTED}"
        )
    backbone_config = config.get("backbone_config") or {}  # transformers 5 writes the timm backbone's config here
    backbone_type = backbone_config.get("model_type", "timm_backbone")
    if not config.get("use_timm_backbone", True) or backbone_type != "timm_backbone":
        raise HuggingFaceCheckpointError(
            f"{config_file}: its backbone is a transformers {backbone_type} model (use_timm_backbone: false); "
            f"{SUPPORTED}"
        )
    backbone = str(config.get("backbone") or backbone_config.get("backbone") or "resnet50")
    if backbone.rsplit("/", 1)[-1].split(".")[0] not in SUPPORTED_BACKBONES:  # "resnet50.a1_in1k": same layers
        raise HuggingFaceCheckpointError(f"{config_file}: its backbone is timm's {backbone!r}; {SUPPORTED}")
    nheads = config.get("encoder_attention_heads", 8)
    settings = {  # key: (value, the value this package builds, why)
        "activation_function": (config.get("activation_function", "relu"), "relu", "as the official DETR"),
        "num_channels": (config.get("num_channels", 3), 3, "RGB images"),
        "decoder_attention_heads": (config.get("decoder_attention_heads", 8), nheads, "encoder_attention_heads"),
    }
    for key, (value, wanted, why) in settings.items():
        if value != wanted:
            raise HuggingFaceCheckpointError(
                f"{config_file} sets {key}={value!r}; the DETR model built here takes {wanted!r} only ({why})"
            )
    return int(nheads), bool(config.get("dilation", False))


def _read_weights(weights_file: Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file, or of a ``.bin`` one with ``torch.load(weights_only=True)``."""
    try:
        if weights_file.suffix == ".safetensors":
            data = load_file(weights_file, device="cpu")
        else:
            data = torch.load(weights_file, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise HuggingFaceCheckpointError(
            f"cannot read {weights_file} ({str(err).splitlines()[0]}): it is truncated, corrupt or not a weights "
            "file; download it again"
        ) from err
    if not isinstance(data, Mapping) or not all(isinstance(v, Tensor) for v in data.values()):
        raise HuggingFaceCheckpointError(f"{weights_file} is not a state dict (a mapping of names to tensors)")
    return dict(data)


def _class_names(id2label: Mapping[str, str], config_file: Path) -> list[str]:
    """The names of ``id2label`` by id 0..N-1 (JSON keys are strings); an error when the ids are not those."""
    names = {int(key): str(name) for key, name in id2label.items() if str(key).isdigit()}
    if sorted(names) != list(range(len(id2label))):
        raise HuggingFaceCheckpointError(
            f"{config_file}: id2label's ids {sorted(id2label)[:5]}... are not 0..{len(id2label) - 1}"
        )
    return [names[i] for i in range(len(names))]


def _check_class_count(config: Mapping[str, Any], state_dict: Mapping[str, Tensor], config_file: Path) -> None:
    classes = state_dict.get("class_embed.weight")
    id2label = config.get("id2label")
    if classes is not None and id2label and len(id2label) != classes.shape[0] - 1:
        raise HuggingFaceCheckpointError(
            f"{config_file} names {len(id2label)} classes in id2label but the weights' class head has "
            f"{classes.shape[0] - 1} (plus no-object): the config is another model's; download the model's own"
        )
