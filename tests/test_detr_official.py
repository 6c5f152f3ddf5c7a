"""Our DETR reproduces the official facebookresearch/detr model, loss, matcher and post-processing."""

from __future__ import annotations

import argparse

import pytest
import torch

from sparse_detector import build_criterion, build_model, detr_from_official, load_config
from sparse_detector.engine.trainer import initialise_from
from sparse_detector.models import PostProcess
from sparse_detector.models.weights import CheckpointMismatchError, infer_official_config

from .conftest import shared_path

TOL = 1e-5


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(shared_path("fixtures/detr_official_r18_small.pt"), weights_only=True)


@pytest.fixture(scope="module")
def official_model(fixture):
    return detr_from_official(fixture["model"], nheads=fixture["config"]["nheads"])


def _config_for(fixture):
    c = fixture["config"]
    overrides = [
        f"model.backbone.name={c['backbone']}",
        f"model.backbone.dilation={c['dilation']}",
        f"model.transformer.hidden_dim={c['hidden_dim']}",
        f"model.transformer.nheads={c['nheads']}",
        f"model.transformer.dim_feedforward={c['dim_feedforward']}",
        f"model.transformer.enc_layers={c['enc_layers']}",
        f"model.transformer.dec_layers={c['dec_layers']}",
        f"model.transformer.pre_norm={c['pre_norm']}",
        f"model.num_queries={c['num_queries']}",
        f"model.num_classes={c['num_classes']}",
        f"model.aux_loss={c['aux_loss']}",
        f"loss.eos_coef={c['eos_coef']}",
        f"loss.set_cost_class={c['set_cost_class']}",
        f"loss.set_cost_bbox={c['set_cost_bbox']}",
        f"loss.set_cost_giou={c['set_cost_giou']}",
        f"loss.bbox_loss_coef={c['bbox_loss_coef']}",
        f"loss.giou_loss_coef={c['giou_loss_coef']}",
    ]
    return load_config(None, overrides)


def test_config_built_model_has_official_key_set(fixture):
    model = build_model(_config_for(fixture))
    assert set(model.state_dict()) == set(fixture["model"])
    for key, value in model.state_dict().items():
        assert value.shape == fixture["model"][key].shape, key


def test_inferred_config_matches_fixture(fixture):
    c = fixture["config"]
    t = infer_official_config(fixture["model"], nheads=c["nheads"]).model
    assert t.backbone.name == c["backbone"]
    assert (t.num_queries, t.num_classes) == (c["num_queries"], c["num_classes"])
    assert (t.transformer.hidden_dim, t.transformer.dim_feedforward) == (
        c["hidden_dim"],
        c["dim_feedforward"],
    )
    assert (t.transformer.enc_layers, t.transformer.dec_layers) == (c["enc_layers"], c["dec_layers"])
    assert t.transformer.pre_norm == c["pre_norm"]


def test_outputs_match_official(fixture, official_model):
    with torch.no_grad():
        out = official_model(list(fixture["images"]))
    expected = fixture["outputs"]
    torch.testing.assert_close(out["pred_logits"], expected["pred_logits"], atol=TOL, rtol=0)
    torch.testing.assert_close(out["pred_boxes"], expected["pred_boxes"], atol=TOL, rtol=0)
    assert len(out["aux_outputs"]) == len(fixture["aux_outputs"])
    for ours, theirs in zip(out["aux_outputs"], fixture["aux_outputs"], strict=True):
        for key in ("pred_logits", "pred_boxes"):
            torch.testing.assert_close(ours[key], theirs[key], atol=TOL, rtol=0)


def _stored_head_average(attention_modules) -> list[torch.Tensor]:
    return [m.stored_weights.mean(dim=1) for m in attention_modules]


def test_attention_weights_match_official(fixture, official_model):
    transformer = official_model.transformer
    cross = [layer.multihead_attn for layer in transformer.decoder.layers]
    encoder = [layer.self_attn for layer in transformer.encoder.layers]
    for module in cross + encoder:
        module.store_weights = True
    try:
        with torch.no_grad():
            official_model(list(fixture["images"]))
        for ours, theirs in zip(_stored_head_average(cross), fixture["decoder_cross_attn_head_avg"], strict=True):
            torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)
        for ours, theirs in zip(_stored_head_average(encoder), fixture["encoder_self_attn_head_avg"], strict=True):
            torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)
        heads = cross[0].stored_weights
        assert heads.shape[1] == fixture["config"]["nheads"]  # per-head weights, not only the average
    finally:
        for module in cross + encoder:
            module.store_weights = False
            module.stored_weights = None


def test_postprocess_matches_official(fixture, official_model):
    with torch.no_grad():
        results = PostProcess()(official_model(list(fixture["images"])), fixture["orig_sizes"])
    for ours, theirs in zip(results, fixture["postprocessed"], strict=True):
        torch.testing.assert_close(ours["scores"], theirs["scores"], atol=TOL, rtol=0)
        assert torch.equal(ours["labels"], theirs["labels"])
        torch.testing.assert_close(ours["boxes"], theirs["boxes"], atol=1e-4, rtol=1e-6)


