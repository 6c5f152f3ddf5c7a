"""The ``analyze`` and ``compare`` commands end to end on a tiny DETR and a few generated shapes images."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_detector import build_model, load_config
from sparse_detector.analysis import record_attention
from sparse_detector.cli import main
from sparse_detector.config import Config, config_to_dict, override_config
from sparse_detector.data import generate_shapes
from sparse_detector.data.batching import collate_detection
from sparse_detector.data.build import build_dataset, build_loader
from sparse_detector.engine.analyze import load_analysis_model
from sparse_detector.engine.checkpoint import save_checkpoint
from sparse_detector.engine.coco_eval import STAT_NAMES, metric_text
from sparse_detector.engine.evaluate import run_evaluation
from sparse_detector.models import build_criterion
from sparse_detector.report import compare_markdown, result_markdown

DETR_SITES = ["encoder_self", "decoder_self", "decoder_cross"]

TINY = [
    "model.transformer.hidden_dim=32",
    "model.transformer.nheads=4",
    "model.transformer.enc_layers=1",
    "model.transformer.dec_layers=2",
    "model.transformer.dim_feedforward=64",
    "data.val_size=64",
    "data.max_size=64",
    "train.eval_batch_size=2",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    """A run directory holding a checkpoint as the Trainer writes it, and its config (5 images of 64 px)."""
    root = tmp_path_factory.mktemp("analyze")
    annotations = generate_shapes(root / "data", 5, seed=3, image_size=64, min_size=16, max_size=40, split_name="val")
    paths = [f"data.{split}.{key}={value}" for split in ("train", "val") for key, value in
             (("images", root / "data" / "images"), ("annotations", annotations))]  # fmt: skip
    config = load_config("shapes_tiny", [*paths, *TINY])
    torch.manual_seed(123)  # differs from the --random-init seed
    model = build_model(config)
    state = {"model": model.state_dict(), "config": config_to_dict(config), "epoch": 1, "step": 1}
    state["label_map"] = build_dataset(config, "val").label_map
    save_checkpoint(root / "run" / "checkpoint_last.pt", state)
    return root / "run", config


def read_record(folder: Path) -> dict:
    return json.loads((folder / "analysis.json").read_text())


@pytest.fixture(scope="module")
def analysis(run: tuple[Path, Config]) -> dict:
    run_dir, _ = run
    assert main(["analyze", "--checkpoint", str(run_dir), "--device", "cpu", "--per-image"]) == 0
    return read_record(run_dir / "analysis")


def test_writes_json_csv_markdown_with_all_sites(run: tuple[Path, Config], analysis: dict):
    run_dir, _ = run
    assert {"analysis.json", "analysis.csv", "analysis.md"} <= {p.name for p in (run_dir / "analysis").iterdir()}
    assert analysis["random_init"] is False and analysis["sites"] == DETR_SITES
    assert list(analysis["attention"]["sites"]) == DETR_SITES
    assert analysis["attention"]["num_images"] == 5 and len(analysis["attention"]["per_image"]) == 5
    assert list(analysis["ap"]) == list(STAT_NAMES)
    with (run_dir / "analysis" / "analysis.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["metric"] for r in rows if r["site"] == "coco"} == set(STAT_NAMES)
    assert {r["metric"] for r in rows} >= {"gini", "zeros_ratio", "entropy", "support_90", "paibb"}
    markdown = (run_dir / "analysis" / "analysis.md").read_text()
    assert "| AP " in markdown and "| decoder_cross | 1 |" in markdown


def test_ap_equals_evaluate_on_the_same_data(run: tuple[Path, Config], analysis: dict):
    run_dir, _ = run
    loaded = load_analysis_model(run_dir)
    loader = build_loader(build_dataset(loaded.config, "val"), loaded.config, train=False)
    stats = run_evaluation(loaded.model, None, loader, torch.device("cpu"), loaded.label_map).stats
    assert analysis["ap"] == stats
    assert stats["AR100"] > 0  # the checkpoint's seed gives some hits, so the comparison is not of zeros
    new = run_dir.parent / "new" / "folders"  # outputs in folders not made yet (were: after all the work, [Errno 2])
    assert main(["evaluate", "--checkpoint", str(run_dir), "--save-detections", str(new / "dets.json")]) == 0
    assert main(["compare", str(run_dir), "--output", str(new / "table.md")]) == 0
    assert json.loads((new / "dets.json").read_text()) and "| site | layer |" in (new / "table.md").read_text()


def values(block: dict) -> list[float]:
    return [v for row in block["per_head"]["mean"] for v in row if v is not None]


def test_metrics_in_valid_ranges(analysis: dict):
    attention = analysis["attention"]
    for site, info in attention["sites"].items():
        assert info["num_heads"] == 4 and info["num_layers"] == (1 if site == "encoder_self" else 2)
        assert all(0.0 <= v < 1.0 for v in values(info["metrics"]["gini"]))
        assert all(0.0 <= v <= 1.0 for v in values(info["metrics"]["zeros_ratio"]))
    assert [site for site, info in attention["sites"].items() if info["paibb"]] == ["decoder_cross"]
    paibb = attention["sites"]["decoder_cross"]["paibb"]["overall"]
    assert sum(paibb["per_layer"]["count"]) > 0
    assert all(0.0 <= v <= 1.0 for v in values(paibb))


def test_random_init_same_structure_other_weights(run: tuple[Path, Config], analysis: dict):
    run_dir, _ = run
    trained = load_analysis_model(run_dir).model.state_dict()
    fresh = load_analysis_model(run_dir, random_init=True, seed=0).model.state_dict()
    assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in fresh.items()}
    assert not all(torch.equal(trained[k], fresh[k]) for k in trained)

    assert main(["analyze", "--checkpoint", str(run_dir), "--device", "cpu", "--random-init", "--seed", "0"]) == 0
    baseline = read_record(run_dir / "analysis-random-init")
    assert baseline["random_init"] is True and baseline["seed"] == 0
    for site, info in analysis["attention"]["sites"].items():
        other = baseline["attention"]["sites"][site]
        assert (other["num_layers"], other["num_heads"]) == (info["num_layers"], info["num_heads"])
    assert baseline["attention"]["sites"] != analysis["attention"]["sites"]

    table_file = run_dir / "compare.md"
    assert main(["compare", str(run_dir), "--output", str(table_file)]) == 0
    table = table_file.read_text()
    assert "gini: run |" in table and "gini: run (random init) |" in table and "| COCO AP |" in table


def test_sites_subset_records_only_that_site(run: tuple[Path, Config], tmp_path: Path):
    run_dir, config = run
    out = tmp_path / "cross"
    args = ["analyze", "--checkpoint", str(run_dir), "--device", "cpu", "--sites", "decoder_cross"]
    assert main([*args, "--data", config.data.val.annotations, "--output", str(out)]) == 0
    record = read_record(out)
    assert record["sites"] == ["decoder_cross"] and list(record["attention"]["sites"]) == ["decoder_cross"]
    assert record["attention"]["sites"]["decoder_cross"]["paibb"] is not None
    bad = main([*args[:-2], "--sites", "decoder_nowhere", "--output", str(out)])
    assert bad == 2  # an error naming the model's sites, no traceback


def test_data_with_a_category_the_checkpoint_lacks_is_an_error_naming_it(
    run: tuple[Path, Config], tmp_path: Path, capsys
):
    """A box of a category the checkpoint has no class for crashed a Deformable DETR's matcher (IndexError) and was
    paired by DETR's "no object" score; a category id inserted before the others shifted every label."""
    run_dir, config = run
    data = json.loads(Path(config.data.val.annotations).read_text())
    args = ["analyze", "--checkpoint", str(run_dir), "--device", "cpu", "--output", str(tmp_path / "out")]
    for new_id in (5, 0):
        other = {**data, "categories": [*data["categories"], {"id": new_id, "name": "purple"}]}
        other["annotations"] = [{**data["annotations"][0], "category_id": new_id}, *data["annotations"][1:]]
        path = tmp_path / f"with_{new_id}.json"
        path.write_text(json.dumps(other))
        assert main([*args, "--data", str(path), "--images", config.data.val.images]) == 2
        err = capsys.readouterr().err
        assert f"{path} has categories the checkpoint was not trained on (id {new_id}: 'purple'), so its boxes" in err
    assert not (tmp_path / "out").exists()


