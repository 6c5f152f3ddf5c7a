"""CocoDetection: real tiny_coco loading, label modes, and every bad-input case with a named error."""

from __future__ import annotations

import codecs
import gc
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from sparse_detector.config import load_config
from sparse_detector.data import CocoDetection, DatasetError, collate_detection, make_transforms
from sparse_detector.data.build import build_dataset
from sparse_detector.data.labels import COCO_CATEGORY_NAMES, LabelMap

TINY_COCO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tiny_coco"


@pytest.fixture(scope="module")
def tiny_coco() -> tuple[Path, Path]:
    annotation_file = TINY_COCO / "annotations" / "instances_train2017.json"
    if not annotation_file.is_file():
        pytest.skip(f"shared tiny_coco data not found at {TINY_COCO}")
    return TINY_COCO / "train2017", annotation_file


def test_tiny_coco_contiguous(tiny_coco: tuple[Path, Path]) -> None:
    ds = CocoDetection(*tiny_coco)
    raw = json.loads(tiny_coco[1].read_text())
    assert len(ds) == 50 and ds.num_classes == 80 and len(ds.category_names) == 80
    assert ds.num_crowd == 5 and ds.num_boxes == 470 - 5 and not ds.skipped
    assert len(ds.coco.getAnnIds()) == 470
    # labels map back to the original category ids, in sorted order
    assert list(ds.labels.label_to_category_id.values()) == sorted(c["id"] for c in raw["categories"])
    index = next(i for i in range(len(ds)) if len(ds.raw_target(i)["labels"]) > 0)
    target = ds.raw_target(index)
    image_id = int(target["image_id"])
    expected = sorted(a["category_id"] for a in raw["annotations"] if a["image_id"] == image_id and not a["iscrowd"])
    assert sorted(ds.labels.category_ids(target["labels"].tolist())) == expected
    assert ds.label_map["label_to_category_id"] == ds.labels.label_to_category_id


def test_tiny_coco_targets_and_empty_image(tiny_coco: tuple[Path, Path]) -> None:
    ds = CocoDetection(*tiny_coco)
    empty = [i for i in range(len(ds)) if len(ds.raw_target(i)["labels"]) == 0]
    assert len(empty) == 1
    image, target = ds[empty[0]]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["image_id"].dtype == torch.int64 and target["image_id"].dim() == 0
    assert target["orig_size"].tolist() == list(image.shape[-2:]) == target["size"].tolist()
    raw = ds.raw_target(0)
    h, w = raw["orig_size"].tolist()
    xyxy = raw["boxes"]
    cxcywh = torch.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2 / w, (xyxy[:, 1] + xyxy[:, 3]) / 2 / h], dim=1)
    assert torch.allclose(target["boxes"][:, :2], cxcywh)
    batch, targets = collate_detection([ds[0], ds[empty[0]]])
    assert batch.tensors.shape[0] == 2 and len(targets) == 2


def test_tiny_coco_coco_ids_mode(tiny_coco: tuple[Path, Path]) -> None:
    torch.manual_seed(0)
    ds = CocoDetection(*tiny_coco, transforms=make_transforms(False, val_size=256, max_size=400), label_mode="coco_ids")
    assert ds.num_classes == 91 and len(ds.category_names) == 91 and ds.category_names[0] == "N/A"
    raw = ds.raw_target(0)
    assert ds.labels.category_ids(raw["labels"].tolist()) == raw["labels"].tolist()
    image, target = ds[0]
    assert min(image.shape[-2:]) == 256 or max(image.shape[-2:]) == 400
    assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()


def test_official_checkpoints_name_coco_categories_but_keep_the_datas_names(tiny_coco: tuple[Path, Path]) -> None:
    """An official checkpoint's labels (raw COCO ids) were shown as numbers ("63"); they are named as COCO 2017 does,
    while a data set scored with it keeps its own names and is not checked against COCO's."""
    categories = json.loads(tiny_coco[1].read_text())["categories"]
    assert {c["id"]: c["name"] for c in categories} == COCO_CATEGORY_NAMES
    official = LabelMap.official_coco()
    assert (official.name(63), official.name(1), official.name(12), official.name(91)) == (
        "couch",
        "person",
        "12",
        "91",
    )
    renamed = LabelMap.from_categories({1: "human", 63: "sofa"}, "coco_ids")
    assert official.differences(renamed) == [] and renamed.name(63) == "sofa"
    assert LabelMap.from_categories({3: "three", 7: "seven"}).name(5) == "5"  # a contiguous map is not COCO's


