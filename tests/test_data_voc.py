"""VOC -> COCO import (standard layout): real BCCD splits, zero-area boxes, difficult flags, malformed XML."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import pytest
from PIL import Image
from pycocotools.coco import COCO

from sparse_detector.data import CocoDetection, DatasetError
from sparse_detector.data.importers import import_voc_root, voc
from sparse_detector.data.importers.voc import parse_voc_xml

BCCD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd"


@pytest.fixture(scope="module")
def bccd() -> Path:
    if not (BCCD / "ImageSets" / "Main" / "trainval.txt").is_file():
        pytest.skip(f"shared BCCD data not found at {BCCD}")
    return BCCD


def test_bccd_splits_and_zero_area(bccd: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    counts = {}
    with caplog.at_level(logging.WARNING, logger="sparse_detector.data.importers.common"):
        for split in ("train", "val", "trainval"):
            coco = import_voc_root(bccd, tmp_path / f"{split}.json", split)
            counts[split] = coco["info"]["stats"]
            assert [c["name"] for c in coco["categories"]] == ["Platelets", "RBC", "WBC"]
    assert {s: c["images"] for s, c in counts.items()} == {"train": 205, "val": 87, "trainval": 292}
    trainval = counts["trainval"]
    # the two point-like boxes (xmin == xmax, ymin == ymax) are dropped and reported, never silently
    assert trainval["dropped"] == {"zero_area": 2} and len(trainval["dropped_examples"]) == 2
    assert "BloodImage_00338.xml" in caplog.text and "BloodImage_00343.xml" in caplog.text
    assert trainval["annotations"] == counts["train"]["annotations"] + counts["val"]["annotations"]
    assert trainval["per_class"] == {"Platelets": 292, "RBC": 3348, "WBC": 301}
    assert trainval["annotations"] == sum(trainval["per_class"].values()) == 3941

    with contextlib.redirect_stdout(io.StringIO()):
        coco_api = COCO(str(tmp_path / "trainval.json"))
    assert len(coco_api.getImgIds()) == 292 and len(coco_api.getAnnIds()) == 3941
    ds = CocoDetection(bccd / "JPEGImages", tmp_path / "val.json")
    assert len(ds) == 87 and ds.num_classes == 3 and ds.num_boxes == 1137 and not ds.skipped
    image, target = ds[0]
    assert image.shape[-2:] == (480, 640) and ((target["boxes"] > 0) & (target["boxes"] <= 1)).all()


def test_bccd_box_convention(bccd: Path, tmp_path: Path) -> None:
    coco = import_voc_root(bccd, tmp_path / "trainval.json")
    first = next(i for i in coco["images"] if i["file_name"].endswith("/BloodImage_00000.jpg"))
    boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == first["id"]]
    # <xmin>260</xmin><ymin>177</ymin><xmax>491</xmax><ymax>376</ymax>, 1-based inclusive
    assert boxes[0] == [259, 176, 232, 200]
    # <xmax>640</xmax> on a 640 px wide image ends exactly at the border
    assert max(b[0] + b[2] for b in boxes) == 640


def _write_voc(root: Path, objects_xml: str, difficult_second: bool = False) -> Path:
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (50, 40)).save(root / "JPEGImages" / "img1.jpg")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("img1\n")
    xml = f"<annotation><filename>img1.jpg</filename><size><width>50</width><height>40</height></size>{objects_xml}"
    (root / "Annotations" / "img1.xml").write_text(xml + "</annotation>")
    return root


def _object(name: str, box: tuple[int, int, int, int], difficult: int = 0) -> str:
    coords = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True))
    return f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>{coords}</bndbox></object>"


def test_difficult_and_class_names(tmp_path: Path) -> None:
    root = _write_voc(tmp_path / "voc", _object("dog", (1, 1, 10, 10)) + _object("cat", (5, 5, 20, 30), 1))
    kept = import_voc_root(root, tmp_path / "kept.json")
    assert [c["name"] for c in kept["categories"]] == ["cat", "dog"]
    assert [(a["difficult"], a["iscrowd"]) for a in kept["annotations"]] == [(0, 0), (1, 0)]
    ignored = import_voc_root(root, tmp_path / "a.json", include_difficult=False, class_names=["dog", "cat", "bird"])
    assert [(a["category_id"], a["iscrowd"], a["ignore"]) for a in ignored["annotations"]] == [(1, 0, 0), (2, 1, 1)]
    assert ignored["info"]["stats"]["per_class"] == {"dog": 1, "cat": 1, "bird": 0}
    assert json.loads((tmp_path / "a.json").read_text()) == ignored
    ds = CocoDetection(None, tmp_path / "a.json")
    assert ds.num_crowd == 1 and ds.num_boxes == 1 and ds.category_names == ["dog", "cat", "bird"]
    with pytest.raises(DatasetError, match=r"img1\.xml object 1 \(cat\): class 'cat' is not among the given classes"):
        import_voc_root(root, tmp_path / "b.json", class_names=["dog"])


def test_each_xml_is_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The classes come from every XML and the split's boxes from its XMLs: one parse serves both (it was two)."""
    root = _write_voc(tmp_path / "voc", _object("dog", (1, 1, 10, 10)))
    (root / "Annotations" / "other.xml").write_text(
        f"<annotation><filename>other.jpg</filename>{_object('cat', (1, 1, 5, 5))}</annotation>"
    )
    parsed: list[str] = []

    def counted(xml_file: Path) -> voc.VocAnnotation:
        parsed.append(xml_file.name)
        return parse_voc_xml(xml_file)

    monkeypatch.setattr(voc, "parse_voc_xml", counted)
    coco = import_voc_root(root, tmp_path / "out.json")
    assert sorted(parsed) == ["img1.xml", "other.xml"]
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"] and len(coco["annotations"]) == 1


