"""Property-based hardening (hypothesis): the COCO and VOC loaders, the training transforms and the config loader
either work with valid results or fail with a clear error — never a stray exception or a silently lost box."""

from __future__ import annotations

import itertools
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, ImageOps
from torchvision.ops import box_convert, generalized_box_iou

from sparse_detector.analysis import entropy, gini, support_90, zeros_ratio
from sparse_detector.config import Config, ConfigError, config_to_dict, load_config
from sparse_detector.data.coco import CocoDetection, DatasetError
from sparse_detector.data.importers import import_voc_root
from sparse_detector.data.orientation import STORED_FROM_TURNED, SWAPS_SIDES, box_to_stored
from sparse_detector.data.split import split_coco, split_size
from sparse_detector.data.transforms import make_transforms
from sparse_detector.models import HungarianMatcher, SetCriterion

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WIDTH, HEIGHT = 40, 30

numbers = st.one_of(
    st.floats(-60, 100, allow_nan=False, allow_subnormal=False),
    st.integers(-60, 100),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0]),
)
coco_annotations = st.lists(
    st.fixed_dictionaries(
        {
            "bbox": st.one_of(st.lists(numbers, min_size=4, max_size=4), st.lists(numbers, max_size=6)),
            "category_id": st.sampled_from([1, 2, 7]),
            "image_id": st.sampled_from([1, 1, 1, 9]),
            "iscrowd": st.sampled_from([0, 0, 0, 1]),
        }
    ),
    max_size=8,
)


def _images_dir(root: Path) -> Path:
    images = root / "images"
    images.mkdir(exist_ok=True)
    Image.new("RGB", (WIDTH, HEIGHT), (120, 30, 200)).save(images / "a.png")
    return images


@SETTINGS
@given(annotations=coco_annotations, skip=st.booleans())
def test_coco_loader_keeps_valid_boxes_counts_the_rest_or_names_the_problem(annotations: list[dict], skip: bool):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = {
            "images": [{"id": 1, "file_name": "a.png", "width": WIDTH, "height": HEIGHT}],
            "annotations": [{"id": i + 1, **a} for i, a in enumerate(annotations)],
            "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}],
        }
        path = root / "ann.json"
        path.write_text(json.dumps(data))
        try:
            dataset = CocoDetection(_images_dir(root), path, on_invalid="skip" if skip else "error")
        except DatasetError as err:
            assert not skip and str(path) in str(err) and "annotation id" in str(err)
            return
        image, target = dataset[0]
        boxes = target["boxes"]  # normalised cxcywh
        assert image.shape == (3, HEIGHT, WIDTH)
        assert len(boxes) == len(target["labels"]) and bool(torch.isfinite(boxes).all())
        assert bool((boxes[:, 2:] > 0).all()) and bool((boxes[:, :2] - boxes[:, 2:] / 2 >= -1e-6).all())
        assert bool((boxes[:, :2] + boxes[:, 2:] / 2 <= 1 + 1e-6).all())
        # Nothing lost silently: every annotation is a target box, a crowd box, or counted as skipped.
        assert len(boxes) + dataset.num_crowd + sum(dataset.skipped.values()) == len(annotations)


def _voc_xml(objects: list[tuple[str, tuple[float, float, float, float]]]) -> str:
    parts = [f"<annotation><filename>a.jpg</filename><size><width>{WIDTH}</width><height>{HEIGHT}</height></size>"]
    for name, (x0, y0, x1, y1) in objects:
        box = f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
        parts.append(f"<object><name>{name}</name><bndbox>{box}</bndbox></object>")
    return "".join(parts) + "</annotation>"


voc_objects = st.lists(
    st.tuples(st.sampled_from(["cell", "rbc"]), st.tuples(*[st.integers(-5, 50)] * 4)),
    max_size=6,
)


@SETTINGS
@given(objects=voc_objects, truncate=st.integers(0, 40))
def test_voc_import_keeps_or_counts_every_box_and_names_bad_files(objects: list, truncate: int):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (root / folder).mkdir(parents=True)
        Image.new("RGB", (WIDTH, HEIGHT)).save(root / "JPEGImages" / "a.jpg")
        xml = _voc_xml(objects)
        if truncate:  # a damaged file
            xml = xml[: len(xml) - truncate]
        (root / "Annotations" / "a.xml").write_text(xml)
        (root / "ImageSets/Main/train.txt").write_text("a\n")
        try:
            coco = import_voc_root(root, root / "train.json", split="train")
        except DatasetError as err:
            assert truncate and "a.xml" in str(err)
            return
        stats = coco["info"]["stats"]
        assert stats["annotations"] + sum(stats["dropped"].values()) == len(objects)
        for annotation in coco["annotations"]:
            assert annotation["bbox"][2] > 0 and annotation["bbox"][3] > 0


