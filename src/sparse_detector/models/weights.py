"""Loading weights: strict state-dict loading with readable errors, and official (Deformable) DETR checkpoints.

``infer_official_config`` / ``infer_official_deformable_config`` are the official-checkpoint readers registered
with the ``detr`` / ``deformable_detr`` archs;
``load_official`` dispatches through the model registry by arch.
"""

from __future__ import annotations

import argparse
import inspect
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import Config, load_config
from ..files import file_kind
from ..runs import CHECKPOINT_SUFFIXES
from ..text import counted
from .huggingface import read_huggingface_checkpoint
from .registry import available_models, build_model, model_entry, official_config

# Blocks per stage and block type of the torchvision ResNets, to recognise a backbone from its weights.
_RESNET_LAYOUTS = {
    ("basic", 2, 2): "resnet18",
    ("basic", 3, 6): "resnet34",
    ("bottleneck", 3, 6): "resnet50",
    ("bottleneck", 3, 23): "resnet101",
}


#: The preset holding the official Deformable DETR recipe, whose losses and matching costs an official checkpoint's
#: config takes (they differ from DETR's: focal class cost and coefficient 2).
OFFICIAL_DEFORMABLE_PRESET = "deformable_detr_r50"


class CheckpointMismatchError(RuntimeError):
    """A state dict whose keys or shapes do not fit the model."""


class AmbiguousHeadsError(CheckpointMismatchError):
    """An official checkpoint's weights fit several numbers of attention heads, and it stores no ``args``."""