def test_compare_marks_sites_a_run_did_not_record(analysis: dict):
    cross_only = {**analysis, "attention": {**analysis["attention"], "sites": {}}}
    cross_only["checkpoint"] = "runs/sparsemax/checkpoint_best.pt"
    table = compare_markdown([analysis, cross_only], ["gini", "paibb"])
    header, _, first, *_ = table.splitlines()
    assert header.startswith("| site | layer | gini: run | gini: sparsemax | paibb: run | paibb: sparsemax |")
    assert first.startswith("| encoder_self | 0 |") and first.count("–") == 3
    with pytest.raises(ValueError, match="unknown metrics"):
        compare_markdown([analysis], ["nonsense"])


def test_compare_writes_n_a_for_the_ap_of_data_without_objects(analysis: dict):
    """COCO writes AP -1 where the data hold no object; compare printed '-1.000' where every other table says n/a."""
    unlabelled = {**analysis, "ap": {**analysis["ap"], "AP": -1.0}, "checkpoint": "runs/other/checkpoint_best.pt"}
    row = next(line for line in compare_markdown([analysis, unlabelled]).splitlines() if "COCO AP" in line)
    assert row.split("|")[3:5] == [f" {metric_text('AP', analysis['ap']['AP'])} ", " n/a "]


def test_compare_help_lists_every_metric_it_accepts(capsys: pytest.CaptureFixture[str]):
    """The --metrics help named ``support`` (rejected: the metric is ``support_90``) and left out sampling_spread."""
    from sparse_detector.report.tables import COMPARE_METRICS

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    listed = help_text.split("metrics to show:")[1].split("(default")[0]
    assert [name.strip(" ,") for name in listed.split() if name.strip(" ,") in COMPARE_METRICS] == list(COMPARE_METRICS)


