"""DETR model behaviour beyond the official fixture: inputs, training, checkpoints, export, backbone options."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from sparse_detector import build_criterion, build_model, detr_from_official, load_config
from sparse_detector.data.batching import pad_images
from sparse_detector.models.backbone import fold_frozen_batch_norms
from sparse_detector.models.weights import CheckpointMismatchError, load_state_dict_checked

from .conftest import TINY_MODEL


def tiny_config(*extra: str):
    return load_config(None, [*TINY_MODEL, *extra])


def test_accepts_list_padded_batch_and_tensor():
    model = build_model(tiny_config()).eval()
    images = [torch.rand(3, 64, 96), torch.rand(3, 80, 48)]
    with torch.no_grad():
        from_list = model(images)
        from_batch = model(pad_images(images))
        padded = pad_images(images)
        from_tensor_and_mask = model(padded.tensors, padded.mask)
        single = model(torch.rand(2, 3, 64, 64))
    torch.testing.assert_close(from_list["pred_logits"], from_batch["pred_logits"])
    torch.testing.assert_close(from_list["pred_boxes"], from_tensor_and_mask["pred_boxes"])
    assert single["pred_logits"].shape == (2, 6, 4)
    assert single["pred_boxes"].shape == (2, 6, 4)
    assert len(single["aux_outputs"]) == 1
    assert ((single["pred_boxes"] >= 0) & (single["pred_boxes"] <= 1)).all()


@pytest.mark.parametrize("arch", ["detr", "deformable_detr"])
def test_images_the_model_cannot_take_get_a_clear_error(arch: str):
    """Channels-last, grayscale, uint8 or float64 images failed deep in the backbone ('expected input[1, 64, 64, 3]
    to have 3 channels', 'expected scalar type Byte but found Float')."""
    extra = ["model.deformable.num_feature_levels=2", "model.num_queries=6"] if arch == "deformable_detr" else []
    model = build_model(tiny_config(f"model.arch={arch}", *extra)).eval()
    with pytest.raises(ValueError, match=r"channels first.*got \(2, 64, 48, 3\) \(channels last\? use image.permute"):
        model(torch.rand(2, 64, 48, 3))
    with pytest.raises(ValueError, match=r"expected RGB images channels first.*got \(1, 1, 64, 48\)"):
        model([torch.rand(1, 64, 48)])
    for dtype in (torch.uint8, torch.float64):
        with pytest.raises(TypeError, match=f"images are {dtype} but the model computes in torch.float32"):
            model([torch.zeros(3, 64, 48, dtype=dtype)])


def _targets():
    return [
        {"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},  # an image with no objects
    ]


def test_targets_the_criterion_cannot_read_get_a_clear_error():
    """A missing key, float labels, a label >= num_classes or a target list of the wrong length failed with
    KeyError 'labels', IndexError or 'torch.cat(): expected a non-empty list of Tensors'."""
    config = tiny_config()
    model, criterion = build_model(config).eval(), build_criterion(config)
    with torch.no_grad():
        outputs = model([torch.rand(3, 64, 64), torch.rand(3, 64, 64)])
    good = _targets()
    cases = {
        "got 1 target for 2 images": good[:1],
        r"target 1 has no \['labels'\]": [good[0], {"boxes": torch.zeros(0, 4)}],
        r"target 0: expected integer 'labels'.*torch.float32": [
            {**good[0], "labels": torch.tensor([0.0, 2.0])},
            good[1],
        ],
        r"target 0: expected .*boxes \(2, 2\)": [{**good[0], "boxes": torch.rand(2, 2)}, good[1]],
        r"target 0: labels must be in \[0, 3\) \(model.num_classes\), got \[0, 4\]": [
            {**good[0], "labels": torch.tensor([0, 4])},
            good[1],
        ],
    }
    for message, targets in cases.items():
        with pytest.raises(ValueError, match=message):
            criterion(outputs, targets)
    assert torch.isfinite(criterion.total_loss(criterion(outputs, good)))


def test_one_step_reduces_loss_and_empty_image_trains():
    config = tiny_config()
    model = build_model(config).train()
    criterion = build_criterion(config)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = _targets()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)

    def loss_value() -> torch.Tensor:
        return criterion.total_loss(criterion(model(images), targets))

    first = loss_value()
    assert torch.isfinite(first)
    optimizer.zero_grad()
    first.backward()
    grads = [p.grad for p in params]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.query_embed.weight.grad.abs().sum() > 0
    assert model.backbone[0].body.layer4[0].conv1.weight.grad.abs().sum() > 0
    optimizer.step()
    with torch.no_grad():
        assert loss_value() < first


def test_all_images_empty_trains():
    config = tiny_config()
    model = build_model(config).train()
    criterion = build_criterion(config)
    targets = [_targets()[1], _targets()[1]]
    losses = criterion(model(torch.rand(2, 3, 64, 64)), targets)
    assert losses["loss_bbox"] == 0 and losses["loss_giou"] == 0
    criterion.total_loss(losses).backward()


def test_frozen_stages_follow_config():
    model = build_model(tiny_config())
    body = model.backbone[0].body
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad
    frozen = build_model(tiny_config("model.backbone.lr=0"))
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    scratch = build_model(
        tiny_config(
            "model.backbone.norm=batch_norm",
            "model.backbone.return_layer=layer3",
            "model.backbone.trainable_layers=[stem,layer1,layer2,layer3]",
        )
    )
    assert all(p.requires_grad for p in scratch.backbone.parameters())
    assert scratch.input_proj.in_channels == 256
    assert not hasattr(scratch.backbone[0].body, "layer4")
    out = scratch(torch.rand(1, 3, 64, 64))
    assert out["pred_boxes"].shape == (1, 6, 4)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_frozen_batch_norm_folded_into_convolutions_is_the_unfolded_network(name: str):
    """Same state-dict keys, outputs and weight gradients (up to fp32 rounding, relative to the largest) as
    convolution then BatchNorm."""
    torch.manual_seed(0)
    reference = torchvision.models.get_model(name, norm_layer=torchvision.ops.misc.FrozenBatchNorm2d)
    for norm in (m for m in reference.modules() if isinstance(m, torchvision.ops.misc.FrozenBatchNorm2d)):
        norm.weight.normal_(1, 0.3), norm.bias.normal_(0, 0.3), norm.running_mean.normal_(0, 0.3)
        norm.running_var.uniform_(0.5, 2)
    folded = torchvision.models.get_model(name, norm_layer=torchvision.ops.misc.FrozenBatchNorm2d)
    fold_frozen_batch_norms(folded)
    folded.load_state_dict(reference.state_dict())
    assert list(folded.state_dict()) == list(reference.state_dict())
    assert type(folded.layer1[0].conv1).__name__ == "ConvWithFrozenBatchNorm"
    images = torch.randn(2, 3, 64, 64)
    expected, got = reference(images), folded(images)
    # ResNet-50 with one thread: 1.09e-6 at most (fp32 rounding over 53 convolutions; the order of the sums
    # depends on the thread count)
    torch.testing.assert_close(got / expected.abs().max(), expected / expected.abs().max(), rtol=0, atol=2e-6)
    expected.square().sum().backward()
    got.square().sum().backward()
    for (param_name, want), have in zip(reference.named_parameters(), folded.parameters(), strict=True):
        scale = want.grad.abs().max()
        torch.testing.assert_close(have.grad / scale, want.grad / scale, rtol=0, atol=2e-6, msg=param_name)


def test_backbone_config_errors():
    with pytest.raises(ValueError, match="dilation"):
        build_model(tiny_config("model.backbone.dilation=true"))
    with pytest.raises(ValueError, match="resnet"):
        build_model(tiny_config("model.backbone.name=vgg16"))
    with pytest.raises(ValueError, match="trainable_layers"):
        build_model(tiny_config("model.backbone.trainable_layers=[layer9]"))


def test_dc5_dilation_halves_stride():
    config = tiny_config("model.backbone.name=resnet50", "model.backbone.dilation=true")
    model = build_model(config).eval()
    features, _ = model.backbone(pad_images([torch.rand(3, 64, 64)]))
    assert features.tensors.shape[-2:] == (4, 4)  # stride 16 instead of 32


def test_learned_position_embedding_round_trips_through_official_loader():
    model = build_model(tiny_config("model.position_embedding=learned"))
    assert "backbone.1.row_embed.weight" in model.state_dict()
    reloaded = detr_from_official(model.state_dict(), nheads=4)
    assert reloaded.backbone[1].row_embed.weight.shape == model.backbone[1].row_embed.weight.shape
    assert not reloaded.training


def test_official_loader_reads_checkpoint_files(tmp_path: Path):
    model = build_model(tiny_config("model.transformer.pre_norm=true"))
    path = tmp_path / "detr.pth"
    torch.save({"model": model.state_dict(), "args": {"lr": 1e-4}}, path)
    reloaded = detr_from_official(path, nheads=4)
    assert reloaded.transformer.encoder.norm is not None  # pre-norm recognised from the weights
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images)["pred_boxes"], model.eval()(images)["pred_boxes"])
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    detr_from_official(tmp_path / "bare.pth", nheads=4)