image_sizes = st.tuples(st.integers(8, 90), st.integers(8, 90))


@st.composite
def image_and_boxes(draw) -> tuple[Image.Image, dict]:
    width, height = draw(image_sizes)
    count = draw(st.integers(0, 5))
    boxes = []
    for _ in range(count):
        x0, x1 = sorted(
            draw(st.tuples(st.floats(0, width, allow_subnormal=False), st.floats(0, width, allow_subnormal=False)))
        )
        y0, y1 = sorted(
            draw(st.tuples(st.floats(0, height, allow_subnormal=False), st.floats(0, height, allow_subnormal=False)))
        )
        boxes.append([x0, y0, max(x1, x0 + 0.5), max(y1, y0 + 0.5)])
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4).clamp(max=torch.tensor([width, height] * 2)),
        "labels": torch.arange(count, dtype=torch.int64),
        "iscrowd": torch.zeros(count, dtype=torch.int64),
        "size": torch.tensor([height, width]),
        "orig_size": torch.tensor([height, width]),
    }
    return Image.new("RGB", (width, height)), target


@SETTINGS
@given(sample=image_and_boxes(), seed=st.integers(0, 2**16), crop=st.booleans())
def test_training_transforms_keep_boxes_valid_and_inside_the_image(sample: tuple, seed: int, crop: bool):
    image, target = sample
    transforms = make_transforms(
        True, scales=[24, 40, 56], max_size=80, crop_sizes=(8, 30) if crop else None, crop_resize_scales=[32, 48]
    )
    torch.manual_seed(seed)
    tensor, out = transforms(image, target)
    boxes = out["boxes"]
    assert tensor.shape[1:] == tuple(out["size"].tolist())
    assert len(boxes) == len(out["labels"]) <= len(target["labels"])
    assert set(out["labels"].tolist()) <= set(target["labels"].tolist())
    assert bool(torch.isfinite(boxes).all()) and bool((boxes[:, 2:] >= 0).all())
    assert bool((boxes[:, :2] - boxes[:, 2:] / 2 >= -1e-5).all()) and bool(
        (boxes[:, :2] + boxes[:, 2:] / 2 <= 1 + 1e-5).all()
    )


def _dotted_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += _dotted_keys(value, f"{prefix}{key}.")
    return keys


VALID_KEYS = _dotted_keys(config_to_dict(Config()))
segments = st.text("abcdefghijklmnopqrstuvwxyz_0123456789", min_size=0, max_size=8)
keys = st.one_of(
    st.sampled_from(VALID_KEYS),
    st.builds(lambda k, extra: f"{k}.{extra}", st.sampled_from(VALID_KEYS), segments),
    st.lists(segments, min_size=1, max_size=4).map(".".join),
)
values = st.one_of(
    st.sampled_from(["1", "0.5", "-3", "true", "null", "[]", "[1, 2]", "{a: 1}", "abc", "", "1e-4", "[", "{", ":"]),
    st.text(max_size=12),
)


@SETTINGS
@given(base=st.sampled_from([None, "shapes_tiny"]), key=keys, value=values)
def test_any_dotted_override_is_accepted_or_refused_naming_the_key(base: str | None, key: str, value: str):
    override = f"{key}={value}"
    try:
        config = load_config(base, [override])
    except ConfigError as err:
        message = str(err)
        parts = [p for p in key.split(".") if p]
        assert override in message or any(part in message for part in parts) or key in message, message
        return
    assert isinstance(config, Config)


