"""The attention recorder on a small real DETR (asking the model for its sites), and padding invariance of the
metrics of its maps."""

from __future__ import annotations

import pytest
import torch

from sparse_detector import build_criterion, build_model, load_config
from sparse_detector.analysis import AttentionRecorder, MetricAggregator, compute_paibb, record_attention, site_metrics
from sparse_detector.attention.base import KeyGrid
from sparse_detector.attention.registry import available_activations
from sparse_detector.attention.sites import GridRecord, QueriesRecord, model_sites
from sparse_detector.data.batching import pad_images
from sparse_detector.models.backbone import stage_stride
from sparse_detector.report import result_rows

from .conftest import TINY_MODEL

IMAGES = [torch.rand(3, 64, 96), torch.rand(3, 128, 160)]  # feature grids 2 x 3 and 4 x 5


def tiny_model(*extra: str) -> torch.nn.Module:
    return build_model(load_config(None, [*TINY_MODEL, *extra])).eval()


def site_modules(model: torch.nn.Module, site: str) -> tuple:
    return model_sites(model)[site].modules


def all_modules(model: torch.nn.Module) -> list:
    return [m for site in model.attention_sites() for m in site.modules]


def assert_restored(model: torch.nn.Module) -> None:
    assert not any(m.recording for m in all_modules(model))


@torch.no_grad()
def test_a_site_without_layers_is_not_recorded_and_naming_it_is_an_error():
    """A DETR of 0 encoder layers: analyze failed with an IndexError on the encoder's empty list of records."""
    model = tiny_model("model.transformer.enc_layers=0")
    _, maps = record_attention(model, IMAGES)
    assert set(maps) == {"decoder_self", "decoder_cross"}
    with pytest.raises(ValueError, match=r"^attention site 'encoder_self' has no layers in this model; its sites wi"):
        AttentionRecorder(model, sites=["encoder_self"])


@torch.no_grad()
def test_records_only_requested_sites_with_right_shapes():
    model = tiny_model()
    with AttentionRecorder(model, sites=["decoder_cross"]) as recorder:
        assert not any(m.recording for m in site_modules(model, "encoder_self") + site_modules(model, "decoder_self"))
        assert all(m.recording for m in site_modules(model, "decoder_cross"))
        model(IMAGES)
    assert_restored(model)
    assert set(recorder.maps) == {"decoder_cross"}
    assert all(isinstance(record, GridRecord) for record in recorder.records["decoder_cross"])
    maps = recorder.maps["decoder_cross"]
    mask = pad_images(IMAGES).mask[:, ::32, ::32]  # the backbone's nearest downsampling at stride 32
    assert maps.padded_hw == (4, 5)
    assert maps.grid_hw.tolist() == KeyGrid.from_mask(mask).valid_hw.tolist() == [[2, 3], [4, 5]]
    assert torch.equal(maps.key_padding_mask, mask.flatten(1))
    assert maps.query_padding_mask is None and maps.dense
    assert [tuple(w.shape) for w in maps.weights] == [(2, 4, 6, 20)] * 2
    assert all(not w.requires_grad for w in maps.weights)


@torch.no_grad()
def test_all_sites_and_nothing_recorded_after_exit():
    model = tiny_model()
    plain = model(IMAGES)
    with AttentionRecorder(model) as recorder:
        recorded = model(IMAGES)
    torch.testing.assert_close(recorded["pred_boxes"], plain["pred_boxes"])  # recording changes no output
    assert list(recorder.maps) == [site.name for site in model.attention_sites()]
    assert all(isinstance(record, QueriesRecord) for record in recorder.records["decoder_self"])
    encoder, decoder_self = recorder.maps["encoder_self"], recorder.maps["decoder_self"]
    assert [tuple(w.shape) for w in encoder.weights] == [(2, 4, 20, 20)]
    assert torch.equal(encoder.query_padding_mask, encoder.key_padding_mask)
    assert [tuple(w.shape) for w in decoder_self.weights] == [(2, 4, 6, 6)] * 2
    assert decoder_self.key_padding_mask is None and decoder_self.grid_hw is None
    before = [w.clone() for w in recorder.maps["decoder_cross"].weights]
    model([torch.rand(3, 96, 96)])
    assert_restored(model)
    assert all(torch.equal(a, b) for a, b in zip(before, recorder.maps["decoder_cross"].weights, strict=True))


def test_restores_on_exception():
    model = tiny_model()
    with pytest.raises(RuntimeError, match="boom"), AttentionRecorder(model):
        with torch.no_grad():
            model(IMAGES)
        raise RuntimeError("boom")
    assert_restored(model)
    with pytest.raises(ValueError, match=r"unknown attention site 'decoder_everything'.*encoder_self"):
        AttentionRecorder(model, sites=["decoder_everything"])
    with pytest.raises(ValueError, match=r"unknown attention site 'decoder_crosss' \(did you mean 'decoder_cross'\?\)"):
        AttentionRecorder(model, sites=["decoder_crosss"])  # analyze --sites: a typo gets the closest site