def test_mismatched_checkpoint_names_keys_and_shapes():
    model = build_model(tiny_config())
    state = build_model(tiny_config("model.num_classes=5")).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["query_embed.weight"]
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_dict_checked(model, state, "my.pth")
    message = str(err.value)
    assert "my.pth" in message and "query_embed.weight" in message and "extra.weight" in message
    assert "class_embed.weight: checkpoint (6, 32), model (4, 32)" in message


def test_pretrained_backbone_loads_through_torchvision_weights_api(tmp_path: Path, monkeypatch):
    """A weights file placed in the torch hub cache is what torchvision loads (no download is attempted)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.resnet18()
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / url.rsplit("/", 1)[1])
    model = build_model(tiny_config("model.backbone.pretrained=true"))
    torch.testing.assert_close(model.backbone[0].body.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    torch.testing.assert_close(model.backbone[0].body.bn1.running_var, reference.bn1.running_var)


def test_pretrained_backbone_offline_gives_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(RuntimeError, match="pretrained=false"):
        build_model(tiny_config("model.backbone.pretrained=true"))


def test_torch_export():
    """The model exports with torch.export (image tensor + padding mask in, output dict out)."""
    model = build_model(tiny_config()).eval()
    padded = pad_images([torch.rand(3, 64, 64), torch.rand(3, 48, 64)])
    exported = torch.export.export(model, (padded.tensors, padded.mask))
    with torch.no_grad():
        expected = model(padded.tensors, padded.mask)
        got = exported.module()(padded.tensors, padded.mask)
    torch.testing.assert_close(got["pred_logits"], expected["pred_logits"])
    torch.testing.assert_close(got["pred_boxes"], expected["pred_boxes"])