def test_tables_state_the_std_kind_and_the_units(analysis: dict, run: tuple[Path, Config]):
    """compare's note did not say its std is the population one (analysis.md did); neither named entropy's unit."""
    note = compare_markdown([analysis], ["entropy"]).splitlines()[-1]
    assert "Mean ± std (population)" in note and "entropy in nats" in note
    written = (run[0] / "analysis" / "analysis.md").read_text()
    assert "Mean ± std (population)" in written and "entropy in nats" in written
    assert "support_90: keys holding 0.9 of the mass" in written


def test_compare_states_the_zeros_ratio_threshold_of_every_run(analysis: dict):
    """compare set a softmax run's zeros ratio (p <= 1e-6) beside a sparsemax run's (p <= 0) without saying that
    the two count zeros differently."""
    sparse = json.loads(json.dumps(analysis))
    sparse["checkpoint"] = "runs/sparsemax/checkpoint_best.pt"
    sparse["attention"]["sites"]["decoder_cross"]["zero_threshold"] = 0.0
    note = compare_markdown([analysis, sparse], ["zeros_ratio"]).splitlines()[-1]
    assert (
        "Zeros ratio thresholds differ between runs: run: 1e-06 at every site; sparsemax: encoder_self 1e-06, "
        "decoder_self 1e-06, decoder_cross 0." in note
    )
    assert "Zeros ratio threshold: 1e-06." in compare_markdown([analysis], ["zeros_ratio"])
    assert "threshold" not in compare_markdown([analysis, sparse], ["gini"])


def test_compare_says_which_runs_read_paibb_over_sampling_points(analysis: dict):
    """A DETR's decoder_cross PAIBB (attention mass on the grid) and a Deformable DETR's (weight of its sampling
    points) shared one row of compare with nothing saying they are different readings."""
    points = json.loads(json.dumps(analysis))
    points["checkpoint"] = "runs/deformable/checkpoint_best.pt"
    cross = points["attention"]["sites"]["decoder_cross"]
    cross["keys"], cross["sampling_spread"] = "points", cross["paibb"]
    note = compare_markdown([analysis, points], ["paibb"]).splitlines()[-1]
    assert (
        "At sampling-point sites (deformable decoder_cross) PAIBB is the weight of the sampling points inside" in note
    )
    assert "; elsewhere PAIBB is the attention mass inside the matched box." in note
    assert "sampling-point" not in compare_markdown([analysis, points], ["gini"])
    only_points = compare_markdown([points, points], ["paibb"]).splitlines()[-1]  # two Deformable DETR runs
    assert "decoder_cross) PAIBB is the weight of the sampling points inside the matched box" in only_points
    assert "box widths / heights. Runs — " in only_points and "elsewhere" not in only_points
    assert "sampling-point" not in compare_markdown([analysis], ["paibb"])