split_images = st.lists(st.lists(st.sampled_from([1, 2, 3, 4]), max_size=3), min_size=2, max_size=14)
split_sizes = st.one_of(st.floats(0.05, 0.95), st.integers(1, 6))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(categories=split_images, val=split_sizes, test=st.one_of(st.just(0), split_sizes), seed=st.integers(0, 9))
def test_split_gives_each_split_the_images_asked_for_and_every_image_once(
    categories: list[list[int]], val: float, test: float, seed: int
):
    """`data split` into val and test asked for 1 image each of 3 (one per class) wrote an empty test.json: a small
    stratum wanted by both splits gave the second nothing, and the running total never made it up."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in range(len(categories))]
    annotations = [
        {"id": 100 * i + k, "image_id": i, "category_id": c, "bbox": [0, 0, 5, 5]}
        for i, cats in enumerate(categories)
        for k, c in enumerate(cats)
    ]
    source = {"images": images, "annotations": annotations, "categories": [{"id": c, "name": str(c)} for c in range(5)]}
    total = len(images)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "all.json"
        path.write_text(json.dumps(source))
        asked = {"val": split_size("--val", val, total), "test": split_size("--test", test, total)}
        try:
            paths = split_coco(path, Path(tmp) / "out", val=val, test=test, seed=seed)
        except ValueError:
            assert asked["val"] == 0 or (test and asked["test"] == 0) or asked["val"] + asked["test"] >= total
            return
        splits = {name: json.loads(p.read_text()) for name, p in paths.items()}
    ids = {name: [image["id"] for image in data["images"]] for name, data in splits.items()}
    assert sorted(sum(ids.values(), [])) == list(range(total))  # every image exactly once
    assert {name: len(ids[name]) for name in asked if asked[name]} == {n: k for n, k in asked.items() if k}
    assert len(ids["train"]) == total - asked["val"] - asked["test"]
    for name, data in splits.items():  # annotations follow their images
        assert sorted(a["id"] for a in data["annotations"]) == sorted(
            a["id"] for a in annotations if a["image_id"] in set(ids[name])
        )


@st.composite
def labelled_images(draw) -> list[tuple[int, int, list[tuple[str, tuple[int, int, int, int]]]]]:
    """1-3 images (width, height, boxes): distinct boxes of whole pixels, at least 2 px a side (VOC drops a box of
    one pixel, xmin = xmax, as a click)."""
    images = []
    for _ in range(draw(st.integers(1, 3))):
        width, height = draw(st.integers(8, 50)), draw(st.integers(8, 50))
        corner = st.tuples(st.integers(0, width - 2), st.integers(0, height - 2))
        boxes = {}
        for x0, y0 in draw(st.lists(corner, max_size=4)):
            x1, y1 = draw(st.integers(x0 + 2, width)), draw(st.integers(y0 + 2, height))
            boxes[(draw(st.sampled_from(["cat", "dog", "sheep"])), (x0, y0, x1, y1))] = None
        images.append((width, height, list(boxes)))
    return images


def _imported_boxes(coco: dict) -> dict[str, list[tuple[str, list[float]]]]:
    """file name -> sorted [(class name, bbox)] of an imported COCO dict."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {i["id"]: Path(i["file_name"]).name for i in coco["images"]}
    out: dict[str, list] = {name: [] for name in files.values()}
    for ann in coco["annotations"]:
        out[files[ann["image_id"]]].append((names[ann["category_id"]], ann["bbox"]))
    return {name: sorted(boxes, key=lambda box: (box[0], [round(v, 2) for v in box[1]])) for name, boxes in out.items()}