#: The official training scripts' defaults (``--nheads``, Deformable DETR's ``--enc_n_points`` / ``--dec_n_points``).
OFFICIAL_NHEADS = 8
OFFICIAL_POINTS = 4


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` that names missing/unexpected keys and the first shape mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        (k, tuple(state_dict[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {missing[:5]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {unexpected[:5]})")
    if mismatched:
        key, got, want = mismatched[0]
        problems.append(f"{len(mismatched)} shape mismatches (first: {key}: checkpoint {got}, model {want})")
    if problems:
        raise CheckpointMismatchError(
            f"{source} does not fit the model: " + "; ".join(problems) + ". Check that the config (classes, "
            "queries, layers, backbone) matches the one the checkpoint was trained with."
        )
    model.load_state_dict(state_dict, strict=True)


#: What the official training scripts store beside the weights (``main.py`` saves its ``args``): the only class,
#: beyond tensors and plain containers, that a checkpoint file may hold here.
OFFICIAL_CHECKPOINT_GLOBALS = (argparse.Namespace,)


#: What the commands that load weights read, for messages about files they do not.
READABLE_CHECKPOINTS = (
    "a run directory or a .pt file written by `sparse-detector train` or torch.save (or an official DETR / "
    "Deformable DETR checkpoint: `train --init-from` reads one as it is, the other commands with --official)"
)

#: Parameter-name prefixes of Hugging Face ``transformers`` detection models (DETR, Deformable DETR and their kin),
#: whose names differ from the official ones this package reads.
HUGGING_FACE_PREFIXES = ("model.backbone.conv_encoder.", "class_labels_classifier.")


def _is_safetensors(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a safetensors file: the length of its JSON header (8 bytes, little
    endian), then the header."""
    return len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 32


def not_a_checkpoint_file(path: str | Path) -> str | None:
    """Why ``path`` cannot be a file written by ``torch.save`` (empty, an image, text, safetensors, ...), judged by its
    first bytes: ``torch.save`` writes a zip archive, older versions a pickle (first byte 0x80); ``None`` when it may
    be one. Such a file would otherwise reach the unpickler, whose errors name neither the file nor the mistake."""
    with Path(path).open("rb") as f:
        head = f.read(9)
    if head.startswith((b"PK\x03\x04", b"\x80")):
        return None
    if _is_safetensors(head):
        named = "a safetensors file (a Hugging Face DETR model's is read as model.safetensors beside its config.json)"
    else:
        named = file_kind(head) or (
            "a text file" if head.isascii() else "something else (torch.save writes a zip archive)"
        )
    kind = f"not a PyTorch checkpoint but {named}" if head else "empty"
    return f"checkpoint {path} is {kind}: give {READABLE_CHECKPOINTS}"


def load_checkpoint_file(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` of a checkpoint file, ours or official: an official training checkpoint's
    ``args`` (an ``argparse.Namespace``) is read as data; any other Python object is refused with a
    :class:`CheckpointMismatchError` saying so, and so is a file that is no checkpoint or a truncated one.
    A Hugging Face DETR checkpoint (model folder, ``.safetensors`` / ``.bin`` file) is read as an official one
    (:func:`~sparse_detector.models.huggingface.read_huggingface_checkpoint`)."""
    if (converted := read_huggingface_checkpoint(path)) is not None:
        return converted
    if Path(path).is_file() and (problem := not_a_checkpoint_file(path)):
        raise CheckpointMismatchError(problem)
    try:
        with torch.serialization.safe_globals(list(OFFICIAL_CHECKPOINT_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as err:
        raise CheckpointMismatchError(
            f"refused to load {path}: it holds Python objects other than tensors, plain containers and the official "
            f"training scripts' args, which could run code when loaded ({_refused_object(err)}). Re-save its "
            "state dict alone (torch.save(checkpoint['model'], ...)) in an environment you trust"
        ) from None
    except (RuntimeError, EOFError) as err:  # torch's reader: 'PytorchStreamReader failed ... internal miniz error'
        raise CheckpointMismatchError(_unreadable_message(Path(path))) from err


def _refused_object(err: pickle.UnpicklingError) -> str:
    """What torch's weights-only reader refused (``here print``, ``here mymodule.Thing``), not its first line: the
    advice to load the file unsafely, with terminal escape codes around its warning."""
    if match := re.search(r"Unsupported global: GLOBAL (\S+)", str(err)):
        return f"here {match[1]}"
    return re.sub(r"\x1b\[[0-9;]*m", "", str(err).splitlines()[0])


def _unreadable_message(path: Path) -> str:
    """A checkpoint torch cannot read: what it is likely to be and what to do (torch's own words are the cause)."""
    others = sorted(p.name for p in path.parent.glob("*.pt*") if p.suffix in CHECKPOINT_SUFFIXES and p != path)
    instead = f"; other checkpoints beside it: {', '.join(others[:5])}" if others else ""
    return (
        f"cannot read checkpoint {path} ({path.stat().st_size} bytes): it is truncated or corrupt, e.g. cut off while "
        f"being written or copied; copy it again from where it came from, or give another checkpoint{instead}"
    )


def read_state_dict(
    path_or_state_dict: str | Path | Mapping[str, Any], source: str = "state dict"
) -> tuple[dict[str, Tensor], str]:
    """A checkpoint file (dict with a ``model`` key, or a bare state dict) or an in-memory one (named ``source`` in
    errors)."""
    if isinstance(path_or_state_dict, str | Path):
        source = str(path_or_state_dict)
        data = load_checkpoint_file(path_or_state_dict)
    else:
        data = path_or_state_dict
    if isinstance(data, Mapping) and "model" in data and isinstance(data["model"], Mapping):
        data = data["model"]
    if not isinstance(data, Mapping) or not all(isinstance(v, Tensor) for v in data.values()):
        keys = f" (its keys: {', '.join(map(repr, list(data)[:8]))})" if isinstance(data, Mapping) else ""
        raise CheckpointMismatchError(
            f"{source} is not a state dict nor a checkpoint with a 'model' state dict{keys}: give "
            f"{READABLE_CHECKPOINTS}; weights saved under another key can be re-saved under 'model', e.g. "
            "torch.save({'model': checkpoint['state_dict']}, 'fixed.pth')"
        )
    if hugging_face := [key for key in data if key.startswith(HUGGING_FACE_PREFIXES)]:
        raise CheckpointMismatchError(
            f"{source} holds a Hugging Face transformers model's weights (names such as {hugging_face[0]!r}) without "
            "the model's config.json: give the model's folder (config.json beside model.safetensors or "
            "pytorch_model.bin, as the hub serves it), read as an official DETR checkpoint"
        )
    return dict(data), source


def _count_indices(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def _infer_backbone(state_dict: Mapping[str, Tensor], config: Config) -> None:
    """Set ``config.model.backbone`` (ResNet depth, last stage) and the position encoding from the weights."""
    body = "backbone.0.body."
    if not any(key.startswith(body) for key in state_dict):  # no DETR-family checkpoint: the reader says so
        raise KeyError(body.rstrip("."))
    block = "bottleneck" if f"{body}layer1.0.conv3.weight" in state_dict else "basic"
    layout = (
        block,
        _count_indices(state_dict, f"{body}layer1."),
        _count_indices(state_dict, f"{body}layer3."),
    )
    if layout not in _RESNET_LAYOUTS:
        raise CheckpointMismatchError(f"backbone with blocks {layout} is not a torchvision ResNet-18/34/50/101")
    model = config.model
    model.backbone.name = _RESNET_LAYOUTS[layout]
    model.backbone.return_layer = "layer4" if _count_indices(state_dict, f"{body}layer4.") else "layer3"
    model.position_embedding = "learned" if "backbone.1.row_embed.weight" in state_dict else "sine"


def infer_official_config(
    state_dict: Mapping[str, Tensor], nheads: int | None = None, dilation: bool | None = None
) -> Config:
    """The :class:`Config` of an official DETR checkpoint, read from its tensor shapes.

    The number of heads and the DC5 dilation cannot be seen in the weights and are given (``None``: the official
    defaults 8, False; :func:`load_official` gives those of the checkpoint's stored ``args``). Pre-norm is
    recognised by the encoder's final LayerNorm, which only pre-norm models have.
    """
    nheads = OFFICIAL_NHEADS if nheads is None else nheads
    config = Config()
    _infer_backbone(state_dict, config)
    model = config.model
    model.backbone.dilation = bool(dilation)
    model.num_queries, hidden_dim = state_dict["query_embed.weight"].shape
    model.num_classes = state_dict["class_embed.weight"].shape[0] - 1
    t = model.transformer
    t.hidden_dim, t.nheads = hidden_dim, nheads
    t.enc_layers = _count_indices(state_dict, "transformer.encoder.layers.")
    t.dec_layers = _count_indices(state_dict, "transformer.decoder.layers.")
    t.dim_feedforward = state_dict["transformer.encoder.layers.0.linear1.weight"].shape[0]
    t.pre_norm = "transformer.encoder.norm.weight" in state_dict
    return config


def infer_official_deformable_config(
    state_dict: Mapping[str, Tensor],
    nheads: int | None = None,
    dilation: bool | None = None,
    num_queries: int | None = None,
) -> Config:
    """The :class:`Config` of an official Deformable DETR checkpoint, read from its keys and tensor shapes.

    Box refinement is recognised by the decoder's own box heads, two-stage by the proposal layers. The number of
    heads (which with the points makes the sampling layers' width) and the DC5 dilation cannot be seen in the
    weights and are given (:func:`load_official` gives those of the checkpoint's stored ``args``); ``None``: the
    official defaults 8, False, but where 8 heads would not give the official 4 sampling points, an
    :class:`AmbiguousHeadsError` asks for the number (the width fits other head counts too). So is a two-stage
    model's query count (``num_queries``, from the stored args too; official default 300), which its weights do not
    show either. Losses and matching costs are the official recipe's.
    """
    config = Config()
    config.loss = load_config(OFFICIAL_DEFORMABLE_PRESET).loss
    _infer_backbone(state_dict, config)
    model = config.model
    model.arch = "deformable_detr"
    model.backbone.dilation = bool(dilation)
    d = model.deformable
    d.two_stage = "transformer.enc_output.weight" in state_dict
    d.with_box_refine = any(k.startswith("transformer.decoder.bbox_embed.") for k in state_dict)
    d.num_feature_levels, hidden_dim = state_dict["transformer.level_embed"].shape
    model.num_queries = (num_queries or 300) if d.two_stage else state_dict["query_embed.weight"].shape[0]
    model.num_classes = state_dict["class_embed.0.weight"].shape[0]
    sampling = {"enc_n_points": "encoder.layers.0.self_attn", "dec_n_points": "decoder.layers.0.cross_attn"}
    widths = {
        key: state_dict[f"transformer.{site}.attention_weights.weight"].shape[0] for key, site in sampling.items()
    }
    if nheads is None:  # the official default, unless it gives other than the official points
        nheads = OFFICIAL_NHEADS
        levels = d.num_feature_levels
        if any(width != OFFICIAL_NHEADS * levels * OFFICIAL_POINTS for width in widths.values()):
            fits = [
                f"{counted(heads, 'head')} x {counted(width // (heads * levels), 'point')}"
                for heads in (16, 8, 4, 2, 1)
                if (width := widths["dec_n_points"]) % (heads * levels) == 0
            ]
            raise AmbiguousHeadsError(
                f"the number of attention heads is not in these weights nor in stored args: the sampling layers' "
                f"{widths['dec_n_points']} outputs (heads x {levels} levels x points) fit {', '.join(fits)}; pass the "
                "number the model was trained with (--nheads, nheads=...)"
            )
    t = model.transformer
    t.hidden_dim, t.nheads = hidden_dim, nheads
    t.enc_layers = _count_indices(state_dict, "transformer.encoder.layers.")
    t.dec_layers = _count_indices(state_dict, "transformer.decoder.layers.")
    t.dim_feedforward = state_dict["transformer.encoder.layers.0.linear1.weight"].shape[0]
    for points, attention in sampling.items():
        width = widths[points]
        if width % (nheads * d.num_feature_levels):
            raise CheckpointMismatchError(
                f"transformer.{attention}.attention_weights has {width} outputs, not a multiple of nheads={nheads} "
                f"x {d.num_feature_levels} levels; pass the number of heads the model was trained with (nheads=...)"
            )
        setattr(d, points, width // (nheads * d.num_feature_levels))
    return config


def load_official(
    path_or_state_dict: str | Path | Mapping[str, Tensor],
    arch: str = "detr",
    reader_options: Mapping[str, Any] | None = None,
    **overrides,
) -> tuple[nn.Module, Config]:
    """An official checkpoint of ``arch`` in a model built to fit it (eval mode), and that model's config.

    ``reader_options`` go to the arch's official reader (DETR: ``nheads``, ``dilation``, which the weights do not
    show); ``overrides`` set other model fields (e.g. ``pre_norm=True``, ``aux_loss=False``) on the inferred
    config: top-level :class:`ModelConfig`, :class:`TransformerConfig` or :class:`DeformableConfig` fields.
    """
    is_file = isinstance(path_or_state_dict, str | Path)
    checkpoint = load_checkpoint_file(path_or_state_dict) if is_file else path_or_state_dict
    state_dict, source = read_state_dict(checkpoint, str(path_or_state_dict) if is_file else "state dict")
    options = stored_reader_options(checkpoint, source, arch, reader_options or {})
    try:
        config = official_config(arch, state_dict, **options)
    except KeyError as missing:
        reason = f"it has no {missing.args[0]} weights"
        raise CheckpointMismatchError(_not_official(path_or_state_dict, source, arch, reason)) from None
    except AmbiguousHeadsError as err:
        raise AmbiguousHeadsError(f"{source}: {err}") from None
    for key, value in overrides.items():
        for section in (config.model, config.model.transformer, config.model.deformable):
            if hasattr(section, key):
                setattr(section, key, value)
                break
        else:
            raise TypeError(f"load_official got unknown override {key!r}")
    model = build_model(config)
    try:
        load_state_dict_checked(model, state_dict, source)
    except CheckpointMismatchError:
        if saved_config(path_or_state_dict) is None:
            raise
        raise CheckpointMismatchError(_not_official(path_or_state_dict, source, arch, "")) from None
    return model.eval(), config


def stored_reader_options(checkpoint: Mapping, source: str, arch: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The options of ``arch``'s official reader (``nheads``, ``dilation``) that ``given`` leaves unset (``None``) and
    the ``args`` an official training script stored in ``checkpoint`` beside the weights set; an error when one given
    differs from the stored one (the weights would load into another model, or not at all)."""
    options = {key: value for key, value in given.items() if value is not None}
    args = checkpoint.get("args")
    stored = vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, Mapping) else {}
    reader = inspect.signature(model_entry(arch).official_config).parameters
    for key in reader:
        if key not in stored or key == "state_dict":
            continue
        if key in options and options[key] != stored[key]:
            raise CheckpointMismatchError(
                f"{source} was trained with {key}={stored[key]!r} (its stored args), but {key}={options[key]!r} was "
                f"given: drop that option (--{key}) or give {stored[key]!r}"
            )
        options[key] = stored[key]
    return options


def saved_config(path_or_state_dict: str | Path | Mapping[str, Tensor]) -> Mapping[str, Any] | None:
    """The config a checkpoint file of this package carries (official ones carry none): None when there is none."""
    if not isinstance(path_or_state_dict, str | Path):
        return None
    data = load_checkpoint_file(path_or_state_dict)
    config = data.get("config") if isinstance(data, Mapping) else None
    return config if isinstance(config, Mapping) else None


def _not_official(path_or_state_dict: str | Path | Mapping[str, Tensor], source: str, arch: str, reason: str) -> str:
    """Why ``source`` cannot be read as an official ``arch`` checkpoint, and what to do instead."""
    if saved_config(path_or_state_dict) is not None:
        return (
            f"{source} is a checkpoint of this package (it carries its config), not an official one: load it "
            "without --official"
        )
    others = [name for name in available_models() if name != arch and model_entry(name).official_config]
    return (
        f"{source} is not an official {arch} checkpoint ({reason}); if it is another model's official checkpoint, "
        f"pass its arch (--arch), one of {others}"
    )


def official_arch(state_dict: Mapping[str, Tensor]) -> str | None:
    """The model (``model.arch``) whose official-checkpoint reader takes ``state_dict``; None when none does."""
    for name in available_models():
        if model_entry(name).official_config is None:
            continue
        try:
            official_config(name, state_dict)
        except AmbiguousHeadsError:  # its reader takes it, given the number of heads
            return name
        except (KeyError, CheckpointMismatchError):
            continue
        return name
    return None


def detr_from_official(
    path_or_state_dict: str | Path | Mapping[str, Tensor],
    *,
    nheads: int | None = None,
    dilation: bool | None = None,
    **overrides,
) -> nn.Module:
    """Load an official facebookresearch/detr checkpoint into a model built to fit it; returned in eval mode
    (``load_official`` with ``arch="detr"``; ``nheads`` / ``dilation`` unset: the checkpoint's stored args, else
    the official 8 heads, no dilation)."""
    return load_official(path_or_state_dict, "detr", {"nheads": nheads, "dilation": dilation}, **overrides)[0]


def deformable_detr_from_official(
    path_or_state_dict: str | Path | Mapping[str, Tensor],
    *,
    nheads: int | None = None,
    dilation: bool | None = None,
    **overrides,
) -> nn.Module:
    """Load an official fundamentalvision/Deformable-DETR checkpoint — plain, box refinement or two-stage, told
    apart by its keys, sizes read from its tensors — into a model built to fit it; returned in eval mode and called
    like the DETR model (``load_official`` with ``arch="deformable_detr"``; e.g. ``num_queries=...`` for a
    two-stage model trained with other than 300)."""
    options = {"nheads": nheads, "dilation": dilation}
    return load_official(path_or_state_dict, "deformable_detr", options, **overrides)[0]
