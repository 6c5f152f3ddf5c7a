"""DETR checkpoints in the Hugging Face transformers format load as official ones and compute what transformers does.

The reference is ``transformers.DetrForObjectDetection`` itself: a small random one is saved with ``save_pretrained``
and read back here (no hub download: HF_HUB_OFFLINE=1, no model names). Skipped without transformers and timm
(the ``dev`` extra installs them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sparse_detector import build_model, detr_from_official, load_config
from sparse_detector.cli import main
from sparse_detector.data.batching import pad_images
from sparse_detector.data.transforms import Compose, Normalize, ToTensor, image_tensor
from sparse_detector.engine.inference import load_trained_model
from sparse_detector.engine.trainer import initialise_from
from sparse_detector.models.huggingface import HuggingFaceCheckpointError, read_huggingface_checkpoint

TOL = 1e-5
CLASS_NAMES = {0: "cat", 1: "dog", 2: "N/A", 3: "bird"}
SIZES = {"d_model": 32, "encoder_attention_heads": 4, "decoder_attention_heads": 4}
SIZES |= {"encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "encoder_layers": 2, "decoder_layers": 2, "num_queries": 5}


@pytest.fixture(autouse=True)
def _offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _transformers():
    pytest.importorskip("timm", reason="transformers' DETR needs timm for its ResNet backbone (the dev extra)")
    return pytest.importorskip("transformers", reason="the reference DETR is transformers' (the dev extra)")


def _hf_detr(folder: Path, backbone: str = "resnet18", **settings):
    """A random transformers DETR (timm backbone, random batch-norm statistics), eval mode, saved to ``folder``."""
    transformers = _transformers()
    config = transformers.DetrConfig(
        use_timm_backbone=True,
        backbone=backbone,
        use_pretrained_backbone=False,
        id2label=CLASS_NAMES,
        **SIZES,
        **settings,
    )
    model = transformers.DetrForObjectDetection(config).eval()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    model.save_pretrained(folder)
    return model


def _as_bin(folder: Path) -> None:
    """Replace ``model.safetensors`` by ``pytorch_model.bin``, as transformers 4 wrote it (``torch.save`` of the
    state dict; transformers 5 writes safetensors only)."""
    weights = folder / "model.safetensors"
    torch.save(load_file(weights), folder / "pytorch_model.bin")
    weights.unlink()


def _images() -> list[torch.Tensor]:
    return [torch.randn(3, 64, 80), torch.randn(3, 48, 96)]  # different sizes: padded into one batch


@pytest.mark.parametrize(
    ("backbone", "settings", "weights"),
    [
        ("resnet18", {}, "model.safetensors"),
        ("resnet18", {"position_embedding_type": "learned"}, "pytorch_model.bin"),
        ("resnet50", {"dilation": True}, "model.safetensors"),
    ],
)
def test_outputs_match_transformers(tmp_path: Path, backbone: str, settings: dict, weights: str) -> None:
    reference = _hf_detr(tmp_path, backbone, **settings)
    if weights == "pytorch_model.bin":
        _as_bin(tmp_path)
    batch = pad_images(_images())
    with torch.no_grad():
        expected = reference(pixel_values=batch.tensors, pixel_mask=(~batch.mask).long())
    for source in (tmp_path, tmp_path / weights):  # the model folder, or its weights file
        model = detr_from_official(source)
        assert model.transformer.encoder.layers[0].self_attn.num_heads == 4  # config.json's, not the default 8
        with torch.no_grad():
            out = model(batch)
        torch.testing.assert_close(out["pred_logits"], expected.logits, atol=TOL, rtol=0)
        torch.testing.assert_close(out["pred_boxes"], expected.pred_boxes, atol=TOL, rtol=0)


def test_image_normalisation_and_padding_mask_are_those_of_transformers() -> None:
    """The same pixels go into both models: transformers' image processor normalises and pads as our transforms do,
    and its pixel_mask (1 = image) is our padding mask (True = padding) inverted; its resize sizes are our
    evaluation defaults."""
    transformers = _transformers()
    processor = transformers.DetrImageProcessor(do_resize=False)
    generator = torch.Generator().manual_seed(0)
    pictures = [
        Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8).numpy())
        for h, w in ((30, 50), (44, 20))
    ]
    theirs = processor(images=pictures, return_tensors="pt")
    ours = pad_images([image_tensor(Compose([ToTensor(), Normalize()]), picture) for picture in pictures])
    torch.testing.assert_close(theirs["pixel_values"], ours.tensors, atol=TOL, rtol=0)
    assert torch.equal(theirs["pixel_mask"].bool(), ~ours.mask)
    data = load_config(None).data
    size = dict(processor.size)  # a dict in transformers 4, a SizeDict in 5
    assert (size["shortest_edge"], size["longest_edge"]) == (data.val_size, data.max_size)


def test_class_names_name_the_predictions(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "detr-hf"
    _hf_detr(folder)
    loaded = load_trained_model(folder, official=True)
    assert loaded.label_map.category_names == list(CLASS_NAMES.values())
    assert loaded.source == folder / "model.safetensors"
    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (90, 140, 200)).save(image)
    argv = ["predict", "--official", "--checkpoint", str(folder), "--device", "cpu", "--threshold", "0"]
    assert main([*argv, "--output", str(tmp_path / "out"), str(image)]) == 0
    (predicted,) = json.loads((tmp_path / "out" / "predictions.json").read_text())
    names = {d["category_id"]: d["category"] for d in predicted["detections"]}
    assert len(predicted["detections"]) == SIZES["num_queries"]
    assert all(CLASS_NAMES[i] == name for i, name in names.items())
    assert main(["predict", "--checkpoint", str(folder), "--output", str(tmp_path / "o2"), str(image)]) == 2
    assert "has no 'config': for an official checkpoint pass --official (for a Hugging Face" in capsys.readouterr().err


def test_init_from_a_huggingface_checkpoint_keeps_all_but_the_class_head(tmp_path: Path) -> None:
    _hf_detr(tmp_path)
    official = detr_from_official(tmp_path).state_dict()
    sizes = ["model.backbone.name=resnet18", "model.transformer.hidden_dim=32", "model.transformer.nheads=4"]
    sizes += ["model.transformer.dim_feedforward=64", "model.transformer.enc_layers=2"]
    sizes += ["model.transformer.dec_layers=2", "model.num_queries=5", "model.num_classes=2"]
    config = load_config(None, sizes)
    model = build_model(config)
    assert list(initialise_from(model, tmp_path, config).reinitialised) == ["class_embed.weight", "class_embed.bias"]
    for key, value in model.state_dict().items():
        if not key.startswith("class_embed."):
            assert torch.equal(value, official[key]), key


def test_a_transformers_resnet_backbone_is_refused_naming_what_is_supported(tmp_path: Path) -> None:
    transformers = _transformers()
    backbone = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1])
    config = transformers.DetrConfig(
        use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, **SIZES
    )
    transformers.DetrForObjectDetection(config).save_pretrained(tmp_path)
    with pytest.raises(HuggingFaceCheckpointError, match=r"its backbone is a transformers resnet .*use_timm_backbone"):
        detr_from_official(tmp_path)


def _write_config(folder: Path, **config) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_other_architectures_and_missing_files_are_errors_naming_them(tmp_path: Path) -> None:
    """No transformers needed: config.json alone tells the architecture; missing files are named."""
    deformable = _write_config(tmp_path / "deformable", model_type="deformable_detr")
    (deformable / "model.safetensors").write_bytes(b"")
    with pytest.raises(HuggingFaceCheckpointError, match=r"a transformers deformable_detr model.*supported: DetrFor"):
        detr_from_official(deformable)
    gelu = _write_config(tmp_path / "gelu", model_type="detr", activation_function="gelu")
    (gelu / "model.safetensors").write_bytes(b"")
    with pytest.raises(HuggingFaceCheckpointError, match=r"sets activation_function='gelu'.*takes 'relu' only"):
        detr_from_official(gelu)
    effnet = _write_config(tmp_path / "effnet", model_type="detr", backbone="efficientnet_b0")
    (effnet / "model.safetensors").write_bytes(b"")
    with pytest.raises(HuggingFaceCheckpointError, match=r"its backbone is timm's 'efficientnet_b0'; supported: "):
        detr_from_official(effnet)
    heads = _write_config(tmp_path / "heads", model_type="detr", decoder_attention_heads=4)
    (heads / "model.safetensors").write_bytes(b"")
    with pytest.raises(HuggingFaceCheckpointError, match=r"decoder_attention_heads=4; .* takes 8 only \(encoder_"):
        detr_from_official(heads)
    no_weights = _write_config(tmp_path / "no-weights", model_type="detr")
    with pytest.raises(HuggingFaceCheckpointError, match=r"holds config.json but none of model.safetensors, pyto"):
        detr_from_official(no_weights)
    alone = tmp_path / "alone" / "model.safetensors"
    alone.parent.mkdir()
    alone.write_bytes(b"")
    with pytest.raises(HuggingFaceCheckpointError, match=r"needs the model's config.json beside it"):
        read_huggingface_checkpoint(alone)
    truncated = _write_config(tmp_path / "truncated", model_type="detr")
    (truncated / "model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(HuggingFaceCheckpointError, match=r"cannot read .*model.safetensors .*download it again"):
        detr_from_official(truncated)


def test_the_cli_shows_a_huggingface_error_without_traceback(tmp_path: Path, capsys) -> None:
    folder = _write_config(tmp_path / "seg", model_type="detr", architectures=["DetrForSegmentation"])
    (folder / "model.safetensors").write_bytes(b"")
    assert main(["evaluate", "--official", "--checkpoint", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "describes a transformers detr model (DetrForSegmentation); supported: DetrForObjectDetection" in err
    assert "Traceback" not in err