@settings(max_examples=25, deadline=None, derandomize=True)
@given(images=labelled_images())
def test_the_same_boxes_written_as_coco_yolo_voc_and_csv_import_alike(images: list):
    """A labelling tool's export in each format (COCO x,y,w,h; YOLO fractions with 6 decimals; VOC 1-based
    inclusive pixels; CSV corners) imports to the same images and boxes, each kept once."""
    from sparse_detector.data.importers import import_coco, import_csv, import_voc, import_yolo

    classes = ["cat", "dog", "sheep"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for folder in ("img", "yolo", "voc", "out"):
            (root / folder).mkdir()
        coco = {
            "images": [],
            "annotations": [],
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(classes)],
        }
        rows = ["file,x1,y1,x2,y2,label"]
        tensorflow = ["filename,width,height,class,xmin,ymin,xmax,ymax"]  # a TensorFlow-style export
        sizes = ["image,x,y,w,h,label"]  # boxes by their size
        for number, (width, height, boxes) in enumerate(images):
            name = f"{number}.png"
            Image.new("RGB", (width, height)).save(root / "img" / name)
            coco["images"].append({"id": number + 1, "file_name": name, "width": width, "height": height})
            yolo, voc = [], [f"<annotation><filename>{name}</filename><size><width>{width}</width>"]
            voc.append(f"<height>{height}</height></size>")
            if not boxes:
                rows.append(f"{name},,,,,")
                tensorflow.append(f"{name},{width},{height},,,,,")
                sizes.append(f"{name},,,,,")
            for label, (x0, y0, x1, y1) in boxes:
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": number + 1,
                        "category_id": classes.index(label) + 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                    }
                )
                fractions = ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height)
                yolo.append(f"{classes.index(label)} " + " ".join(f"{v:.6f}" for v in fractions))
                corners = f"<xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
                voc.append(f"<object><name>{label}</name><bndbox>{corners}</bndbox></object>")
                rows.append(f"{name},{x0},{y0},{x1},{y1},{label}")
                tensorflow.append(f"{name},{width},{height},{label},{x0},{y0},{x1},{y1}")
                sizes.append(f"{name},{x0},{y0},{x1 - x0},{y1 - y0},{label}")
            (root / "yolo" / f"{number}.txt").write_text("\n".join(yolo) + "\n")
            (root / "voc" / f"{number}.xml").write_text("".join(voc) + "</annotation>")
        (root / "coco.json").write_text(json.dumps(coco))
        for file_name, lines in (("boxes.csv", rows), ("tensorflow.csv", tensorflow), ("sizes.csv", sizes)):
            (root / file_name).write_text("\n".join(lines) + "\n")
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
        out = root / "out"
        imported = {
            "coco": import_coco(root / "coco.json", out / "coco.json", images_dir=root / "img"),
            "yolo": import_yolo(root / "img", out / "yolo.json", root / "classes.txt", labels_dir=root / "yolo"),
            "voc": import_voc(root / "voc", out / "voc.json", images_dir=root / "img"),
            **{
                name: import_csv(root / f"{name}.csv", out / f"{name}.json", images_dir=root / "img")
                for name in ("boxes", "tensorflow", "sizes")
            },
        }
    expected = {
        f"{number}.png": sorted((label, [x0, y0, x1 - x0, y1 - y0]) for label, (x0, y0, x1, y1) in boxes)
        for number, (_, _, boxes) in enumerate(images)
    }
    for fmt, result in imported.items():
        got = _imported_boxes(result)
        assert got.keys() == expected.keys(), fmt
        for name, boxes in expected.items():  # YOLO's 6 decimals are within 1e-3 px of these images' pixels
            assert [label for label, _ in got[name]] == [label for label, _ in boxes], (fmt, name)
            got_boxes, expected_boxes = (
                torch.tensor([b for _, b in x], dtype=torch.float64) for x in (got[name], boxes)
            )
            assert torch.allclose(got_boxes, expected_boxes, rtol=0, atol=1e-3), (fmt, name)