def test_official_checkpoints_name_the_datas_ids_that_are_other_coco_classes() -> None:
    """evaluate / analyze --official on BCCD (ids 1-3: Platelets, RBC, WBC) scored COCO's person, bicycle and car as
    blood cells without a word; now the ids the data names otherwise are listed (for a warning), case aside."""
    bccd = LabelMap.from_categories({1: "Platelets", 2: "RBC", 3: "WBC"})
    assert LabelMap.official_coco().coco_differences(bccd) == [
        "id 1: 'Platelets' vs COCO 'person'",
        "id 2: 'RBC' vs COCO 'bicycle'",
        "id 3: 'WBC' vs COCO 'car'",
    ]
    same = LabelMap.from_categories({1: "Person", 63: "couch", 12: "street sign"}, "coco_ids")
    assert LabelMap.official_coco().coco_differences(same) == ["id 12: 'street sign' vs COCO 'none'"]
    assert bccd.coco_differences(bccd) == []  # ours: checked by differences() instead


# ---- bad input, on a two-image dataset written to tmp_path --------------------------------------------------


def _dataset_dict() -> dict[str, Any]:
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 7, "bbox": [30, 20, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 7, "bbox": [0, 0, 40, 30], "area": 1200, "iscrowd": 1},
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
    }


def _write(tmp_path: Path, data: dict[str, Any] | None = None) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 30), (90, 120, 30)).save(images / name)
    annotation_file = tmp_path / "instances.json"
    annotation_file.write_text(json.dumps(_dataset_dict() if data is None else data))
    return images, annotation_file


def test_small_dataset_labels_and_clipping(tmp_path: Path) -> None:
    ds = CocoDetection(*_write(tmp_path))
    assert ds.category_names == ["three", "seven"] and ds.labels.label_to_category_id == {0: 3, 1: 7}
    assert ds.num_crowd == 1
    target = ds.raw_target(0)
    assert target["labels"].tolist() == [0, 1]
    # annotation 11 reaches past the image (x 30..50, y 20..40 on a 40x30 image): clipped
    assert target["boxes"].tolist() == [[5, 5, 15, 15], [30, 20, 40, 30]]
    assert ds.raw_target(1)["boxes"].shape == (0, 4)  # crowd-only image
    # ... the same way in the evaluation ground truth, and counted
    assert ds.coco.anns[11]["bbox"] == [30, 20, 10, 10] and ds.coco.anns[10]["bbox"] == [5, 5, 10, 10]
    assert ds.num_clipped == 1


def test_reading_counts_only_boxes_clipping_changed_and_leaves_the_garbage_collector_as_it_was(tmp_path: Path) -> None:
    """Boxes are compared with their clipped form all at once (np.isclose's tolerance: float noise from x + w - x is
    no clip); the garbage collector, paused while reading, is left on or off as it was, also after an error."""
    data = _dataset_dict()
    noisy = {"id": 13, "image_id": 2, "category_id": 3, "bbox": [0.1, 0.2, 0.3, 0.7], "area": 0.21, "iscrowd": 0}
    data["annotations"].append(noisy)
    assert 0.1 + 0.3 - 0.1 != 0.3  # clipping gives 0.30000000000000004
    ds = CocoDetection(*_write(tmp_path, data))
    assert ds.num_clipped == 1 and ds.coco.anns[13]["bbox"] == [0.1, 0.2, 0.3, 0.7]
    assert ds.coco.anns[11]["bbox"] == [30, 20, 10, 10]
    assert gc.isenabled()
    gc.disable()
    try:
        CocoDetection(*_write(tmp_path))
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(DatasetError, match="lacks required key"):
        CocoDetection(*_write(tmp_path, _mutate(["annotations", 0, "bbox"], KeyError)))
    assert gc.isenabled()


