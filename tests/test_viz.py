"""Figures: every ``visualize`` kind from a tiny run trained here, the attention overlay geometry, diagnostics."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox
from PIL import Image

from sparse_detector import build_model, load_config
from sparse_detector.attention.sites import PointsRecord
from sparse_detector.cli import main
from sparse_detector.cli.visualize import RUN_ONLY_KINDS
from sparse_detector.data.build import build_dataset
from sparse_detector.engine.diagnostics import read_diagnostics
from sparse_detector.engine.trainer import Trainer
from sparse_detector.runs import read_metrics
from sparse_detector.study import analyze_run
from sparse_detector.viz import kinds
from sparse_detector.viz.alpha import alpha_figure, alpha_history, value_decimals
from sparse_detector.viz.attention import COLORMAP, OVERLAY_ALPHA, ZERO_LEGEND, attention_figure, grey
from sparse_detector.viz.curves import EVALUATION_NOTE, TRAINING_NOTE, curves_figure, run_colors
from sparse_detector.viz.data import Sample, data_figure
from sparse_detector.viz.deformable import (
    FULL_WEIGHT_AREA,
    LEVEL_COLORS,
    MIN_AREA,
    marker_size,
    references_figure,
    sampling_figure,
)
from sparse_detector.viz.diagnostics import NO_GRADIENTS_NOTE, diagnostics_figure
from sparse_detector.viz.figure import DPI, FIGURES_RECORD, LabelledBox, save_figure, wrapped
from sparse_detector.viz.kinds import (
    FIGURE_KINDS,
    ImageItem,
    VisualizeRequest,
    cell_centre,
    load_images,
    pixel_cell,
    run_label,
    run_labels,
    visualize,
)
from sparse_detector.viz.matching import matching_figure
from sparse_detector.viz.sparsity import sparsity_figure

from .conftest import shapes_config

# shapes_config's model: 1 encoder layer, 2 decoder layers, 4 heads, 6 queries; 96 px images -> a 6 x 6 grid.
LAYERS, HEADS = 2, 4


@pytest.fixture(scope="module")
def runs(shapes, tmp_path_factory) -> dict[str, Path]:
    """An α-entmax run (2 steps, diagnostics every step, analysed) and a copy of it, for the multi-run kinds."""
    root = tmp_path_factory.mktemp("viz")
    run = root / "alpha"
    config = shapes_config(
        shapes,
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
        "train.diagnostics_every=1",
        "model.attention.decoder_cross.activation=alpha_entmax",
    )
    Trainer(config, run, progress=False).fit()
    analyze_run(run, "cpu")
    other = root / "alpha_copy"
    shutil.copytree(run, other)
    record = json.loads((other / "analysis" / "analysis.json").read_text())
    record["checkpoint"] = str(other / "checkpoint_best.pt")
    (other / "analysis" / "analysis.json").write_text(json.dumps(record))
    deformable = root / "deformable"  # for the deformable kind: sparse sampling weights in the cross-attention
    config = shapes_config(
        shapes,
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
        "model.arch=deformable_detr",
        "model.deformable.num_feature_levels=2",
        "model.deformable.enc_n_points=2",
        "model.deformable.dec_n_points=2",
        "model.attention.decoder_cross.activation=sparsemax",
        "train.diagnostics_every=1",
    )
    Trainer(config, deformable, progress=False).fit()
    return {
        "run": run,
        "other": other,
        "images": shapes["images"],
        "deformable": deformable,
        "shapes_val": shapes["val"],
    }


def check_image(path: Path, size: tuple[int, int] | None = None) -> None:
    """A readable image of ``size`` (width, height) whose pixels are not all alike."""
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        if size is not None:
            assert image.size == size, path
        pixels = np.asarray(image.convert("RGB"), dtype=float)
    assert pixels.std() > 10, f"{path} looks blank"


def kind_arguments(kind: str, runs: dict[str, Path]) -> list[str]:
    run, other = str(runs["run"]), str(runs["other"])
    return {
        "compare": [run, other],
        "curves": [run, other],
        "sparsity": [run, other],
        "encoder": [run, "--pixels", "40,50"],
        "attention": [run, str(runs["images"] / "val_000000.png"), "--queries", "0", "3"],
        "deformable": [str(runs["deformable"]), "--queries", "1"],
    }.get(kind, [run])


def test_every_kind_renders_from_a_trained_run(runs, tmp_path: Path, capsys):
    # attention: (heads + mean) columns x layers rows of 1.5 in panels, +1.2 in for the colour bar, +0.9 in titles.
    attention_size = (round((1.5 * (HEADS + 1) + 1.4) * DPI), round((1.65 * LAYERS + 0.9) * DPI))  # square images
    expected = {"attention": attention_size, "curves": (14 * DPI, round(6.5 * DPI)), "matching": (10 * DPI, 540)}
    for kind in FIGURE_KINDS:
        out = tmp_path / kind
        images = [] if kind in RUN_ONLY_KINDS else ["--num-images", "1"]  # run-only kinds refuse it
        assert main(["visualize", kind, *kind_arguments(kind, runs), "--output", str(out), *images]) == 0
        files = sorted(path for path in out.iterdir() if path.name != FIGURES_RECORD)
        assert files, kind
        for path in files:
            check_image(path, expected.get(kind))
    names = {p.name for p in (tmp_path / "attention").glob("*.png")}
    assert names == {"attention_decoder_cross_val_000000_q0.png", "attention_decoder_cross_val_000000_q3.png"}
    deformable = sorted(p.name for p in (tmp_path / "deformable").glob("*.png") if "_references_" not in p.name)
    assert [name.split("_q1_")[1] for name in deformable] == ["layer0.png", "layer1.png"]  # one per decoder layer
    assert all("_val_000000_" in name for name in deformable), "was named by image id: deformable_..._image1_q1_..."
    references = [p.name for p in (tmp_path / "deformable").glob("*.png") if "_references_" in p.name]
    assert len(references) == 1 and references[0].endswith("_q1.png")  # one per query, all layers in it
    assert "written:" in capsys.readouterr().out


def test_attention_draws_the_best_queries_of_many_and_counts_the_rest(runs, tmp_path: Path, caplog):
    """An untrained model's queries all scoring near the threshold made one figure per query: 50 for one image."""
    caplog.set_level(logging.INFO, "sparse_detector")
    run, image = str(runs["run"]), str(runs["images"] / "val_000000.png")
    argv = ["visualize", "attention", run, image, "--threshold", "0", "--output", str(tmp_path)]
    assert main([*argv, "--max-queries", "2"]) == 0
    assert len(list(tmp_path.glob("attention_*.png"))) == 2
    assert "val_000000: drew the 2 best of 6 queries" in caplog.text and "--max-queries 0 draws them all" in caplog.text
    caplog.clear()
    assert main([*argv, "--queries", "0", "1", "2"]) == 0  # chosen by the user: nothing left out to count
    assert len(list(tmp_path.glob("attention_*.png"))) == 3 and "drew the" not in caplog.text


def test_drawing_a_kind_again_removes_only_its_own_figures_it_did_not_draw_again(runs, tmp_path: Path, caplog):
    """Figures of the last drawing (other queries, images or a format) stayed beside the new ones, looking current."""
    caplog.set_level(logging.INFO, "sparse_detector")
    run, image = str(runs["run"]), str(runs["images"] / "val_000000.png")
    assert main(["visualize", "attention", run, image, "--queries", "0", "3", "--output", str(tmp_path)]) == 0
    assert main(["visualize", "curves", run, "--output", str(tmp_path)]) == 0
    (tmp_path / "my_figure.png").write_bytes(b"the user's own")
    assert main(["visualize", "attention", run, image, "--queries", "0", "--output", str(tmp_path)]) == 0
    names = {p.name for p in tmp_path.iterdir()} - {FIGURES_RECORD}
    assert names == {"attention_decoder_cross_val_000000_q0.png", "curves.png", "my_figure.png"}
    assert "removed 1 figure of the last attention drawing" in caplog.text
    assert main(["visualize", "curves", run, "--output", str(tmp_path), "--format", "svg"]) == 0
    assert not (tmp_path / "curves.png").exists() and (tmp_path / "curves.svg").is_file()
    assert (tmp_path / "my_figure.png").read_bytes() == b"the user's own"


def test_titles_name_the_quickstart_run_and_the_training_image_files(runs, tmp_path: Path, monkeypatch):
    """The quickstart's figures were titled 'train: ...' (its run folder), the data figure's images 'image id 3'."""
    quickstart = tmp_path / "quickstart-20261201-003000" / "train"
    assert run_label(quickstart) == "quickstart-20261201-003000/train"
    assert run_labels([quickstart, tmp_path / "mine"]) == ["quickstart-20261201-003000/train", "mine"]
    drawn = []
    monkeypatch.setattr(kinds, "data_figure", lambda samples, title: drawn.extend(samples) or data_figure(samples))
    visualize("data", VisualizeRequest(runs=[runs["run"]], output=tmp_path / "data", num_images=2))
    assert [sample.title for sample in drawn] == ["train_000000.png (id 1)", "train_000001.png (id 2)"]


def test_data_titles_tell_apart_images_of_one_name_in_two_folders(shapes, tmp_path: Path, monkeypatch):
    """Two cameras' IMG_0001.png were both titled 'IMG_0001.png (id N)'; their folders now tell them apart (and
    only then: a name of its own stays bare)."""
    files = ["cam_a/IMG_0001.png", "cam_b/IMG_0001.png", "cam_b/IMG_0002.png"]
    for file in files:
        (tmp_path / file).parent.mkdir(exist_ok=True)
        shutil.copy(shapes["images"] / "train_000000.png", tmp_path / file)
    images = [{"id": i, "file_name": file, "width": 96, "height": 96} for i, file in enumerate(files, 1)]
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 30, 30]} for i in (1, 2, 3)]
    data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "two_cameras.json").write_text(json.dumps(data))
    overrides = [f"data.train.annotations={tmp_path / 'two_cameras.json'}", f"data.train.images={tmp_path}"]
    drawn = []
    monkeypatch.setattr(kinds, "data_figure", lambda samples, title: drawn.extend(samples) or data_figure(samples))
    request = VisualizeRequest(runs=[Path("shapes_tiny")], output=tmp_path / "figs", num_images=3, overrides=overrides)
    visualize("data", request)
    assert [sample.title for sample in drawn] == [
        "cam_a/IMG_0001.png (id 1)",
        "cam_b/IMG_0001.png (id 2)",
        "IMG_0002.png (id 3)",
    ]


def test_visualize_takes_the_set_its_data_messages_advise(runs, shapes, tmp_path: Path, monkeypatch, capsys):
    """`visualize data my.yaml` without data.train.annotations advised `--set data.train.annotations=FILE.json`,
    which visualize did not take; `visualize data shapes_tiny` before the data was generated did not say how."""
    config = tmp_path / "mine.yaml"
    config.write_text("data:\n  train_scales: [96]\n  max_size: 96\n")
    argv = ["visualize", "data", str(config), "--num-images", "1", "--output", str(tmp_path / "figs")]
    assert main(argv) == 2
    assert "--set data.train.annotations=FILE.json" in capsys.readouterr().err
    paths = [f"data.train.annotations={shapes['train']}", f"data.train.images={shapes['images']}"]
    assert main([*argv, "--set", *paths]) == 0
    check_image(tmp_path / "figs" / "data_train.png")
    other_val = [f"data.val.annotations={shapes['train']}"]  # a run's figures drawn on other annotated images
    argv = ["visualize", "matching", str(runs["run"]), "--num-images", "1", "--output", str(tmp_path / "m")]
    assert main([*argv, "--set", *other_val]) == 0
    assert [p.name for p in (tmp_path / "m").glob("*.png")] == ["matching_train_000000.png"]
    assert main([*argv, "--set", "model.num_queries=3"]) == 2
    assert main(["visualize", "curves", str(runs["run"]), "--set", *other_val]) == 2
    assert "visualize curves reads the runs' records, not their config" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["visualize", "data", "shapes_tiny"]) == 2
    assert "sparse-detector data shapes data/shapes" in capsys.readouterr().err
    figures = ["--num-images", "1", "--output", str(tmp_path / "preset")]
    assert main(["visualize", "data", "shapes_tiny", *figures, "--set", *paths, "data.max_size=96"]) == 0, (
        "was: the preset's val.json is not there yet, though visualize data draws only the training data"
    )
    assert main(["visualize", "data", str(shapes["images"])]) == 2  # the data's folder: was 'holds no checkpoint'
    assert f"{shapes['images']} is not a run directory (no config.yaml or checkpoint): visualize data draws" in (
        capsys.readouterr().err
    )


def test_alpha_of_a_run_without_learnable_alpha_names_the_run(runs, tmp_path: Path, capsys):
    """`visualize alpha runs/al runs/a` said 'no learnable α in these records', not which run had none."""
    assert main(["visualize", "alpha", str(runs["run"]), str(runs["deformable"]), "--output", str(tmp_path)]) == 2
    assert f"{runs['deformable']} logged no learnable α" in capsys.readouterr().err