@pytest.mark.parametrize(
    ("objects_xml", "expected"),
    [
        ("<object><name>dog</name", r"img1\.xml: malformed XML at line 1"),
        ("<object><name>dog</name></object>", r"img1\.xml: object 0 \(dog\) has no <bndbox>"),
        ("<object><bndbox/></object>", r"img1\.xml: object 0 has no <name>"),
        (
            "<object><name>dog</name><bndbox><xmin>1</xmin></bndbox></object>",
            r"img1\.xml: object 0 \(dog\) has no <ymin>",
        ),
        (_object("dog", (1, 1, 10, 10)).replace(">10<", ">ten<", 1), r"img1\.xml: object 0 \(dog\) has a non-numeric"),
    ],
)
def test_malformed_xml_names_file(tmp_path: Path, objects_xml: str, expected: str) -> None:
    root = _write_voc(tmp_path / "voc", objects_xml)
    with pytest.raises(DatasetError, match=expected):
        import_voc_root(root, tmp_path / "out.json")


def test_xml_in_an_undeclared_encoding_says_so(tmp_path: Path) -> None:
    """A Latin-1 XML without an encoding declaration failed as 'not well-formed (invalid token)', nothing more."""
    root = _write_voc(tmp_path / "voc", _object("chien", (1, 1, 10, 10)))
    xml = root / "Annotations" / "img1.xml"
    xml.write_bytes(xml.read_text().replace("chien", "chi\u00e9n").encode("latin-1"))
    with pytest.raises(DatasetError, match=r"img1\.xml: malformed XML .*not UTF-8: save it as UTF-8, or declare"):
        import_voc_root(root, tmp_path / "out.json")


def test_missing_split_and_image(tmp_path: Path) -> None:
    root = _write_voc(tmp_path / "voc", _object("dog", (1, 1, 10, 10)))
    with pytest.raises(DatasetError, match=r"ImageSets/Main/test\.txt does not exist"):
        import_voc_root(root, tmp_path / "out.json", split="test")
    (root / "JPEGImages" / "img1.jpg").unlink()
    with pytest.raises(DatasetError, match=r"img1\.xml: no image for it in .*JPEGImages"):
        import_voc_root(root, tmp_path / "out.json")


def test_xml_size_written_as_floats(tmp_path: Path) -> None:
    """A converter's <width>50.0</width> stopped the import with '<size> width/height are not integers' (the size
    is only checked against the image's); a whole number written as a float is now read, text still named."""
    root = _write_voc(tmp_path / "voc", _object("dog", (1.5, 1, 10.5, 10)))
    xml = root / "Annotations" / "img1.xml"
    xml.write_text(
        xml.read_text().replace("<width>50</width><height>40</height>", "<width>50.0</width><height>40.0</height>")
    )
    coco = import_voc_root(root, tmp_path / "out.json")
    assert coco["info"]["stats"]["size_differs_from_xml"] == 0 and coco["annotations"][0]["bbox"] == [
        0.5,
        0.0,
        10.0,
        10.0,
    ]
    xml.write_text(xml.read_text().replace("<width>50.0</width>", "<width>fifty</width>"))
    with pytest.raises(DatasetError, match=r"img1\.xml: <size> width/height are not numbers"):
        import_voc_root(root, tmp_path / "out.json")