def _mutate(path: list[str | int], value: Any) -> dict[str, Any]:
    data = _dataset_dict()
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (["categories"], KeyError, ["categories"]),
        (["annotations", 0, "bbox"], KeyError, ["annotation 10", "bbox"]),
        (["annotations", 1, "category_id"], KeyError, ["annotation 11", "category_id"]),
        (["annotations", 0, "image_id"], KeyError, ["annotation 10", "image_id"]),
        (["images", 0, "file_name"], KeyError, ["image entry 1", "file_name"]),
        (["annotations", 0, "bbox"], [5, 5, 0, 10], ["annotation id 10", "[5, 5, 0, 10]", "width and height"]),
        (["annotations", 0, "bbox"], [5, 5, 10, -2], ["annotation id 10", "[5, 5, 10, -2]"]),
        # a height the float32 targets cannot hold (5 + 1e-9 == 5) was kept as a box of zero height
        (["annotations", 0, "bbox"], [5, 5, 10, 1e-9], ["annotation id 10", "1e-09", "width and height"]),
        (["annotations", 0, "bbox"], [50, 5, 10, 10], ["annotation id 10", "[50, 5, 10, 10]", "outside"]),
        (["annotations", 0, "bbox"], [5, 5, 10], ["annotation id 10", "4 finite numbers"]),
        (["annotations", 1, "category_id"], 99, ["annotation id 11", "category_id 99", "not in 'categories'"]),
        (["annotations", 1, "image_id"], 42, ["annotation id 11", "image_id 42", "not in 'images'"]),
        (["images", 1, "id"], 1, ["image id 1", "twice"]),
        # ids that are not numbers (a labelling tool's 'IMG_0001') stopped with "invalid literal for int()" alone
        (["images", 1, "id"], "IMG_0001", ["image id 'IMG_0001' is not a whole number", "data import coco"]),
        (["categories", 0, "id"], None, ["category id None is not a whole number", "renumbers the ids"]),
        (["annotations", 1, "category_id"], "cat", ["annotation id 11", "category_id cat", "not in 'categories'"]),
        (["annotations", 1, "image_id"], "x", ["annotation id 11", "image_id x", "not in 'images'"]),
    ],
)
def test_bad_annotations_raise_named_errors(tmp_path: Path, path: list, value: Any, expected: list[str]) -> None:
    images, annotation_file = _write(tmp_path, _mutate(path, value))
    with pytest.raises(DatasetError) as info:
        CocoDetection(images, annotation_file)
    message = str(info.value)
    assert str(annotation_file) in message
    for text in expected:
        assert text in message


def test_a_segmentation_without_bbox_points_to_the_import(tmp_path: Path) -> None:
    """A segmentation data set's annotation without 'bbox' said only that 'bbox' was a required key; the error now
    says that data import coco takes the box from the segmentation."""
    data = _dataset_dict()
    data["annotations"][1]["segmentation"] = [[30, 20, 40, 20, 40, 30]]
    del data["annotations"][1]["bbox"]
    with pytest.raises(DatasetError, match=r"annotation 11 has a segmentation but no 'bbox'; .*data import coco"):
        CocoDetection(*_write(tmp_path, data))


def test_missing_paths(tmp_path: Path) -> None:
    images, annotation_file = _write(tmp_path)
    with pytest.raises(DatasetError, match="images directory .*nowhere.* does not exist"):
        CocoDetection(tmp_path / "nowhere", annotation_file)
    with pytest.raises(DatasetError, match="annotation file .*missing.json does not exist"):
        CocoDetection(images, tmp_path / "missing.json")
    # the folder of the JSON given for the JSON (`data check data/`, `evaluate --annotations data/`) was "annotation
    # file data does not exist"
    with pytest.raises(DatasetError, match=rf"annotation file {tmp_path} is a folder; give the COCO JSON file \(it "):
        CocoDetection(images, tmp_path)
    (images / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"missing from .*images.*b\.png.*<split>.images \(evaluate, analyze: --im"):
        CocoDetection(images, annotation_file)


def test_json_with_a_bom_or_in_another_encoding(tmp_path: Path) -> None:
    """A COCO JSON saved with a UTF-8 BOM (some Windows tools) was 'not valid JSON ... Unexpected UTF-8 BOM'; one in
    Latin-1 failed with "'utf-8' codec can't decode", naming no file. The BOM is now read past; another encoding
    is an error naming the file."""
    images, annotation_file = _write(tmp_path)
    text = json.dumps(_dataset_dict() | {"categories": [{"id": 7, "name": "sept"}, {"id": 3, "name": "crème"}]})
    annotation_file.write_bytes(codecs.BOM_UTF8 + text.encode("utf-8"))
    assert CocoDetection(images, annotation_file).category_names == ["crème", "sept"]
    annotation_file.write_bytes(text.replace("\\u00e8", "\u00e8").encode("latin-1"))
    with pytest.raises(DatasetError, match=r"instances.json: not UTF-8 text"):
        CocoDetection(images, annotation_file)
    png = io.BytesIO()  # an image given for the annotation file was 'not UTF-8 text ... iconv'
    Image.new("RGB", (2, 2)).save(png, format="PNG")
    annotation_file.write_bytes(png.getvalue())
    with pytest.raises(DatasetError, match=r"instances.json is not a JSON file but a PNG image: give the annotation"):
        CocoDetection(images, annotation_file)