map_weights = st.sampled_from([0.0, 0.0, 2.0**-24, 0.125, 0.25, 0.25, 1.0, 3.0])  # ties, zeros, exact sums


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    rows=st.lists(st.tuples(st.lists(map_weights, min_size=1, max_size=7), st.integers(0, 7)), min_size=1, max_size=4),
    mass=st.sampled_from([0.5, 0.75, 0.9, 1.0]),
    threshold=st.sampled_from([0.0, 1e-6, 0.125]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_sparsity_metrics_equal_their_definitions_over_the_valid_keys(
    rows: list[tuple[list[float], int]], mass: float, threshold: float, dtype: torch.dtype
):
    """Gini, zeros ratio, entropy and support (DESIGN.md) of maps with ties, zeros, rows without mass and garbage
    at the padded keys equal the formulas over each row's valid keys alone."""
    width = max(len(row) for row, _ in rows)
    p = torch.zeros(len(rows), width, dtype=dtype)
    padding = torch.ones(len(rows), width, dtype=torch.bool)
    for i, (row, garbage) in enumerate(rows):
        p[i], padding[i, : len(row)] = garbage, False
        p[i, : len(row)] = torch.tensor(row)
    got = [gini(p, padding), zeros_ratio(p, padding, threshold), entropy(p, padding), support_90(p, padding, mass)]
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    for i, (row, _) in enumerate(rows):
        c, n = sorted(row), len(row)
        total = sum(c)
        expected_gini = 1 - 2 * sum(ck / total * (n - k + 0.5) / n for k, ck in enumerate(c, 1)) if total else math.nan
        top = torch.tensor(c[::-1], dtype=dtype).cumsum(0)  # the mass held, summed from the largest in p's precision
        support = next(k for k in range(1, n + 1) if top[k - 1] >= mass * top[-1]) if total else 0
        expected = [expected_gini, sum(v <= threshold for v in c) / n, -sum(v * math.log(v) for v in c if v), support]
        for value, reference in zip([float(g[i]) for g in got], expected, strict=True):
            assert (math.isnan(value) and math.isnan(reference)) or abs(value - reference) <= tolerance, (row, got)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(queries=st.integers(1, 5), targets=st.integers(0, 4), seed=st.integers(0, 2**16))
def test_hungarian_matching_is_a_minimum_cost_assignment_and_the_loss_ignores_target_order(
    queries: int, targets: int, seed: int
):
    """The matcher's assignment costs no more than any other (all of them tried) under the official cost, and the
    set loss is the same whatever the order of an image's targets."""
    targets = min(targets, queries)
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, queries, 4, generator=generator, dtype=torch.float64)
    boxes = torch.cat(
        [torch.rand(1, queries, 2, generator=generator), 0.05 + 0.5 * torch.rand(1, queries, 2, generator=generator)],
        -1,
    )
    target = {
        "labels": torch.randint(0, 3, (targets,), generator=generator),
        "boxes": torch.cat(
            [torch.rand(targets, 2, generator=generator), 0.05 + 0.5 * torch.rand(targets, 2, generator=generator)], -1
        ),
    }
    outputs = {"pred_logits": logits, "pred_boxes": boxes.double()}
    matcher = HungarianMatcher(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0)
    queries_matched, targets_matched = matcher(outputs, [target])[0]
    xyxy = [box_convert(b.double(), "cxcywh", "xyxy") for b in (boxes[0], target["boxes"])]
    cost = (  # official DETR's matching cost
        5.0 * torch.cdist(boxes[0].double(), target["boxes"].double(), p=1)
        - logits[0].softmax(-1)[:, target["labels"]]
        - 2.0 * generalized_box_iou(*xyxy)
    )
    best = min(
        (
            sum(float(cost[q, t]) for t, q in enumerate(chosen))
            for chosen in itertools.permutations(range(queries), targets)
        ),
        default=0.0,
    )
    assert sorted(targets_matched.tolist()) == list(range(targets))
    assert float(cost[queries_matched, targets_matched].sum()) <= best + 1e-9
    criterion = SetCriterion(3, matcher)
    order = torch.randperm(targets, generator=generator)
    shuffled = {key: value[order] for key, value in target.items()}
    for key, value in criterion(outputs, [shuffled]).items():
        assert torch.allclose(value, criterion(outputs, [target])[key], atol=1e-9), key


@settings(max_examples=60, deadline=None, derandomize=True)
@given(width=st.integers(2, 16), height=st.integers(2, 16), orientation=st.integers(1, 8), data=st.data())
def test_a_box_drawn_on_the_exif_turned_view_maps_to_its_stored_pixels(
    width: int, height: int, orientation: int, data: st.DataObject
):
    """For every EXIF orientation, a box drawn around a patch on the view a viewer shows (PIL's exif_transpose)
    lands on the same patch of the stored pixels, and the inverse transpose gives the stored image back."""
    x0, y0 = data.draw(st.integers(0, width - 1)), data.draw(st.integers(0, height - 1))
    x1, y1 = data.draw(st.integers(x0 + 1, width)), data.draw(st.integers(y0 + 1, height))
    stored = np.zeros((height, width), np.uint8)
    stored[y0:y1, x0:x1] = 255
    image = Image.fromarray(stored)
    image.getexif()[ExifTags.Base.Orientation] = orientation
    turned = ImageOps.exif_transpose(image)
    assert turned.size == ((height, width) if orientation in SWAPS_SIDES else (width, height))
    ys, xs = np.nonzero(np.asarray(turned))
    drawn = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert box_to_stored(drawn, orientation, *turned.size) == (x0, y0, x1, y1)
    if orientation != 1:
        assert np.array_equal(np.asarray(turned.transpose(STORED_FROM_TURNED[orientation])), stored)
