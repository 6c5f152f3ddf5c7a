"""A new detector plugs into the attention-site contract without changes to analysis/, engine/ or cli/.

The detector below is registered here, in the test file: a strided-convolution "backbone" and object queries that
attend over its feature grid at one site of its own. Built from a config by ``model.arch``, it trains, records its
maps and is analysed (Gini, zeros ratio, PAIBB) through the library and through ``sparse-detector analyze``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparse_detector import build_criterion, build_model
from sparse_detector.analysis import MetricAggregator, gini, site_metrics, zeros_ratio
from sparse_detector.attention.base import KeyGrid
from sparse_detector.attention.multihead import MultiheadAttention
from sparse_detector.attention.sites import AttentionSite, GridRecord
from sparse_detector.cli import main
from sparse_detector.config import Config, ConfigError, config_from_dict, load_config
from sparse_detector.data.batching import PaddedBatch, as_padded_batch
from sparse_detector.data.build import build_dataset, build_loader
from sparse_detector.engine.analyze import analyze
from sparse_detector.engine.inference import record_run_batch
from sparse_detector.engine.trainer import Trainer
from sparse_detector.models import DetectionOutput, available_models, build_activation, register_model

from .conftest import epoch_records, shapes_config

SITE = "queries_over_cells"  # this model's only attention site


class CellDetector(nn.Module):
    """Object queries attending over a 16-px-cell feature grid; one linear head each for classes and boxes."""

    def __init__(self, num_classes: int, num_queries: int, hidden: int, heads: int, site_map: nn.Module) -> None:
        super().__init__()
        self.cells = nn.Conv2d(3, hidden, kernel_size=16, stride=16)
        self.query_embed = nn.Embedding(num_queries, hidden)
        self.attend = MultiheadAttention(hidden, heads, activation=site_map)
        self.class_embed = nn.Linear(hidden, num_classes + 1)
        self.bbox_embed = nn.Linear(hidden, 4)

    def attention_sites(self) -> tuple[AttentionSite, ...]:
        return (AttentionSite(SITE, keys="grid", queries="queries", modules=(self.attend,)),)

    def forward(self, images: PaddedBatch | Sequence[Tensor]) -> DetectionOutput:
        batch = as_padded_batch(images)
        features = self.cells(batch.tensors)
        mask = F.interpolate(batch.mask[None].float(), size=features.shape[-2:])[0].bool()
        memory = features.flatten(2).transpose(1, 2)
        queries = self.query_embed.weight.expand(len(memory), -1, -1)
        hs = self.attend(queries, memory, memory, mask.flatten(1), KeyGrid.from_mask(mask))[0]
        return DetectionOutput(self.class_embed(hs), self.bbox_embed(hs).sigmoid())


@register_model("cell_detector")
def build_cell_detector(config: Config) -> CellDetector:
    model = config.model
    heads = model.transformer.nheads
    site_map = build_activation(model.attention, SITE, heads)
    return CellDetector(model.num_classes, model.num_queries, model.transformer.hidden_dim, heads, site_map)


CELL_DETECTOR = ["model.arch=cell_detector", "model.aux_loss=false", f"model.attention.{SITE}.activation=sparsemax"]


@pytest.fixture(scope="module")
def run_dir(shapes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The detector trained two steps (one epoch of two batches, then evaluated) by the project's Trainer."""
    config = shapes_config(shapes, *CELL_DETECTOR, "train.epochs=1", "train.max_steps_per_epoch=2")
    run = tmp_path_factory.mktemp("cell_detector") / "run"
    Trainer(config, run, progress=False).fit()
    return run


def test_registered_and_built_from_config(shapes: dict[str, Path]):
    assert "cell_detector" in available_models()
    model = build_model(shapes_config(shapes, *CELL_DETECTOR))
    assert isinstance(model, CellDetector) and model.arch == "cell_detector"
    assert model.attend.activation.__class__.__name__ == "Sparsemax"
    with pytest.raises(ConfigError, match=rf"model\.attention\.decoder_cross: .*\['{SITE}'\]"):
        build_model(shapes_config(shapes, *CELL_DETECTOR, "model.attention.decoder_cross.activation=sparsemax"))
    with pytest.raises(ConfigError, match=r"model\.arch: unknown model 'nope'; choose one of .*'detr'"):
        build_model(shapes_config(shapes, "model.arch=nope"))
    with pytest.raises(ConfigError, match=r"unknown model 'deformable_dert' \(did you mean 'deformable_detr'\?\)"):
        build_model(shapes_config(shapes, "model.arch=deformable_dert"))


def test_trains_and_records_through_the_library(run_dir: Path, shapes: dict[str, Path]):
    assert epoch_records(run_dir)[1]["train_steps"] == 2 and (run_dir / "checkpoint_last.pt").is_file()
    recorded = record_run_batch(run_dir, image_indices=(0, 1, 2))
    assert recorded.loaded.model.arch == "cell_detector"
    assert list(recorded.maps) == [SITE] == list(recorded.outputs.attention)
    (record,) = recorded.outputs.attention[SITE]
    assert isinstance(record, GridRecord) and record.weights.shape == (3, 4, 6, 36)  # 96 px / 16 = 6 x 6 cells
    maps = recorded.maps[SITE]
    readings = site_metrics(maps, 0.0)
    torch.testing.assert_close(readings["gini"][0], gini(record.weights, record.key_padding_mask))
    torch.testing.assert_close(readings["zeros_ratio"][0], zeros_ratio(record.weights, record.key_padding_mask, 0.0))
    assert (readings["zeros_ratio"] > 0).any()  # sparsemax
    config = recorded.loaded.config
    aggregator = MetricAggregator()
    aggregator.update(
        recorded.maps, recorded.targets, build_criterion(config).matcher(recorded.outputs, recorded.targets)
    )
    paibb = aggregator.result()["sites"][SITE]["paibb"]["overall"]["per_layer"]
    assert paibb["count"][0] > 0 and 0.0 <= paibb["mean"][0] <= 1.0