@pytest.mark.parametrize("fmt, magic", [("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_vector_formats(runs, tmp_path: Path, fmt: str, magic: bytes):
    assert main(["visualize", "curves", str(runs["run"]), "--output", str(tmp_path), "--format", fmt]) == 0
    assert (tmp_path / f"curves.{fmt}").read_bytes().startswith(magic)


def test_overlay_lights_the_cell_that_holds_the_mass():
    h, w, cell = 4, 5, (2, 3)
    image = np.full((80, 100, 3), 0.5)
    maps = np.zeros((1, 2, h, w))
    maps[0, :, cell[0], cell[1]] = 1.0
    maps[0, 1, 0, 0], maps[0, 1, cell[0], cell[1]] = 1e-4, 1 - 1e-4  # a tiny positive weight must still show
    figure = attention_figure(image, maps)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(float)
    axes = figure.axes[0]  # head 0
    cell_w, cell_h = 100 / w, 80 / h

    def colour_at(row: int, column: int, panel=axes) -> np.ndarray:
        x, y = panel.transData.transform(((column + 0.5) * cell_w, (row + 0.5) * cell_h))
        return pixels[round(pixels.shape[0] - y), round(x)]

    lit = colour_at(*cell)
    assert lit.max() - lit.min() > 80, "the cell holding the mass is coloured"
    top = np.array(colormaps[COLORMAP](1.0)[:3]) * 255
    under = grey(image)[0, 0] * 255
    expected = OVERLAY_ALPHA * top + (1 - OVERLAY_ALPHA) * under
    assert np.abs(lit - expected).max() < 3, f"it has the top colour of {COLORMAP} over the grey image"
    for row in range(h):
        for column in range(w):
            if (row, column) != cell:
                other = colour_at(row, column)
                assert other.max() - other.min() < 3, f"exact zero at {(row, column)} is left uncoloured"
    tiny = colour_at(0, 0, figure.axes[1])
    assert tiny.max() - tiny.min() > 20, "a small positive weight is coloured, unlike an exact zero"


@pytest.mark.parametrize("height, width", [(96, 96), (43, 128), (128, 43)])
def test_attention_panels_take_the_images_shape_and_row_labels_fit_their_row(height, width):
    # A 3:1 COCO image (640 x 213) was drawn in square 1.5-inch panels: thin strips in white, 6 x 9 panels filling a
    # quarter of the figure, and each row's label ("decoder_cross layer 0") 2.7 times as tall as its row, running
    # into the next row's.
    labels = [f"decoder_cross layer {i}" for i in range(6)]
    figure = attention_figure(np.full((height, width, 3), 0.5), np.full((6, 8, 2, 6), 1 / 12), labels, title="t")
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    panels = [axes for axes in figure.axes if axes.images]
    assert len(panels) == 6 * 9
    figure_area = np.prod(figure.get_size_inches() * figure.dpi)
    panel_area = sum(axes.get_window_extent().width * axes.get_window_extent().height for axes in panels)
    assert panel_area / figure_area > 0.5
    first = panels[0]
    label = first.yaxis.label
    row_pitch = first.get_window_extent().y1 - panels[9].get_window_extent().y1  # from one row's top to the next's
    assert label.get_window_extent(canvas.get_renderer()).height < row_pitch


@pytest.mark.parametrize("height, width", [(96, 960), (384, 96)])
def test_attention_panels_of_very_wide_or_tall_images_keep_their_labels_apart(height, width):
    """`visualize attention RUN panorama.jpg` (10:1): the rows were 0.2 inch tall and their labels ('decoder_cross'
    / 'layer 0') ran into each other and off the figure's bottom; a 1:4 image's panels were 0.56 inch wide, so the
    column titles read 'head 7mean of heads'. Each row is now as tall as its label's longest word and each column
    as wide as its title."""
    labels = [f"decoder_cross layer {i}" for i in range(3)]
    figure = attention_figure(np.full((height, width, 3), 0.5), np.full((3, 8, 2, 6), 1 / 12), labels, title="t")
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    panels = [axes for axes in figure.axes if axes.images]
    row_labels = [axes.yaxis.label.get_window_extent(renderer) for axes in panels[::9]]
    titles = [axes.title.get_window_extent(renderer) for axes in panels[:9]]
    for texts in (row_labels, titles):
        for i, first in enumerate(texts):
            assert figure.bbox.x0 <= first.x0 and first.x1 <= figure.bbox.x1
            assert figure.bbox.y0 <= first.y0 and first.y1 <= figure.bbox.y1
            assert not any(first.overlaps(second) for second in texts[i + 1 :])


def test_attention_figure_of_one_layer_and_head_keeps_its_title_on_the_page():
    """A run of 1 layer x 1 head drew its box legend ('boxes: prediction (red), ground truth (cyan); ground-truth
    classes not written ...; uncoloured cells: ...') as one line cut at both edges of the 6-inch figure, and its row
    label as 'decoder_cross layer' / '0'."""
    crowd = [LabelledBox((i, i, i + 10, i + 10), "RBC") for i in range(10)]
    prediction = [LabelledBox((5, 5, 60, 40), "q8 RBC 0.75")]
    figure = attention_figure(
        np.full((96, 128, 3), 0.5),
        np.full((1, 1, 6, 8), 1 / 48),
        ["decoder_cross layer 0"],
        prediction,
        crowd,
        title="detr_bccd_1h: decoder_cross, BloodImage_00008, query 8",
    )
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    title = figure._suptitle.get_window_extent(canvas.get_renderer())
    assert title.x0 >= 0 and title.x1 <= figure.get_size_inches()[0] * figure.dpi
    assert "ground-truth classes not written" in figure.get_suptitle().replace("\n", " ")
    assert figure.axes[0].get_ylabel() == "decoder_cross\nlayer 0"


def test_box_texts_near_the_right_edge_stay_on_their_panel():
    """A 'wine glass' box at a COCO image's right edge wrote its class name over the gap into the next head's
    panel; a box starting in the right half has its text end at its right edge."""
    truth = [LabelledBox((100, 40, 126, 60), "wine glass"), LabelledBox((4, 40, 30, 60), "person")]
    figure = attention_figure(np.full((96, 128, 3), 0.5), np.full((1, 2, 6, 8), 1 / 48), ground_truth=truth)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    for panel in (axes for axes in figure.axes if axes.images):
        texts = {text.get_text(): text for text in panel.texts}
        to_display = panel.transData.transform
        glass, person = (texts[name].get_window_extent(renderer) for name in ("wine glass", "person"))
        assert glass.x1 <= to_display((126, 0))[0] + 2 and person.x0 >= to_display((4, 0))[0] - 2  # at their corners
        for text in texts.values():
            extent, frame = text.get_window_extent(renderer), panel.get_window_extent()
            assert frame.x0 - 2 <= extent.x0 and extent.x1 <= frame.x1 + 2, text.get_text()


def test_grid_cells_are_drawn_on_their_pixels_when_sides_are_not_multiples_of_the_stride():
    # A 100 x 75 (w x h) model input at stride 32 has a 3 x 4 grid over 128 x 96 pixels: the overlay spans those
    # pixels, cut at the image's border (it was stretched over the 100 x 75 image, each cell 25 px wide).
    image = np.full((75, 100, 3), 0.5)
    figure = attention_figure(image, np.ones((1, 1, 3, 4)) / 12, stride=32)
    axes = figure.axes[0]
    assert axes.images[1].get_extent() == [0, 128, 96, 0]
    assert axes.get_xlim() == (0, 100) and axes.get_ylim() == (75, 0)
    assert attention_figure(image, np.ones((1, 1, 3, 4)) / 12).axes[0].images[1].get_extent() == [0, 100, 75, 0]
    item = ImageItem("image", torch.zeros(3, 75, 100), None, image, (150, 200))  # the original is twice as large
    assert pixel_cell(item, 180, 10, 3, 4, stride=32) == (0, 2)  # model pixel 90: cell 2 (stretched: cell 3)
    assert pixel_cell(item, 199, 149, 3, 4, stride=32) == (2, 3)
    assert pixel_cell(item, 180, 10, 3, 4) == (0, 3)
    assert cell_centre(item, 2, 3, 3, 4, stride=32) == (98.0, 69.5)  # the centre of the cell's part in the image


def test_diagnostics_record_weights_gradients_and_entropy(runs):
    records = read_diagnostics(runs["run"])
    assert [r["step"] for r in records] == [0, 1, 2]
    assert "gradients" not in records[0] and records[0]["weights"]
    layers = list(records[0]["weights"])
    backbone = [layer for layer in layers if layer.startswith("backbone")]
    assert backbone, "the backbone's layers are recorded"
    assert all(records[1]["gradients"][layer]["norm"] > 0 for layer in backbone), "gradients reach the backbone"
    for record in records:
        for stats in record["weights"].values():
            assert len(stats["histogram"]) == 41
        assert {len(v) for v in record["entropy"].values()} <= {1, 2}
    figure = diagnostics_figure(records)
    FigureCanvasAgg(figure).draw()
    entropy = next(axes for axes in figure.axes if axes.get_legend())
    assert "entropy" in entropy.get_title()
    # was: the legend (a line per site and layer) sat over the entropy curves
    assert entropy.get_legend().get_window_extent().x0 >= entropy.get_window_extent().x1


def test_diagnostics_of_a_run_stopped_before_its_first_gradients_say_so():
    """Only the step-0 record (train.diagnostics_every beyond the steps trained): the gradient panels were empty
    axes with layer names and colour bars from -0.1 to 0.1."""
    weights = {"linear": {"std": 1.0, "histogram": [1] * 41}}
    figure = diagnostics_figure([{"step": 0, "weights": weights, "entropy": {"decoder_cross": [2.0]}}])
    gradients = [axes for axes in figure.axes if axes.get_title().startswith("gradient")]
    assert [[text.get_text() for text in axes.texts] for axes in gradients] == [[NO_GRADIENTS_NOTE]] * 2
    assert not any(axes.get_label() == "<colorbar>" for axes in figure.axes)


def test_weight_histograms_are_scaled_per_layer_so_a_spike_hides_no_other_layer():
    spike, spread = [0] * 20 + [100] + [0] * 20, [0] * 10 + [5] * 21 + [0] * 10  # sampling offsets at 0; a layer
    weights = {"offsets": {"std": 1.0, "histogram": spike}, "linear": {"std": 1.0, "histogram": spread}}
    gradients = {"offsets": {"norm": 1.0, "std": 0.1}, "linear": {"norm": 1.0, "std": 0.1}}
    records = [{"step": 0, "weights": weights, "entropy": {"decoder_cross": [2.0]}}]
    records += [
        {"step": s, "weights": weights, "gradients": gradients, "entropy": {"decoder_cross": [1.9]}} for s in (1, 2)
    ]
    figure = diagnostics_figure(records, title="run")
    histogram = next(ax for ax in figure.axes if ax.get_title().startswith("weights at step 0"))
    shown = histogram.get_images()[0].get_array()
    assert shown[0].max() == shown[1].max() == 1  # the spread layer was drawn at 0.05 of the spike's colour
    assert figure.get_suptitle() == "run"
    norm_axes = next(ax for ax in figure.axes if ax.get_title().startswith("gradient norm"))
    assert "white: gradient exactly 0 or not recorded" in norm_axes.get_title()  # it said 'no gradient'


def test_visualize_errors_name_what_to_do(runs, tmp_path: Path, capsys):
    run = str(runs["other"])
    (runs["other"] / "diagnostics.jsonl").unlink()
    assert main(["visualize", "diagnostics", run, "--output", str(tmp_path)]) == 2
    assert "train.diagnostics_every" in capsys.readouterr().err
    assert main(["visualize", "compare", run, "--output", str(tmp_path)]) == 2
    assert "two or more runs" in capsys.readouterr().err
    missing = str(tmp_path / "no-such-run")  # was read as an image: "neither an image file nor a folder"
    assert main(["visualize", "curves", run, missing, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err  # was "<missing>/metrics.jsonl does not exist: is <missing> a run directory?"
    assert f"run directory {missing} does not exist" in err and "metrics.jsonl" not in err
    (tmp_path / "empty").mkdir()
    assert main(["visualize", "curves", str(tmp_path / "empty"), "--output", str(tmp_path)]) == 2
    assert f"{tmp_path / 'empty'}/metrics.jsonl does not exist: is" in capsys.readouterr().err
    assert main(["visualize", "diagnostics", missing, "--output", str(tmp_path)]) == 2
    assert f"run directory {missing} does not exist" in capsys.readouterr().err
    stray = tmp_path / "notes.txt"  # was: "./metrics.jsonl does not exist: is . a run directory?"
    stray.write_text("not a run")
    assert main(["visualize", "curves", str(stray), "--output", str(tmp_path)]) == 2
    assert f"{stray} is a file, and its folder {tmp_path} holds no metrics.jsonl" in capsys.readouterr().err
    deformable = str(runs["deformable"])
    assert main(["visualize", "compare", run, deformable, "--output", str(tmp_path)]) == 2  # was a TypeError
    assert "site decoder_cross has points keys" in capsys.readouterr().err
    assert main(["visualize", "encoder", deformable, "--output", str(tmp_path)]) == 2
    err = (
        capsys.readouterr().err
    )  # was "no site of grid over the feature grid to draw; its sites: ... (grid over points)"
    assert (
        "(deformable_detr): the model has no site of feature-grid cells over the feature grid to draw (its sites: "
        in err
    )
    assert "encoder_self (feature-grid cells over sampling points), decoder_self (object queries over object " in err
    assert "draw its sampling points instead with: sparse-detector visualize deformable" in err
    assert main(["visualize", "attention", run, "--site", "encoder_self", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err  # was drawn: grid cell q as if it were object query q
    assert "queries of site encoder_self are feature-grid cells, not object queries" in err
    assert "sparse-detector visualize encoder" in err and not list(tmp_path.glob("attention_*"))
    assert main(["visualize", "encoder", run, "--pixels", "500,40", "--output", str(tmp_path)]) == 2  # was clamped
    assert "--pixels 500,40 is outside val_000000 (96 x 96 px)" in capsys.readouterr().err
    assert main(["visualize", "deformable", deformable, "--pixels", "10,-1", "--output", str(tmp_path)]) == 2
    assert "--pixels 10,-1 is outside val_000000" in capsys.readouterr().err
    assert main(["visualize", "deformable", run, "--output", str(tmp_path)]) == 2  # was "...: []"
    err = capsys.readouterr().err
    assert "(detr): the model has no site of object queries over sampling points (its sites: encoder_self " in err
    assert "decoder_cross (object queries over the feature grid)" in err
    assert "draw its attention with: sparse-detector visualize attention" in err


def test_a_failed_drawing_leaves_no_figures_folder(runs, tmp_path: Path, capsys):
    """`visualize attention runs/mistyped` made an empty runs/figures (the default output beside the missing run)
    before it said the checkpoint does not exist."""
    missing = tmp_path / "runs" / "mistyped"
    missing.parent.mkdir()
    assert main(["visualize", "attention", str(missing)]) == 2
    assert f"checkpoint {missing} does not exist" in capsys.readouterr().err
    assert not (missing.parent / "figures").exists()


def test_visualize_of_an_image_that_does_not_exist_says_so(runs, tmp_path: Path, capsys):
    """`visualize attention RUN photos/thre.jpg` said 'neither an image file nor a folder'."""
    (tmp_path / "there.jpg").touch()
    assert (
        main(["visualize", "attention", str(runs["run"]), str(tmp_path / "thre.jpg"), "--output", str(tmp_path)]) == 2
    )
    assert f"input {tmp_path / 'thre.jpg'} does not exist (did you mean {tmp_path / 'there.jpg'}?)" in (
        capsys.readouterr().err
    )


def test_analyze_reads_the_thesis_paibb_only_when_asked(runs, tmp_path: Path, capsys):
    run = str(runs["run"])
    assert main(["analyze", "--checkpoint", run, "--paibb-upsampled", "--output", str(tmp_path / "a")]) == 0
    assert "Thesis-compatible PAIBB at decoder_cross" in capsys.readouterr().out
    paibb = json.loads((tmp_path / "a" / "analysis.json").read_text())["attention"]["sites"]["decoder_cross"]["paibb"]
    assert 0 <= paibb["upsampled_last_layer"]["overall"]["mean"] <= 1
    default = json.loads((runs["run"] / "analysis" / "analysis.json").read_text())["attention"]["sites"]
    assert "upsampled_last_layer" not in default["decoder_cross"]["paibb"], "the exact grid coverage stays the default"
    deformable = ["analyze", "--checkpoint", str(runs["deformable"]), "--output", str(tmp_path / "d")]
    assert main([*deformable, "--paibb-upsampled"]) == 2  # was silently left out of the output
    assert "this model has none (its queries sample points), or leave --paibb-upsampled out" in capsys.readouterr().err
    assert main(["analyze", "--checkpoint", run, "--paibb-upsampled", "--sites", "encoder_self"]) == 2
    assert "add one of ['decoder_cross'] to --sites" in capsys.readouterr().err
    assert main([*deformable, "--zero-threshold", "-1"]) == 2  # was accepted: every zeros ratio read 0
    assert "--zero-threshold must be >= 0" in capsys.readouterr().err
    assert main([*deformable, "--zero-threshold", "nan"]) == 2  # was accepted: every zeros ratio read 1
    assert "must be >= 0 and below 1" in capsys.readouterr().err
    assert main([*deformable, "--zero-threshold", "1"]) == 2  # was accepted: every zeros ratio read 1
    assert "weights are at most 1, so 1 or more reads every key as zero), got 1.0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_predict_draws_each_detections_attention(runs, tmp_path: Path, capsys):
    image = runs["images"] / "val_000001.png"
    argv = ["predict", "--checkpoint", str(runs["run"]), str(image), "--output", str(tmp_path), "--threshold", "0"]
    assert main([*argv, "--attention"]) == 0
    assert "attention of each detection" in capsys.readouterr().out
    # one panel per detection: all 6 queries pass threshold 0 -> 6 panels of 1.5 in + 1.4 in for the colour bar
    check_image(tmp_path / "val_000001_attention.png", (round((1.5 * 6 + 1.4) * DPI), round((1.65 + 0.9) * DPI)))


def test_predict_attention_wraps_many_detections_into_rows(runs, tmp_path: Path, monkeypatch):
    """50 detections (BCCD's loosely placed RBC boxes) were 50 panels in one row, a picture 75 inches wide with the
    colour bar squeezed to a stub; rows now hold at most ``DETECTIONS_PER_ROW`` panels, each titled by its detection."""
    monkeypatch.setattr(kinds, "DETECTIONS_PER_ROW", 4)  # the shapes model has 6 queries: rows of 4 and 2
    figures = []
    monkeypatch.setattr(kinds, "save_figure", lambda figure, path, fmt="png": figures.append(figure) or Path(path))
    image = str(runs["images"] / "val_000001.png")
    argv = ["predict", "--checkpoint", str(runs["run"]), image, "--output", str(tmp_path), "--threshold", "0"]
    assert main([*argv, "--attention"]) == 0
    (figure,) = figures
    panels = [axes for axes in figure.axes if axes.images]
    assert len(panels) == 6
    assert len({round(axes.get_position().y0, 3) for axes in panels}) == 2
    assert sorted(axes.get_title().split()[0] for axes in panels) == [f"q{q}" for q in range(6)]


def test_predict_says_which_photos_viewers_show_turned(runs, tmp_path: Path, caplog):
    """A phone photo with an EXIF orientation: predict's boxes are in the stored pixels while every viewer shows
    the photo turned, and nothing said so; the record now carries its orientation and a warning names it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    with Image.open(runs["images"] / "val_000001.png") as image:
        image.convert("RGB").save(tmp_path / "phone.jpg", exif=exif.tobytes())
    shutil.copy(runs["images"] / "val_000002.png", tmp_path / "plain.png")
    out = tmp_path / "out"
    argv = ["predict", "--checkpoint", str(runs["run"]), str(tmp_path / "phone.jpg"), str(tmp_path / "plain.png")]
    assert main([*argv, "--output", str(out)]) == 0
    records = json.loads((out / "predictions.json").read_text())
    assert [record.get("exif_orientation") for record in records] == [6, None]
    assert "1 image(s) carry an EXIF orientation" in caplog.text and "phone.jpg" in caplog.text


def test_visualize_skips_an_unreadable_image_and_names_turned_ones(runs, tmp_path: Path, caplog, capsys):
    """`visualize attention RUN photos/` stopped at the first unreadable image (exit 2, later images not drawn) and
    said nothing of a photo viewers show turned; it now skips and names the unreadable one and exits 1, as predict
    does, and warns of the turned photo as predict does."""
    photos = tmp_path / "photos"
    photos.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    with Image.open(runs["images"] / "val_000001.png") as image:
        image.convert("RGB").save(photos / "a_phone.jpg", exif=exif.tobytes())
    (photos / "b_broken.jpg").write_bytes(b"not an image")
    shutil.copy(runs["images"] / "val_000002.png", photos / "c_plain.png")
    out = tmp_path / "figs"
    argv = ["visualize", "attention", str(runs["run"]), str(photos), "--max-queries", "1", "--output", str(out)]
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 1
    drawn = sorted(path.name for path in out.glob("*.png"))
    assert len(drawn) == 2 and "a_phone" in drawn[0] and "c_plain" in drawn[1]
    assert "1 image(s) could not be read" in capsys.readouterr().err and "b_broken.jpg" in caplog.text
    assert "1 image(s) carry an EXIF orientation" in caplog.text and "a_phone.jpg" in caplog.text


def test_references_figure_labels_every_decoder_layer():
    """One reference point per layer, in layer order, joined by arrows; layers at the same point, or closer than a
    label's size on the figure, share a label and no arrow: a point moved by a rounding error drew a stray arrowhead
    beside it, and labels of points a pixel apart were drawn over each other (only the last one readable)."""

    def record(x: float, y: float) -> PointsRecord:
        reference = torch.tensor([x, y]).expand(1, 1, 1, 2)  # (B, Lq, L, 2)
        weights, locations = torch.ones(1, 1, 1, 1, 1), torch.zeros(1, 1, 1, 1, 1, 2)
        return PointsRecord(weights, locations, reference, torch.tensor([[4, 4]]), torch.ones(1, 1, 2))

    image = np.random.default_rng(0).random((40, 80, 3))
    # 80 px drawn 5 inches wide: a 12-point label spans 2.7 px; layers 2 and 3 lie 0.8 px apart, 4 is 4 px from 3
    layers = [record(0.5, 0.5), record(0.5, 0.5 + 1e-4), record(0.25, 0.75), record(0.26, 0.75), record(0.31, 0.75)]
    ax = references_figure(image, layers, 0, 0).axes[0]
    labels = [text.get_text() for text in ax.texts]
    assert labels == ["", "", "0,1", "2,3", "4"]  # arrows 1 -> 2 and 3 -> 4, then the labels
    spots = [xy for line in ax.lines for xy in line.get_xydata().ravel().tolist()]
    assert spots == pytest.approx([40.0, 20.0, 20.0, 30.0, 24.8, 30.0], abs=1e-5)
    boxed = references_figure(image, [record(0.5, 0.5)], 0, 0, [((10, 10, 30, 30), "red")], title="run: q0")
    assert boxed.get_suptitle() == "run: q0\nboxes: prediction (red)"  # was unexplained; names only what is drawn


def test_a_short_run_has_whole_step_and_epoch_ticks_and_plain_alpha_values():
    records = [{"type": "train", "step": s, "loss": 20.0 - s, "class_error": 80.0} for s in (1, 2, 3, 4)]
    records.append({"type": "epoch", "step": 4, "epoch": 1, "AP": 0.1, "train_loss": 18.0, "val_loss": 17.0})
    for record in records[:4]:  # two heads near 1.5, one of them moving by less than 1e-3
        record["alpha"] = {"decoder.layers.0.cross_attn.activation": [1.5 + 1e-4 * record["step"], 1.5]}
    curves, alpha = curves_figure({"run": records}), alpha_figure(records)
    for figure in (curves, alpha):
        FigureCanvasAgg(figure).draw()
    for ax in [*(a for a in curves.axes if not a.texts), alpha.axes[-1]]:  # panels with a note have no ticks
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)
    for ax in alpha.axes:  # α itself on the curves and the heat map's colour bar, not "+1.5" and an offset
        assert ax.yaxis.get_offset_text().get_text() == "", ax.get_title()


def test_a_folder_of_images_is_drawn_not_taken_for_a_run(runs, tmp_path: Path):
    """`visualize encoder RUN FOLDER` drew the run's validation images instead: the folder was taken for a run."""
    folder = tmp_path / "mine"
    folder.mkdir()
    with Image.open(runs["images"] / "val_000000.png") as image:
        image.crop((0, 0, 96, 64)).save(folder / "wide.png")
    for kind, run, options in (("encoder", runs["run"], []), ("deformable", runs["deformable"], ["--queries", "1"])):
        out = tmp_path / kind
        assert main(["visualize", kind, str(run), str(folder), "--output", str(out), *options]) == 0
        names = [p.name for p in out.glob("*.png")]
        assert names and all("_wide_" in n for n in names), names


def test_deformable_pixels_draw_the_encoder_sampling(runs, tmp_path: Path):
    """``--pixels``: per pixel and encoder layer, the sampling points of the grid cell containing the pixel."""
    args = [str(runs["deformable"]), "--queries", "1", "--pixels", "40,50", "1,1", "--num-images", "1"]
    assert main(["visualize", "deformable", *args, "--output", str(tmp_path)]) == 0
    encoder = sorted(p for p in tmp_path.iterdir() if "_encoder_" in p.name)
    for path in encoder:
        check_image(path)
    names = [p.name.split("_", 3)[3] for p in encoder]  # <image>_r<row>c<column>_layer<layer>.png
    assert len(names) == 2 and all(n.endswith("_layer0.png") for n in names)  # two pixels x one encoder layer
    assert any("_r0c0_" in n for n in names), names  # the top-left pixel is in the top-left cell


def test_an_official_deformable_checkpoint_is_drawn_with_its_arch(runs, tmp_path: Path):
    """`visualize --official` read every checkpoint as official DETR, and its error said to pass --arch, which
    visualize did not take; it takes --arch / --nheads / --dilation as evaluate does."""
    config = load_config(runs["deformable"] / "config.yaml", ["model.backbone.norm=frozen_bn"])
    path = tmp_path / "r50_deformable_detr-checkpoint.pth"
    torch.save({"model": build_model(config).state_dict()}, path)  # the official layout: weights only
    image = str(runs["images"] / "val_000000.png")
    options = ["--official", "--arch", "deformable_detr", "--nheads", "4", "--queries", "1"]
    assert main(["visualize", "deformable", str(path), image, *options, "--output", str(tmp_path / "out")]) == 0
    assert any(p.name.startswith("deformable_references_") for p in (tmp_path / "out").iterdir())


def test_ground_truth_is_named_as_the_data_set_names_it(runs, tmp_path: Path):
    """An official checkpoint names its predictions by COCO's names; the ground truth of a data set whose JSON names
    its categories otherwise was drawn under COCO's names too (category 1 'circle' read 'person')."""
    data = json.loads(runs["shapes_val"].read_text())
    for category in data["categories"]:
        category["name"] = f"my {category['name']}"
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps(data))
    config = load_config(runs["run"] / "config.yaml", [f"data.val.annotations={renamed}", "data.label_mode=coco_ids"])
    item = load_images(config, VisualizeRequest([runs["run"]], tmp_path, num_images=1))[0]
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert item.truth_names == [names[int(label)] for label in item.target["labels"]]
    assert item.truth_names and all(name.startswith("my ") for name in item.truth_names)


def test_a_photo_named_like_a_validation_image_is_drawn_as_itself(runs, tmp_path: Path):
    """Given photos/IMG_0001.JPG while the validation data held another IMG_0001.JPG (phones name every photo so),
    visualize drew the validation image, with its ground truth, in place of the photo: images were matched by file
    name. They are matched by file now; the validation image's own path still brings its ground truth."""
    data = json.loads(runs["shapes_val"].read_text())
    val_image = runs["images"] / Path(data["images"][0]["file_name"]).name
    photo = tmp_path / "photos" / val_image.name
    photo.parent.mkdir()
    Image.new("RGB", (40, 30), (255, 255, 255)).save(photo)
    config = load_config(runs["run"] / "config.yaml")
    own, val = load_images(config, VisualizeRequest([runs["run"]], tmp_path, images=[photo, val_image]))
    assert own.target is None and own.orig_size == (30, 40) and own.picture.min() > 0.99
    assert val.target is not None and val.orig_size != (30, 40)


def test_a_validation_image_given_by_path_is_decoded_once(runs, tmp_path: Path, monkeypatch):
    """visualize decoded a given image, then decoded it again as the validation data's sample for its ground truth;
    it is decoded once now, and drawn as the validation data gives it."""
    import sparse_detector.data.coco as coco
    import sparse_detector.engine.inference as inference

    decoded: list[str] = []

    def counting(read):
        def read_and_count(path: Path, bit_depth: int = 0):
            decoded.append(Path(path).name)
            return read(path, bit_depth)

        return read_and_count

    monkeypatch.setattr(coco, "read_rgb", counting(coco.read_rgb))
    monkeypatch.setattr(inference, "read_rgb", counting(inference.read_rgb))
    config = load_config(runs["run"] / "config.yaml")
    dataset = build_dataset(config, "val")
    expected_image, expected_target = dataset[0]
    decoded.clear()
    (item,) = load_images(config, VisualizeRequest([runs["run"]], tmp_path, images=[dataset.image_path(0)]))
    assert decoded == [dataset.image_path(0).name]
    assert torch.equal(item.tensor, expected_image) and item.target.keys() == expected_target.keys()
    assert all(torch.equal(item.target[key], expected_target[key]) for key in expected_target)


def test_an_image_too_large_to_decode_is_an_error_naming_it(runs, tmp_path: Path, monkeypatch):
    """An image PIL refuses as a decompression bomb was a traceback from visualize (only OSError was caught there,
    unlike predict and the data sets); it is now the same 'cannot read image' error as an unreadable file."""
    path = tmp_path / "huge.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 is more than twice that: DecompressionBombError
    config = load_config(runs["run"] / "config.yaml")
    with pytest.raises(OSError, match=r"cannot read image .*huge\.png"):
        load_images(config, VisualizeRequest([runs["run"]], tmp_path, images=[path]))


def test_an_image_the_data_skips_as_unreadable_is_replaced_by_the_next(runs, tmp_path: Path, capsys):
    """With data.on_invalid=skip (the COCO presets' setting) the validation data hands back None for an unreadable
    image, and visualize's default images (and `visualize data`) unpacked it: a TypeError traceback."""
    images = tmp_path / "images"
    shutil.copytree(runs["images"], images)
    data = json.loads(runs["shapes_val"].read_text())
    first, second = (Path(entry["file_name"]).name for entry in data["images"][:2])
    (images / first).write_bytes(b"not an image")
    skip = [f"data.val.images={images}", "data.on_invalid=skip"]
    config = load_config(runs["run"] / "config.yaml", skip)
    items = load_images(config, VisualizeRequest([runs["run"]], tmp_path, num_images=1))
    assert [item.name for item in items] == [Path(second).stem]
    with pytest.raises(OSError, match=f"cannot read image .*{first}"):  # the only one given: nothing to draw
        load_images(config, VisualizeRequest([runs["run"]], tmp_path, images=[images / first]))
    train = ["--set", f"data.train.annotations={runs['shapes_val']}", f"data.train.images={images}", *skip]
    argv = ["visualize", "data", str(runs["run"]), "--num-images", "1", "--output", str(tmp_path / "d"), *train]
    assert main(argv) == 0
    check_image(tmp_path / "d" / "data_train.png")
    for entry in data["images"]:
        (images / Path(entry["file_name"]).name).write_bytes(b"not an image")
    assert main(argv) == 2
    assert f"no image of {runs['shapes_val']} could be read" in capsys.readouterr().err


def test_alpha_of_a_run_shorter_than_log_every_is_read_from_its_epoch_records():
    """A run of fewer steps than train.log_every logs α only in its epoch records; the alpha figure said 'the run has
    no alpha_entmax attention' (the study skipped it)."""
    alpha = {"decoder.layers.0.cross_attn.activation": [1.5, 1.6]}
    records = [{"type": "params", "step": 0}, {"type": "epoch", "step": 2, "epoch": 1, "alpha": alpha}]
    steps, history = alpha_history(records)
    assert steps == [2] and history["decoder.layers.0.cross_attn.activation"].tolist() == [[1.5, 1.6]]
    records.insert(1, {"type": "train", "step": 2, "alpha": alpha})  # the same step logged twice: one point
    assert alpha_history(records)[0] == [2]
    figure = alpha_figure(records)
    FigureCanvasAgg(figure).draw()
    assert figure.axes[-1].lines[0].get_marker() == "o"  # one step: a point, not an invisible line


def test_alpha_history_starts_at_the_alpha_training_started_from(runs, shapes, tmp_path: Path):
    """The α figure started at the first logged training step, so the drift from α's initial value (alpha_init, or
    what the weights of --init-from held) did not show: the trainer now logs α as training starts, at step 0."""
    records = read_metrics(runs["run"])
    steps, history = alpha_history(records)
    assert steps[0] == 0 and all(np.allclose(values[0], 1.5, atol=1e-6) for values in history.values())
    line = next(axes for axes in alpha_figure(records).axes if axes.lines).lines[0]
    assert line.get_xdata()[0] == 0 and line.get_ydata()[0] == pytest.approx(1.5, abs=1e-6)

    def initial_alpha(run: Path, init_from: Path | None = None) -> dict[str, list[float]]:
        site = "model.attention.decoder_cross"
        config = shapes_config(shapes, f"{site}.activation=alpha_entmax", f"{site}.alpha_init=1.1")
        Trainer(config, run, progress=False, init_from=init_from)
        (init,) = [r for r in read_metrics(run) if r["type"] == "init"]
        assert init["step"] == 0
        return init["alpha"]

    assert all(np.allclose(values, 1.1, atol=1e-6) for values in initial_alpha(tmp_path / "fresh").values())
    # from another run's weights, α starts where that run's ended, not at the config's alpha_init
    started = initial_alpha(tmp_path / "tuned", init_from=runs["run"])
    assert started.keys() == history.keys()
    assert all(np.allclose(started[module], values[-1], rtol=0, atol=1e-7) for module, values in history.items())


def test_box_legends_name_only_the_boxes_drawn(runs, tmp_path: Path):
    """The encoder figures (attention over the grid, Deformable DETR's sampling of a cell) draw no prediction, yet
    their subtitle read 'boxes: prediction (red), ground truth (cyan)'."""
    maps, image = np.full((1, 1, 2, 2), 0.25), np.full((8, 8, 3), 0.5)
    truth, prediction = [LabelledBox((0, 0, 4, 4), "a")], [LabelledBox((2, 2, 6, 6), "q0 a 0.9")]
    encoder_like = attention_figure(image, maps, ground_truth=truth, points=[(1.0, 1.0)], title="t")
    assert "prediction" not in encoder_like.get_suptitle() and "ground truth (cyan)" in encoder_like.get_suptitle()
    both = attention_figure(image, maps, predictions=prediction, ground_truth=truth).get_suptitle()
    assert both.startswith("boxes: prediction (red), ground truth (cyan); ")
    assert attention_figure(image, maps).get_suptitle() == ZERO_LEGEND
    args = [str(runs["deformable"]), "--queries", "1", "--pixels", "40,50", "--num-images", "1"]
    assert main(["visualize", "deformable", *args, "--output", str(tmp_path), "--format", "svg"]) == 0
    encoder = next(tmp_path.glob("*_encoder_self_*.svg")).read_text()
    decoder = next(tmp_path.glob("*_decoder_cross_*_layer0.svg")).read_text()
    assert "ground truth (cyan)" in encoder and "prediction (red)" not in encoder
    assert "prediction (red), ground truth (cyan)" in decoder


def test_images_that_share_a_stem_get_figures_of_their_own(runs, tmp_path: Path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(runs["images"] / "val_000000.png", tmp_path / folder / "photo.png")
    images = [str(tmp_path / "a" / "photo.png"), str(tmp_path / "b" / "photo.png")]
    out = tmp_path / "out"
    assert main(["visualize", "attention", str(runs["run"]), *images, "--queries", "0", "--output", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == [
        "attention_decoder_cross_photo_png_2_q0.png",
        "attention_decoder_cross_photo_png_q0.png",
    ], "was: the second image's figure overwrote the first's"


def test_compare_skips_images_without_boxes(runs, tmp_path: Path):
    """An image without annotated boxes stopped `visualize compare` (and the study's report) with an error."""
    unannotated = tmp_path / "mine.png"
    with Image.open(runs["images"] / "val_000000.png") as image:
        image.save(unannotated)  # not in the validation data: no ground truth
    run, other, annotated = str(runs["run"]), str(runs["other"]), str(runs["images"] / "val_000000.png")
    out = tmp_path / "out"
    assert main(["visualize", "compare", run, other, annotated, str(unannotated), "--output", str(out)]) == 0
    assert [p.name for p in out.glob("*.png")] == ["compare_decoder_cross_val_000000.png"]
    with pytest.raises(ValueError, match="nothing to draw: mine \\(no annotated boxes"):
        visualize("compare", VisualizeRequest(runs=[runs["run"], runs["other"]], output=out, images=[unannotated]))


def test_data_figure_gives_each_images_own_size_and_the_padded_one():
    """Every panel of a padded batch read '170×185 px, 9690 padded': the batch's size, as if it were the image's
    (a 170×128 image), and a count of padded pixels; it now reads '170×128 px, padded to 170×185'."""
    image = np.full((185, 170, 3), 0.5)
    low, narrow = np.zeros((185, 170), dtype=bool), np.zeros((185, 170), dtype=bool)
    low[128:] = True
    narrow[:, 160:] = True
    samples = [Sample(image, padding, [], f"image {i}") for i, padding in enumerate([low, narrow, np.zeros_like(low)])]
    figure = data_figure(samples)
    sizes = [axes.get_title().splitlines()[-1] for axes in figure.axes[:3]]
    assert sizes == ["170×128 px, padded to 170×185", "160×185 px, padded to 170×185", "170×185 px"]


def test_data_figure_of_one_sample_keeps_its_title_and_box_texts_inside():
    """`visualize data RUN --num-images 1`: the 3-inch figure cut its title (the annotation file and the legend) at
    both edges, and the text of a box at the image's top edge covered the panel's title."""
    image, padding = np.full((60, 80, 3), 0.5), np.zeros((60, 80), dtype=bool)
    boxes = [LabelledBox((2, 1, 30, 20), "at the top"), LabelledBox((10, 30, 40, 50), "lower")]
    title = "/a/rather/long/folder/of/annotations/for/this/data/set/train.json: 1 image"
    figure = data_figure([Sample(image, padding, boxes, "image id 1")], title=title)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    extent, page = figure._suptitle.get_window_extent(renderer), figure.bbox
    assert page.x0 <= extent.x0 and extent.x1 <= page.x1, (extent, page)
    assert "train.json: 1 image" in figure.get_suptitle()
    axes = figure.axes[0]
    top, lower = (text.get_bbox_patch().get_window_extent(renderer) for text in axes.texts)
    to_display = axes.transData.transform
    assert top.y1 <= to_display((0, 1))[1] + 1  # inside the top box (y up on the page)
    assert lower.y0 >= to_display((0, 30))[1] - 1  # above the lower one
    assert axes.texts[0].get_window_extent(renderer).y1 <= axes.get_window_extent(renderer).y1 + 1


def test_curves_name_the_runs_once_under_the_panels():
    """Legends inside the panels (3 lines per run in the AP panels) covered the curves; the runs are now named once,
    in a legend under the panels, and the titles say what line styles and markers mean."""
    records = [{"type": "train", "step": 1, "loss": 3.0, "class_error": 50.0}]
    records.append({"type": "epoch", "step": 1, "epoch": 1, "AP": 0.1, "AP50": 0.2, "val_class_error": 40.0})
    figure = curves_figure({"softmax": records, "sparsemax": records})
    assert all(axes.get_legend() is None for axes in figure.axes)
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == ["softmax", "sparsemax"]
    FigureCanvasAgg(figure).draw()
    assert legend.get_window_extent().y1 <= min(axes.get_window_extent().y0 for axes in figure.axes)
    titles = " ".join(axes.get_title() for axes in figure.axes)
    assert "train (line), validation (squares)" in titles and "AP (solid, circles), AP50 (dashed, " in titles


def test_curves_tell_the_ap_series_of_a_single_evaluation_apart():
    """After one evaluation (a short run, or train.eval_every) AP, AP50 and AP75 were three identical dots, told
    apart only by line styles that a single point does not draw; each series now has its own marker, named in the
    panel's title."""
    records = [{"type": "train", "step": 1, "loss": 3.0, "class_error": 50.0}]
    records.append({"type": "epoch", "step": 1, "epoch": 1, "AP": 0.1, "AP50": 0.2, "AP75": 0.05})
    records[-1].update(AP_small=0.01, AP_medium=0.1, AP_large=0.3)
    figure = curves_figure({"softmax": records})
    for axes in figure.axes[5:7]:
        assert len({line.get_marker() for line in axes.lines}) == 3
        title = axes.get_title().replace("\n", " ")
        assert all(
            f"{style}, {marker}" in title
            for style, marker in [("solid", "circles"), ("dashed", "triangles"), ("dotted", "squares")]
        )


@pytest.mark.parametrize("count", [12, 20, 25])
def test_runs_beyond_ten_get_colours_of_their_own(count: int):
    """tab10 cycled: run 11 was drawn in run 1's colour in `visualize curves` and `visualize sparsity`."""
    labels = [f"run{i}" for i in range(count)]
    colors = run_colors(labels)
    assert len(set(colors.values())) == count
    if count <= 20:
        assert [colors[label] for label in labels[:10]] == [colormaps["tab10"](i) for i in range(10)]
    records = [{"type": "train", "step": 1, "loss": 3.0, "class_error": 50.0}]
    (legend,) = curves_figure(dict.fromkeys(labels, records)).legends
    assert len({tuple(handle.get_color()) for handle in legend.legend_handles}) == count
    block = {"per_layer": {"mean": [0.5], "std": [0.1]}}
    result = {"sites": {"decoder_cross": {"metrics": {"gini": block, "zeros_ratio": block}, "zero_threshold": 0.0}}}
    bars = sparsity_figure(dict.fromkeys(labels, result)).axes[0].patches
    assert len({tuple(bar.get_facecolor()) for bar in bars}) == count


def test_sparsity_bar_values_show_a_small_nonzero_reading_as_measured():
    """The value above each bar, there "so a reading of 0 is not mistaken for a missing one", read 0.00 for a
    zeros ratio of 0.003 (2 decimals): a measured reading shown as none."""
    block = {"per_layer": {"mean": [0.003, 0.0], "std": [0.001, 0.0]}}
    result = {"sites": {"decoder_cross": {"metrics": {"gini": block, "zeros_ratio": block}, "zero_threshold": 0.0}}}
    axes = sparsity_figure({"run": result}).axes[0]
    assert [float(text.get_text()) for text in axes.texts if text.get_text()[0].isdigit()] == [0.003, 0.0]


def test_sparsity_says_which_runs_read_zeros_under_which_threshold():
    """Softmax runs count p ≤ 1e-6 as zero, sparse ones p ≤ 0; the title read 'zeros ratio (p ≤ 0, 1e-06)'."""

    def result(threshold: float) -> dict:
        block = {"per_layer": {"mean": [0.5], "std": [0.1]}}
        metrics = {"gini": block, "zeros_ratio": block}
        return {"sites": {"decoder_cross": {"metrics": metrics, "zero_threshold": threshold}}}

    mixed = sparsity_figure({"softmax": result(1e-6), "sparsemax": result(0.0), "entmax15": result(0.0)})
    titles = " ".join(axes.get_title().replace("\n", " ") for axes in mixed.axes)
    assert "zeros ratio (p ≤ 0: sparsemax, entmax15; p ≤ 1e-06: softmax)" in titles
    same = sparsity_figure({"sparsemax": result(0.0), "entmax15": result(0.0)})
    assert "decoder_cross: zeros ratio (p ≤ 0)" in [axes.get_title() for axes in same.axes]


def test_wrapped_titles_keep_expressions_on_one_line():
    """A zeros-ratio title broke between "p" and "≤ 1e-06", one line ending "(p" and the next starting "≤"."""
    title = "decoder_cross: zeros ratio (p ≤ 1e-06: softmax-seed0; p ≤ 0: sparsemax-seed0) — Gini 1 − 1/N"
    for tenths in range(10, 80):
        lines = wrapped(title, tenths / 10, 9).splitlines()
        assert " ".join(lines) == title, "nothing is lost or added but line breaks"
        assert sum(line.count("p ≤ ") for line in lines) == 2 and any("1 − 1/N" in line for line in lines), lines
        assert not any(line.startswith(("≤", "−")) or line.endswith((" p", "(p", " 1")) for line in lines), lines


@pytest.mark.parametrize("count", [2, 14, 20])
def test_sparsity_stays_readable_from_two_to_twenty_runs(count: int):
    """With 14 runs the legend covered the first panel, the bars' values overlapped into one smear and the zeros-ratio
    title listed every run's threshold."""
    block = {"per_layer": {"mean": [0.25, 0.5, 0.0], "std": [0.1, 0.05, 0.0]}}
    labels = [f"{'softmax' if i % 7 == 0 else 'sparsemax'}_seed{i}" for i in range(count)]
    results = {
        label: {"sites": {"decoder_cross": {"metrics": {"gini": block, "zeros_ratio": block}, "zero_threshold": t}}}
        for label, t in zip(labels, [1e-6 if label.startswith("softmax") else 0.0 for label in labels], strict=True)
    }
    figure = sparsity_figure(results)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    (legend,) = figure.legends
    assert legend.get_window_extent(renderer).y1 <= min(axes.get_window_extent(renderer).y0 for axes in figure.axes)
    values = [text.get_window_extent(renderer) for text in figure.axes[0].texts]
    assert len(values) == 3 * count
    assert not any(a.overlaps(b) for i, a in enumerate(values) for b in values[i + 1 :]), "values overlap"
    title = figure.axes[2].get_title().replace("\n", " ")
    assert ("the other 17 runs" in title) == (count == 20) and title.count("softmax") == len(range(0, count, 7))


def test_sparsity_legend_names_every_run_and_says_what_the_error_bars_are():
    """The legend sat in the first panel and named only the runs with bars there: a run analysed with --sites
    decoder_self was drawn in orange in the other panels with no name; nothing said the error bars were the std."""
    block = {"per_layer": {"mean": [0.5], "std": [0.1]}}
    site = {"metrics": {"gini": block, "zeros_ratio": block}, "zero_threshold": 0.0}
    figure = sparsity_figure(
        {
            "all_sites": {"sites": {"encoder_self": site, "decoder_self": site}},
            "one_site": {"sites": {"decoder_self": site}},
        }
    )
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == ["all_sites", "one_site"]
    assert not any(axes.get_legend() for axes in figure.axes)
    assert "error bars: their standard deviation (population)" in figure.get_suptitle().replace("\n", " ")
    # a one-hot map over a deformable query's 12 sampling points has Gini 1 - 1/12 = 0.92, not the 1 the title said
    assert "Gini (0 uniform, 1 − 1/N one-hot over N keys)" in figure.axes[0].get_title().replace("\n", " ")


def test_sparsity_says_grid_and_sampling_point_sites_are_not_comparable():
    """A DETR run (decoder_cross over hundreds of grid cells) and a Deformable run (over 12 sampling points) shared
    bar charts with no word that their Gini and PAIBB measure different things."""
    block = {"per_layer": {"mean": [0.5], "std": [0.1]}}
    paibb = {"overall": block, "by_size": {}}

    def result(keys: str) -> dict:
        site = {"keys": keys, "metrics": {"gini": block, "zeros_ratio": block}, "zero_threshold": 0.0, "paibb": paibb}
        return {"sites": {"decoder_cross": site}}

    def titles(figure: Figure) -> list[str]:  # gini, zeros ratio, PAIBB, PAIBB by size
        return [text for axes in figure.axes if (text := axes.get_title().replace("\n", " "))]

    mixed = titles(sparsity_figure({"detr": result("grid"), "deformable": result("points")}))
    assert all("NOT comparable across runs, keys differ" in t for t in mixed[:2])
    assert "feature-grid cells: detr; sampling points: deformable" in mixed[0]
    assert "over sampling points for deformable: NOT comparable" in mixed[2]
    # the panel by object size said nothing of it (was: "decoder_cross: PAIBB of the last layer by object size")
    assert "by object size" in mixed[3] and "over sampling points for deformable: NOT comparable" in mixed[3]
    alone = titles(sparsity_figure({"deformable": result("points")}))
    assert "PAIBB (weight of the sampling points inside the matched box)" in alone[2]
    assert not any("comparable" in t for t in alone)
    grid = titles(sparsity_figure({"a": result("grid")}))
    assert "decoder_cross: PAIBB (mass inside the matched box)" in grid[2]
    assert "PAIBB of the last layer by object size (mass inside the matched box)" in grid[3]


def test_a_crowded_image_outlines_its_ground_truth_without_class_names():
    """With 50 annotated boxes the class names of the ground truth buried every 1.5-inch attention panel."""
    maps, image = np.full((1, 1, 4, 4), 1 / 16), np.full((64, 64, 3), 0.5)
    prediction = [LabelledBox((2, 2, 30, 30), "q0 a 0.9")]
    crowd = [LabelledBox((i, i, i + 5, i + 5), "cell") for i in range(0, 50, 5)]  # 10 boxes
    crowded = attention_figure(image, maps, predictions=prediction, ground_truth=crowd)
    assert [t.get_text() for t in crowded.axes[0].texts] == ["q0 a 0.9"] and len(crowded.axes[0].patches) == 11
    title = crowded.get_suptitle().replace("\n", " ")
    assert "ground-truth classes not written where a panel has over 8 boxes" in title
    few = attention_figure(image, maps, predictions=prediction, ground_truth=crowd[4:9:2])  # 3 boxes, apart
    assert [t.get_text() for t in few.axes[0].texts] == ["q0 a 0.9"] + ["cell"] * 3
    assert "not written" not in few.get_suptitle()


def test_compare_keeps_each_runs_panels_in_its_column(runs, tmp_path: Path, monkeypatch):
    """A run whose queries matched fewer objects (fewer queries than objects) had its next panels shifted into the
    previous run's column; an object a run did not match is now an empty panel in that run's column."""
    import sparse_detector.viz.kinds as kinds

    data = json.loads(Path(runs["shapes_val"]).read_text())
    counts = {image["id"]: sum(a["image_id"] == image["id"] for a in data["annotations"]) for image in data["images"]}
    name = next(Path(i["file_name"]).name for i in data["images"] if counts[i["id"]] >= 2)
    matches = iter([{1: 0}, {0: 0, 1: 1}])  # the first run matched object 1 only, the second both
    monkeypatch.setattr(kinds, "_matched_queries", lambda loaded, outputs, target: next(matches))
    request = VisualizeRequest(runs=[runs["run"], runs["other"]], output=tmp_path, images=[runs["images"] / name])
    drawn = {}
    monkeypatch.setattr(kinds, "attention_panels_figure", lambda image, panels, *args, **kw: drawn.update(p=panels))
    monkeypatch.setattr(kinds, "save_figure", lambda figure, path, fmt: path)
    visualize("compare", request)
    panels = drawn["p"]
    assert panels[0][0] is None and panels[0][1] is not None  # was: the second run's panel in the first column
    assert all(panel is not None for panel in panels[1])


def test_an_empty_compare_panel_keeps_its_row_label_and_says_why():
    """The panel of an object no query of the first run matched was switched off whole: its row lost the label
    naming the object and the figure left a blank square without a word of why."""
    from sparse_detector.viz.attention import AttentionPanel, attention_panels_figure

    image = np.full((32, 32, 3), 0.5)
    panel = AttentionPanel(np.full((2, 2), 0.25), stride=16)
    rows = ["object 0: RBC", "object 1: WBC"]
    figure = attention_panels_figure(image, [[None, panel], [panel, None]], rows, ["run a", "run b"], empty_note="none")
    grid = np.array(figure.axes[:4]).reshape(2, 2)
    assert [axes.get_ylabel() for axes in grid[:, 0]] == rows
    assert [axes.get_title() for axes in grid[0]] == ["run a", "run b"]
    for axes in (grid[0, 0], grid[1, 1]):
        assert axes.get_visible() and axes.axison and [text.get_text() for text in axes.texts] == ["none"]
        assert not any(spine.get_visible() for spine in axes.spines.values()) and not axes.images


def test_compare_draws_at_most_a_few_objects_and_says_which(runs, tmp_path: Path, monkeypatch):
    """An image of 50 objects made a compare figure of 50 rows (76 inches tall)."""
    import sparse_detector.viz.kinds as kinds

    data = json.loads(Path(runs["shapes_val"]).read_text())
    counts = {image["id"]: sum(a["image_id"] == image["id"] for a in data["annotations"]) for image in data["images"]}
    image = next(i for i in data["images"] if counts[i["id"]] >= 2)
    monkeypatch.setattr(kinds, "MAX_COMPARE_OBJECTS", 1)
    drawn = {}
    monkeypatch.setattr(kinds, "attention_panels_figure", lambda _, __, rows, *___, **kw: drawn.update(kw, r=rows))
    monkeypatch.setattr(kinds, "save_figure", lambda figure, path, fmt: path)
    path = runs["images"] / Path(image["file_name"]).name
    visualize("compare", VisualizeRequest(runs=[runs["run"], runs["other"]], output=tmp_path, images=[path]))
    assert len(drawn["r"]) == 1 and drawn["r"][0].startswith("object 0: ")
    assert drawn["title"].endswith(f"of the query matched to objects 0-0 of {counts[image['id']]}")


def test_a_deformable_study_draws_each_runs_sampling_points_and_no_grid_compare(runs, tmp_path: Path):
    """A study of Deformable DETR runs drew no figure of their object queries (the `attention` kind needs a grid
    site) and its `compare` stopped the study before the report."""
    from sparse_detector.study import RunOutcome, StudyConfig, _run_figures, _study_figures

    run = tmp_path / "deformable"
    shutil.copytree(runs["deformable"], run)
    analyze_run(run, "cpu")
    study = StudyConfig(preset="shapes_tiny_deformable", maps={"a": [], "b": []}, figure_images=1)
    figures, query_kind, not_drawn = _run_figures(run, study, "cpu")
    assert query_kind == "deformable" and any(p.name.startswith("deformable_decoder_cross_") for p in figures)
    assert not not_drawn and any(p.name.startswith("diagnostics_") for p in figures)
    outcomes = [RunOutcome(m, m, 0, run, "done", query_kind=query_kind) for m in ("a", "b")]
    written, not_drawn = _study_figures(outcomes, study, tmp_path / "figures", "cpu")
    assert not not_drawn and {p.name for p in written} == {"curves.png", "sparsity.png"}


def test_a_study_draws_the_run_figures_that_apply_and_reports_those_that_fail(runs, monkeypatch):
    """A run's figure that failed with a ValueError or FileNotFoundError was left out with a line at log level INFO,
    as if it did not apply to the run: the report showed a study with a figure missing and said nothing."""
    from sparse_detector.engine.inference import load_trained_model
    from sparse_detector.study import StudyConfig, _run_figures, run_figure_kinds

    alpha, deformable = (load_trained_model(runs[name]) for name in ("run", "deformable"))
    assert run_figure_kinds(alpha) == ["attention", "matching", "alpha", "diagnostics"]
    assert run_figure_kinds(deformable) == ["deformable", "matching", "diagnostics"]  # sparsemax: no learnable α
    deformable.config.train.diagnostics_every = 0
    assert run_figure_kinds(deformable) == ["deformable", "matching"]

    def missing(request: VisualizeRequest) -> list[Path]:
        raise FileNotFoundError("alpha.txt is gone")

    monkeypatch.setitem(FIGURE_KINDS, "alpha", missing)
    for kind in ("attention", "matching", "diagnostics"):
        monkeypatch.setitem(FIGURE_KINDS, kind, lambda request: [])
    study = StudyConfig(preset="shapes_tiny", maps={"a": []}, figure_images=1)
    _, query_kind, not_drawn = _run_figures(runs["run"], study, "cpu")
    assert (query_kind, not_drawn) == ("attention", ["alpha: FileNotFoundError: alpha.txt is gone"])


def test_a_run_figure_that_fails_in_a_study_leaves_no_earlier_drawing_looking_current(runs, tmp_path, monkeypatch):
    """A run's figure that applied but failed left the PNG of an earlier drawing in the run's figures/ folder, looking
    current; that kind's earlier files, and those it wrote before failing, are now removed; other kinds' stay."""
    from sparse_detector.study import StudyConfig, _run_figures

    run = tmp_path / "run"
    shutil.copytree(runs["run"], run, ignore=shutil.ignore_patterns("figures"))
    study = StudyConfig(preset="shapes_tiny", maps={"a": []}, figure_images=1)

    def drawn(kind: str) -> Callable[[VisualizeRequest], list[Path]]:
        def draw(request: VisualizeRequest) -> list[Path]:
            (request.output / f"{kind}_val.png").write_bytes(b"png")
            return [request.output / f"{kind}_val.png"]

        return draw

    for kind in ("attention", "matching", "alpha", "diagnostics"):
        monkeypatch.setitem(FIGURE_KINDS, kind, drawn(kind))
    _run_figures(run, study, "cpu")

    def halfway(request: VisualizeRequest) -> list[Path]:  # its first file written, then it fails
        save_figure(Figure(), request.output / "matching_other")
        return [1 / 0]

    monkeypatch.setitem(FIGURE_KINDS, "matching", halfway)
    written, _, not_drawn = _run_figures(run, study, "cpu")
    assert not_drawn == ["matching: ZeroDivisionError: division by zero"]
    assert sorted(p.name for p in (run / "figures").glob("*.png")) == sorted(p.name for p in written)
    assert len(written) == 3


def test_a_figure_kind_that_fails_halfway_records_what_it_wrote(tmp_path: Path, monkeypatch):
    """A kind that failed after saving some of its files left them out of the folder's record: the next drawing, or a
    study's removal of a failed kind's files, kept them, looking current. Now they are the kind's: kept by the failed
    drawing itself (nothing lost), removed by the next one that does not draw them again."""

    def halfway(request: VisualizeRequest) -> list[Path]:
        save_figure(Figure(), request.output / "matching_0")
        save_figure(Figure(), request.output / "matching_1")
        raise RuntimeError("image 2 is unreadable")

    request = VisualizeRequest(runs=[], output=tmp_path)
    (tmp_path / "mine.png").write_bytes(b"png")
    monkeypatch.setitem(
        FIGURE_KINDS, "matching", lambda request: [save_figure(Figure(), request.output / "matching_9")]
    )
    visualize("matching", request)
    monkeypatch.setitem(FIGURE_KINDS, "matching", halfway)
    with pytest.raises(RuntimeError, match="image 2"):
        visualize("matching", request)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "matching_0.png",
        "matching_1.png",
        "matching_9.png",
        "mine.png",
    ]
    assert json.loads((tmp_path / FIGURES_RECORD).read_text())["matching"] == [
        "matching_9.png",
        "matching_0.png",
        "matching_1.png",
    ]
    monkeypatch.setitem(
        FIGURE_KINDS, "matching", lambda request: [save_figure(Figure(), request.output / "matching_1")]
    )
    visualize("matching", request)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["matching_1.png", "mine.png"]


def test_alpha_heat_map_numbers_tell_apart_the_values_its_colours_do():
    """Two steps into training α differs by 1e-4 between heads: the colours showed it, every number read 1.500."""
    alpha = {"decoder.layers.0.cross_attn.activation": [1.50037, 1.49964]}
    figure = alpha_figure([{"type": "train", "step": 2, "alpha": alpha}])
    assert sorted(text.get_text() for text in figure.axes[0].texts) == ["1.49964", "1.50037"]
    assert value_decimals(np.array([1.2, 1.9])) == 3 and value_decimals(np.array([1.5, 1.5])) == 3
    # the heads' legend sat over the last module's curves; it is under the plots, inside the figure
    assert all(axes.get_legend() is None for axes in figure.axes)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    (legend,) = figure.subfigs[1].legends
    box, page = legend.get_window_extent(renderer), figure.bbox
    assert [t.get_text() for t in legend.get_texts()] == ["head 0", "head 1"]
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= figure.axes[-1].get_window_extent(renderer).y0


def test_curves_panels_with_nothing_recorded_say_so():
    """A run never evaluated (train.eval_every beyond its epochs) drew its AP panels as bare axes from -0.04 to
    0.04 over 'epoch 0'; they now say no evaluation was recorded."""
    records = [{"type": "train", "step": s, "loss": 3.0 - s / 10, "class_error": 50.0} for s in (1, 2)]
    records.append({"type": "epoch", "step": 2, "epoch": 1, "train_loss": 2.8})
    figure = curves_figure({"run": records})
    notes = {axes.get_title(): [t.get_text() for t in axes.texts] for axes in figure.axes}
    assert notes["AP (solid, circles), AP50 (dashed, triangles),\nAP75 (dotted, squares)"] == [EVALUATION_NOTE]
    assert notes["total loss (weighted sum)"] == [] and len(figure.axes[0].get_xticks()) > 0


def test_curves_of_runs_shorter_than_one_logging_interval_say_why_the_losses_are_missing():
    """A run of fewer steps than train.log_every (3 steps an epoch, log_every 20) logs no training step: its loss
    panels said "not recorded in these runs", as if the losses were never computed; they now name train.log_every."""
    records = [{"type": "epoch", "step": s, "epoch": e, "train_loss": 11.0, "AP": 0.1} for e, s in ((1, 3), (2, 6))]
    figure = curves_figure({"short": records})
    notes = {axes.get_title(): [t.get_text() for t in axes.texts] for axes in figure.axes}
    assert notes["total loss (weighted sum)"] == [TRAINING_NOTE] == ["no training step logged\n(see train.log_every)"]
    assert notes["class error (%) of matched queries:\ntrain (line), validation (squares)"] == [TRAINING_NOTE]


def test_curves_of_a_loss_that_blew_up_are_on_a_log_scale_and_show_skipped_steps():
    """A loss that went from 20 to 6e4 flattened the rest of the run into a line at 0; steps skipped for a
    non-finite loss (train.on_nonfinite_loss=skip) were in no curve and nothing said they had happened."""
    records = [{"type": "train", "step": s, "loss": 20.0 * 10 ** (s - 1), "class_error": 50.0} for s in (1, 2, 3, 4)]
    records.append({"type": "epoch", "step": 4, "epoch": 1, "train_loss": 2e4, "train_skipped_nonfinite": 3})
    calm = [{"type": "train", "step": s, "loss": 20.0 - s, "class_error": 50.0} for s in (1, 2)]
    figure = curves_figure({"blew up": records, "calm": calm})
    total = figure.axes[0]
    assert total.get_yscale() == "log" and "log scale" in total.get_title()
    assert [text.get_text() for text in total.texts] == ["3"] and "non-finite steps skipped" in total.get_title()
    assert curves_figure({"calm": calm}).axes[0].get_yscale() == "linear"  # 18 to 19: no reason for a log axis


def sampling_record(locations: list[tuple[float, float]], weights: list[float]) -> PointsRecord:
    """One image, one query, one head, one level, one point per entry of ``locations`` (in [0, 1] of the image)."""
    points = len(weights)
    weight = torch.tensor(weights).reshape(1, 1, 1, 1, points)
    location = torch.tensor(locations).reshape(1, 1, 1, 1, points, 2)
    reference = torch.tensor([0.5, 0.5]).expand(1, 1, 1, 2)
    return PointsRecord(weight, location, reference, torch.tensor([[4, 4]]), torch.ones(1, 1, 2))


def test_sampling_points_state_their_size_scale():
    """Points are sized by weight, but nothing in the figure said which size is which weight."""
    figure = sampling_figure(np.full((40, 40, 3), 0.5), sampling_record([(0.2, 0.2), (0.7, 0.7)], [0.25, 0.75]), 0, 0)
    (legend,) = figure.legends
    sizes = {t.get_text(): h.get_markersize() for t, h in zip(legend.get_texts(), legend.legend_handles, strict=True)}
    assert sizes["weight 1"] == pytest.approx(marker_size(1.0)) and sizes["weight 0.1"] < sizes["weight 0.5"]
    assert marker_size(1.0) ** 2 == pytest.approx(MIN_AREA + FULL_WEIGHT_AREA)  # the scatter's area of weight 1


def test_sampling_points_outside_the_image_are_counted():
    """Points Deformable DETR samples outside the image (zero padding) fell outside the panel: a head seemed to
    sample one point where it sampled four."""
    locations = [(0.5, 0.9), (0.5, 1.2), (-0.1, 0.5), (0.3, 0.3)]
    figure = sampling_figure(np.full((40, 40, 3), 0.5), sampling_record(locations, [0.4, 0.3, 0.0, 0.3]), 0, 0)
    assert figure.axes[0].get_title() == "all heads (1 zero, 2 outside the image)"


def test_sampling_points_at_one_place_leave_the_smaller_on_top():
    """With box references (box refinement, two-stage) every level's points start at the same places: level by level,
    a larger point of a later level covered an earlier level's point there, and level 1 vanished from the figure.
    Larger points are now drawn first, in every panel, and the hollow zero-weight points last."""
    weights = torch.tensor([0.1, 0.2, 0.6, 0.0, 0.05, 0.05]).reshape(1, 1, 2, 3, 1)  # (B, Lq, heads, levels, points)
    locations = torch.full((1, 1, 2, 3, 1, 2), 0.5)  # all six points at the image's centre
    reference = torch.tensor([0.5, 0.5]).expand(1, 1, 3, 2)
    record = PointsRecord(weights, locations, reference, torch.tensor([[4, 4], [2, 2], [1, 1]]), torch.ones(1, 3, 2))
    figure = sampling_figure(np.full((40, 40, 3), 0.5), record, 0, 0)
    panels = ([0.6, 0.2, 0.1, 0.05, 0.05, 0.0], [0.6, 0.2, 0.1], [0.05, 0.05, 0.0])  # all heads, head 0, head 1
    for axes, expected in zip(figure.axes, panels, strict=True):
        drawn = [size for collection in axes.collections for size in collection.get_sizes()]  # in drawing order
        assert drawn == pytest.approx([MIN_AREA + FULL_WEIGHT_AREA * w for w in expected])
    hollow = figure.axes[0].collections[-1]
    assert [tuple(c) for c in hollow.get_edgecolors()] == [to_rgba(LEVEL_COLORS[0])]  # head 1's level 0


def level_pixels_near(figure: Figure, axes, x: float, y: float, radius: float) -> np.ndarray:
    """The rendered RGB pixels of ``figure`` within ``radius`` display pixels of data point (x, y) of ``axes``."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3] / 255.0
    column, row = axes.transData.transform((x, y))
    rows, columns = np.mgrid[: image.shape[0], : image.shape[1]]
    near = np.hypot(columns - column, rows - (image.shape[0] - row)) <= radius
    return image[near]


@pytest.mark.parametrize("weight", [1 / 3, 0.0])
def test_sampling_points_of_several_levels_at_one_place_show_every_level(weight):
    """With box references and softmax, every level's points start at the same places with equal weights: each level
    covered the one before, and only the last level's colour showed there. They are now one circle cut into a slice
    per level (an arc per level for zero-weight points), as large as one point of that weight."""
    weights = torch.full((1, 1, 1, 3, 1), weight)  # (B, Lq, heads, levels, points)
    locations = torch.full((1, 1, 1, 3, 1, 2), 0.25)
    reference = torch.tensor([0.5, 0.5]).expand(1, 1, 3, 2)
    record = PointsRecord(weights, locations, reference, torch.tensor([[4, 4], [2, 2], [1, 1]]), torch.ones(1, 3, 2))
    figure = sampling_figure(np.full((40, 40, 3), 0.5), record, 0, 0)
    axes = figure.axes[0]
    offsets = np.concatenate([collection.get_offsets() for collection in axes.collections])
    sizes = np.concatenate([collection.get_sizes() for collection in axes.collections])
    np.testing.assert_allclose(offsets, [[10.0, 10.0]] * 3)  # one slice per level, as large as one point
    np.testing.assert_allclose(sizes, [MIN_AREA + FULL_WEIGHT_AREA * weight] * 3, rtol=1e-6)
    radius = marker_size(weight) / 2 * figure.dpi / 72  # in display pixels
    pixels = level_pixels_near(figure, axes, 10.0, 10.0, radius)
    for level in range(3):
        color = np.array(to_rgba(LEVEL_COLORS[level])[:3])
        shown = color if weight == 0 else 0.8 * color + 0.2 * 0.5  # filled points: alpha 0.8 over the grey image
        assert np.abs(pixels - shown).max(axis=1).min() < 0.05, f"level {level} is not visible"


@pytest.mark.parametrize("height, width", [(40, 40), (43, 128), (128, 43)])
def test_sampling_panels_take_the_images_shape(height, width):
    """A 3:1 COCO image was drawn in square 3-inch panels: a strip in white, two thirds of each panel empty."""
    record = PointsRecord(
        torch.full((1, 1, 8, 1, 2), 0.5),
        torch.rand(1, 1, 8, 1, 2, 2),
        torch.tensor([0.5, 0.5]).expand(1, 1, 1, 2),
        torch.tensor([[4, 4]]),
        torch.ones(1, 1, 2),
    )
    figure = sampling_figure(np.full((height, width, 3), 0.5), record, 0, 0, title="t")
    FigureCanvasAgg(figure).draw()
    panels = [axes for axes in figure.axes if axes.images]
    assert len(panels) == 9
    panel_area = sum(axes.get_window_extent().width * axes.get_window_extent().height for axes in panels)
    assert panel_area / np.prod(figure.get_size_inches() * figure.dpi) > 0.45


def test_matching_figure_takes_the_images_shape():
    """A wide image (COCO 640 x 427) left half of the fixed 10 x 5.4 in matching figure blank."""
    wide, square = np.full((40, 80, 3), 0.5), np.full((40, 40, 3), 0.5)
    assert tuple(matching_figure(wide, [], [], []).get_size_inches()) == pytest.approx((10, 4.6 / 2 + 0.8))
    assert tuple(matching_figure(square, [], [], []).get_size_inches()) == pytest.approx((10, 5.4))
    one = [LabelledBox((2, 2, 20, 20), "q0 WBC 0.5")]  # a one-class run matched its only object: '1 matched pairs'
    title = matching_figure(square, one, one, [(0, 0)]).axes[1].get_title()
    assert title == "1 matched pair (query → ground truth, named in its label)"


def test_figures_of_images_with_dots_in_their_names_keep_the_whole_name(runs, tmp_path: Path):
    """Roboflow names images img_jpg.rf.<hash>.jpg: every query's figure was written to ..._img_jpg.rf.png, each
    overwriting the last (and two augmented copies of one photo shared it too)."""
    images = []
    for name in ("img_jpg.rf.3f2a.jpg", "img_jpg.rf.9b1c.jpg"):
        with Image.open(runs["images"] / "val_000000.png") as image:
            image.convert("RGB").save(tmp_path / name)
        images.append(str(tmp_path / name))
    out = tmp_path / "out"
    assert main(["visualize", "attention", str(runs["run"]), *images, "--queries", "0", "1", "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name != FIGURES_RECORD) == [
        f"attention_decoder_cross_img_jpg.rf.{h}_q{q}.png" for h in ("3f2a", "9b1c") for q in (0, 1)
    ]


def test_predict_pictures_draw_accented_class_names():
    """PIL's default font has no accented letters: a class "crème brûlée" was captioned "cr□me br□l□e" in the
    predict pictures. An accented letter now draws differently from a character no font has (the empty box)."""
    from sparse_detector.viz.boxes import draw_boxes

    image = Image.new("RGB", (120, 60))

    def caption(name: str) -> np.ndarray:
        return np.asarray(draw_boxes(image, [[2, 20, 110, 50]], [0], [name]))

    assert not np.array_equal(caption("cr\u00e8me"), caption("cr\U000f0000me"))  # è is not the missing-glyph box
    assert not np.array_equal(caption("\u00fc"), caption("\u00e8"))


def test_data_figure_names_each_sample_by_its_image_file(runs, tmp_path: Path, monkeypatch):
    """The data figure's panels said 'image id 3', which the user's own files do not show; they name the file."""
    import sparse_detector.viz.kinds as kinds

    drawn = {}
    monkeypatch.setattr(kinds, "data_figure", lambda samples, title: drawn.update(samples=samples))
    monkeypatch.setattr(kinds, "save_figure", lambda figure, path, fmt: path)
    visualize("data", VisualizeRequest(runs=[runs["run"]], output=tmp_path, num_images=2))
    assert [sample.title for sample in drawn["samples"]] == ["train_000000.png (id 1)", "train_000001.png (id 2)"]


def test_sparsity_writes_n_a_for_a_run_without_a_reading_in_the_first_group_too():
    """A run without a reading in a group gets "n/a" in its slot; in the first group the slot lay left of the x-axis
    limits that the other runs' bars set, so its "n/a" was clipped and the group looked like one run's."""
    measured = {"per_layer": {"mean": [0.5, 0.4], "std": [0.1, 0.1]}}
    missing = {"per_layer": {"mean": [None, None], "std": [None, None]}}
    site = {"metrics": {"gini": measured, "zeros_ratio": measured}, "zero_threshold": 0.0}
    figure = sparsity_figure(
        {
            "unmeasured": {"sites": {"decoder_cross": {**site, "metrics": {"gini": missing, "zeros_ratio": missing}}}},
            "measured": {"sites": {"decoder_cross": site}},
        }
    )
    FigureCanvasAgg(figure).draw()
    axes = figure.axes[0]
    low, high = axes.get_xlim()
    shown = [text.get_text() for text in axes.texts if low <= text.xy[0] <= high]  # matplotlib clips the others
    assert sorted(shown) == ["0.40", "0.50", "n/a", "n/a"]


@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
def test_a_figure_cut_off_while_written_leaves_the_one_there_before(tmp_path: Path, monkeypatch, fmt: str):
    """`visualize` wrote figures in place: a kill mid-write left half a PNG where the last drawing had been. A write
    cut short now leaves the previous figure whole and no temporary file."""
    from matplotlib.figure import Figure

    from sparse_detector.viz.figure import save_figure

    path = tmp_path / f"curves.{fmt}"
    path.write_bytes(b"the figure drawn before")

    def cut_short(self, target, **kwargs):
        Path(target).write_bytes(b"\x89PNG half") if isinstance(target, (str, Path)) else target.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", cut_short)
    with pytest.raises(KeyboardInterrupt):
        save_figure(Figure(), path, fmt)
    assert path.read_bytes() == b"the figure drawn before"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_predict_picture_cut_off_while_written_leaves_the_one_there_before(runs, tmp_path: Path, monkeypatch):
    """predict saved its pictures in place too: a kill mid-write left half a PNG."""
    image = tmp_path / "in" / "shape.png"
    image.parent.mkdir()
    Image.new("RGB", (96, 96), "white").save(image)
    picture = tmp_path / "out" / "shape_pred.png"
    picture.parent.mkdir()
    picture.write_bytes(b"the picture drawn before")

    def cut_short(self, target, *args, **kwargs):
        Path(target).write_bytes(b"\x89PNG half") if isinstance(target, (str, Path)) else target.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", cut_short)
    assert main(["predict", "--checkpoint", str(runs["run"]), str(image), "--output", str(picture.parent)]) == 130
    assert picture.read_bytes() == b"the picture drawn before"
    assert [p.name for p in picture.parent.iterdir()] == [picture.name]


def _overlapping_texts(figure) -> list[tuple[str, str]]:
    """Pairs of texts on the same panel whose drawn extents (with their patches) cover each other."""
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    pairs = []
    for axes in figure.axes:
        extents = [(text.get_text(), text.get_bbox_patch().get_window_extent(renderer)) for text in axes.texts]
        for i, (a, first) in enumerate(extents):
            common = [(b, Bbox.intersection(first, second)) for b, second in extents[i + 1 :]]
            pairs += [(a, b) for b, box in common if box is not None and min(box.width, box.height) > 0.5]
    return pairs


def test_matching_labels_of_queries_piled_on_one_spot_stay_readable():
    """An early BCCD model put its 50 queries on one spot: their 50 labels were piled into one unreadable block and
    the matched panel did not show which query went to which cell. Labels that would cover others are left out (the
    titles count them) and each ground-truth label names its query."""
    image = np.full((120, 160, 3), 0.5)
    predictions = [LabelledBox((40, 40, 90, 90), f"q{q} RBC 0.5") for q in range(12)]
    truth = [LabelledBox((10 + 35 * t, 10, 40 + 35 * t, 30), "RBC") for t in range(4)]
    pairs = [(q, t) for t, q in enumerate((3, 7, 0, 11))]
    figure = matching_figure(image, predictions, truth, pairs)
    assert _overlapping_texts(figure) == []
    every, matched = figure.axes
    assert "8 box labels not written (would cover another)" in every.get_title()  # 4 corners for 12
    assert {"RBC ← q3", "RBC ← q7", "RBC ← q0", "RBC ← q11"} <= {text.get_text() for text in matched.texts}


def test_data_figure_names_stay_apart_on_crowded_images_and_long_file_names():
    """BCCD's crowded cells wrote 'RBC' over 'RBC' and 'Platelets', and long file names (Roboflow's) ran into the
    next panel's title; names that would cover others are left out (counted in the title), file names wrap."""
    image, padding = np.full((96, 128, 3), 0.5), np.zeros((96, 128), dtype=bool)
    boxes = [LabelledBox((4 + 6 * i, 30 + 3 * i, 40 + 6 * i, 60), "Platelets" if i % 3 else "RBC") for i in range(12)]
    boxes += [LabelledBox((60, 40, 90, 70), "RBC")] * 5  # four corners for five labels
    name = "BloodImage_00023_jpg.rf.3f2a8d9e0c1b2a3f4e5d6c7b8a9f0e1d.jpg (id 17)"
    figure = data_figure([Sample(image, padding, boxes, name)] * 3, title="train.json: 3 images")
    assert _overlapping_texts(figure) == []
    assert "box labels not written (would cover another)" in figure.get_suptitle().replace("\n", " ")
    renderer = FigureCanvasAgg(figure).get_renderer()
    titles = [axes.title.get_window_extent(renderer) for axes in figure.axes]
    assert not titles[0].overlaps(titles[1]) and not titles[1].overlaps(titles[2])


def test_attention_panels_say_how_many_box_labels_were_not_written():
    """Five objects on one spot: their class names took the box's four corners and the fifth was written over
    them; it is now left out and the title says so."""
    truth = [LabelledBox((20, 20, 44, 44), "cell")] * 5
    figure = attention_figure(np.full((64, 64, 3), 0.5), np.full((1, 1, 4, 4), 1 / 16), ground_truth=truth)
    assert _overlapping_texts(figure) == []
    assert "2 box labels not written (would cover another)" in figure.get_suptitle().replace("\n", " ")


def test_alpha_colours_span_softmax_to_sparsemax_whatever_the_values():
    """Heads 0.003 apart were drawn black and pale yellow, the colour bar's ends 1.5005 and 1.5037, under a title
    reading '1 = softmax, 2 = sparsemax': a spread of nothing looked like softmax against sparsemax. The colours span
    α's range [1, 2] in every figure; the numbers tell close heads apart."""
    alpha = {"decoder.layers.0.cross_attn.activation": [1.5005, 1.5037]}
    figure = alpha_figure([{"type": "train", "step": 2, "alpha": alpha}])
    (image,) = figure.axes[0].images
    assert image.get_clim() == (1.0, 2.0)
    colours = image.cmap(image.norm(np.array(alpha["decoder.layers.0.cross_attn.activation"])))
    assert np.abs(colours[0] - colours[1]).max() < 0.02


def _contrast(first: tuple[int, ...], second: tuple[int, ...]) -> float:
    """WCAG contrast ratio of two sRGB colours (1 to 21; 3 is the least for large text)."""

    def luminance(color: tuple[int, ...]) -> float:
        linear = [(c / 255 / 12.92) if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in color[:3]]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    light, dark = sorted((luminance(first), luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_predict_captions_read_on_every_class_colour():
    """predict wrote BCCD's 'RBC 0.55' in white on tab20's light blue, which could not be read; the caption is black
    or white, whichever reads on its class's colour, and classes 0, 1, 2 are blue, orange, green (were blue, light
    blue, orange)."""
    from sparse_detector.viz.boxes import draw_boxes, label_color

    assert [label_color(label) for label in range(3)] == [(31, 119, 180), (255, 127, 14), (44, 160, 44)]
    for label in range(20):
        picture = np.asarray(draw_boxes(Image.new("RGB", (120, 60)), [[2, 30, 110, 58]], [label], ["RBC 0.55"]))
        above = picture[:30]  # the caption's patch above the box and the text on it, on a black image
        rows, columns = np.nonzero(above.any(axis=2))
        caption = above[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1].reshape(-1, 3)
        colours, counts = np.unique(caption, axis=0, return_counts=True)
        patch = tuple(colours[counts.argmax()])
        text = max((tuple(c) for c in colours), key=lambda c: _contrast(c, patch))
        assert patch == label_color(label) and _contrast(text, patch) >= 3, (label, patch, text)


def test_labels_of_boxes_reaching_past_the_image_stay_on_their_panel():
    """A Deformable model's early box reaching past the image's left edge had its label start outside the panel
    ('q10 green 0.06' cut to '10 green 0.06'); labels are anchored on the image's part of the box."""
    predictions = [LabelledBox((-12, -9, 30, 20), "q0 green 0.06"), LabelledBox((140, 100, 175, 131), "q1 red 0.1")]
    figure = matching_figure(np.full((120, 160, 3), 0.5), predictions, [], [])
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    every = figure.axes[0]
    frame = every.get_window_extent(renderer)
    assert len(every.texts) == 2
    for text in every.texts:
        extent = text.get_bbox_patch().get_window_extent(renderer)
        assert frame.x0 - 1 <= extent.x0 and extent.x1 <= frame.x1 + 1, text.get_text()
        assert frame.y0 - 1 <= extent.y0 and extent.y1 <= frame.y1 + 1, text.get_text()


def test_data_panels_take_the_images_shape():
    """BCCD's 4:3 images in square 3-inch panels left a band of white between the rows; panels take the shape."""
    image, padding = np.full((192, 256, 3), 0.5), np.zeros((192, 256), dtype=bool)
    figure = data_figure([Sample(image, padding, [], f"BloodImage_0000{i}.jpg") for i in range(8)])
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    images = sum(axes.get_window_extent(renderer).height for axes in figure.axes[::4])  # one panel a row
    assert images >= 0.7 * figure.bbox.height, (images, figure.bbox.height)


def test_encoder_figures_say_why_they_draw_their_cells(runs, tmp_path: Path, monkeypatch):
    """`visualize encoder RUN` without --pixels drew two cells without a word of why those; the title says they are
    the cells most attended to and how to pick others."""
    figures = []
    monkeypatch.setattr(kinds, "save_figure", lambda figure, path, fmt="png": figures.append(figure) or Path(path))
    assert main(["visualize", "encoder", str(runs["run"]), "--num-images", "1", "--output", str(tmp_path)]) == 0
    assert len(figures) == kinds.MOST_ATTENDED_CELLS
    why = "cells most attended in the last layer (--pixels picks others)"
    assert all(why in figure.get_suptitle().replace("\n", " ") for figure in figures)
    figures.clear()
    assert main(["visualize", "encoder", str(runs["run"]), "--pixels", "40,50", "--output", str(tmp_path)]) == 0
    assert all("most attended" not in figure.get_suptitle() for figure in figures)


def test_weight_histograms_of_layers_initialised_to_zero_say_they_are_in_absolute_units(runs):
    """Deformable DETR's sampling offsets start at 0 (std 0): their histograms were binned in absolute units while
    the step-0 record said std 1.0 and the axis 'value / the layer's initial std'; the record says 0 and the figure
    marks those rows."""
    records = read_diagnostics(runs["deformable"])
    offsets = [layer for layer in records[0]["weights"] if layer.endswith("sampling_offsets")]
    assert offsets and all(records[0]["weights"][layer]["std"] == 0 for layer in offsets)
    assert all(records[-1]["weights"][layer]["std"] > 0 for layer in offsets)  # they learn
    figure = diagnostics_figure(records)
    histogram = next(ax for ax in figure.axes if ax.get_title().startswith("weights at step 0"))
    names = [label.get_text() for label in histogram.get_yticklabels()]
    zero = {layer for layer, stats in records[0]["weights"].items() if stats["std"] == 0}  # also attention weights
    assert set(offsets) <= zero
    assert {name for name in names if name.endswith("(*)")} == {f"{layer} (*)" for layer in zero}
    assert "(*): initialised to one value, so in absolute units" in histogram.get_xlabel()


def test_curves_say_which_object_sizes_the_validation_data_lacks():
    """The shapes data has no large objects (COCO logs APl -1): the AP-by-size panel's title promised a dotted line
    for large objects and drew none, with no word of why."""
    records = [{"type": "train", "step": 1, "loss": 3.0, "class_error": 50.0}]
    sizes = {"AP_small": 0.1, "AP_medium": 0.2, "AP_large": -1.0}
    records += [{"type": "epoch", "step": e, "epoch": e, "AP": 0.1, **sizes} for e in (1, 2)]
    title = curves_figure({"run": records}).axes[6].get_title()
    assert title.endswith("\nlarge: no such objects in the validation data")
    records[-1]["AP_large"] = 0.3  # one evaluation measured it: nothing to say
    assert "no such objects" not in curves_figure({"run": records}).axes[6].get_title()


def test_attention_panels_keep_the_querys_label_among_ground_truth_names():
    """Ground-truth names drawn first could take every corner of the query's box, leaving out the query's own label
    (its class and score, what the figure is about); the query's label goes first."""
    box = (20, 20, 44, 44)
    truth = [LabelledBox(box, "cell")] * 4
    prediction = [LabelledBox(box, "q3 cell 0.9")]
    maps = np.full((1, 1, 4, 4), 1 / 16)
    figure = attention_figure(np.full((64, 64, 3), 0.5), maps, predictions=prediction, ground_truth=truth)
    assert all("q3 cell 0.9" in [t.get_text() for t in axes.texts] for axes in figure.axes if axes.images)
    assert _overlapping_texts(figure) == []


def test_predict_captions_do_not_cover_each_other():
    """13 detections on a 128 px shapes image (or BCCD's 50 RBC boxes on one spot) wrote their captions over each
    other into one unreadable block; a caption that would cover another goes to the box's other corners or is left
    out (the box stays; predictions.json lists every detection)."""
    from sparse_detector.viz.boxes import draw_boxes, label_spot

    taken = []
    for _ in range(5):  # five boxes on one spot: four corners, then nothing
        spot = label_spot((20, 40, 110, 90), (30, 12), taken, (128, 128))
        taken += [spot] if spot else []
    assert spot is None and len(taken) == 4
    assert all(
        not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]) for a in taken for b in taken if a != b
    )
    scores = [0.1, 0.2, 0.3, 0.4, 0.5]
    picture = np.asarray(draw_boxes(Image.new("RGB", (128, 128)), [[20, 40, 110, 90]] * 5, [0] * 5, ["c"] * 5, scores))
    text = np.all(picture == 255, axis=2)  # white letters on class 0's blue
    corners = [text[:40, :65], text[:40, 65:], text[91:, :65], text[91:, 65:]]
    assert all(corner.any() for corner in corners) and not text[43:88].any()  # one caption a corner, none inside


def test_predict_captions_stay_whole_on_the_picture():
    """A box drawn after a caption crossed it ('green v.12'), and a caption moved off a taken corner could run past
    the image's edge ('green 0' cut); boxes are drawn first, and every caption lies on the picture."""
    from sparse_detector.viz.boxes import draw_boxes, label_spot

    image, first = Image.new("RGB", (128, 128)), [20, 40, 110, 90]
    alone = np.asarray(draw_boxes(image, [first], [0], ["green"], [0.12]))
    crossed = np.asarray(draw_boxes(image, [first, [10, 30, 60, 34]], [0, 3], ["green", "red"], [0.12, 0.1]))
    assert np.array_equal(alone[26:40, 20:80], crossed[26:40, 20:80])  # the first caption, untouched
    taken = []
    while spot := label_spot((96, 50, 126, 70), (55, 12), taken, (128, 128)):  # captions wider than their boxes
        taken.append(spot)
    assert len(taken) == 2 and all(spot[0] >= 0 and spot[2] <= 128 for spot in taken)  # above and below, whole


TITLE_MARGIN_PX = 4  # constrained layout's padding at the figure's edge (4/72 inch at 100 dpi)


def test_curves_panel_titles_stay_inside_the_figure_and_apart():
    """The bottom-right panel's title ('total loss per epoch: train mean (solid, circles),') was wider than its
    panel and reached the figure's right edge (2 px from it, its comma at the border); every panel title now keeps
    a margin inside the figure and none covers another."""
    records = [{"type": "train", "step": s, "loss": 3.0 - s / 10, "class_error": 50.0} for s in (1, 2)]
    sizes = {"AP_small": 0.1, "AP_medium": 0.2, "AP_large": -1.0}
    records += [{"type": "epoch", "step": 2, "epoch": 1, "AP": 0.1, "train_loss": 2.9, "val_loss": 3.1, **sizes}]
    figure = curves_figure({"softmax": records, "sparsemax": records})
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    page = figure.bbox
    titles = [axes.title.get_window_extent(renderer) for axes in figure.axes]
    for axes, extent in zip(figure.axes, titles, strict=True):
        margin = TITLE_MARGIN_PX
        assert extent.x0 - page.x0 >= margin and page.x1 - extent.x1 >= margin and extent.y1 <= page.y1, (
            axes.get_title()
        )
    for i, first in enumerate(titles):
        assert not any(first.overlaps(second) for second in titles[i + 1 :]), figure.axes[i].get_title()


def test_predict_coco_results_above_a_threshold_say_their_ap_is_not_evaluates(runs, tmp_path: Path, caplog):
    """`predict --format coco --image-ids val.json` kept only detections scoring >= 0.5 (the default threshold)
    while the README promised each image's 100 best and evaluate's AP: scored, the file gave a lower AP without a
    word. A threshold above 0 is now named in a warning saying so; --threshold 0 keeps every query, silently."""
    image = str(runs["images"] / "val_000001.png")
    argv = ["predict", "--checkpoint", str(runs["run"]), image, "--format", "coco", "--output", str(tmp_path / "p")]
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    assert "lower than evaluate's" in caplog.text and "--threshold 0" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main([*argv, "--threshold", "0"]) == 0
    assert "lower than evaluate's" not in caplog.text
    assert len(json.loads((tmp_path / "p" / "detections_coco.json").read_text())) == 6  # every query


def test_a_drawing_option_the_kind_does_not_read_is_an_error(tmp_path: Path, capsys):
    """`visualize compare RUN OTHER --queries 3` (or `encoder --queries`, `attention --pixels`, `curves --site`,
    `curves --num-images 2`) drew figures that silently ignored the option, as if it had been honoured."""
    run, other = str(tmp_path / "run"), str(tmp_path / "other")  # never loaded: the options are checked first
    for argv, option in (
        (["compare", run, other, "--queries", "3"], "--queries"),
        (["encoder", run, "--threshold", "0.2"], "--threshold"),
        (["matching", run, "--max-queries", "2"], "--max-queries"),
        (["attention", run, "--pixels", "3,3"], "--pixels"),
        (["curves", run, "--site", "decoder_cross"], "--site"),
        (["curves", run, "--num-images", "2"], "--num-images"),  # run-only kinds draw no images
        (["alpha", run, "--num-images", "1"], "--num-images"),
    ):
        assert main(["visualize", *argv, "--output", str(tmp_path / "figures")]) == 2
        err = capsys.readouterr().err
        assert f"visualize {argv[0]} does not read {option}; leave it out (the kinds that do: {option}: " in err, err


def test_visualize_names_a_query_site_or_image_it_cannot_draw(runs, tmp_path: Path, capsys):
    """A query beyond the model's, a site that is not one of the kind's and `matching` of unannotated images: each a
    one-line error naming it, no figure, no traceback."""
    run, deformable = str(runs["run"]), str(runs["deformable"])
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), "white").save(photo)
    out = ["--output", str(tmp_path / "figures")]
    cases = [
        (["attention", run, "--queries", "9"], "query 9 does not exist: the model has 6 queries"),
        (
            ["deformable", deformable, "--site", "decoder_self"],
            "site decoder_self is not one of object queries over sampling points: decoder_cross",
        ),
        (["matching", run, str(photo)], "visualize matching needs annotated images: give images of the validation"),
    ]
    for argv, message in cases:
        assert main(["visualize", *argv, *out]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
        assert not list((tmp_path / "figures").glob("*.png")), argv