def test_compare_says_where_sparsity_is_read_over_different_keys(analysis: dict):
    """A DETR's decoder_cross Gini (over hundreds of grid cells) and a Deformable DETR's (over its sampling points)
    shared one row of compare; only the sparsity figure said they cannot be compared."""
    points = json.loads(json.dumps(analysis))
    points["checkpoint"] = "runs/deformable/checkpoint_best.pt"
    points["attention"]["sites"]["decoder_cross"]["keys"] = "points"
    note = compare_markdown([analysis, points], ["gini", "paibb"]).splitlines()[-1]
    assert (
        "Sparsity NOT comparable where the keys attended over differ: decoder_cross (feature-grid cells: run; "
        "sampling points: deformable)." in note
    )
    assert "NOT comparable" not in compare_markdown([analysis, points], ["paibb"])
    assert "NOT comparable" not in compare_markdown([analysis, analysis], ["gini"])


def test_analysis_note_counts_the_matched_pairs_behind_paibb(analysis: dict, run: tuple[Path, Config]):
    """The note said 'over all query maps of N images' and nothing of how many matched pairs PAIBB averaged, and
    still described PAIBB when no site had it."""
    pairs = analysis["attention"]["sites"]["decoder_cross"]["paibb"]["overall"]["per_layer"]["count"][0]
    assert pairs > 0
    written = (run[0] / "analysis" / "analysis.md").read_text()
    assert f"({pairs} matched pair{'s' if pairs > 1 else ''} at decoder_cross; COCO size buckets by box area in " in (
        written
    )
    no_paibb = json.loads(json.dumps(analysis["attention"]))
    for info in no_paibb["sites"].values():
        info["paibb"] = None
    assert "PAIBB" not in result_markdown(no_paibb)


def test_analysis_note_counts_the_boxes_no_query_was_matched_to(analysis: dict, run: tuple[Path, Config]):
    """On BCCD with a 12-query model, 149 validation boxes gave '117 matched pairs' and nothing said that the other
    32 boxes (images holding more cells than the model has queries) were not read by PAIBB at all."""
    _, config = run
    boxes = len(json.loads(Path(config.data.val.annotations).read_text())["annotations"])
    result = analysis["attention"]
    assert result["num_boxes"] == boxes
    pairs = result["sites"]["decoder_cross"]["paibb"]["overall"]["per_layer"]["count"][0]
    assert "matched to no query" not in result_markdown(result) and pairs == boxes  # 8 queries match them all
    crowded = {**result, "num_boxes": pairs + 2}
    assert (
        f"({pairs} matched pairs at decoder_cross; 2 ground-truth boxes of {pairs + 2} matched to no query and not "
        "read: images held more boxes than the model has queries; COCO size buckets"
    ) in result_markdown(crowded)


@pytest.mark.parametrize("command", ["analyze", "evaluate"])
@pytest.mark.parametrize("size", ["0", "-2"])
def test_a_batch_size_below_one_is_a_usage_error_naming_the_option(command, size, capsys):
    """--batch-size 0 silently used train.eval_batch_size."""
    with pytest.raises(SystemExit) as stop:
        main([command, "--checkpoint", "runs/nope", "--batch-size", size])
    assert stop.value.code == 2
    assert f"argument --batch-size: must be 1 or more, got {size}" in capsys.readouterr().err


