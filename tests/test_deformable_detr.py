"""Deformable DETR: the sampling function and transformer against the official code, the model, loss and training."""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from matplotlib.colors import to_rgb

from sparse_detector import build_model, deformable_detr_from_official, load_config
from sparse_detector.analysis import AttentionMaps, compute_paibb, record_attention
from sparse_detector.analysis.metrics import gini
from sparse_detector.analysis.paibb import MIN_BOX_SIDE, point_readings
from sparse_detector.attention import Sparsemax
from sparse_detector.attention.deformable import MSDeformAttn, ms_deform_attn_sample
from sparse_detector.attention.sites import PointsRecord
from sparse_detector.config import ConfigError
from sparse_detector.data.batching import as_padded_batch
from sparse_detector.data.build import build_dataset, build_loader
from sparse_detector.engine.checkpoint import load_checkpoint, save_checkpoint
from sparse_detector.engine.optim import parameter_groups
from sparse_detector.engine.trainer import Trainer, initialise_from
from sparse_detector.models.build import build_criterion
from sparse_detector.models.deformable_detr import DeformableTransformer
from sparse_detector.models.deformable_detr.criterion import FocalHungarianMatcher, FocalSetCriterion
from sparse_detector.models.postprocess import TopKPostProcess, postprocessor_for
from sparse_detector.models.weights import CheckpointMismatchError, load_official
from sparse_detector.runs import read_metrics
from sparse_detector.viz.deformable import sampling_figure
from sparse_detector.viz.figure import PREDICTION_COLOR, TRUTH_COLOR

from .conftest import SMALL_MODEL, SMALL_TRANSFORMER, shapes_config, shared_path

FIXTURE = "fixtures/ddetr_official_transformer_small.pt"

#: A Deformable DETR small enough for unit tests, on top of the shapes preset.
TINY_DEFORMABLE = [
    "model.arch=deformable_detr",
    *SMALL_TRANSFORMER,
    "model.deformable.num_feature_levels=3",
    "model.deformable.enc_n_points=2",
    "model.deformable.dec_n_points=2",
    "train.batch_size=4",
]
VARIANTS = {
    "plain": [],
    "box_refine": ["model.deformable.with_box_refine=true"],
    "two_stage": ["model.deformable.with_box_refine=true", "model.deformable.two_stage=true"],
}


def sampling_case(dtype: torch.dtype = torch.float64) -> dict:
    """Random inputs of the sampling function: 2 images, 3 queries, 2 heads, 2 levels, 3 points."""
    shapes = torch.tensor([[4, 5], [2, 3]])
    value = torch.randn(2, int(shapes.prod(1).sum()), 2, 3, dtype=dtype)
    locations = torch.rand(2, 3, 2, 2, 3, 2, dtype=dtype) * 1.2 - 0.1  # some points fall outside the map
    weights = torch.rand(2, 3, 2, 2, 3, dtype=dtype)
    return {"value": value, "spatial_shapes": shapes, "sampling_locations": locations, "attention_weights": weights}


def test_sampling_matches_the_official_function_in_float64():
    core = torch.load(shared_path(FIXTURE), weights_only=True)["core"]
    out = ms_deform_attn_sample(
        core["value"], core["spatial_shapes"], core["sampling_locations"], core["attention_weights"]
    )
    torch.testing.assert_close(out, core["output"], rtol=0, atol=1e-10)


def test_sampling_gradients_are_exact():
    case = sampling_case()
    inputs = (case["value"], case["sampling_locations"], case["attention_weights"])
    for x in inputs:
        x.requires_grad_(True)

    def sample(value, locations, weights):
        return ms_deform_attn_sample(value, case["spatial_shapes"], locations, weights)

    assert torch.autograd.gradcheck(sample, inputs)


def test_skipping_zero_weight_points_changes_nothing_else():
    case = sampling_case()
    weights = case["attention_weights"]
    weights[weights < 0.7] = 0.0  # most points drop out, so the packed path runs
    grads = []
    for skip in (False, True):
        value = case["value"].clone().requires_grad_(True)
        locations = case["sampling_locations"].clone().requires_grad_(True)
        w = weights.clone().requires_grad_(True)
        out = ms_deform_attn_sample(value, case["spatial_shapes"], locations, w, skip_zero_weights=skip)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
        grads.append((out.detach(), value.grad, locations.grad, w.grad * (weights != 0)))
    for dense, packed in zip(*grads, strict=True):
        torch.testing.assert_close(packed, dense, rtol=0, atol=1e-12)


def test_softmax_sampling_weights_equal_the_official_op():
    attn = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=2)
    torch.nn.init.normal_(attn.attention_weights.weight)
    query = torch.randn(2, 5, 32)
    official = torch.softmax(attn.attention_weights(query).view(2, 5, 4, 6), -1).view(2, 5, 4, 3, 2)
    torch.testing.assert_close(attn.sampling_weights(query), official, rtol=0, atol=0)


def test_sparsemax_sampling_weights_are_sparse_per_head():
    attn = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=2, activation=Sparsemax())
    torch.nn.init.normal_(attn.attention_weights.weight)
    weights = attn.sampling_weights(torch.randn(2, 5, 32))
    torch.testing.assert_close(weights.sum((-2, -1)), torch.ones(2, 5, 4))
    assert (weights == 0).any()