@torch.no_grad()
def test_record_attention_fills_the_typed_output_and_keeps_the_fused_path_off_otherwise(monkeypatch):
    model = tiny_model()
    outputs, maps = record_attention(model, IMAGES, sites=["decoder_self"])
    assert list(outputs.attention) == ["decoder_self"] == list(maps)
    assert len(outputs.attention["decoder_self"]) == 2 and "attention" in outputs
    assert "attention" not in model(IMAGES)  # not asked for: not there
    calls = []
    monkeypatch.setattr(model.transformer.encoder.layers[0].self_attn.activation, "forward", calls.append)
    model(IMAGES)  # softmax without recording takes the fused kernel, never the activation module
    assert calls == []


@pytest.mark.parametrize("activation", available_activations())
@torch.no_grad()
def test_records_every_activation(activation: str):
    sites = ("encoder_self", "decoder_cross")  # the grid sites, which every activation (TVMax too) supports
    model = tiny_model(*(f"model.attention.{site}.activation={activation}" for site in sites))
    with AttentionRecorder(model, sites=sites) as recorder:
        model(IMAGES)
    assert_restored(model)
    for site in sites:
        maps = recorder.maps[site]
        assert maps.dense == (activation == "softmax")
        for weights in maps.weights:
            padded = maps.key_padding_mask[:, None, None, :].expand_as(weights)
            assert (weights[padded] == 0).all()
            torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


@torch.no_grad()
def test_metrics_of_real_maps_identical_alone_and_in_padded_batch():
    # DETR's conv backbone is not exactly padding-invariant (features near the bottom/right border of an image
    # change when it is padded), so this checks the METRICS, not the model: the maps recorded for a padded batch
    # are read once with the batch mask, and once with the padding cropped out (the image's own valid keys and
    # queries only, as if it had been run alone). Both must agree; test_analysis_paibb.py checks the same with
    # maps constructed directly.
    config = load_config(None, TINY_MODEL)
    model = build_model(config).eval()
    with AttentionRecorder(model) as recorder:
        outputs = model(IMAGES)
    targets = [
        {"boxes": torch.tensor([[0.3, 0.4, 0.5, 0.5], [0.8, 0.7, 0.3, 0.5]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[0.5, 0.5, 0.6, 0.4]]), "labels": torch.tensor([1])},
    ]
    for target, image in zip(targets, IMAGES, strict=True):
        target["orig_size"] = torch.tensor(image.shape[1:])
    indices = build_criterion(config).matcher(outputs, targets)
    small = {site: maps.image(0) for site, maps in recorder.maps.items()}
    assert small["decoder_cross"].padded_hw == (2, 3)
    for site, maps in recorder.maps.items():
        in_batch, alone = site_metrics(maps, 0.0), site_metrics(small[site], 0.0)
        queries = (~maps.query_padding_mask[0]).nonzero().squeeze(1) if site == "encoder_self" else None
        for name, values in alone.items():
            own = in_batch[name][:, :1] if queries is None else in_batch[name][:, :1].index_select(-1, queries)
            torch.testing.assert_close(own.double(), values.double(), rtol=0, atol=1e-6)
    paibb_batch = compute_paibb(recorder.maps["decoder_cross"], targets, indices)
    paibb_alone = compute_paibb(small["decoder_cross"], targets[:1], indices[:1])
    torch.testing.assert_close(paibb_batch.values[:, :2], paibb_alone.values, rtol=0, atol=1e-6)
    together, separate = MetricAggregator(), MetricAggregator()
    together.update(recorder.maps, targets, indices)
    separate.update(small, targets[:1], indices[:1])
    separate.update({site: maps.image(1) for site, maps in recorder.maps.items()}, targets[1:], indices[1:])
    for row, reference in zip(result_rows(together.result()), result_rows(separate.result()), strict=True):
        assert (row["site"], row["metric"], row["count"]) == (
            reference["site"],
            reference["metric"],
            reference["count"],
        )
        if row["count"]:
            assert row["mean"] == pytest.approx(reference["mean"], abs=1e-6)
            assert row["std"] == pytest.approx(reference["std"], abs=1e-6)


@torch.no_grad()
def test_declared_stride_matches_the_grid_the_model_makes():
    # PAIBB places boxes in pixels through the sites' key_strides: they must be the backbone's real stride.
    model = tiny_model()
    strides = {site.name: site.key_strides for site in model.attention_sites()}
    assert strides == {"encoder_self": (32,), "decoder_self": None, "decoder_cross": (32,)}
    _, maps = record_attention(model, [torch.rand(3, 75, 100)])
    assert maps["decoder_cross"].padded_hw == (3, 4) and maps["decoder_cross"].key_strides == (32,)  # ceil(side/32)
    _, maps = record_attention(tiny_model("model.backbone.return_layer=layer3"), [torch.rand(3, 75, 100)])
    assert maps["decoder_cross"].padded_hw == (5, 7) and maps["decoder_cross"].key_strides == (16,)
    assert stage_stride("layer4", dilation=True) == 16 and stage_stride("layer1") == 4