def test_compare_output_that_is_a_folder_says_it_takes_a_file(tmp_path: Path, capsys):
    """compare --output <folder> printed "[Errno 21] Is a directory"."""
    assert main(["compare", str(tmp_path), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--output {tmp_path} is a folder; --output takes the Markdown file" in err and "Errno" not in err


@pytest.mark.parametrize("option", ["--output", "--save-detections"])
def test_evaluate_to_a_folder_is_refused_before_evaluating(tmp_path: Path, capsys, option: str):
    """evaluate --output <folder> evaluated the whole data set, then failed with "[Errno 21] Is a directory"."""
    assert main(["evaluate", "--checkpoint", str(tmp_path / "not-loaded"), option, str(tmp_path)]) == 2
    assert f"{option} {tmp_path} is a folder; {option} takes" in capsys.readouterr().err


def test_compare_of_a_file_that_is_no_analysis_names_it(tmp_path: Path, capsys):
    """compare given eval.json, a JSON list or a picture printed a KeyError / AttributeError / codec traceback."""
    contents = {"eval.json": b'{"AP": 0.5}', "list.json": b"[1]", "image.png": b"\x89PNG\r\n\x1a\n"}
    for name, content in contents.items():
        (tmp_path / name).write_bytes(content)
        assert main(["compare", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert f"error: {tmp_path / name} is not" in err and "Traceback" not in err
    (tmp_path / "analysis.csv").write_text("site,layer\n")  # analyze's table, given for the record beside it
    (tmp_path / "analysis.json").write_text("{}")
    assert main(["compare", str(tmp_path / "analysis.csv")]) == 2
    assert f"is not valid JSON (Expecting value: line 1 column 1 (char 0)); give {tmp_path / 'analysis.json'}" in (
        capsys.readouterr().err
    )


def test_readme_names_every_key_of_analysis_json(analysis: dict):
    """The README said only that analyze writes analysis.json: not one of its keys, nor what the means are over."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("## Attention analysis") : readme.index("## Figures")]
    result = analysis["attention"]
    site = result["sites"]["decoder_cross"]
    keys = {*analysis, *result, *site, *site["paibb"], *site["paibb"]["by_size"], *site["metrics"]["gini"]}
    keys |= set(site["metrics"]["gini"]["per_head"])
    missing = {key for key in keys if not re.search(rf"\b{key}\b", section)}
    assert not missing - {"checkpoint", "data", "random_init", "seed"}  # the record's provenance, self-explaining


def brute_force_readings(p: np.ndarray, threshold: float) -> dict[str, float]:
    """One query map's readings from their definitions: Gini as the mean absolute difference over twice the mean,
    zeros counted, entropy summed, support_90 by adding the largest weights until 90% of the mass."""
    descending = np.sort(p)[::-1]
    return {
        "gini": np.abs(p[:, None] - p[None, :]).sum() / (2 * len(p) * p.sum()),
        "zeros_ratio": (p <= threshold).mean(),
        "entropy": -sum(x * np.log(x) for x in p if x > 0),
        "support_90": int(np.argmax(np.cumsum(descending) >= 0.9 * p.sum())) + 1,
    }


def brute_force_paibb(weights: np.ndarray, box: list[float], image_hw: tuple[int, int], stride: int) -> float:
    """Mass of a (cells_h, cells_w) map inside a normalised cxcywh box, cell (i, j) covering pixels
    [j * stride, (j + 1) * stride] x [i * stride, (i + 1) * stride] clipped to the image."""
    (height, width), (cx, cy, w, h) = image_hw, box
    x0, x1, y0, y1 = (cx - w / 2) * width, (cx + w / 2) * width, (cy - h / 2) * height, (cy + h / 2) * height
    inside = 0.0
    for (i, j), weight in np.ndenumerate(weights):
        across = max(0.0, min(x1, (j + 1) * stride, width) - max(x0, j * stride))
        down = max(0.0, min(y1, (i + 1) * stride, height) - max(y0, i * stride))
        inside += weight * across * down / stride**2
    return inside


def test_analysis_json_equals_a_brute_force_reading_of_every_image_alone(run: tuple[Path, Config], tmp_path: Path):
    """Every per-head mean and per-layer mean / std of analysis.json, read in batches of 2 from 56 px images (3.5
    cells of stride 16 a side: the last cell half image), equals the readings of each image run alone, computed
    from the definitions, and PAIBB from boxes laid over the cells in pixels."""
    run_dir, _ = run
    sizes = ["data.val_size=56", "data.max_size=56"]
    assert (
        main(["analyze", "--checkpoint", str(run_dir), "--batch-size", "2", "--output", str(tmp_path), "--set", *sizes])
        == 0
    )
    result = read_record(tmp_path)["attention"]
    loaded = load_analysis_model(run_dir)
    config = override_config(loaded.config, sizes)
    dataset, matcher = build_dataset(config, "val"), build_criterion(config).matcher
    sites = {site.name: site for site in loaded.model.attention_sites()}
    readings: dict[tuple[str, str, int, int], list[float]] = {}
    paibb: dict[int, list[float]] = {}
    for index in range(len(dataset)):
        batch, targets = collate_detection([dataset[index]])
        outputs, maps = record_attention(loaded.model, batch)
        for site, site_maps in maps.items():
            for layer, weights in enumerate(site_maps.weights):
                for head, query in np.ndindex(weights.shape[1:3]):
                    p = weights[0, head, query].double().numpy()
                    for name, value in brute_force_readings(p, result["sites"][site]["zero_threshold"]).items():
                        readings.setdefault((site, name, layer, head), []).append(value)
        cross = maps["decoder_cross"]
        image_hw = tuple(int(v) for v in targets[0]["size"])
        assert image_hw == (56, 56) and cross.padded_hw == (4, 4)
        for query, truth in zip(*(i.tolist() for i in matcher(outputs, targets)[0]), strict=True):
            box = targets[0]["boxes"][truth].tolist()
            for layer, weights in enumerate(cross.weights):
                grid = weights[0, :, query].mean(0).double().numpy().reshape(cross.padded_hw)
                paibb.setdefault(layer, []).append(
                    brute_force_paibb(grid, box, image_hw, sites["decoder_cross"].key_strides[0])
                )
    for (site, name, layer, head), values in readings.items():
        stats = result["sites"][site]["metrics"][name]
        assert stats["per_head"]["mean"][layer][head] == pytest.approx(np.mean(values), abs=1e-5)
        assert stats["per_head"]["count"][layer][head] == len(values)
        pooled = [v for (s, n, lay, _), vs in readings.items() if (s, n, lay) == (site, name, layer) for v in vs]
        assert stats["per_layer"]["std"][layer] == pytest.approx(np.std(pooled), abs=1e-5)
    stats = result["sites"]["decoder_cross"]["paibb"]["overall"]["per_layer"]
    assert stats["count"] == [len(paibb[0])] * 2 and len(paibb[0]) > 0
    assert stats["mean"] == pytest.approx([np.mean(paibb[layer]) for layer in (0, 1)], abs=1e-6)
    assert stats["std"] == pytest.approx([np.std(paibb[layer]) for layer in (0, 1)], abs=1e-6)


def test_an_analysis_cut_short_while_writing_leaves_no_old_record_beside_new_tables(
    run: tuple[Path, Config], analysis: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """analyze writes analysis.csv and analysis.md, then analysis.json; killed in between over an earlier analysis,
    it left the old analysis.json (which study takes as current) beside the new tables. Now no record is left."""
    from sparse_detector.report import tables

    folder = tmp_path / "analysis"
    tables.write_analysis(analysis, folder)
    newer = {**analysis, "ap": {**analysis["ap"], "AP": 0.5}}
    written = []

    def killed_at_the_markdown(path: Path, content: str) -> None:
        if Path(path).suffix == ".md":
            raise KeyboardInterrupt
        written.append(Path(path).name)
        Path(path).write_text(content)

    monkeypatch.setattr(tables, "write_atomically", killed_at_the_markdown)
    with pytest.raises(KeyboardInterrupt):
        tables.write_analysis(newer, folder)
    assert written == ["analysis.csv"] and not (folder / "analysis.json").exists()


def test_compare_names_each_runs_attention_maps(analysis: dict):
    """compare named the runs by their folders only: a softmax baseline beside a run fine-tuned with sparse maps at
    some sites did not say which map each run had where; analyze now records them."""
    assert analysis["maps"] == dict.fromkeys(DETR_SITES, "softmax")
    sparse = json.loads(json.dumps(analysis))
    sparse["checkpoint"] = "runs/tuned/checkpoint_best.pt"
    sparse["maps"] |= {"encoder_self": "sparsemax", "decoder_cross": "alpha_entmax"}
    note = compare_markdown([analysis, sparse], ["gini"]).splitlines()[-1]
    assert (
        " Attention maps — run: softmax at every site; tuned: encoder_self sparsemax, decoder_self softmax, "
        "decoder_cross alpha_entmax. Runs — " in note
    )
    older = {key: value for key, value in analysis.items() if key != "maps"}  # written before records named them
    assert "Attention maps" not in compare_markdown([older], ["gini"])