def test_matcher_and_losses_match_official(fixture, official_model):
    criterion = build_criterion(_config_for(fixture))
    with torch.no_grad():
        outputs = official_model(list(fixture["images"]))
        indices = criterion.matcher(outputs, fixture["targets"])
        losses = criterion(outputs, fixture["targets"])
    for (i, j), (ei, ej) in zip(indices, fixture["matcher_indices"], strict=True):
        assert torch.equal(i, ei) and torch.equal(j, ej)
    assert set(losses) == set(fixture["losses"])
    for key, value in fixture["losses"].items():
        torch.testing.assert_close(losses[key], value, atol=TOL, rtol=0, msg=key)


class _Payload:  # a class no checkpoint may carry
    pass


def test_a_checkpoint_of_the_official_training_script_loads(fixture, tmp_path):
    """Official main.py saves its argparse ``args`` beside the weights; that file loads (it failed under
    weights_only=True with 'Unsupported global: argparse.Namespace'), and --init-from reads it too."""
    path = tmp_path / "checkpoint.pth"
    args = argparse.Namespace(lr=1e-4, lr_backbone=1e-5, nheads=fixture["config"]["nheads"], lr_drop=200)
    torch.save({"model": fixture["model"], "optimizer": {}, "lr_scheduler": {}, "epoch": 3, "args": args}, path)
    model = detr_from_official(path, nheads=fixture["config"]["nheads"])
    with torch.no_grad():
        out = model(list(fixture["images"]))
    torch.testing.assert_close(out["pred_logits"], fixture["outputs"]["pred_logits"], atol=TOL, rtol=0)
    fresh = build_model(_config_for(fixture))
    assert initialise_from(fresh, path).loaded == len(fixture["model"])
    torch.save({"model": fixture["model"], "args": _Payload()}, path)
    with pytest.raises(CheckpointMismatchError, match="refused to load .*Re-save its state dict alone"):
        detr_from_official(path, nheads=fixture["config"]["nheads"])


def test_total_loss_weights_every_layer_as_the_official_recipe(fixture, official_model):
    """The optimised sum weights the auxiliary layers' terms like the last layer's, as official ``main.py`` builds its
    ``weight_dict`` (loss_ce 1, loss_bbox bbox_loss_coef, loss_giou giou_loss_coef, each copied per aux layer)."""
    c = fixture["config"]
    official = {"loss_ce": 1, "loss_bbox": c["bbox_loss_coef"], "loss_giou": c["giou_loss_coef"]}
    official.update({f"{k}_{i}": v for i in range(c["dec_layers"] - 1) for k, v in dict(official).items()})
    expected = sum(fixture["losses"][k] * w for k, w in official.items())
    criterion = build_criterion(_config_for(fixture))
    with torch.no_grad():
        losses = criterion(official_model(list(fixture["images"])), fixture["targets"])
    assert criterion.weight_dict == official
    torch.testing.assert_close(criterion.total_loss(losses), expected, atol=TOL, rtol=0)


def test_paibb_of_the_official_maps_in_a_padded_batch_equals_the_aggregators(fixture, official_model):
    """PAIBB as analyze reports it (head-averaged, per decoder layer, over the matched pairs), from our model's
    records of the official batch of two padded images, equals PAIBB read by brute force from the maps the official
    code computed: each cell of stride 32 counted with the share of its pixels inside the box."""
    from sparse_detector.analysis import MetricAggregator, record_attention

    images = fixture["images"]
    padded_h, padded_w = (max(image.shape[i] for image in images) // 32 for i in (1, 2))
    targets = [
        {**target, "size": torch.tensor(image.shape[1:]), "orig_size": orig}
        for target, image, orig in zip(fixture["targets"], images, fixture["orig_sizes"], strict=True)
    ]
    expected = []
    for official in fixture["decoder_cross_attn_head_avg"]:
        values = []
        for b, (queries, truths) in enumerate(fixture["matcher_indices"]):
            height, width = images[b].shape[1:]
            for query, truth in zip(queries.tolist(), truths.tolist(), strict=True):
                cx, cy, w, h = (float(v) for v in fixture["targets"][b]["boxes"][truth])
                x0, x1, y0, y1 = (
                    (cx - w / 2) * width,
                    (cx + w / 2) * width,
                    (cy - h / 2) * height,
                    (cy + h / 2) * height,
                )
                grid = official[b, query].double().reshape(padded_h, padded_w)
                inside = 0.0
                for i in range(padded_h):
                    for j in range(padded_w):
                        across = max(0.0, min(x1, (j + 1) * 32, width) - max(x0, j * 32))
                        down = max(0.0, min(y1, (i + 1) * 32, height) - max(y0, i * 32))
                        inside += float(grid[i, j]) * across * down / 32**2
                values.append(inside)
        expected.append(sum(values) / len(values))
    with torch.no_grad():
        _, maps = record_attention(official_model, list(images), sites=["decoder_cross"])
    aggregator = MetricAggregator()
    aggregator.update(maps, targets, fixture["matcher_indices"])
    stats = aggregator.result()["sites"]["decoder_cross"]["paibb"]["overall"]["per_layer"]
    assert stats["count"] == [3, 3] and min(expected) > 0.05, expected
    assert stats["mean"] == pytest.approx(expected, abs=1e-6)