def test_unparsable_json_names_position(tmp_path: Path) -> None:
    images, annotation_file = _write(tmp_path)
    annotation_file.write_text('{"images": [],\n  "annotations": [,]}')
    with pytest.raises(DatasetError, match=r"instances\.json: not valid JSON at line 2, column 19"):
        CocoDetection(images, annotation_file)
    annotation_file.write_text("[1, 2]")
    with pytest.raises(DatasetError, match="JSON object"):
        CocoDetection(images, annotation_file)


def test_corrupt_and_mismatched_images_fail_at_load(tmp_path: Path) -> None:
    images, annotation_file = _write(tmp_path)
    (images / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    Image.new("RGB", (41, 30)).save(images / "b.png")
    ds = CocoDetection(images, annotation_file)  # construction does not decode images
    with pytest.raises(DatasetError, match=r"cannot read image .*a\.png \(image id 1\)"):
        ds[0]
    with pytest.raises(DatasetError, match=r"b\.png \(image id 2\) is 41x30 but .* says 40x30"):
        ds[1]


def test_skip_mode_counts_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _dataset_dict()
    data["annotations"] += [
        {"id": 20, "image_id": 2, "category_id": 3, "bbox": [1, 1, 0, 5]},
        {"id": 21, "image_id": 2, "category_id": 3, "bbox": [100, 100, 5, 5]},
        {"id": 22, "image_id": 2, "category_id": 5, "bbox": [1, 1, 5, 5]},
        {"id": 23, "image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5]},
    ]
    images, annotation_file = _write(tmp_path, data)
    with caplog.at_level(logging.WARNING, logger="sparse_detector.data.coco"):
        ds = CocoDetection(images, annotation_file, on_invalid="skip")
    assert ds.skipped == {"non_positive_size": 1, "outside_image": 1, "unknown_category": 1}
    assert ds.num_boxes == 3 and ds.raw_target(1)["boxes"].tolist() == [[1, 1, 6, 6]]
    assert len(caplog.records) == 2  # the skips, and annotation 11 clipped to its image
    assert "1 box(es) reach past their image border" in caplog.text
    assert "skipped 3 invalid annotation(s)" in caplog.text and "annotation id 21" in caplog.text
    assert sorted(ds.coco.getAnnIds()) == [10, 11, 12, 23]


def test_invalid_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="label_mode"):
        CocoDetection(*_write(tmp_path), label_mode="raw")
    with pytest.raises(ValueError, match="on_invalid"):
        CocoDetection(*_write(tmp_path), on_invalid="ignore")


@pytest.mark.parametrize("preset", ["detr_r50", "deformable_detr_r50"])
def test_official_presets_drop_cocos_zero_height_boxes(tmp_path: Path, preset: str) -> None:
    """COCO train2017's annotation 918 has bbox [296.65, 388.33, 1.03, 0.0]; official DETR drops it, but the
    preset stopped at it with 'bbox width and height must be > 0' before training began."""
    data = _dataset_dict()
    data["annotations"].append({"id": 918, "image_id": 2, "category_id": 3, "bbox": [29.65, 18.33, 1.03, 0.0]})
    images, annotation_file = _write(tmp_path, data)
    paths = [f"data.train.images={images}", f"data.train.annotations={annotation_file}"]
    dataset = build_dataset(load_config(preset, paths), "train")
    assert dataset.skipped == {"non_positive_size": 1} and dataset.num_boxes == 2


def test_a_json_listing_no_images_is_an_error_not_an_empty_run(tmp_path: Path, capsys) -> None:
    """A COCO JSON with no images trained every epoch without a step (a 'finished' run of untrained weights),
    evaluated to AP 0.000, and `data check` said OK."""
    from sparse_detector.cli import main

    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]}))
    output_dir = tmp_path / "run"
    paths = [
        f"data.{split}.{key}={value}"
        for split in ("train", "val")
        for key, value in (("annotations", empty), ("images", ""))
    ]
    assert main(["train", "--set", *paths, "--output-dir", str(output_dir)]) == 2
    assert f"{empty} lists no images (data.train.annotations)" in capsys.readouterr().err
    assert not output_dir.exists()
    assert main(["data", "check", str(empty)]) == 1
    assert f"FAILED: {empty} lists no images" in capsys.readouterr().out
