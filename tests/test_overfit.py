"""The tiny preset learns: it overfits a handful of shapes images (AP50 >= 0.9 on those same images)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparse_detector import load_config
from sparse_detector.data import generate_shapes
from sparse_detector.engine.trainer import Trainer

NUM_IMAGES = 8
STEPS = 120


@pytest.mark.slow
def test_tiny_preset_overfits_a_handful_of_images(tmp_path: Path):
    annotations = generate_shapes(tmp_path / "data", NUM_IMAGES, seed=1, image_size=96, min_size=20, max_size=44)
    images = tmp_path / "data" / "images"
    config = load_config(
        "shapes_tiny",
        [
            f"data.train.images={images}",
            f"data.train.annotations={annotations}",
            f"data.val.images={images}",
            f"data.val.annotations={annotations}",
            "data.train_scales=[96]",
            "data.val_size=96",
            "data.hflip_prob=0",
            f"train.batch_size={NUM_IMAGES}",
            f"train.epochs={STEPS}",  # one step per epoch
            f"train.eval_every={STEPS}",
            f"optim.lr_drop={STEPS}",  # epochs are single steps here: no learning-rate drop
            "optim.lr=5e-4",
            "model.backbone.lr=5e-4",
        ],
    )
    stats = Trainer(config, tmp_path / "run", progress=False).fit()
    assert stats["AP50"] >= 0.9, stats
