"""Sparse attention maps inside DETR: per-site selection, training without NaN, learnable alpha moves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparse_detector import build_model, load_config
from sparse_detector.attention import AlphaEntmax, Softmax, Sparsemax, TVMax
from sparse_detector.config import ConfigError
from sparse_detector.engine.optim import build_optimizer, build_scheduler
from sparse_detector.engine.trainer import Trainer, alpha_values

from .conftest import SMALL_MODEL, epoch_records, shapes_config

SPARSE_MAPS = ["sparsemax", "entmax15", "alpha_entmax", "tvmax"]


def test_each_site_gets_its_own_map():
    config = load_config(
        "shapes_tiny",
        [
            *SMALL_MODEL,
            "model.attention.encoder_self.activation=tvmax",
            "model.attention.encoder_self.tvmax_lambda=0.3",
            "model.attention.decoder_self.activation=sparsemax",
            "model.attention.decoder_cross.activation=alpha_entmax",
            "model.attention.decoder_cross.alpha_init=1.7",
        ],
    )
    model = build_model(config)
    encoder, decoder = model.transformer.encoder.layers, model.transformer.decoder.layers
    assert all(isinstance(layer.self_attn.activation, TVMax) for layer in encoder)
    assert encoder[0].self_attn.activation.lam == 0.3
    assert all(isinstance(layer.self_attn.activation, Sparsemax) for layer in decoder)
    cross = [layer.multihead_attn.activation for layer in decoder]
    assert all(isinstance(a, AlphaEntmax) for a in cross) and cross[0] is not cross[1]  # one alpha set per layer
    torch.testing.assert_close(cross[0].alpha, torch.full((4,), 1.7))
    assert isinstance(
        build_model(load_config("shapes_tiny", SMALL_MODEL)).transformer.decoder.layers[0].multihead_attn.activation,
        Softmax,
    )


def test_tvmax_only_where_keys_form_the_feature_grid():
    config = load_config("shapes_tiny", [*SMALL_MODEL, "model.attention.decoder_self.activation=tvmax"])
    with pytest.raises(ConfigError, match=r"model\.attention\.decoder_self\.activation: tvmax needs keys on"):
        build_model(config)


@pytest.mark.parametrize("alpha_lr_drop", [False, True])
def test_alpha_parameters_have_their_own_optimizer_group(alpha_lr_drop: bool):
    config = load_config(
        "shapes_tiny",
        [
            *SMALL_MODEL,
            "model.attention.decoder_cross.activation=alpha_entmax",
            f"optim.alpha_lr_drop={str(alpha_lr_drop).lower()}",
            "optim.lr_drop=1",
        ],
    )
    model = build_model(config)
    optimizer = build_optimizer(model, config)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"default", "backbone", "alpha"}
    assert len(groups["alpha"]["params"]) == config.model.transformer.dec_layers
    assert groups["alpha"]["lr"] == pytest.approx(config.optim.lr * 10) and groups["alpha"]["weight_decay"] == 0
    scheduler = build_scheduler(optimizer, config)
    optimizer.step()
    scheduler.step()
    assert groups["default"]["lr"] == pytest.approx(config.optim.lr * 0.1)
    dropped = 0.1 if alpha_lr_drop else 1.0  # alpha_lr_drop=false exempts the alphas from the drop
    assert groups["alpha"]["lr"] == pytest.approx(config.optim.lr * 10 * dropped)


@pytest.mark.parametrize("activation", SPARSE_MAPS)
def test_sparse_cross_attention_trains_without_nan(shapes, tmp_path: Path, activation: str):
    config = shapes_config(
        shapes,
        f"model.attention.decoder_cross.activation={activation}",
        "train.epochs=1",
        "train.max_steps_per_epoch=3",
    )
    trainer = Trainer(config, tmp_path / "run", progress=False)
    initial = alpha_values(trainer.model)
    stats = trainer.fit()
    record = epoch_records(tmp_path / "run")[1]
    assert record["train_steps"] == 3 and record["train_skipped_nonfinite"] == 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert 0 <= stats["AP"] <= 1
    if activation == "alpha_entmax":
        moved = alpha_values(trainer.model)
        assert set(moved) == set(initial) and len(moved) == config.model.transformer.dec_layers
        for name, values in moved.items():
            assert values != initial[name], f"alpha of {name} did not move: {values}"
        assert record["alpha"] == moved  # logged per layer and head


def test_sparse_cross_attention_is_sparse_and_padding_safe():
    config = load_config("shapes_tiny", [*SMALL_MODEL, "model.attention.decoder_cross.activation=sparsemax"])
    model = build_model(config).eval()
    cross = model.transformer.decoder.layers[-1].multihead_attn
    cross.store_weights = True
    with torch.no_grad():
        model([torch.rand(3, 96, 64), torch.rand(3, 64, 96)])
    weights = cross.stored_weights  # (B, H, Q, keys); the first image is padded on the right
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    assert (weights == 0).any()
    padded = weights[0].reshape(*weights.shape[1:3], 6, 6)[..., :, 4:]
    assert (padded == 0).all()