def test_recording_images_of_different_sizes_warns_of_padding(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """record_run_batch padded images of different sizes into one batch without a word, so its maps could differ
    from analyze's (which batches images of one size) with nothing to say why."""
    import sparse_detector.engine.inference as inference

    def cropped(config: Config, split: str) -> list:  # image 1 a third narrower
        dataset = build_dataset(config, split)
        (image, target), second = dataset[0], dataset[1]
        return [(image, target), (second[0][..., : second[0].shape[-1] * 2 // 3], second[1])]

    with caplog.at_level("WARNING", logger=inference.__name__):
        record_run_batch(run_dir, image_indices=(0,))
        assert not caplog.records
        monkeypatch.setattr(inference, "build_dataset", cropped)
        recorded = record_run_batch(run_dir, image_indices=(0, 1))
    assert recorded.images.mask[1].any()  # padded
    assert "images [0, 1] have 2 sizes, padded to one batch" in caplog.text


def test_recording_images_the_data_lacks_names_the_data(run_dir: Path):
    """record_run_batch(run, image_indices=[0, 100]) on a data set of fewer images raised a bare "IndexError: list
    index out of range", and image_indices=[] "AttributeError: 'NoneType' object has no attribute 'to'"."""
    for indices in ([0, 100], []):
        with pytest.raises(IndexError, match=r"positions in the val data, which holds \d+ images \(.*\.json\): 0 to"):
            record_run_batch(run_dir, image_indices=indices)
    assert record_run_batch(run_dir, image_indices=[-1]).images.tensors.shape[0] == 1  # Python's negative indices


def test_analyze_engine_and_command(run_dir: Path, capsys: pytest.CaptureFixture):
    recorded = record_run_batch(run_dir)
    config, model = recorded.loaded.config, recorded.loaded.model
    dataset = build_dataset(config, "val")
    loader = build_loader(dataset, config, train=False)
    stats, aggregator = analyze(model, build_criterion(config).matcher, loader, torch.device("cpu"), dataset.label_map)
    site = aggregator.result()["sites"][SITE]
    assert (site["keys"], site["queries"], site["num_layers"], site["num_heads"]) == ("grid", "queries", 1, 4)
    assert site["paibb"] is not None and "AP" in stats

    out = run_dir / "cli-analysis"
    assert main(["analyze", "--checkpoint", str(run_dir), "--device", "cpu", "--output", str(out)]) == 0
    record = json.loads((out / "analysis.json").read_text())
    assert record["sites"] == [SITE] and list(record["attention"]["sites"]) == [SITE]
    assert record["attention"]["sites"][SITE] == json.loads(json.dumps(site))  # the command = the library
    assert f"| {SITE} | 0 |" in (out / "analysis.md").read_text()
    assert main(["analyze", "--checkpoint", str(run_dir), "--device", "cpu", "--sites", "decoder_cross"]) == 2
    assert f"unknown attention site 'decoder_cross' for this model; its sites are ['{SITE}']" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("site", "key", "value", "message"),
    [
        ({"activation": "tvmax", "tvmax_lambda": -1.0}, "tvmax_lambda", -1.0, "lam must be >= 0"),
        ({"activation": "alpha_entmax", "alpha_init": 2.5}, "alpha_init", 2.5, "alpha_init must lie in"),
    ],
)
def test_an_attention_option_out_of_range_names_its_config_key(site, key, value, message):
    config = config_from_dict({"model": {"attention": {"decoder_cross": site}}})
    with pytest.raises(ConfigError, match=rf"model\.attention\.decoder_cross\.{key}[:=].*{message}"):
        build_activation(config.model.attention, "decoder_cross", 8)


@pytest.mark.parametrize(
    ("site", "message"),
    [  # entmax15's alpha is 1.5 whatever alpha_init says: it was silently ignored
        ({"activation": "entmax15", "alpha_init": 1.2}, "alpha_init=1.2 is an option of alpha_entmax, but the map"),
        ({"activation": "sparsemax", "tvmax_lambda": 0.5}, "tvmax_lambda=0.1 (its default)"),
    ],
)
def test_an_option_of_another_map_is_said_once_but_still_builds(site, message, caplog):
    """An error here refused old runs whose config.yaml kept an option of an earlier map, and studies whose shared
    settings give alpha_init to every map; a warning says it is ignored, once per model (it was once per layer)."""
    overrides = [f"model.attention.decoder_cross.{key}={value}" for key, value in site.items()]
    model = build_model(load_config("shapes_tiny", overrides))
    activation = model.transformer.decoder.layers[0].multihead_attn.activation
    assert type(activation).__name__.lower() == site["activation"].replace("_", "")
    assert caplog.text.count(message) == 1 and "model.attention.decoder_cross." in caplog.text
