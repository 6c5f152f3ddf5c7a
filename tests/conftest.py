"""Shared test helpers: where ../shared is, and skipping when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparse_detector import load_config
from sparse_detector.config import Config
from sparse_detector.data import generate_shapes_splits
from sparse_detector.runs import read_metrics

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# A DETR small enough for unit tests (built with load_config(None, TINY_MODEL)).
TINY_MODEL = [
    "model.backbone.name=resnet18",
    "model.transformer.hidden_dim=32",
    "model.transformer.nheads=4",
    "model.transformer.dim_feedforward=64",
    "model.transformer.enc_layers=1",
    "model.transformer.dec_layers=2",
    "model.transformer.dropout=0.0",
    "model.num_queries=6",
    "model.num_classes=3",
]


def shared_path(relative: str) -> Path:
    """A path under ../shared, or skip the test with the reason when it is not there."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data/fixtures folder sits beside the project checkout)")
    return path


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


#: The transformer sizes of every small test model (DETR and Deformable DETR).
SMALL_TRANSFORMER = [
    "model.transformer.hidden_dim=32",
    "model.transformer.nheads=4",
    "model.transformer.enc_layers=1",
    "model.transformer.dec_layers=2",
    "model.transformer.dim_feedforward=64",
    "model.num_queries=6",
]
SMALL_MODEL = [
    *SMALL_TRANSFORMER,
    "train.batch_size=4",
    "train.eval_batch_size=8",
    "train.log_every=1",
]


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> dict[str, Path]:
    """A small shapes data set (12 train + 6 val images of 96 px), made once per test session."""
    root = tmp_path_factory.mktemp("shapes")
    paths = generate_shapes_splits(root, 12, 6, seed=3, image_size=96, min_size=20, max_size=40)
    return {"images": root / "images", **paths}


def shapes_overrides(shapes: dict[str, Path]) -> list[str]:
    """The overrides that make the tiny preset smaller still and point it at the ``shapes`` data."""
    data = [
        f"data.train.images={shapes['images']}",
        f"data.train.annotations={shapes['train']}",
        f"data.val.images={shapes['images']}",
        f"data.val.annotations={shapes['val']}",
        "data.train_scales=[96]",
        "data.val_size=96",
    ]
    return [*data, *SMALL_MODEL]


def shapes_config(shapes: dict[str, Path], *extra: str) -> Config:
    """The tiny preset, made smaller still, on the ``shapes`` data."""
    return load_config("shapes_tiny", [*shapes_overrides(shapes), *extra])


def epoch_records(run_dir: Path) -> dict[int, dict]:
    return {r["epoch"]: r for r in read_metrics(run_dir) if r["type"] == "epoch"}