def test_transformer_matches_the_official_one():
    fixture = torch.load(shared_path(FIXTURE), weights_only=True)
    c = fixture["config"]
    transformer = DeformableTransformer(
        d_model=c["d_model"],
        nhead=c["nhead"],
        num_encoder_layers=c["num_encoder_layers"],
        num_decoder_layers=c["num_decoder_layers"],
        dim_feedforward=c["dim_feedforward"],
        dropout=0.0,
        num_feature_levels=c["num_feature_levels"],
        dec_n_points=c["dec_n_points"],
        enc_n_points=c["enc_n_points"],
    )
    transformer.load_state_dict(fixture["state_dict"])
    with torch.no_grad():
        hs, init_reference, inter_references, _, _ = transformer.eval()(
            fixture["srcs"], fixture["masks"], fixture["pos_embeds"], fixture["query_embed"]
        )
    torch.testing.assert_close(hs, fixture["hs"], rtol=0, atol=1e-5)
    torch.testing.assert_close(init_reference, fixture["init_reference"], rtol=0, atol=1e-5)
    torch.testing.assert_close(inter_references, fixture["inter_references"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_give_losses_for_every_layer(variant):
    config = load_config("shapes_tiny", [*TINY_DEFORMABLE, *VARIANTS[variant]])
    model, criterion = build_model(config), build_criterion(config)
    outputs = model([torch.randn(3, 64, 64), torch.randn(3, 48, 64)])
    assert outputs["pred_logits"].shape == (2, 6, 4) and outputs["pred_boxes"].shape == (2, 6, 4)
    assert len(outputs["aux_outputs"]) == 1
    targets = [
        {"labels": torch.tensor([0, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]])},
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
    ]
    losses = criterion(outputs, targets)
    expected = {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0"} | (
        {"loss_ce_enc"} if variant == "two_stage" else set()
    )
    assert expected <= set(losses) and set(criterion.weight_dict) >= expected
    total = criterion.total_loss(losses)
    total.backward()
    assert torch.isfinite(total)
    assert ("enc_outputs" in outputs) == (variant == "two_stage")
    shared = model.class_embed[0] is model.class_embed[1]
    assert shared == (variant == "plain")


def test_two_stage_names_images_too_small_for_its_proposals():
    """The two-stage preset (300 queries) on 96 px images failed with torch's 'selected index k out of range'."""
    config = load_config("shapes_tiny", [*TINY_DEFORMABLE, *VARIANTS["two_stage"], "model.num_queries=90"])
    model = build_model(config).eval()
    with pytest.raises(ValueError, match=r"model.num_queries=90 proposals .* only 84 \(levels 8x8, 4x4, 2x2\)"):
        model([torch.randn(3, 64, 64)])
    assert model([torch.randn(3, 80, 80)])["pred_logits"].shape == (1, 90, 4)  # 100 + 25 + 9 cells: enough


def test_predict_takes_the_image_size_the_two_stage_message_advises(tmp_path, capsys):
    """predict on images too small for a two-stage model's proposals advised data.val_size, which predict had no
    --set to change."""
    from PIL import Image

    from sparse_detector.cli import main
    from sparse_detector.config import config_to_dict
    from sparse_detector.data.labels import LabelMap

    overrides = [*TINY_DEFORMABLE, *VARIANTS["two_stage"], "model.num_queries=90", "data.val_size=64"]
    config = load_config("shapes_tiny", [*overrides, "data.max_size=64"])
    state = {"model": build_model(config).state_dict(), "config": config_to_dict(config), "epoch": 1, "step": 1}
    state["label_map"] = LabelMap.from_categories({1: "red", 2: "green", 3: "blue"}).to_dict()
    save_checkpoint(tmp_path / "run" / "checkpoint_last.pt", state)
    Image.new("RGB", (64, 64), "white").save(tmp_path / "white.png")
    argv = ["predict", "--checkpoint", str(tmp_path / "run"), str(tmp_path / "white.png"), "--device", "cpu"]
    assert main([*argv, "--output", str(tmp_path / "small")]) == 2
    assert "which evaluate and predict take as --set data.val_size=N" in capsys.readouterr().err
    assert main([*argv, "--output", str(tmp_path / "p"), "--set", "data.val_size=80", "data.max_size=80"]) == 0
    assert (tmp_path / "p" / "predictions.json").is_file()
    assert main([*argv, "--set", "model.num_queries=10"]) == 2  # the checkpoint's model: refused, as by evaluate
    assert "--set model.num_queries: the model is the checkpoint's" in capsys.readouterr().err


@pytest.mark.parametrize("aux_loss", [True, False])
def test_two_stage_trains_the_encoder_proposals_only_with_aux_loss(aux_loss):
    """Official: the '_enc' weights are added with the auxiliary ones, so without aux_loss the proposals' losses are
    logged but train nothing (the proposal heads get no gradient)."""
    config = load_config("shapes_tiny", [*TINY_DEFORMABLE, *VARIANTS["two_stage"], f"model.aux_loss={aux_loss}"])
    model, criterion = build_model(config), build_criterion(config)
    targets = [{"labels": torch.tensor([0, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]])}]
    losses = criterion(model([torch.randn(3, 64, 64)]), targets)
    assert {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc"} <= set(losses)
    assert ("loss_ce_enc" in criterion.weight_dict) == aux_loss
    criterion.total_loss(losses).backward()
    proposal_heads = [model.class_embed[-1], model.bbox_embed[-1]]  # the extra heads, used only for proposals
    trained = [any(p.grad is not None and p.grad.any() for p in head.parameters()) for head in proposal_heads]
    assert trained == [aux_loss, aux_loss]


@pytest.mark.parametrize("aux_loss", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_trains_every_parameter_says_whether_the_loss_reaches_every_parameter(variant, aux_loss):
    """Under torch.distributed, box refinement or two-stage with model.aux_loss=false failed on its second step
    ('Expected to have finished reduction...'): DDP is now told to look for the parameters the loss leaves out."""
    overrides = [*TINY_DEFORMABLE, *VARIANTS[variant], f"model.aux_loss={aux_loss}"]
    model, criterion = (
        build_model(load_config("shapes_tiny", overrides)),
        build_criterion(load_config("shapes_tiny", overrides)),
    )
    targets = [{"labels": torch.tensor([0, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]])}]
    criterion.total_loss(criterion(model([torch.randn(3, 64, 64)]), targets)).backward()
    reached = all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.trains_every_parameter == reached


def test_cardinality_error_counts_queries_whose_best_logit_is_not_the_last_class():
    """Official Deformable DETR (as DETR): a query counts as a prediction when its argmax is not the last class,
    whatever its score; it used to be 'best score above 0.5' here."""
    logits = torch.tensor(
        [
            [
                [2.0, 0.0, -1.0],  # argmax 0, score 0.88: counted (both definitions)
                [1.0, 0.0, 3.0],  # argmax = last class, score 0.95: not counted (0.5 rule: counted)
                [-3.0, -2.0, -4.0],  # argmax 1, score 0.12: counted (0.5 rule: not counted)
                [-3.0, -2.0, -4.0],  # the same
            ]
        ]
    )
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2]] * 4])
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    losses = FocalSetCriterion(3, FocalHungarianMatcher())({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert losses["cardinality_error"].item() == 2.0  # |3 predictions - 1 object|


def test_parameter_groups_follow_the_official_recipe():
    config = load_config("shapes_tiny", [*TINY_DEFORMABLE, "optim.lr=1e-3", "model.backbone.lr=1e-4"])
    model = build_model(config)
    groups = {g["name"]: g for g in parameter_groups(model, config)}
    assert groups["linear_proj"]["lr"] == pytest.approx(1e-4) and groups["backbone"]["lr"] == pytest.approx(1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    proj = {names[id(p)] for p in groups["linear_proj"]["params"]}
    assert proj and all("sampling_offsets" in n or "reference_points" in n for n in proj)


@pytest.mark.parametrize("arch_options", [[], TINY_DEFORMABLE])
def test_a_learned_position_embedding_trains_at_the_official_rate(arch_options):
    """Official DETR trains it with the backbone (every name with 'backbone'), Deformable DETR with the transformer
    (only 'backbone.0' is the backbone); Deformable's used to get the backbone's rate."""
    overrides = ["model.position_embedding=learned", "optim.lr=1e-3", "model.backbone.lr=1e-4"]
    config = load_config("shapes_tiny", [*arch_options, *overrides])
    model = build_model(config)
    names = {
        n: g["name"]
        for g in parameter_groups(model, config)
        for n, p in model.named_parameters()
        if any(p is q for q in g["params"])
    }
    expected = "default" if config.model.arch == "deformable_detr" else "backbone"
    assert names["backbone.1.row_embed.weight"] == expected
    assert names["backbone.0.body.layer2.0.conv1.weight"] == "backbone"


def test_resume_regroups_a_run_saved_before_the_learned_embedding_left_the_backbone_group(shapes, tmp_path):
    """Runs saved before the change kept backbone.1 (learned position embedding) in the backbone group; resuming
    them failed on the group sizes. Each parameter now keeps its AdamW state in its new group."""
    run = tmp_path / "run"
    overrides = ["model.position_embedding=learned", "train.max_steps_per_epoch=1", "train.eval_every=100"]
    Trainer(shapes_config(shapes, *TINY_DEFORMABLE, *overrides, "train.epochs=1"), run, progress=False).fit()
    path = run / "checkpoint_last.pt"
    state = load_checkpoint(path)
    config = load_config(run / "config.yaml")
    model = build_model(config)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: [names[id(p)] for p in g["params"]] for g in parameter_groups(model, config)}
    new_order = [n for members in groups.values() for n in members]
    saved = {n: state["optimizer"]["state"][i] for i, n in enumerate(new_order)}
    # The earlier layout, by hand: every "backbone." parameter in the backbone group, in named_parameters order.
    old_group = {n: "backbone" if n.startswith("backbone.") else g for g, members in groups.items() for n in members}
    old_groups = {g: [n for n in names.values() if old_group.get(n) == g] for g in groups}
    settings = {g["name"]: {k: v for k, v in g.items() if k != "params"} for g in state["optimizer"]["param_groups"]}
    old_order = [n for members in old_groups.values() for n in members]
    old_param_groups, start = [], 0
    for name, members in old_groups.items():
        old_param_groups.append({**settings[name], "params": list(range(start, start + len(members)))})
        start += len(members)
    state["optimizer"] = {"state": {i: saved[n] for i, n in enumerate(old_order)}, "param_groups": old_param_groups}
    save_checkpoint(path, state)

    trainer = Trainer(load_config(run / "config.yaml", ["train.epochs=2"]), run, resume=True, progress=False)
    by_name = dict(trainer.model.named_parameters())
    group_of = {id(p): g["name"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert group_of[id(by_name["backbone.1.row_embed.weight"])] == "default"
    for name, expected in saved.items():
        got = trainer.optimizer.state[by_name[name]]
        torch.testing.assert_close(got["exp_avg"], expected["exp_avg"], rtol=0, atol=0)
        torch.testing.assert_close(got["exp_avg_sq"], expected["exp_avg_sq"], rtol=0, atol=0)
    trainer.fit()
    (record,) = [r for r in read_metrics(run) if r["type"] == "resume"]
    assert any("backbone.1.row_embed.weight (backbone -> default)" in change for change in record["changes"])


def test_top_k_post_processing_ranks_query_class_pairs():
    logits = torch.tensor([[[0.0, 3.0], [2.0, -1.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.25, 0.5, 0.5]]])
    result = TopKPostProcess(k=3)({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]))[0]
    torch.testing.assert_close(result["scores"], torch.sigmoid(torch.tensor([3.0, 2.0, 0.0])))
    assert result["labels"].tolist() == [1, 0, 0]
    torch.testing.assert_close(result["boxes"][1], torch.tensor([0.0, 0.0, 100.0, 50.0]))
    model = build_model(load_config("shapes_tiny", TINY_DEFORMABLE))
    assert isinstance(postprocessor_for(model), TopKPostProcess)


@pytest.mark.parametrize("activation", ["softmax", "sparsemax"])
def test_tiny_model_trains_on_shapes(shapes, activation):
    sites = [f"model.attention.{site}.activation={activation}" for site in ("encoder_self", "decoder_cross")]
    config = shapes_config(shapes, *TINY_DEFORMABLE, *sites)
    model, criterion = build_model(config), build_criterion(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)  # high, so that weights leave the uniform start
    loader = build_loader(build_dataset(config, "train"), config, train=True)
    records = []
    model.transformer.decoder.layers[-1].cross_attn.record_to(records.append)
    for _ in range(3):
        for batch, targets in loader:
            loss = criterion.total_loss(criterion(model(batch), targets))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            assert torch.isfinite(loss)
            assert all(torch.isfinite(p).all() for p in model.parameters())
    weights = records[-1].weights
    assert torch.isfinite(weights).all()
    assert ((weights == 0).sum() > 0) == (activation == "sparsemax")


@pytest.mark.parametrize("variant", VARIANTS)
def test_official_loader_recognises_each_variant(tmp_path, variant):
    official = ["model.backbone.norm=frozen_bn", "model.deformable.enc_n_points=3"]  # official: frozen BN
    config = load_config("shapes_tiny", [*TINY_DEFORMABLE, *official, *VARIANTS[variant]])
    model = build_model(config).eval()
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": model.state_dict(), "epoch": 49}, path)  # the official checkpoint layout
    loaded = deformable_detr_from_official(path, nheads=4, num_queries=6)
    d = loaded.transformer
    assert (loaded.with_box_refine, loaded.two_stage) == (variant != "plain", variant == "two_stage")
    assert (d.encoder.layers[0].self_attn.n_points, d.decoder.layers[0].cross_attn.n_points) == (3, 2)
    assert not loaded.training
    images = [torch.randn(3, 64, 64), torch.randn(3, 48, 64)]
    with torch.no_grad():
        expected, got = model(images), loaded(images)
    torch.testing.assert_close(got["pred_logits"], expected["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(got["pred_boxes"], expected["pred_boxes"], rtol=0, atol=0)


def test_an_official_checkpoint_gets_the_official_losses_and_matching_costs(tmp_path):
    """Its evaluation loss and the matching behind analyze's PAIBB used DETR's costs (class cost 1, coefficient 1);
    official Deformable DETR's main.py: --set_cost_class 2, --cls_loss_coef 2, bbox 5, GIoU 2, focal alpha 0.25."""
    model = build_model(load_config("shapes_tiny", [*TINY_DEFORMABLE, "model.backbone.norm=frozen_bn"]))
    torch.save({"model": model.state_dict()}, tmp_path / "checkpoint.pth")
    _, config = load_official(tmp_path / "checkpoint.pth", "deformable_detr", {"nheads": 4})
    loss = config.loss
    assert (loss.set_cost_class, loss.set_cost_bbox, loss.set_cost_giou) == (2.0, 5.0, 2.0)
    assert (loss.ce_loss_coef, loss.bbox_loss_coef, loss.giou_loss_coef, loss.focal_alpha) == (2.0, 5.0, 2.0, 0.25)
    assert build_criterion(config).matcher.cost_class == 2.0


@pytest.mark.parametrize("variant", VARIANTS)
def test_init_from_a_checkpoint_of_other_classes_reinitialises_every_class_head(tmp_path, variant):
    """Fine-tuning an official (91-class) Deformable DETR on 4 classes failed: only DETR's 'class_embed.weight'
    was known as a class head, not 'class_embed.N' / 'transformer.decoder.class_embed.N'."""
    coco = build_model(load_config("shapes_tiny", [*TINY_DEFORMABLE, *VARIANTS[variant], "model.num_classes=91"]))
    torch.save({"model": coco.state_dict()}, tmp_path / "official.pth")
    model = build_model(load_config("shapes_tiny", [*TINY_DEFORMABLE, *VARIANTS[variant]]))
    reinitialised = initialise_from(model, tmp_path / "official.pth").reinitialised
    assert reinitialised and all("class_embed." in name for name in reinitialised)
    assert any(n.startswith("transformer.decoder.class_embed.") for n in reinitialised) == (variant == "two_stage")
    for name, value in model.state_dict().items():
        if name not in reinitialised:
            torch.testing.assert_close(value, coco.state_dict()[name], rtol=0, atol=0)


def test_init_from_an_official_checkpoint_of_the_other_arch_names_it(tmp_path):
    """train --init-from an official DETR checkpoint with a Deformable DETR config listed 59 missing, 36 unexpected
    and 37 mismatched keys; ours of the other arch already said which arch they hold."""
    detr = build_model(load_config("shapes_tiny", ["model.transformer.hidden_dim=32", "model.transformer.nheads=4"]))
    deformable = build_model(load_config("shapes_tiny", TINY_DEFORMABLE))
    torch.save({"model": detr.state_dict()}, tmp_path / "detr.pth")
    torch.save({"model": deformable.state_dict()}, tmp_path / "deformable.pth")
    with pytest.raises(
        CheckpointMismatchError, match=r"is an official detr checkpoint, .* builds a deformable_detr model"
    ):
        initialise_from(deformable, tmp_path / "detr.pth")
    with pytest.raises(
        CheckpointMismatchError, match=r"is an official deformable_detr checkpoint, .* builds a detr model"
    ):
        initialise_from(detr, tmp_path / "deformable.pth")


def test_official_loader_names_a_wrong_head_count():
    state_dict = build_model(load_config("shapes_tiny", TINY_DEFORMABLE)).state_dict()
    with pytest.raises(CheckpointMismatchError, match="nheads"):
        deformable_detr_from_official(state_dict, nheads=5)


def test_official_checkpoints_of_4_heads_load_as_4_heads_from_their_stored_args(tmp_path):
    """An official Deformable DETR checkpoint trained with 4 heads (2 points, 3 levels) loaded as 8 heads x 1 point
    without --nheads, silently: its sampling layers' 24 outputs fit both, and the outputs were wrong. The number now
    comes from the args the official scripts store beside the weights; one given that differs is an error, and a
    checkpoint without args whose weights do not give 8 heads x the official 4 points asks for --nheads."""
    model = build_model(load_config("shapes_tiny", [*TINY_DEFORMABLE, "model.backbone.norm=frozen_bn"])).eval()
    args = argparse.Namespace(nheads=4, dilation=False, enc_n_points=2, dec_n_points=2, num_feature_levels=3)
    torch.save({"model": model.state_dict(), "args": args}, tmp_path / "checkpoint.pth")
    loaded, config = load_official(tmp_path / "checkpoint.pth", "deformable_detr", {"nheads": None})
    assert (config.model.transformer.nheads, config.model.deformable.dec_n_points) == (4, 2)
    images = [torch.randn(3, 64, 64)]
    with torch.no_grad():
        torch.testing.assert_close(loaded(images)["pred_logits"], model(images)["pred_logits"], rtol=0, atol=0)
    with pytest.raises(CheckpointMismatchError, match=r"trained with nheads=4 \(its stored args\), but nheads=8"):
        deformable_detr_from_official(tmp_path / "checkpoint.pth", nheads=8)
    torch.save({"model": model.state_dict()}, tmp_path / "bare.pth")
    with pytest.raises(
        CheckpointMismatchError, match=r"bare.pth: .* fit 8 heads x 1 point, 4 heads x 2 points.*--nheads"
    ):
        deformable_detr_from_official(tmp_path / "bare.pth")
    # DETR's weights do not show its heads at all: its stored args are the only way to know them
    official = ["model.transformer.hidden_dim=32", "model.transformer.nheads=4", "model.backbone.norm=frozen_bn"]
    detr = build_model(load_config("shapes_tiny", official))
    torch.save({"model": detr.state_dict(), "args": args}, tmp_path / "detr.pth")
    assert load_official(tmp_path / "detr.pth", "detr")[1].model.transformer.nheads == 4


def test_an_official_two_stage_checkpoint_gets_its_query_count_from_its_stored_args(tmp_path):
    """A two-stage model's query count is in no weight: one trained with 6 queries ran with the official 300."""
    official = [*TINY_DEFORMABLE, *VARIANTS["two_stage"], "model.backbone.norm=frozen_bn"]
    model = build_model(load_config("shapes_tiny", official)).eval()
    args = argparse.Namespace(nheads=4, num_queries=6, two_stage=True)
    torch.save({"model": model.state_dict(), "args": args}, tmp_path / "checkpoint.pth")
    loaded, config = load_official(tmp_path / "checkpoint.pth", "deformable_detr")
    assert config.model.num_queries == 6
    images = [torch.randn(3, 64, 64)]
    with torch.no_grad():
        torch.testing.assert_close(loaded(images)["pred_boxes"], model(images)["pred_boxes"], rtol=0, atol=0)


def test_official_loaders_name_another_arch_and_our_own_checkpoints(tmp_path):
    deformable = build_model(load_config("shapes_tiny", TINY_DEFORMABLE))
    detr = build_model(load_config("shapes_tiny", ["model.transformer.hidden_dim=32", "model.transformer.nheads=4"]))
    torch.save({"model": deformable.state_dict()}, tmp_path / "deformable.pth")  # official layouts
    torch.save({"model": detr.state_dict()}, tmp_path / "detr.pth")
    with pytest.raises(CheckpointMismatchError, match=r"not an official detr checkpoint .*'deformable_detr'"):
        load_official(tmp_path / "deformable.pth", "detr", {"nheads": 4})
    with pytest.raises(CheckpointMismatchError, match=r"not an official deformable_detr checkpoint .*\['detr'\]"):
        deformable_detr_from_official(tmp_path / "detr.pth", nheads=4)
    torch.save({"model": detr.state_dict(), "config": {}}, tmp_path / "ours.pt")  # ours carry their config
    with pytest.raises(CheckpointMismatchError, match="checkpoint of this package .* without --official"):
        load_official(tmp_path / "ours.pt", "detr", {"nheads": 4})
    torch.save({"model": torchvision.models.resnet18().state_dict()}, tmp_path / "resnet18.pth")  # was: "backbone
    for arch in ("detr", "deformable_detr"):  # with blocks ('basic', 0, 0) is not a torchvision ResNet-18/34/50/101"
        with pytest.raises(CheckpointMismatchError, match=rf"resnet18.pth is not an official {arch} checkpoint"):
            load_official(tmp_path / "resnet18.pth", arch, {"nheads": 4})


def test_sites_and_point_records():
    model = build_model(load_config("shapes_tiny", TINY_DEFORMABLE)).eval()
    sites = {s.name: (s.keys, s.queries, s.num_layers) for s in model.attention_sites()}
    assert sites == {
        "encoder_self": ("points", "grid", 1),
        "decoder_self": ("queries", "queries", 2),
        "decoder_cross": ("points", "queries", 2),
    }
    images = [torch.randn(3, 64, 64), torch.randn(3, 32, 64)]  # the second image is half padding
    outputs, maps = record_attention(model, images)
    cross = outputs.attention["decoder_cross"][0]
    assert isinstance(cross, PointsRecord) and cross.dense
    assert cross.weights.shape == (2, 6, 4, 3, 2) and cross.sampling_locations.shape == (2, 6, 4, 3, 2, 2)
    torch.testing.assert_close(cross.valid_ratios[1, :, 1], torch.full((3,), 0.5))
    encoder = outputs.attention["encoder_self"][0]
    assert encoder.query_padding_mask.shape == (2, encoder.weights.shape[1]) and encoder.query_padding_mask[1].any()
    assert maps["decoder_cross"].weights[0].shape == (2, 4, 6, 6)  # (B, heads, queries, L * P)


def test_point_paibb_and_spread_match_brute_force():
    weights = torch.rand(1, 2, 1, 2, 3)
    weights /= weights.sum((-2, -1), keepdim=True)
    locations = torch.rand(1, 2, 1, 2, 3, 2)
    reference = torch.rand(1, 2, 2, 2)
    record = PointsRecord(weights, locations, reference, torch.tensor([[4, 4], [2, 2]]), torch.ones(1, 2, 2))
    box = torch.tensor([[0.5, 0.4, 0.6, 0.3]])
    image, query = torch.tensor([0]), torch.tensor([1])
    inside, spread = 0.0, 0.0
    for level in range(2):
        for point in range(3):
            x, y = locations[0, 1, 0, level, point].tolist()
            w = weights[0, 1, 0, level, point].item()
            inside += w * (abs(x - 0.5) <= 0.3 and abs(y - 0.4) <= 0.15)
            rx, ry = reference[0, 1, level].tolist()
            spread += w * (((x - rx) / 0.6) ** 2 + ((y - ry) / 0.3) ** 2) ** 0.5
    readings = point_readings([record], image, query, box)
    assert readings[0].item() == pytest.approx(inside, abs=1e-6)
    assert readings[1].item() == pytest.approx(spread, abs=1e-6)


def test_points_on_the_box_border_are_inside_and_zero_size_boxes_give_a_finite_spread():
    """Box x in [0.375, 0.625] (exact in binary): points at both edges count as inside, one just beyond does not.
    The spread over a box of zero width and height measures in ``MIN_BOX_SIDE`` of the image instead."""
    weights = torch.tensor([0.2, 0.3, 0.5]).view(1, 1, 1, 1, 3)
    locations = torch.tensor([[0.375, 0.5], [0.625, 0.5], [0.625 + 2**-20, 0.5]]).view(1, 1, 1, 1, 3, 2)
    reference = torch.tensor([0.5, 0.5]).view(1, 1, 1, 2)
    record = PointsRecord(weights, locations, reference, torch.tensor([[4, 4]]), torch.ones(1, 1, 2))
    image = query = torch.tensor([0])
    inside, _ = point_readings([record], image, query, torch.tensor([[0.5, 0.5, 0.25, 1.0]]))
    assert inside.item() == pytest.approx(0.5, abs=1e-7)
    _, spread = point_readings([record], image, query, torch.tensor([[0.5, 0.5, 0.0, 0.0]]))
    distances = [0.125 / MIN_BOX_SIDE, 0.125 / MIN_BOX_SIDE, (0.125 + 2**-20) / MIN_BOX_SIDE]
    assert spread.item() == pytest.approx(0.2 * distances[0] + 0.3 * distances[1] + 0.5 * distances[2], rel=1e-6)


def test_valid_cells_are_whole_although_their_float32_ratio_is_not():
    """7 valid cells of 13: the float32 ratio 7 / 13 times 13 is 7.0000005. The valid cells are counted whole, so
    a point at 0.625 of them lies exactly on the border of a box ending at 0.625 of the image (56 px wide, 7 cells of
    stride 8), and counts as inside."""
    weights = torch.ones(1, 1, 1, 1, 1)
    locations = torch.tensor([0.625, 0.5]).view(1, 1, 1, 1, 1, 2)
    reference = torch.tensor([0.5, 0.5]).view(1, 1, 1, 2)
    valid_ratios = torch.full((1, 1, 2), 7.0) / 13
    record = PointsRecord(weights, locations, reference, torch.tensor([[13, 13]]), valid_ratios)
    box = torch.tensor([[0.5, 0.5, 0.25, 1.0]])
    image = query = torch.tensor([0])
    inside, _ = point_readings([record], image, query, box, torch.tensor([[56, 56]]), (8,))
    assert inside.item() == 1.0


def test_point_paibb_and_spread_compare_points_and_boxes_in_pixels():
    # Image 0 is 100 x 75 (w x h) px, padded beside a 160 x 75 one; levels of stride 8 and 32. Level 0: 20 cells
    # wide, image 0 has ceil(100 * 20 / 160) = 13 valid (ratio 0.65), covering 104 px; level 1: 5 wide, 4 valid
    # (ratio 0.8), covering 128 px. The records give locations in [0, 1] of those valid cells (the official
    # model's frame), so x = 0.75 is pixel 78 at level 0 but pixel 96 at level 1, and x = 0.95 is pixel 98.8 at
    # level 0 but 121.6 (beyond the image) at level 1. The box spans x in [90, 100] px, all rows.
    weights = torch.tensor([[0.1, 0.2], [0.3, 0.4]]).view(1, 1, 1, 2, 2).repeat(2, 1, 1, 1, 1)
    locations = torch.tensor([[0.75, 0.5], [0.95, 0.5]]).view(1, 1, 1, 1, 2, 2).repeat(2, 1, 1, 2, 1, 1)
    reference = torch.tensor([0.5, 0.5, 0.2, 0.2]).view(1, 1, 1, 4).repeat(2, 1, 2, 1)  # a reference box
    valid_ratios = torch.tensor([[[0.65, 1.0], [0.8, 1.0]], [[1.0, 1.0], [1.0, 1.0]]])
    record = PointsRecord(weights, locations, reference, torch.tensor([[10, 20], [3, 5]]), valid_ratios)
    maps = AttentionMaps(
        [record.key_weights()], keys="points", queries="queries", records=[record], key_strides=(8, 32)
    )
    targets = [
        {"boxes": torch.tensor([[0.95, 0.5, 0.1, 1.0]]), "orig_size": torch.tensor([75, 100])},
        {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "orig_size": torch.tensor([75, 160])},
    ]
    for target in targets:
        target["size"] = target["orig_size"]
    matched = compute_paibb(maps, targets, [(torch.tensor([0]), torch.tensor([0]))] * 2)
    # inside: level 0 point 1 (98.8 px) and level 1 point 0 (96 px) = 0.2 + 0.3 (in the valid frame: 0.2 + 0.4)
    assert matched.values[0, 0, 0].item() == pytest.approx(0.5, abs=1e-6)
    # spread: pixel distances from the reference centre (0.5 of the valid cells: 52 px at level 0, 64 px at
    # level 1) over the box width, 10 px: (0.1 * 26 + 0.2 * 46.8 + 0.3 * 32 + 0.4 * 57.6) / 10
    assert matched.spread[0, 0, 0].item() == pytest.approx(4.46, abs=1e-5)
    # image 1 is unpadded and 160 px = 20 * 8 = 5 * 32: its valid cells cover exactly the image, as before
    image, query, box = torch.tensor([1]), torch.tensor([0]), targets[1]["boxes"]
    inside, spread = point_readings([record], image, query, box)
    assert matched.values[0, 1].item() == pytest.approx(inside.item())
    assert matched.spread[0, 1].item() == pytest.approx(spread.item())


@torch.no_grad()
def test_declared_level_strides_match_the_levels_the_model_makes():
    model = build_model(load_config("shapes_tiny", TINY_DEFORMABLE)).eval()
    strides = {site.name: site.key_strides for site in model.attention_sites()}
    assert strides == {"encoder_self": (8, 16, 32), "decoder_self": None, "decoder_cross": (8, 16, 32)}
    outputs, maps = record_attention(model, [torch.randn(3, 75, 100)])
    shapes = outputs.attention["decoder_cross"][0].level_shapes.tolist()
    assert shapes == [[-(-75 // s), -(-100 // s)] for s in strides["decoder_cross"]]  # ceil(side / stride) cells
    assert maps["decoder_cross"].key_strides == (8, 16, 32)


def test_a_narrow_model_trains_on_an_image_whose_coarsest_level_is_one_cell():
    """hidden_dim=32 made GroupNorm groups of one channel: a 1×1 level (64 px, four levels) stopped training on one
    image ('Expected more than 1 value per channel when training') and normalised to a constant on several."""
    model = build_model(load_config("shapes_tiny", [*TINY_DEFORMABLE, "model.deformable.num_feature_levels=4"]))
    outputs = model.train()(torch.randn(1, 3, 64, 64))
    assert outputs.pred_logits.isfinite().all()
    srcs, _, _ = model.levels(as_padded_batch([torch.randn(3, 64, 64)]))
    assert srcs[-1].shape == (1, 32, 1, 1) and srcs[-1].std() > 0.5  # the level's cells still tell channels apart
    config = load_config("shapes_tiny", ["model.arch=deformable_detr", "model.transformer.hidden_dim=64"])
    official = build_model(config)
    assert {proj[1].num_groups for proj in official.input_proj} == {32}  # the official 32 groups from 64 channels


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.deformable.enc_n_points=0", "model.deformable.enc_n_points must be at least 1, got 0"),
        ("model.deformable.dec_n_points=-1", "model.deformable.dec_n_points must be at least 1"),
        ("model.num_queries=0", "model.num_queries must be at least 1"),
        ("model.transformer.dec_layers=0", "model.transformer.dec_layers must be at least 1"),
        ("model.transformer.nheads=5", r"model.transformer.hidden_dim \(32\) must be a positive multiple of model"),
    ],
)
def test_impossible_sizes_are_named_before_the_model_is_built(override, message):
    """They used to fail inside PyTorch ('Given groups=1, expected weight...', 'cannot reshape tensor of 0
    elements', 'stack expects a non-empty TensorList', 'd_model 32 is not divisible by n_heads 5')."""
    for arch_options in ([], TINY_DEFORMABLE):
        if "deformable" in override and not arch_options:
            continue
        with pytest.raises(ConfigError, match=message):
            build_model(load_config("shapes_tiny", [*SMALL_MODEL, *arch_options, override]))


def test_tvmax_is_refused_at_sampling_point_sites():
    config = load_config("shapes_tiny", [*TINY_DEFORMABLE, "model.attention.decoder_cross.activation=tvmax"])
    with pytest.raises(ConfigError, match=r"model\.attention\.decoder_cross\.activation: tvmax needs keys") as error:
        build_model(config)
    assert "no site of this model takes it, or use a map of ['alpha_entmax'" in str(error.value)
    assert "[]" not in str(error.value)
    config = load_config("shapes_tiny", [*TINY_DEFORMABLE, "model.attention.decoder_cross.activation=alpha_entmax"])
    assert build_model(config).transformer.decoder.layers[0].cross_attn.activation.alpha.shape == (4,)


def test_sampling_figure_draws_zero_weight_points_hollow():
    weights = torch.rand(1, 2, 3, 2, 2)
    weights[0, 1, :, 1] = 0.0  # level 1 of query 1 is switched off in every head
    record = PointsRecord(weights, torch.rand(1, 2, 3, 2, 2, 2), torch.rand(1, 2, 2, 2), torch.ones(2, 2), None)
    figure = sampling_figure(np.zeros((40, 60, 3)), record, 0, 1, boxes=[((5, 5, 30, 20), "cyan")])
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == ["all heads (6 zero)", "head 0 (2 zero)", "head 1 (2 zero)", "head 2 (2 zero)"]
    hollow = [c for ax in figure.axes for c in ax.collections if len(c.get_facecolors()) == 0]
    assert sum(len(c.get_offsets()) for c in hollow) == 12  # 6 in the all-heads panel, 2 in each head's


def test_every_level_of_the_official_four_is_visible_on_the_legend_and_apart_from_the_boxes():
    """Level 3 of the official 4-level model was white: invisible in the (white) legend and as a hollow point."""
    weights = torch.rand(1, 1, 2, 4, 2)
    record = PointsRecord(weights, torch.rand(1, 1, 2, 4, 2, 2), torch.rand(1, 1, 4, 2), torch.ones(4, 2), None)
    figure = sampling_figure(np.zeros((40, 60, 3)), record, 0, 0, boxes=[])
    handles = figure.legends[0].legend_handles
    levels = [h.get_color() for h in handles if h.get_label().startswith("level ")]
    assert len(levels) == 4 and len(set(levels)) == 4
    for color in levels:
        r, g, b = to_rgb(color)
        assert 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.85, color  # relative luminance: not white on white
        assert to_rgb(color) not in (to_rgb(PREDICTION_COLOR), to_rgb(TRUTH_COLOR)), color


def test_the_title_names_only_the_box_colours_drawn():
    """The encoder's pixel figures (ground truth only) and figures of the user's own images (predictions only) said
    'boxes: prediction (red), ground truth (cyan)'."""
    weights = torch.rand(1, 1, 2, 1, 2)
    record = PointsRecord(weights, torch.rand(1, 1, 2, 1, 2, 2), torch.rand(1, 1, 1, 2), torch.ones(1, 2), None)
    image = np.zeros((40, 60, 3))
    truth_only = sampling_figure(image, record, 0, 0, boxes=[((5, 5, 30, 20), TRUTH_COLOR)], title="t")
    assert truth_only._suptitle.get_text() == "t\nboxes: ground truth (cyan)"
    both = [((5, 5, 30, 20), TRUTH_COLOR), ((1, 1, 9, 9), PREDICTION_COLOR)]
    assert sampling_figure(image, record, 0, 0, boxes=both)._suptitle.get_text().endswith("ground truth (cyan)")
    assert sampling_figure(image, record, 0, 0, boxes=[], title="t")._suptitle.get_text() == "t"


def test_sampling_figure_draws_points_where_the_model_samples_them():
    # Image 100 x 75 (w x h); level 0 of stride 8 has 13 x 10 cells (104 x 80 px), level 1 of stride 32 4 x 3 cells
    # (128 x 96 px). The location (0.75, 0.5) of each level's valid cells is pixel (78, 40) at level 0 and (96, 48)
    # at level 1 (it was drawn at (75, 37.5) for both); the reference (0.5, 0.5) at level 0's (52, 40).
    weights = torch.ones(1, 1, 1, 2, 1) / 2
    locations = torch.tensor([0.75, 0.5]).expand(1, 1, 1, 2, 1, 2)
    reference = torch.tensor([0.5, 0.5]).expand(1, 1, 2, 2)
    record = PointsRecord(weights, locations, reference, torch.tensor([[10, 13], [3, 4]]), torch.ones(1, 2, 2))
    figure = sampling_figure(np.zeros((75, 100, 3)), record, 0, 0, level_strides=(8, 32))
    ax = figure.axes[0]
    drawn = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])  # the levels at once
    np.testing.assert_allclose(sorted(drawn.tolist()), [[78.0, 40.0], [96.0, 48.0]], atol=1e-4)
    np.testing.assert_allclose(ax.lines[0].get_xydata(), [[52.0, 40.0]], atol=1e-4)


@pytest.mark.parametrize("arch", ["detr", "deformable_detr"])
def test_sine_position_encoding_is_the_official_formula_per_cell(arch: str):
    """Cell (i, j) of an image whose valid grid is h × w: y = (i + 1 + o) / h · 2π, x = (j + 1 + o) / w · 2π, with
    o = -0.5 for Deformable DETR and 0 for DETR (the official repositories); channel 2k and 2k + 1 of each half are
    sin and cos of the coordinate over 10000^(2k / F). Computed cell by cell here."""
    config = load_config(None, [f"model.arch={arch}", *SMALL_MODEL, "model.backbone.name=resnet18"])
    encoding = build_model(config).backbone[1]
    offset = -0.5 if arch == "deformable_detr" else 0.0
    mask = torch.ones(2, 3, 5, dtype=torch.bool)
    mask[0], mask[1, :2, :4] = False, False  # a full 3 x 5 image and a 2 x 4 one padded to it
    pos = encoding(mask)
    half = pos.shape[1] // 2
    for b, (h, w) in enumerate([(3, 5), (2, 4)]):
        for i in range(h):
            for j in range(w):
                for k in range(half):
                    freq = 10000 ** (2 * (k // 2) / half)
                    trig = np.sin if k % 2 == 0 else np.cos
                    y, x = (i + 1 + offset) / h * 2 * np.pi, (j + 1 + offset) / w * 2 * np.pi
                    assert pos[b, k, i, j].item() == pytest.approx(trig(y / freq), abs=1e-5), (b, k, i, j)
                    assert pos[b, half + k, i, j].item() == pytest.approx(trig(x / freq), abs=1e-5), (b, k, i, j)


def test_sparse_sampling_weights_keep_torchs_thread_count():
    """The first sparse map starts numba's thread pool, which set torch's OpenMP runtime to every core: a run with
    OMP_NUM_THREADS=1 then trained on 2 threads, its convolutions ~10x slower on a loaded 2-core machine."""
    script = (
        "import torch\n"
        "from sparse_detector.attention import Sparsemax\n"
        "from sparse_detector.attention.deformable import MSDeformAttn\n"
        "torch.set_num_threads(1)\n"
        "attention = MSDeformAttn(8, 2, 2, 2, Sparsemax())\n"
        "shapes = torch.tensor([[4, 4], [2, 2]])\n"
        "attention(torch.randn(1, 3, 8), torch.rand(1, 3, 2, 2), torch.randn(1, 20, 8), shapes)\n"
        "print(torch.get_num_threads())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split()[-1] == "1"


def test_gini_of_uniform_sampling_weights_is_not_negative():
    """A fresh Deformable DETR samples its 12 points (3 levels x 4) with exactly uniform weights; the float32 Gini
    came out at -1.2e-7, which analyze printed as '-0.000 ± 0.000'."""
    uniform = torch.full((2, 12), 1 / 12)
    assert (gini(uniform) == 0).all()
