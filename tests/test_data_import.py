"""Importers (VOC any layout, YOLO, CSV, COCO), `data check`, `data split` and unreadable-image handling, on small
fixtures written here."""

from __future__ import annotations

import json
import logging
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparse_detector.cli import main
from sparse_detector.config import ConfigError, load_config
from sparse_detector.data import CocoDetection, DatasetError, heif
from sparse_detector.data.batching import collate_detection
from sparse_detector.data.build import build_dataset
from sparse_detector.data.check import check_dataset
from sparse_detector.data.coco import read_rgb
from sparse_detector.data.importers import common as importers_common
from sparse_detector.data.importers import import_coco, import_csv, import_voc, import_voc_root, import_yolo
from sparse_detector.data.importers.common import IMAGE_SUFFIXES
from sparse_detector.data.split import split_coco
from sparse_detector.engine.inference import image_files
from sparse_detector.viz.boxes import draw_boxes

RAMP = np.tile(np.linspace(0, 1, 40), (30, 1))  # a horizontal 0-1 gradient, 40 x 30


def write_image(path: Path, width: int = 40, height: int = 30, truncated: bool = False) -> Path:
    """A small noisy JPEG/PNG; ``truncated`` cuts a JPEG in half (the header still reads, decoding fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.effect_noise((width, height), 60).convert("RGB")
    image.save(path)
    if truncated:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


def write_one_image_coco(path: Path, file_name: str, category: str) -> Path:
    """A COCO JSON of one 40 x 30 image ``file_name`` with one box of ``category``."""
    source = {
        "images": [{"id": 1, "file_name": file_name, "width": 40, "height": 30}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 1, "name": category}],
    }
    return write_text(path, json.dumps(source))


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def voc_xml(objects: list[tuple[str, tuple[int, int, int, int], int]], file_name: str = "", size=(40, 30)) -> str:
    parts = [f"<filename>{file_name}</filename>" if file_name else ""]
    parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, (x0, y0, x1, y1), difficult in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
            f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        )
    return f"<annotation>{''.join(parts)}</annotation>"


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def boxes_by_image(coco: dict) -> dict[str, list[tuple[str, list[float]]]]:
    """file name (last part) -> [(category name, bbox)], for comparing imports."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {i["id"]: Path(i["file_name"]).name for i in coco["images"]}
    out: dict[str, list] = {name: [] for name in files.values()}
    for ann in coco["annotations"]:
        out[files[ann["image_id"]]].append((names[ann["category_id"]], [round(v, 6) for v in ann["bbox"]]))
    return out


def test_voc_standard_layout(tmp_path: Path) -> None:
    root = tmp_path / "VOC"
    for stem, objects in {
        "a": [("dog", (1, 1, 10, 20), 0), ("cat", (5, 5, 5, 9), 0)],  # the cat box has no width: dropped
        "b": [("cat", (11, 2, 40, 30), 1)],
        "c": [("bird", (2, 2, 8, 8), 0)],  # not in the split, but its class is known to every split
    }.items():
        write_image(root / "JPEGImages" / f"{stem}.jpg")
        write_text(root / "Annotations" / f"{stem}.xml", voc_xml(objects, f"{stem}.jpg"))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    out = tmp_path / "out" / "train.json"
    coco = import_voc_root(root, out, split="train", include_difficult=False)
    assert [c["name"] for c in coco["categories"]] == ["bird", "cat", "dog"]
    assert boxes_by_image(load(out)) == {
        "a.jpg": [("dog", [0.0, 0.0, 10.0, 20.0])],
        "b.jpg": [("cat", [10.0, 1.0, 30.0, 29.0])],
    }
    assert coco["info"]["stats"]["dropped"] == {"zero_area": 1}
    difficult = next(a for a in coco["annotations"] if a["difficult"])
    assert difficult["iscrowd"] == difficult["ignore"] == 1  # ignored in evaluation, out of the targets
    assert Path(coco["images"][0]["file_name"]).is_absolute()  # images outside the output folder
    dataset = CocoDetection(None, out)  # image folder defaults to the JSON's; absolute paths work from anywhere
    assert len(dataset) == 2 and dataset.num_boxes == 1 and dataset.num_crowd == 1


def test_voc_root_errors_name_the_roots_and_splits_there_are(tmp_path: Path) -> None:
    """`data import voc VOCdevkit` (the folder above VOC2012) or a --split the set lacks said only what was missing;
    they now name the VOC roots inside the folder given, or the splits its ImageSets/Main has."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    write_image(root / "JPEGImages" / "a.jpg")
    write_text(root / "Annotations" / "a.xml", voc_xml([("cat", (1, 1, 10, 10), 0)]))
    for name in ("train", "trainval", "train_small", "cat_train", "cat_trainval"):
        write_text(root / "ImageSets" / "Main" / f"{name}.txt", "a\n")
    with pytest.raises(DatasetError, match=r"VOC roots inside it: .*VOCdevkit/VOC2012 "):
        import_voc_root(tmp_path / "VOCdevkit", tmp_path / "out.json")
    with pytest.raises(DatasetError, match=r"val.txt does not exist; .*its splits: train, train_small, trainval \("):
        import_voc_root(root, tmp_path / "out.json", split="val")
    # a labelling tool's export: Annotations/ and JPEGImages/ without ImageSets, or one folder of images and XML
    export = tmp_path / "export"
    write_text(export / "Annotations" / "a.xml", voc_xml([("cat", (1, 1, 10, 10), 0)]))
    write_image(export / "JPEGImages" / "a.jpg")
    with pytest.raises(DatasetError, match=r"every XML .*: --annotations .*export/Annotations --images .*JPEGImages"):
        import_voc_root(export, tmp_path / "out.json")
    with pytest.raises(DatasetError, match=r"every XML .*: --annotations .*/Annotations --images .*/Annotations \("):
        import_voc_root(export / "Annotations", tmp_path / "out.json")


def test_voc_any_layout_matched_by_file_name(tmp_path: Path) -> None:
    """Images and XML in unrelated folders, no ImageSets, XML without <filename>, mixed suffixes; a list file."""
    write_image(tmp_path / "photos" / "one.png")
    write_image(tmp_path / "photos" / "two.JPG", 50, 40)
    write_text(tmp_path / "labels" / "one.xml", voc_xml([("rbc", (3, 4, 13, 14), 0)]))
    (tmp_path / "labels" / "two.xml").write_text(voc_xml([("wbc", (1, 1, 50, 40), 0)], size=(0, 0)))
    out = tmp_path / "data" / "all.json"
    coco = import_voc(tmp_path / "labels", out, images_dir=tmp_path / "photos")
    assert boxes_by_image(coco) == {
        "one.png": [("rbc", [2.0, 3.0, 11.0, 11.0])],
        "two.JPG": [("wbc", [0.0, 0.0, 50.0, 40.0])],
    }
    assert [(i["width"], i["height"]) for i in coco["images"]] == [(40, 30), (50, 40)]  # size read from the file
    write_image(tmp_path / "photos" / "frame.001.jpg")
    write_text(tmp_path / "labels" / "frame.001.xml", voc_xml([("rbc", (3, 4, 13, 14), 0)]))
    (tmp_path / "list.txt").write_text("two\nframe.001\n")  # a dot inside a stem is no suffix
    only = import_voc(tmp_path / "labels", tmp_path / "two.json", tmp_path / "photos", list_file=tmp_path / "list.txt")
    assert [Path(i["file_name"]).name for i in only["images"]] == ["two.JPG", "frame.001.jpg"]
    (tmp_path / "labels" / "frame.001.xml").unlink()
    with pytest.raises(DatasetError, match=r"one.xml: no image for it in .*labels.*--images"):
        import_voc(tmp_path / "labels", tmp_path / "x.json")
    # through the CLI, from another working directory: the JSON still finds its images
    assert (
        main(
            [
                "data",
                "import",
                "voc",
                "--annotations",
                str(tmp_path / "labels"),
                "--images",
                str(tmp_path / "photos"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert len(CocoDetection(None, out)) == 2


def test_voc_xml_in_subfolders_and_images_without_xml_are_named(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """Nothing is left out without a word: XML files in subfolders (not read) and images no XML describes."""
    for stem in ("a", "b"):
        write_image(tmp_path / "photos" / f"{stem}.jpg")
    write_text(tmp_path / "xml" / "a.xml", voc_xml([("rbc", (3, 4, 13, 14), 0)]))
    write_text(tmp_path / "xml" / "later" / "b.xml", voc_xml([("rbc", (3, 4, 13, 14), 0)]))
    with caplog.at_level(logging.WARNING):
        coco = import_voc(tmp_path / "xml", tmp_path / "out.json", tmp_path / "photos")
    assert len(coco["images"]) == 1 and coco["info"]["stats"]["images_without_xml"] == 1
    assert "1 XML file(s) in its subfolders are not read" in caplog.text and "later/b.xml" in caplog.text
    assert "1 image(s) have no XML and are not imported" in caplog.text and "b.jpg" in caplog.text


def test_voc_xml_files_with_an_upper_case_suffix_are_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``a.XML`` (as Windows tools may name it) was not read: its image was named as having no XML and left out, and
    a list file naming it said it had no XML. Now it is read, listed or not, and named in a subfolder."""
    for stem in ("a", "b"):
        write_image(tmp_path / "photos" / f"{stem}.jpg")
        write_text(tmp_path / "xml" / f"{stem}.XML", voc_xml([("rbc", (3, 4, 13, 14), 0)]))
    write_text(tmp_path / "xml" / "later" / "c.XML", voc_xml([("rbc", (3, 4, 13, 14), 0)]))
    with caplog.at_level(logging.WARNING):
        coco = import_voc(tmp_path / "xml", tmp_path / "out.json", tmp_path / "photos")
    assert len(coco["images"]) == 2 and coco["info"]["stats"]["images_without_xml"] == 0
    assert "1 XML file(s) in its subfolders are not read" in caplog.text and "later/c.XML" in caplog.text
    listed = import_voc(tmp_path / "xml", tmp_path / "b.json", tmp_path / "photos", write_text(tmp_path / "l", "b\n"))
    assert [Path(image["file_name"]).name for image in listed["images"]] == ["b.jpg"]


def test_voc_two_xml_files_describing_one_image_are_an_error_naming_both(tmp_path: Path) -> None:
    """A copy ``a (1).xml`` of ``a.xml`` made a.jpg two image entries (its boxes twice); now both files are named."""
    write_image(tmp_path / "photos" / "a.jpg")
    write_image(tmp_path / "photos" / "b.jpg")
    write_text(tmp_path / "xml" / "a.xml", voc_xml([("rbc", (3, 4, 13, 14), 0)], "a.jpg"))
    write_text(tmp_path / "xml" / "a (1).xml", voc_xml([("rbc", (3, 4, 13, 14), 0)], "a.jpg"))
    write_text(tmp_path / "xml" / "b.xml", voc_xml([("rbc", (3, 4, 13, 14), 0)], "b.jpg"))
    with pytest.raises(
        DatasetError, match=r"1 image\(s\) are described by more than one XML file: .*a.jpg: a \(1\).xml, a.xml"
    ):
        import_voc(tmp_path / "xml", tmp_path / "out.json", tmp_path / "photos")
    assert not (tmp_path / "out.json").exists()


def test_voc_size_that_differs_from_the_image(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An XML <size> that is not the image's size: the JSON takes the image's (so data check and training read
    it), and the XML is named in a warning and counted, rather than `data check` asking to fix the JSON."""
    write_image(tmp_path / "a.jpg", 40, 30)
    write_text(tmp_path / "a.xml", voc_xml([("rbc", (3, 4, 13, 14), 0)], size=(30, 40)))
    with caplog.at_level(logging.WARNING):
        coco = import_voc(tmp_path, tmp_path / "out.json")
    assert (coco["images"][0]["width"], coco["images"][0]["height"]) == (40, 30)
    assert coco["info"]["stats"]["size_differs_from_xml"] == 1 and "a.xml <size> 30x40, image 40x30" in caplog.text
    assert check_dataset(tmp_path / "out.json").ok


def test_voc_image_resized_after_labelling_gets_its_boxes_scaled(tmp_path: Path, caplog) -> None:
    """Photos downscaled after labelling (XML <size> 80x60, image 40x30): the boxes stayed in the XML's pixels,
    so they reached past the image and were clipped or dropped as outside it. Boxes that reach past the image but
    fit the <size> of the same shape are now scaled to the image; a <size> of another shape stays as it was."""
    write_image(tmp_path / "a.jpg", 40, 30)
    write_text(tmp_path / "a.xml", voc_xml([("rbc", (11, 21, 70, 60), 0)], size=(80, 60)))
    with caplog.at_level(logging.WARNING):
        coco = import_voc(tmp_path, tmp_path / "out.json")
    assert boxes_by_image(coco) == {"a.jpg": [("rbc", [5.0, 10.0, 30.0, 20.0])]}
    assert coco["info"]["stats"]["scaled_to_resized_image"] == 1 and "resized after labelling" in caplog.text
    write_text(tmp_path / "a.xml", voc_xml([("rbc", (5, 21, 35, 60), 0)], size=(80, 60)))  # past it in y only
    coco = import_voc(tmp_path, tmp_path / "out.json")
    assert boxes_by_image(coco) == {"a.jpg": [("rbc", [2.0, 10.0, 15.5, 20.0])]}
    for other_shape in ((90, 60), (84, 60)):  # 40 / 84 is 4.8% from 30 / 60: not the same shape
        write_text(tmp_path / "a.xml", voc_xml([("rbc", (11, 21, 70, 60), 0)], size=other_shape))
        coco = import_voc(tmp_path, tmp_path / "out.json")
        assert coco["info"]["stats"]["size_differs_from_xml"] == 1 and coco["annotations"][0]["bbox"][2] == 60


@pytest.mark.parametrize("orientation", [6, 8, 5, 7])
def test_voc_labelled_on_the_exif_turned_view_gets_its_boxes_turned(tmp_path: Path, orientation: int) -> None:
    """A phone photo stored 40x30 with an EXIF quarter turn, labelled (LabelImg-style VOC) on the 30x40 view a
    viewer shows: the boxes were taken as stored pixels and lay elsewhere. An XML <size> that is the turned view's
    now turns its boxes to the stored pixels (where the labelled object's pixels are), counted."""
    shown = np.zeros((40, 30), np.uint8)
    shown[5:15, 2:12] = 255  # the object, as the labeller saw it: x 2..12, y 5..15 on the 30 wide, 40 high view
    stored = Image.fromarray(shown).transpose(
        {5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE}.get(
            orientation, Image.Transpose.ROTATE_270
        )
    )
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "a.png", exif=exif.tobytes())
    write_text(tmp_path / "a.xml", voc_xml([("obj", (3, 6, 12, 15), 0)], "a.png", size=(30, 40)))
    coco = import_voc(tmp_path, tmp_path / "out.json")
    assert coco["info"]["stats"]["turned_from_exif"] == 1 and coco["info"]["stats"]["size_differs_from_xml"] == 0
    x, y, w, h = (round(v) for v in coco["annotations"][0]["bbox"])
    ys, xs = np.nonzero(np.asarray(stored))
    assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_csv_names_the_images_no_row_names(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Images of the folder that the CSV does not name were left out without a word (VOC names those without an
    XML): they are now named in a warning, with how to import one without boxes, and counted."""
    for stem in ("a", "b", "c"):
        write_image(tmp_path / f"{stem}.jpg")
    write_text(tmp_path / "boxes.csv", "a.jpg,1,1,20,20,cell\nb.jpg,,,,,\n")
    with caplog.at_level(logging.WARNING):
        coco = import_csv(tmp_path / "boxes.csv", tmp_path / "out.json")
    assert len(coco["images"]) == 2 and coco["info"]["stats"]["images_without_row"] == 1
    assert "1 image(s) have no row in boxes.csv and are not imported" in caplog.text and "c.jpg" in caplog.text
    assert "b.jpg" not in caplog.text and "box fields empty imports it without boxes" in caplog.text


def test_a_square_exif_turned_photo_is_read_by_each_formats_rule(tmp_path: Path) -> None:
    """A square photo's turned view has its stored size, so a VOC <size> (or a CSV's or COCO JSON's) cannot tell which
    view its boxes were drawn on: they are taken as on the stored pixels (as for a half turn or a mirror, README);
    YOLO labels, fractions with no size, are read on the turned view as Ultralytics reads them."""
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / "images" / "a.png", exif=exif.tobytes())
    write_text(tmp_path / "xml" / "a.xml", voc_xml([("obj", (3, 6, 12, 15), 0)], "a.png", size=(40, 40)))
    write_text(tmp_path / "labels" / "a.txt", "0 0.175 0.25 0.25 0.25\n")  # x 2..12, y 5..15 of the 40 x 40 view
    write_text(tmp_path / "classes.txt", "obj\n")
    voc = import_voc(tmp_path / "xml", tmp_path / "voc.json", images_dir=tmp_path / "images")
    yolo = import_yolo(tmp_path / "images", tmp_path / "yolo.json", tmp_path / "classes.txt")
    assert boxes_by_image(voc) == {"a.png": [("obj", [2.0, 5.0, 10.0, 10.0])]}  # as drawn: the stored pixels
    assert boxes_by_image(yolo) == {"a.png": [("obj", [5.0, 28.0, 10.0, 10.0])]}  # turned: x = y, y = 40 - x
    assert voc["info"]["stats"]["turned_from_exif"] == 0 and yolo["info"]["stats"]["turned_from_exif"] == 1


def test_yolo_with_classes_txt_and_data_yaml(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "train" / "p.jpg", 100, 50)
    write_image(tmp_path / "images" / "train" / "q.jpg", 100, 50)  # no label file: an image without boxes
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "p.txt").write_text("1 0.5 0.5 0.2 0.4\n0 0.1 0.1 0.2 0.2\n")
    (tmp_path / "classes.txt").write_text("car\nperson\n")
    (tmp_path / "data.yaml").write_text("names:\n  0: car\n  1: person\n")
    expected = {"p.jpg": [("person", [40.0, 15.0, 20.0, 20.0]), ("car", [0.0, 0.0, 20.0, 10.0])], "q.jpg": []}
    for classes in ("classes.txt", "data.yaml"):
        coco = import_yolo(tmp_path / "images" / "train", tmp_path / f"{classes}.json", tmp_path / classes)
        assert boxes_by_image(coco) == expected
        assert [c["name"] for c in coco["categories"]] == ["car", "person"]
    (tmp_path / "gaps.yaml").write_text("names:\n  0: car\n  2: person\n")  # index 1 would be read as person
    with pytest.raises(DatasetError, match=r"gaps.yaml: the class indices of 'names:' \[0, 2\] are not 0..1"):
        import_yolo(tmp_path / "images" / "train", tmp_path / "gaps.json", tmp_path / "gaps.yaml")
    (tmp_path / "labels" / "train" / "q.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match=r"q.txt:1: class index 7 is outside the 2 class names"):
        import_yolo(tmp_path / "images" / "train", tmp_path / "bad.json", tmp_path / "classes.txt")


def test_yolo_class_names_are_read_as_written_and_each_once(tmp_path: Path) -> None:
    """data.yaml 'names: [yes, no, on]' gave classes 'True', 'False', 'True' (YAML booleans), and the two 'True's,
    like a name repeated in classes.txt, silently became one class; an inverted mapping (person: 0) failed with
    "invalid literal for int()". Names are now read as written, and a repeat or a non-index key is an error
    naming the file."""
    write_image(tmp_path / "images" / "p.jpg", 100, 50)
    write_text(tmp_path / "labels" / "p.txt", "2 0.5 0.5 0.2 0.4\n")
    images, out = tmp_path / "images", tmp_path / "out.json"
    write_text(tmp_path / "data.yaml", "nc: 4\nnames: [yes, no, 'on', null]\n")
    coco = import_yolo(images, out, tmp_path / "data.yaml")
    assert [c["name"] for c in coco["categories"]] == ["yes", "no", "on", "null"]
    assert boxes_by_image(coco) == {"p.jpg": [("on", [40.0, 15.0, 20.0, 20.0])]}
    write_text(tmp_path / "data.yaml", "names:\n  0: off\n  1: 2\n  2: on\n")
    assert [c["name"] for c in import_yolo(images, out, tmp_path / "data.yaml")["categories"]] == ["off", "2", "on"]
    for name, text, error in (
        ("classes.txt", "car\ncar\nperson\n", r"classes.txt: class names repeat \('car' at indices \[0, 1\]\)"),
        ("inverted.yaml", "names:\n  person: 0\n  car: 1\n", r"inverted.yaml: the keys of 'names:' .* not class"),
        ("none.yaml", "nc: 2\n", r"none.yaml: no 'names:'"),
    ):
        with pytest.raises(DatasetError, match=error):
            import_yolo(images, out, write_text(tmp_path / name, text))


def test_yolo_data_yaml_whose_nc_differs_from_its_names_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """'nc: 3' with two names was imported as two classes without a word (Ultralytics refuses it): now an error
    naming the file, both counts and what to do, without a traceback."""
    write_image(tmp_path / "images" / "p.jpg", 100, 50)
    write_text(tmp_path / "labels" / "p.txt", "0 0.5 0.5 0.2 0.4\n")
    classes = write_text(tmp_path / "data.yaml", "nc: 3\nnames: [car, person]\n")
    out = tmp_path / "out.json"
    assert main(["data", "import", "yolo", str(tmp_path / "images"), "--classes", str(classes), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{classes}: 'nc: 3' but 'names:' has 2 names" in err and "Traceback" not in err and not out.exists()
    write_text(classes, "nc: 2\nnames:\n  0: car\n  1: person\n")
    assert [c["name"] for c in import_yolo(tmp_path / "images", out, classes)["categories"]] == ["car", "person"]


def test_photos_pillow_cannot_read_are_named_not_left_out_silently(
    tmp_path: Path, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A phone's .HEIC (where pillow-heif is not installed) and a camera's .dng beside the JPEGs were left out of
    data import yolo and predict without a word; they are now named with what to do. A float .pfm (as Ultralytics
    reads it) is taken."""
    monkeypatch.setattr(importers_common, "IMAGE_SUFFIXES", tuple(set(IMAGE_SUFFIXES) - set(heif.SUFFIXES)))
    monkeypatch.setattr(importers_common, "OTHER_IMAGE_SUFFIXES", (".dng", *heif.SUFFIXES))
    write_image(tmp_path / "images" / "a.jpg")
    Image.fromarray(RAMP.astype(np.float32)).save(tmp_path / "images" / "depth.pfm")
    for other in ("b.HEIC", "c.dng"):
        write_text(tmp_path / "images" / other, "not read")
        write_text(tmp_path / "labels" / f"{Path(other).stem}.txt", "0 0.5 0.5 0.2 0.4\n")
    write_text(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.2 0.4\n")
    with caplog.at_level(logging.WARNING):
        coco = import_yolo(tmp_path / "images", tmp_path / "out.json", write_text(tmp_path / "c.txt", "cell\n"))
    assert sorted(Path(image["file_name"]).name for image in coco["images"]) == ["a.jpg", "depth.pfm"]
    assert "left out 2 image(s) of a format Pillow does not read (.dng, .heic)" in caplog.text
    assert "convert them to JPEG or PNG to use them, or pip install 'sparse-detector[heif]'" in caplog.text
    caplog.clear()
    (tmp_path / "images" / "b.HEIC").unlink()
    with caplog.at_level(logging.WARNING):
        assert [path.name for path in image_files([tmp_path / "images"])] == ["a.jpg", "depth.pfm"]
    assert "c.dng" in caplog.text and "pillow-heif" not in caplog.text  # no HEIC: no pillow-heif advice


@pytest.mark.skipif(not heif.INSTALLED, reason="pillow-heif is not installed (pip install 'sparse-detector[heif]')")
def test_heic_photos_are_read_where_pillow_heif_is_installed(tmp_path: Path) -> None:
    """A phone's HEIC photos were named and left out; with pillow-heif they are images like any other: found in a
    folder, imported, decoded for training."""
    images = tmp_path / "images"
    write_image(images / "a.jpg")
    heif.register()  # Pillow saves HEIC through the plugin too
    Image.new("RGB", (40, 30), (250, 0, 0)).save(images / "b.HEIC", quality=95)
    assert [path.name for path in image_files([images])] == ["a.jpg", "b.HEIC"]
    red = np.asarray(read_rgb(images / "b.HEIC"), dtype=np.int16)
    assert red.shape == (30, 40, 3) and np.abs(red - [250, 0, 0]).max() <= 8  # lossy, as a phone's photo is
    for stem in "ab":
        write_text(tmp_path / "labels" / f"{stem}.txt", "0 0.5 0.5 0.2 0.4\n")
    coco = import_yolo(images, tmp_path / "out.json", write_text(tmp_path / "classes.txt", "car\n"))
    assert boxes_by_image(coco)["b.HEIC"] == [("car", [16.0, 9.0, 8.0, 12.0])]
    dataset = CocoDetection(None, tmp_path / "out.json")
    heic = next(i for i in range(len(dataset)) if dataset.image_path(i).name == "b.HEIC")
    assert dataset[heic][0].shape == (3, 30, 40)


def test_files_of_a_folder_of_photos_that_are_not_images_are_named_in_one_line(tmp_path: Path, caplog) -> None:
    """predict and visualize left `photos/notes.txt` out of a folder's images without a word; hidden files
    (.DS_Store) stay unnamed, and so do the labels beside a YOLO data set's images."""
    photos = tmp_path / "photos"
    write_image(photos / "a.jpg")
    for name in ("notes.txt", "sub/b.pdf", ".DS_Store", "out/predictions.json"):
        write_text(photos / name, "not an image")
    with caplog.at_level(logging.WARNING):
        assert image_files([photos], skip=photos / "out") == [photos / "a.jpg"]
    assert caplog.messages == [f"{photos}: left out 2 files that are not images: notes.txt, sub/b.pdf"]
    caplog.clear()
    (photos / "notes.txt").unlink()
    with caplog.at_level(logging.WARNING):
        image_files([photos], skip=photos / "out")
    assert caplog.messages == [f"{photos}: left out 1 file that is not an image: sub/b.pdf"]
    caplog.clear()
    write_text(photos / "a.txt", "0 0.5 0.5 0.2 0.4\n")  # a YOLO label beside its image
    with caplog.at_level(logging.WARNING):
        import_yolo(photos, tmp_path / "out.json", write_text(tmp_path / "c.txt", "cell\n"))
    assert "not an image" not in caplog.text


def test_an_input_that_does_not_exist_says_so_with_the_closest_name(tmp_path: Path) -> None:
    """`predict ... photos/nothere.jpg` said 'neither an image file nor a folder'."""
    write_image(tmp_path / "photos" / "there.jpg")
    with pytest.raises(
        FileNotFoundError, match=r"^input \S+/photos/thre.jpg does not exist \(did you mean \S+/photos/there.jpg\?\)$"
    ):
        image_files([tmp_path / "photos" / "thre.jpg"])
    with pytest.raises(FileNotFoundError, match=r"^input \S+/elsewhere/there.jpg does not exist$"):
        image_files([tmp_path / "elsewhere" / "there.jpg"])
    with pytest.raises(FileNotFoundError, match=r"^input \S+/photos/zzzz.png does not exist$"):
        image_files([tmp_path / "photos" / "zzzz.png"])


def test_gif_images_are_taken_from_folders_by_their_first_frame(tmp_path: Path, caplog) -> None:
    """A .gif in a folder was left out without a word by predict, visualize and the YOLO, VOC and CSV imports (its
    label file reported as having no image), though Pillow reads it; it is taken now, by its first frame."""
    images = tmp_path / "images"
    write_image(images / "a.jpg")
    frames = [Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("RGB", (40, 30), (0, 0, 255))]
    frames[0].save(images / "b.gif", save_all=True, append_images=frames[1:])  # animated: red, then blue
    assert [path.name for path in image_files([images])] == ["a.jpg", "b.gif"]
    assert [path.name for path in image_files([images / "b.gif"])] == ["b.gif"]  # given by name: taken before too
    first = read_rgb(images / "b.gif")
    assert first.mode == "RGB" and first.size == (40, 30) and first.getextrema() == ((255, 255), (0, 0), (0, 0))
    for stem in "ab":
        write_text(tmp_path / "labels" / f"{stem}.txt", "0 0.5 0.5 0.2 0.4\n")
    yolo = import_yolo(images, tmp_path / "yolo.json", write_text(tmp_path / "classes.txt", "car\n"))
    assert sorted(boxes_by_image(yolo)) == ["a.jpg", "b.gif"]
    assert yolo["info"]["stats"]["label_files_without_image"] == 0
    dataset = CocoDetection(None, tmp_path / "yolo.json")
    gif = next(i for i in range(len(dataset)) if dataset.image_path(i).name == "b.gif")
    assert dataset[gif][0].shape == (3, 30, 40) and dataset[gif][0][0].min() == 1  # red: the first frame
    write_text(tmp_path / "xml" / "b.xml", voc_xml([("car", (3, 4, 13, 14), 0)]))  # no <filename>: by file name
    with caplog.at_level(logging.WARNING):
        voc = import_voc(tmp_path / "xml", tmp_path / "voc.json", images)
    assert list(boxes_by_image(voc)) == ["b.gif"] and voc["info"]["stats"]["images_without_xml"] == 1
    listed = import_voc(tmp_path / "xml", tmp_path / "l.json", images, write_text(tmp_path / "list.txt", "b.gif\n"))
    assert list(boxes_by_image(listed)) == ["b.gif"]  # a list file's entry loses its image suffix, .gif too
    write_text(images / "boxes.csv", "a.jpg,1,1,20,20,car\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        table = import_csv(images / "boxes.csv", tmp_path / "csv.json")
    assert table["info"]["stats"]["images_without_row"] == 1 and "b.gif" in caplog.text


def test_yolo_nested_folders_polygons_and_bad_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Images in subfolders are imported with their labels; a polygon line is its bounding box; a line of another
    format (6 fields, pixels) is an error naming file and line; a label file without an image is counted; every
    unreadable image is named in one error."""
    write_image(tmp_path / "images" / "train" / "a" / "p.jpg", 100, 50)
    write_image(tmp_path / "images" / "train" / "q.jpg", 100, 50)
    write_text(tmp_path / "labels" / "train" / "a" / "p.txt", "0 0.3 0.2 0.2 0.6 0.1 0.2\n")  # corners not first
    write_text(tmp_path / "labels" / "train" / "q.txt", "")  # an empty label file: an image without boxes
    write_text(tmp_path / "labels" / "train" / "r.txt", "0 0.049999 0.5 0.1 0.2\n")  # 6 decimals: x0 = -1e-6
    write_image(tmp_path / "images" / "train" / "r.jpg", 100, 50)
    write_text(tmp_path / "labels" / "train" / "gone.txt", "0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "classes.txt").write_text("car\n")
    with caplog.at_level(logging.WARNING):
        coco = import_yolo(tmp_path / "images" / "train", tmp_path / "out.json", tmp_path / "classes.txt")
    assert boxes_by_image(coco) == {
        "p.jpg": [("car", [10.0, 10.0, 20.0, 20.0])],
        "q.jpg": [],
        "r.jpg": [("car", [0.0, 20.0, 9.9999, 10.0])],  # on the border, not 'reaching past' it
    }
    assert coco["info"]["stats"]["label_files_without_image"] == 1 and "gone.txt" in caplog.text
    assert coco["info"]["stats"]["images_without_label_file"] == 0 and "no label file" not in caplog.text
    (tmp_path / "labels" / "train" / "a" / "p.txt").unlink()  # a folder of labels missing: named and counted
    with caplog.at_level(logging.WARNING):
        coco = import_yolo(tmp_path / "images" / "train", tmp_path / "out.json", tmp_path / "classes.txt")
    assert coco["info"]["stats"]["images_without_label_file"] == 1
    assert "1 image(s) have no label file, so they are imported without boxes" in caplog.text
    assert "train/a/p.jpg" in caplog.text
    write_text(tmp_path / "images" / "train" / "notes.jpg", "not an image")
    write_text(tmp_path / "images" / "train" / "a" / "broken.png", "")
    with pytest.raises(
        DatasetError, match=r"2 image\(s\) cannot be read; replace or remove them: .*broken.png.*notes.jpg"
    ):
        import_yolo(tmp_path / "images" / "train", tmp_path / "out.json", tmp_path / "classes.txt")
    (tmp_path / "images" / "train" / "notes.jpg").unlink()
    (tmp_path / "images" / "train" / "a" / "broken.png").unlink()
    with pytest.raises(DatasetError, match=r"labels folder .*nowhere does not exist"):
        import_yolo(
            tmp_path / "images" / "train", tmp_path / "out.json", tmp_path / "classes.txt", tmp_path / "nowhere"
        )
    with pytest.raises(DatasetError, match=r"none of the 3 images .* has a label file in .*images.*--labels DIR"):
        import_yolo(tmp_path / "images" / "train", tmp_path / "out.json", tmp_path / "classes.txt", tmp_path / "images")
    for line, error in (
        ("0 0.5 0.5 0.2 0.2 0.9", "got 6 fields.*a 6th field is a confidence"),
        ("0 50 20 10 10", r"not all in \[0, 1\]"),
        ("0.5 0.5 0.5 0.2 0.2", r"the class index '0.5' is not a whole number"),
    ):
        write_text(tmp_path / "labels" / "train" / "q.txt", f"0 0.5 0.5 0.2 0.2\n{line}\n")
        with pytest.raises(DatasetError, match=rf"q.txt:2: .*{error}"):
            import_yolo(tmp_path / "images" / "train", tmp_path / "out.json", tmp_path / "classes.txt")


def test_yolo_export_root_pairs_each_images_folder_with_its_labels(tmp_path: Path, caplog) -> None:
    """--images at a Roboflow export's root (train/images, train/labels, valid/...) said no image had a label file
    (it looked beside the images); each images folder's labels are now read from the labels folder beside it, and
    the export's README.roboflow.txt is not taken for a label file without an image."""
    for split in ("train", "valid"):
        write_image(tmp_path / split / "images" / f"{split}_jpg.rf.1.jpg", 100, 50)
        write_text(tmp_path / split / "labels" / f"{split}_jpg.rf.1.txt", "0 0.5 0.5 0.2 0.4\n")
    write_text(tmp_path / "valid" / "labels" / "gone.txt", "0 0.5 0.5 0.2 0.4\n")
    write_text(tmp_path / "README.roboflow.txt", "exported from roboflow.com\n")
    write_text(tmp_path / "data.yaml", "train: ../train/images\nnc: 1\nnames: ['car']\n")
    with caplog.at_level(logging.WARNING):
        coco = import_yolo(tmp_path, tmp_path / "all.json", tmp_path / "data.yaml")
    assert [len(boxes) for boxes in boxes_by_image(coco).values()] == [1, 1]
    assert coco["info"]["stats"]["label_files_without_image"] == 1 and "README" not in caplog.text
    # --labels at the export's root too (it said no image had a label file there)
    assert (
        import_yolo(tmp_path, tmp_path / "all.json", tmp_path / "data.yaml", tmp_path)["annotations"]
        == coco["annotations"]
    )
    write_image(tmp_path / "flat" / "images" / "p.jpg")  # labels beside the images, in a folder named images
    write_text(tmp_path / "flat" / "images" / "p.txt", "0 0.5 0.5 0.2 0.4\n")
    coco = import_yolo(tmp_path / "flat", tmp_path / "flat.json", tmp_path / "data.yaml")
    assert [len(boxes) for boxes in boxes_by_image(coco).values()] == [1]


def test_yolo_export_imports_from_its_folder_alone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`data import yolo EXPORT --out F.json` (its folder as the source, as voc, csv and coco take theirs) said
    'needs --images DIR', and without --classes 'needs --classes' though the export's data.yaml was right there;
    the folder is taken for --images, and a data.yaml / classes.txt in it or up to two folders above is used
    (said)."""
    write_image(tmp_path / "export" / "train" / "images" / "p.jpg")
    write_text(tmp_path / "export" / "train" / "labels" / "p.txt", "0 0.5 0.5 0.2 0.4\n")
    write_text(tmp_path / "export" / "data.yaml", "names: ['car']\n")
    out = tmp_path / "out.json"
    for source in ([str(tmp_path / "export")], ["--images", str(tmp_path / "export" / "train" / "images")]):
        assert main(["data", "import", "yolo", *source, "--out", str(out)]) == 0
        assert f"classes: {tmp_path / 'export' / 'data.yaml'}" in capsys.readouterr().out
        assert load(out)["info"]["stats"]["annotations"] == 1
    (tmp_path / "export" / "data.yaml").unlink()
    write_text(tmp_path / "export" / "obj.names", "car\n")  # CVAT's YOLO export
    assert main(["data", "import", "yolo", str(tmp_path / "export"), "--out", str(out)]) == 0
    assert "obj.names" in capsys.readouterr().out
    (tmp_path / "export" / "obj.names").unlink()
    assert main(["data", "import", "yolo", str(tmp_path / "export"), "--out", str(tmp_path / "x.json")]) == 2
    assert "needs --classes classes.txt|data.yaml (none in" in capsys.readouterr().err


def test_yolo_class_index_written_as_a_float(tmp_path: Path) -> None:
    """Some converters write the class as '1.0' (Ultralytics reads it as 1): the import stopped with 'expected
    class x_center y_center width height ..., got 5 fields'."""
    write_image(tmp_path / "images" / "p.jpg", 100, 50)
    write_text(tmp_path / "labels" / "p.txt", "1.0 0.5 0.5 0.2 0.4\r\n0.000000 0.1 0.1 0.2 0.2 \r\n")
    write_text(tmp_path / "classes.txt", "car\nperson\n")
    coco = import_yolo(tmp_path / "images", tmp_path / "out.json", tmp_path / "classes.txt")
    assert boxes_by_image(coco) == {"p.jpg": [("person", [40.0, 15.0, 20.0, 20.0]), ("car", [0.0, 0.0, 20.0, 10.0])]}


def test_yolo_images_saved_from_the_web_as_jfif_are_imported(tmp_path: Path, caplog) -> None:
    """A photo saved from a browser on Windows is x.jfif (a JPEG): it was not taken for an image, so it was left
    out and its label file was reported as having no image."""
    write_image(tmp_path / "images" / "a.jpg")
    Image.open(tmp_path / "images" / "a.jpg").save(tmp_path / "images" / "b.jfif", "JPEG")
    for stem in "ab":
        write_text(tmp_path / "labels" / f"{stem}.txt", "0 0.5 0.5 0.2 0.4\n")
    write_text(tmp_path / "classes.txt", "car\n")
    coco = import_yolo(tmp_path / "images", tmp_path / "out.json", tmp_path / "classes.txt")
    assert sorted(boxes_by_image(coco)) == ["a.jpg", "b.jfif"]
    assert coco["info"]["stats"]["label_files_without_image"] == 0


@pytest.mark.parametrize("orientation", [6, 8, 3, 2])
def test_yolo_labels_of_an_exif_turned_photo_are_turned_to_the_stored_pixels(
    tmp_path: Path, orientation: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A phone photo stored 40x30 with an EXIF orientation, labelled on the view a viewer shows (as Ultralytics
    reads it): its normalised labels were scaled by the stored sides, so the box lay elsewhere with another shape
    and data check said OK. They are now read on the turned view and turned to the stored pixels, counted."""
    shown = np.zeros((40, 30) if orientation in (6, 8) else (30, 40), np.uint8)
    shown[5:15, 2:12] = 255  # the object as the labeller saw it: x 2..12, y 5..15
    stored = Image.fromarray(shown).transpose(
        {
            6: Image.Transpose.ROTATE_90,
            8: Image.Transpose.ROTATE_270,
            3: Image.Transpose.ROTATE_180,
            2: Image.Transpose.FLIP_LEFT_RIGHT,
        }[orientation]
    )
    exif = Image.Exif()
    exif[0x0112] = orientation
    (tmp_path / "images").mkdir()
    stored.save(tmp_path / "images" / "a.png", exif=exif.tobytes())
    height, width = shown.shape
    write_text(tmp_path / "labels" / "a.txt", f"0 {7 / width} {10 / height} {10 / width} {10 / height}\n")
    write_text(tmp_path / "classes.txt", "obj\n")
    with caplog.at_level(logging.WARNING):
        coco = import_yolo(tmp_path / "images", tmp_path / "out.json", tmp_path / "classes.txt")
    assert coco["info"]["stats"]["turned_from_exif"] == 1 and f"EXIF orientation {orientation}" in caplog.text
    x, y, w, h = (round(v, 6) for v in coco["annotations"][0]["bbox"])
    ys, xs = np.nonzero(np.asarray(stored))
    assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_archives_made_on_a_mac_import_without_their_resource_forks(tmp_path: Path, caplog) -> None:
    """A data set zipped or tarred on a Mac carries '._name' resource forks beside (or, in __MACOSX/, above) every
    file: the YOLO import stopped with '2 image(s) cannot be read' and the VOC import with 'malformed XML' on
    them. Hidden files and __MACOSX/ are now left out, as Ultralytics' file search does."""
    junk = b"\x00\x05\x16\x07Mac OS X        "
    write_image(tmp_path / "yolo" / "images" / "p.jpg")
    write_text(tmp_path / "yolo" / "labels" / "p.txt", "0 0.5 0.5 0.2 0.4\n")
    for path in ("images/._p.jpg", "labels/._p.txt", "__MACOSX/images/._p.jpg", "images/.DS_Store"):
        (tmp_path / "yolo" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "yolo" / path).write_bytes(junk)
    write_text(tmp_path / "classes.txt", "car\n")
    with caplog.at_level(logging.WARNING):
        coco = import_yolo(tmp_path / "yolo", tmp_path / "yolo.json", tmp_path / "classes.txt")
    assert list(boxes_by_image(coco)) == ["p.jpg"] and coco["info"]["stats"]["label_files_without_image"] == 0
    voc = tmp_path / "voc"
    write_image(voc / "JPEGImages" / "a.jpg")
    write_text(voc / "Annotations" / "a.xml", voc_xml([("cat", (1, 1, 10, 10), 0)], "a.jpg"))
    write_text(voc / "ImageSets" / "Main" / "trainval.txt", "a\n")
    for path in ("Annotations/._a.xml", "JPEGImages/._a.jpg", "Annotations/__MACOSX/._a.xml"):
        (voc / path).parent.mkdir(parents=True, exist_ok=True)
        (voc / path).write_bytes(junk)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for coco in (
            import_voc_root(voc, tmp_path / "voc.json"),
            import_voc(voc / "Annotations", tmp_path / "any.json", voc / "JPEGImages"),
        ):
            assert boxes_by_image(coco) == {"a.jpg": [("cat", [0.0, 0.0, 10.0, 10.0])]}
    assert "._a" not in caplog.text  # neither an image without XML nor an XML in a subfolder


def test_yolo_follows_linked_folders_once(tmp_path: Path) -> None:
    """images/train and labels/train as links to another disk (a common way to lay out a large set): the import
    said 'no images in images or its subfolders' (Python's rglob does not enter linked folders). Linked folders
    are now followed, each real folder once, so a link to a folder above does not loop or repeat images."""
    write_image(tmp_path / "disk" / "images" / "p.jpg")
    write_text(tmp_path / "disk" / "labels" / "p.txt", "0 0.5 0.5 0.2 0.4\n")
    for kind in ("images", "labels"):
        (tmp_path / "set" / kind).mkdir(parents=True)
        (tmp_path / "set" / kind / "train").symlink_to(tmp_path / "disk" / kind, target_is_directory=True)
    (tmp_path / "set" / "images" / "again").symlink_to(tmp_path / "set" / "images", target_is_directory=True)
    write_text(tmp_path / "classes.txt", "car\n")
    coco = import_yolo(tmp_path / "set" / "images", tmp_path / "out.json", tmp_path / "classes.txt")
    assert [image["file_name"] for image in coco["images"]] == ["disk/images/p.jpg"]  # resolved, beside the JSON
    assert coco["info"]["stats"]["annotations"] == 1 and coco["info"]["stats"]["label_files_without_image"] == 0


def test_a_box_labelled_twice_is_one_object(tmp_path: Path) -> None:
    """A YOLO line saved twice (as exports and label tools sometimes do) became two ground-truth objects, one of
    which no detection can match (AP lowered); the repeat is now dropped and counted, as Ultralytics does."""
    write_image(tmp_path / "images" / "p.jpg", 100, 50)
    write_text(tmp_path / "labels" / "p.txt", "0 0.5 0.5 0.2 0.4\n0 0.5 0.5 0.2 0.4\n1 0.5 0.5 0.2 0.4\n")
    write_text(tmp_path / "classes.txt", "car\nvan\n")
    coco = import_yolo(tmp_path / "images", tmp_path / "out.json", tmp_path / "classes.txt")
    assert [name for name, _ in boxes_by_image(coco)["p.jpg"]] == ["car", "van"]  # another class: another object
    assert coco["info"]["stats"]["dropped"] == {"duplicate": 1}


def test_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_image(tmp_path / "img" / "a.jpg")
    write_image(tmp_path / "img" / "b.jpg")
    table = tmp_path / "boxes.csv"
    table.write_text("file,x1,y1,x2,y2,label\nimg/a.jpg,1,2,11,22,cell\nimg/a.jpg,0,0,5,5,dirt\nimg/b.jpg,,,,,\n")
    coco = import_csv(table, tmp_path / "out.json")
    assert boxes_by_image(coco) == {
        "a.jpg": [("cell", [1.0, 2.0, 10.0, 20.0]), ("dirt", [0.0, 0.0, 5.0, 5.0])],
        "b.jpg": [],
    }
    assert load(tmp_path / "out.json")["images"][0]["file_name"] == "img/a.jpg"  # inside the output's folder
    table.write_text(
        "img/a.jpg,1,2,11,22,cell\n./img/a.jpg,0,0,5,5,dirt\ngone.jpg,1,1,2,2,x\nimg/b.jpg,,,,,\nlost.jpg,,,,,\n"
        "gone.jpg,3,3,4,4,x\n"
    )
    # each missing image named once, at its first row (a file's every row was listed, the same image over and over)
    with pytest.raises(
        DatasetError, match=r"3 row\(s\) name 2 image\(s\) that do not exist .*:3: .*gone.jpg; [^;]*:5: "
    ):
        import_csv(table, tmp_path / "out.json")
    monkeypatch.chdir(tmp_path)  # paths relative to the working folder, not the CSV's: said so
    write_text(tmp_path / "tables" / "boxes.csv", "img/a.jpg,1,2,11,22,cell\n")
    with pytest.raises(DatasetError, match=r"there relative to the current folder: --images \.\): .*tables/img/a.jpg"):
        import_csv(tmp_path / "tables" / "boxes.csv", tmp_path / "out.json")
    table.write_text("img/a.jpg,1,2,11,22,cell\n./img/a.jpg,0,0,5,5,dirt\n")  # one image, however spelt
    assert len(import_csv(table, tmp_path / "out.json")["images"]) == 1
    (tmp_path / "folder").mkdir()
    with pytest.raises(DatasetError, match=r"folder is a folder; the output is a JSON file, e.g. .*annotations.json"):
        import_csv(table, tmp_path / "folder")
    assert not list(tmp_path.glob(".*partial"))
    table.write_text("img/a.jpg,1,2,x,22,cell\n")
    with pytest.raises(DatasetError, match=r"boxes.csv:1: x1,y1,x2,y2 must be numbers"):
        import_csv(table, tmp_path / "out.json")


def test_csv_named_columns_bom_inverted_boxes_and_separators(tmp_path: Path, caplog) -> None:
    """A header may name and reorder the columns (TensorFlow-style export); Excel's BOM is no part of the first
    file name; x2 < x1 is dropped as 'inverted' with a hint; a ';'- or tab-separated file (a spreadsheet's, with
    decimal commas) is read as a comma-separated one, a row with a field too few named with the separator."""
    write_image(tmp_path / "a.jpg")
    table = tmp_path / "boxes.csv"
    table.write_text("filename,width,height,class,xmin,ymin,xmax,ymax\na.jpg,40,30,cell,1,2,11,22\n")
    assert boxes_by_image(import_csv(table, tmp_path / "out.json")) == {"a.jpg": [("cell", [1.0, 2.0, 10.0, 20.0])]}
    table.write_text("\ufeffa.jpg,1,2,11,22,cell\na.jpg,30,2,10,22,cell\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        coco = import_csv(table, tmp_path / "out.json")
    assert coco["info"]["stats"]["dropped"] == {"inverted": 1} and "not x,y,width,height?" in caplog.text
    expected = {"a.jpg": [("cell", [1.5, 2.0, 9.5, 20.0])]}
    for separator in ";\t":
        table.write_text(f"a.jpg{separator}1,5{separator}2{separator}11{separator}22{separator}cell\n")
        assert boxes_by_image(import_csv(table, tmp_path / "out.json")) == expected, separator
    table.write_text("filename;class;xmin;ymin;xmax;ymax\na.jpg;cell;1,5;2;11;22\na.jpg;cell;1;2;3\n")
    with pytest.raises(DatasetError, match=r"boxes.csv:3: expected 6 fields separated by ';' .* got 5"):
        import_csv(table, tmp_path / "out.json")
    table.write_text("file,xmin,ymin,xmax,ymax\na.jpg,1,2,3,4\n")
    with pytest.raises(DatasetError, match=r"boxes.csv:1: the header .* names no column for \['label'\]"):
        import_csv(table, tmp_path / "out.json")


def test_csv_header_naming_width_and_height_reads_x_y_w_h(tmp_path: Path) -> None:
    """A header 'filename,x,y,w,h,label' was read by position as x1,y1,x2,y2: 23 of 24 boxes dropped as inverted
    and the check said OK. Width and height columns now give the box's size; beside corner columns they remain
    the image's size; a header naming some known columns but not all is an error, never read by position."""
    write_image(tmp_path / "a.jpg")
    table = tmp_path / "boxes.csv"
    for header in (
        "filename,x,y,w,h,label",
        "image,label,left,top,width,height",
        "file,x,y,bbox_width,bbox_height,class",
        "file,width,height,x,y,bbox_width,bbox_height,class",  # width, height: the image's
    ):
        columns = header.split(",")
        image_size = "bbox_width" in columns  # beside the box's own size, width and height are the image's
        values = {"x": "5", "left": "5", "y": "6", "top": "6", "w": "10", "bbox_width": "10", "h": "4"}
        values |= {"width": "40" if image_size else "10", "height": "30" if image_size else "4", "bbox_height": "4"}
        row = ",".join("a.jpg" if i == 0 else values.get(c, "cell") for i, c in enumerate(columns))
        table.write_text(f"{header}\n{row}\n")
        coco = import_csv(table, tmp_path / "out.json")
        assert boxes_by_image(coco) == {"a.jpg": [("cell", [5.0, 6.0, 10.0, 4.0])]}, header
        assert not coco["info"]["stats"]["dropped"]
    table.write_text("image_id,x,y,w,h,label\na.jpg,5,6,10,4,cell\n")
    with pytest.raises(DatasetError, match=r"names no column for \['file'\]"):
        import_csv(table, tmp_path / "out.json")


def test_class_names_that_differ_only_in_case_are_named(tmp_path: Path, caplog) -> None:
    """Labels typed 'Cat', 'cat' and 'red  car' / 'Red car' became four classes without a word."""
    write_image(tmp_path / "a.jpg")
    rows = "".join(f"a.jpg,1,1,9,9,{name}\n" for name in ("Cat", "cat", "red  car", "Red car", "dog"))
    table = write_text(tmp_path / "boxes.csv", rows)
    with caplog.at_level(logging.WARNING):
        coco = import_csv(table, tmp_path / "out.json")
    assert coco["info"]["stats"]["alike_class_names"] == [["Cat", "cat"], ["Red car", "red  car"]]
    assert "differ only in case or spacing are separate classes: 'Cat' / 'cat'; 'Red car' / 'red  car'" in caplog.text


def test_text_files_in_other_encodings(tmp_path: Path) -> None:
    """Excel's 'Unicode Text' (UTF-16) CSV and a Latin-1 classes.txt stopped the import with "'utf-8' codec can't
    decode byte 0xff in position 0", naming no file. UTF-16 with its BOM is now read; another encoding is an error
    naming the file and line and how to convert it."""
    write_image(tmp_path / "a.jpg")
    table = tmp_path / "boxes.csv"
    table.write_text("file,x1,y1,x2,y2,label\na.jpg,1,2,11,22,crème\n", encoding="utf-16")
    assert boxes_by_image(import_csv(table, tmp_path / "out.json")) == {"a.jpg": [("crème", [1.0, 2.0, 10.0, 20.0])]}
    table.write_text("file,x1,y1,x2,y2,label\na.jpg,1,2,11,22,crème\n", encoding="latin-1")
    with pytest.raises(DatasetError, match=r"boxes.csv:2: not UTF-8 text .*save the file as UTF-8"):
        import_csv(table, tmp_path / "out.json")
    write_image(tmp_path / "images" / "p.jpg")
    write_text(tmp_path / "labels" / "p.txt", "0 0.5 0.5 0.2 0.4\n")
    (tmp_path / "classes.txt").write_text("crème\n", encoding="latin-1")
    with pytest.raises(DatasetError, match=r"classes.txt:1: not UTF-8 text"):
        import_yolo(tmp_path / "images", tmp_path / "out.json", tmp_path / "classes.txt")


def test_csv_normalised_coordinates_are_scaled_to_pixels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Coordinates normalised to [0, 1] were read as pixels: boxes under a pixel wide, and the check said OK."""
    write_image(tmp_path / "a.jpg", width=40, height=30)
    table = write_text(tmp_path / "boxes.csv", "file,x1,y1,x2,y2,label\na.jpg,0.25,0.1,0.75,0.5,cell\n")
    assert main(["data", "import", "csv", str(table), "--out", str(tmp_path / "out.json")]) == 0
    assert "read as fractions of each image's width and height" in capsys.readouterr().out
    coco = load(tmp_path / "out.json")
    assert boxes_by_image(coco) == {"a.jpg": [("cell", [10.0, 3.0, 20.0, 12.0])]}
    assert coco["info"]["stats"]["normalised_coordinates"] is True
    write_text(table, "a.jpg,0.25,0.1,0.75,0.5,cell\na.jpg,2,3,12,13,cell\n")  # pixels: one box past 1
    assert boxes_by_image(import_csv(table, tmp_path / "out.json"))["a.jpg"][1] == ("cell", [2.0, 3.0, 10.0, 10.0])


def test_csv_image_size_columns_turn_scale_or_name_the_boxes_as_voc_size_does(tmp_path: Path, capsys) -> None:
    """A TensorFlow-style CSV (filename,width,height,class,xmin,...) gives each image's size as labelled; it was
    ignored, so boxes of a photo labelled on its EXIF-turned view, or of one downscaled after labelling, lay
    elsewhere and data check said OK. As with VOC's <size>: turned boxes are turned, a resized image's boxes
    scaled, another size named."""
    shown = np.zeros((40, 30), np.uint8)
    shown[5:15, 2:12] = 255  # the object on the 30 wide, 40 high view a viewer shows
    stored = Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "turned.png", exif=exif.tobytes())
    write_image(tmp_path / "small.jpg", 40, 30)  # labelled at 80x60, then halved
    write_image(tmp_path / "other.jpg", 40, 30)
    header = "filename,width,height,class,xmin,ymin,xmax,ymax\n"
    rows = "turned.png,30,40,obj,2,5,12,15\nsmall.jpg,80,60,obj,40,20,78,58\nother.jpg,50,30,obj,1,1,11,11\n"
    table = write_text(tmp_path / "boxes.csv", header + rows)
    assert main(["data", "import", "csv", str(table), "--out", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert "EXIF: 1 image labelled on the turned view" in out and "resized after labelling" in out
    assert "sizes: 1 image(s) differ from their CSV width/height" in out
    coco = load(tmp_path / "out.json")
    ys, xs = np.nonzero(np.asarray(stored))
    assert boxes_by_image(coco) == {
        "turned.png": [("obj", [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()])],
        "small.jpg": [("obj", [20.0, 10.0, 19.0, 19.0])],
        "other.jpg": [("obj", [1.0, 1.0, 10.0, 10.0])],  # kept as it is, named
    }
    write_text(table, header + "turned.png,30,40,obj,0.0667,0.125,0.4,0.375\n")  # fractions of the turned view
    (x, y, w, h) = import_csv(table, tmp_path / "out.json")["annotations"][0]["bbox"]
    assert [round(v) for v in (x, y, x + w, y + h)] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_coco_ids_remapped_and_paths_rewritten(tmp_path: Path) -> None:
    write_image(tmp_path / "src" / "pics" / "a.jpg")
    source = {
        "images": [{"id": "img-a", "file_name": "pics/a.jpg", "width": 40, "height": 30}],
        "annotations": [{"id": 5, "image_id": "img-a", "category_id": 0, "bbox": [1, 1, 5, 5]},
                        {"id": 5, "image_id": "img-a", "category_id": 0, "bbox": [2, 2, 5, 5]}],
        "categories": [{"id": 0, "name": "thing"}],
    }  # fmt: skip
    (tmp_path / "src" / "coco.json").write_text(json.dumps(source))
    coco = import_coco(tmp_path / "src" / "coco.json", tmp_path / "out" / "coco.json")
    assert coco["info"]["stats"]["remapped_ids"] == ["images", "categories", "annotations"]
    assert [(a["id"], a["image_id"], a["category_id"]) for a in coco["annotations"]] == [(1, 1, 1), (2, 1, 1)]
    assert len(CocoDetection(None, tmp_path / "out" / "coco.json")) == 1


def test_ids_written_as_strings_are_kept_by_split_evaluation_and_import(tmp_path: Path) -> None:
    """Training reads an image_id or category_id written as a string ("2") as the id it names, but `data split` and
    the evaluation ground truth matched ids by type: the box was in no split and not in the ground truth, silently.
    The import now writes such references as the ids they name."""
    for name in ("a.jpg", "b.jpg"):
        write_image(tmp_path / name)
    source = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
                   {"id": 2, "file_name": "b.jpg", "width": 40, "height": 30}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
                        {"id": 2, "image_id": "2", "category_id": "1", "bbox": [2, 2, 5, 5]}],
        "categories": [{"id": 1, "name": "thing"}],
    }  # fmt: skip
    write_text(tmp_path / "in.json", json.dumps(source))
    dataset = CocoDetection(None, tmp_path / "in.json")
    assert dataset.num_boxes == 2 and len(dataset.coco.getAnnIds(imgIds=dataset.image_ids, catIds=[1])) == 2
    splits = split_coco(tmp_path / "in.json", tmp_path / "splits", val=0.5)
    assert sum(len(load(path)["annotations"]) for path in splits.values()) == 2
    coco = import_coco(tmp_path / "in.json", tmp_path / "out.json")
    assert [(a["image_id"], a["category_id"]) for a in coco["annotations"]] == [(1, 1), (2, 1)]


def test_file_names_written_on_windows_are_found(tmp_path: Path) -> None:
    """A COCO JSON or CSV written on Windows names 'pics\\a.jpg': the COCO import said no image was in the folder
    (pass --images), the CSV import that the row's image does not exist, and training that the files were missing.
    Where only the '/' spelling exists, that file is read."""
    write_image(tmp_path / "pics" / "a.jpg")
    write_one_image_coco(tmp_path / "coco.json", "pics\\a.jpg", "thing")
    assert len(CocoDetection(None, tmp_path / "coco.json")) == 1  # trained on as it is
    coco = import_coco(tmp_path / "coco.json", tmp_path / "out" / "coco.json")
    assert coco["images"][0]["file_name"] == str(tmp_path / "pics" / "a.jpg")
    write_text(tmp_path / "boxes.csv", "pics\\a.jpg,1,1,6,6,thing\n")
    assert boxes_by_image(import_csv(tmp_path / "boxes.csv", tmp_path / "csv.json")) == {
        "a.jpg": [("thing", [1.0, 1.0, 5.0, 5.0])]
    }


def test_coco_renumbering_drops_references_to_no_entry_instead_of_moving_them(tmp_path: Path, caplog) -> None:
    """Categories 0 and 3 were renumbered 1 and 2; an annotation of a category_id 1 that was not in 'categories'
    kept its 1 and silently became a box of category 0's class (likewise an image_id). Such annotations are now
    dropped, counted and named."""
    write_image(tmp_path / "a.jpg")
    source = {
        "images": [{"id": 0, "file_name": "a.jpg", "width": 40, "height": 30}],
        "annotations": [
            {"id": 1, "image_id": 0, "category_id": 3, "bbox": [1, 1, 5, 5]},
            {"id": 2, "image_id": 0, "category_id": 1, "bbox": [2, 2, 5, 5]},  # no category 1
            {"id": 3, "image_id": 1, "category_id": 0, "bbox": [2, 2, 5, 5]},  # no image 1
        ],
        "categories": [{"id": 0, "name": "apple"}, {"id": 3, "name": "pear"}],
    }
    write_text(tmp_path / "in.json", json.dumps(source))
    with caplog.at_level(logging.WARNING):
        coco = import_coco(tmp_path / "in.json", tmp_path / "out.json")
    assert boxes_by_image(coco) == {"a.jpg": [("pear", [1.0, 1.0, 5.0, 5.0])]}
    assert coco["info"]["stats"]["dropped"] == {"unknown_image": 1, "unknown_category": 1}
    assert "annotation 2: category_id 1" in caplog.text and "annotation 3: image_id 1" in caplog.text


def test_coco_file_names_of_the_labelling_machine_are_found_by_name(tmp_path: Path, capsys) -> None:
    """A COCO JSON (or CSV) naming its images by the labeller's absolute paths (/home/alice/..., C:\\Users\\...)
    failed with 'none of the images is in DIR; pass --images DIR', and passing --images failed the same way; such a
    path is now the file of its name in the images folder, counted and listed."""
    write_image(tmp_path / "pics" / "a.jpg")
    write_image(tmp_path / "pics" / "b.jpg")
    source = {
        "images": [
            {"id": 1, "file_name": "/home/alice/labelling/a.jpg", "width": 40, "height": 30},
            {"id": 2, "file_name": "C:\\Users\\bob\\b.jpg", "width": 40, "height": 30},
        ],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 1, "name": "cell"}],
    }
    write_text(tmp_path / "coco.json", json.dumps(source))
    args = ["data", "import", "coco", str(tmp_path / "coco.json"), "--images", str(tmp_path / "pics")]
    assert main([*args, "--out", str(tmp_path / "out.json")]) == 0
    assert "paths: 2 image(s) named by another machine's path (absolute" in capsys.readouterr().out
    coco = load(tmp_path / "out.json")
    assert [i["file_name"] for i in coco["images"]] == ["pics/a.jpg", "pics/b.jpg"]
    assert coco["info"]["stats"]["found_by_name"] == 2
    table = write_text(tmp_path / "boxes.csv", "C:\\Users\\bob\\a.jpg,1,1,6,6,cell\n")
    coco = import_csv(table, tmp_path / "csv.json", tmp_path / "pics")
    assert list(boxes_by_image(coco)) == ["a.jpg"] and coco["info"]["stats"]["found_by_name"] == 1


def test_file_names_in_another_letter_case_are_found(tmp_path: Path, capsys) -> None:
    """A data set labelled on Windows names IMG_0001.jpg what the disk holds as IMG_0001.JPG: training and data check
    said only 'missing', data import coco 'none of the images is in DIR'. Training now says which file differs in
    case and the command that fixes the names; the importers take the file (counted as found by name)."""
    write_image(tmp_path / "pics" / "IMG_0001.JPG")
    write_one_image_coco(tmp_path / "coco.json", "IMG_0001.jpg", "cell")
    with pytest.raises(DatasetError, match=r"IMG_0001.JPG there differs only in letter case; `sparse-detector data"):
        CocoDetection(tmp_path / "pics", tmp_path / "coco.json")
    args = ["data", "import", "coco", str(tmp_path / "coco.json"), "--images", str(tmp_path / "pics")]
    assert main([*args, "--out", str(tmp_path / "out.json")]) == 0
    assert "paths: 1 image(s) named by another machine's path" in capsys.readouterr().out
    assert [i["file_name"] for i in load(tmp_path / "out.json")["images"]] == ["pics/IMG_0001.JPG"]
    coco = import_csv(
        write_text(tmp_path / "boxes.csv", "img_0001.jpg,1,1,6,6,cell\n"), tmp_path / "c.json", tmp_path / "pics"
    )
    assert list(boxes_by_image(coco)) == ["IMG_0001.JPG"] and coco["info"]["stats"]["found_by_name"] == 1
    write_text(tmp_path / "voc" / "frame.xml", voc_xml([("cell", (1, 1, 6, 6), 0)], "img_0001.JPG"))
    coco = import_voc(tmp_path / "voc", tmp_path / "v.json", images_dir=tmp_path / "pics")
    assert list(boxes_by_image(coco)) == ["IMG_0001.JPG"]


def test_coco_import_drops_boxes_without_extent_as_the_other_importers_do(tmp_path: Path, capsys) -> None:
    """A Roboflow COCO export's zero-width box (a stray click) made data import coco end with 'PROBLEMS' and exit 1,
    where the VOC, YOLO and CSV imports drop such boxes and say so; it now drops and counts them too. A width of
    1e-9 (no extent at the targets' float32 precision) was kept and flagged by data check: now dropped alike, in
    every importer."""
    write_image(tmp_path / "a.jpg")
    source = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [9, 9, 0, 4]},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [9, 9, 4, 1e-9]},
        ],
        "categories": [{"id": 1, "name": "cell"}],
    }
    write_text(tmp_path / "coco.json", json.dumps(source))
    assert main(["data", "import", "coco", str(tmp_path / "coco.json"), "--out", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert "dropped: 2 box(es) (2 zero area" in out and "OK: no problems found" in out
    coco = load(tmp_path / "out.json")
    assert [a["id"] for a in coco["annotations"]] == [1] and coco["info"]["stats"]["dropped"] == {"zero_area": 2}
    write_text(tmp_path / "boxes.csv", "a.jpg,1,1,6,6,cell\na.jpg,9,9,9.000000001,13,cell\n")
    assert import_csv(tmp_path / "boxes.csv", tmp_path / "csv.json")["info"]["stats"]["dropped"] == {"zero_area": 1}


def test_coco_import_says_which_category_ids_it_renumbered(tmp_path: Path, capsys) -> None:
    """Category ids 0, 3 became 1, 2 without a word: detections named category_id 1 for what the user's own JSON
    calls 0."""
    write_image(tmp_path / "a.jpg")
    annotation = {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]}
    source = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
        "annotations": [annotation],
        "categories": [{"id": 0, "name": "apple"}, {"id": 3, "name": "pear"}],
    }
    write_text(tmp_path / "in.json", json.dumps(source))
    assert main(["data", "import", "coco", str(tmp_path / "in.json"), "--out", str(tmp_path / "out.json")]) == 0
    assert (
        "category ids renumbered (0 -> 1, 3 -> 2): detections and evaluation use the new ids" in capsys.readouterr().out
    )


def test_coco_labelled_on_the_exif_turned_view_gets_its_annotations_turned(tmp_path: Path) -> None:
    """A COCO JSON whose width/height are an EXIF quarter-turned photo's turned view (labelled as a viewer shows
    it): data check asked to 'fix the JSON width/height', which leaves every box elsewhere. data check now says
    what happened, and data import coco turns the bbox, polygon and RLE mask to the stored pixels."""
    from pycocotools import mask as mask_utils

    shown = np.zeros((40, 30), np.uint8)
    shown[5:15, 2:12] = 1  # the object as the labeller saw it, on the 30 wide, 40 high view
    exif = Image.Exif()
    exif[0x0112] = 6  # shown a quarter turn clockwise: stored turned back anticlockwise
    stored = np.asarray(Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90))
    Image.fromarray(stored * 255).save(tmp_path / "a.png", exif=exif.tobytes())
    rle = mask_utils.encode(np.asfortranarray(shown))
    rle["counts"] = rle["counts"].decode("ascii")
    polygon = [[2, 5, 12, 5, 12, 15, 2, 15]]
    annotations = [
        {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [2, 5, 10, 10], "segmentation": seg, "iscrowd": 0}
        for i, seg in enumerate((polygon, rle))
    ]
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 30, "height": 40}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "obj"}],
    }
    write_text(tmp_path / "in.json", json.dumps(coco))
    assert "EXIF-turned view's size (orientation 6)" in check_dataset(tmp_path / "in.json").problems[0]
    out = import_coco(tmp_path / "in.json", tmp_path / "out.json")
    ys, xs = np.nonzero(stored)
    expected = [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]
    assert (out["images"][0]["width"], out["images"][0]["height"]) == (40, 30)
    assert out["info"]["stats"]["turned_from_exif"] == 1
    polygon_ann, rle_ann = out["annotations"]
    assert polygon_ann["bbox"] == rle_ann["bbox"] == expected
    xs_, ys_ = polygon_ann["segmentation"][0][0::2], polygon_ann["segmentation"][0][1::2]
    assert [min(xs_), min(ys_), max(xs_) - min(xs_), max(ys_) - min(ys_)] == expected
    assert np.array_equal(mask_utils.decode(rle_ann["segmentation"]), stored)
    assert check_dataset(tmp_path / "out.json").ok
    write_text(tmp_path / "a.png", "not an image")  # unreadable: listed by data check, not an import error
    assert import_coco(tmp_path / "in.json", tmp_path / "out.json")["info"]["stats"]["turned_from_exif"] == 0


def test_coco_segmentation_only_repeated_ids_and_wrong_images_folder(tmp_path: Path) -> None:
    """A box is taken from a polygon or RLE segmentation when there is no bbox, a size from the file when there is
    none; a repeated image id (which
    annotations cannot be matched to) and an images folder holding none of the files are errors saying what to do."""
    write_image(tmp_path / "pics" / "a.jpg")
    rle = {"size": [30, 40], "counts": [2 * 30 + 3, 4, 26, 4, 23 + 30 * 36]}  # columns 2-3 filled, rows 3-6
    source = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[1, 2, 11, 2, 6, 12]]},
                        {"id": 2, "image_id": 1, "category_id": 1, "segmentation": rle, "iscrowd": 1}],
        "categories": [{"id": 1, "name": "thing"}],
    }  # fmt: skip
    write_text(tmp_path / "coco.json", json.dumps(source))
    coco = import_coco(tmp_path / "coco.json", tmp_path / "out.json", tmp_path / "pics")
    assert [a["bbox"] for a in coco["annotations"]] == [[1.0, 2.0, 10.0, 10.0], [2.0, 3.0, 2.0, 4.0]]
    assert coco["info"]["stats"]["boxes_from_segmentation"] == 2
    source["images"][0].pop("width")  # some exporters leave the size out: read from the file
    write_text(tmp_path / "coco.json", json.dumps(source))
    coco = import_coco(tmp_path / "coco.json", tmp_path / "out.json", tmp_path / "pics")
    assert (coco["images"][0]["width"], coco["images"][0]["height"]) == (40, 30)
    assert coco["info"]["stats"]["sizes_from_files"] == 1
    with pytest.raises(DatasetError, match=r"none of the 1 images .* pass the folder .* with --images DIR"):
        import_coco(tmp_path / "coco.json", tmp_path / "out.json")
    source["images"].append({"id": 1, "file_name": "b.jpg", "width": 40, "height": 30})
    write_text(tmp_path / "coco.json", json.dumps(source))
    with pytest.raises(DatasetError, match=r"more than once in 'images' \(id 1: \['a.jpg', 'b.jpg'\]\)"):
        import_coco(tmp_path / "coco.json", tmp_path / "out.json", tmp_path / "pics")


def broken_set(tmp_path: Path, bad_box: bool = True) -> Path:
    """Three images: one fine, one truncated JPEG, one whose size disagrees with the JSON; one bad box."""
    for name in ("good", "cut", "sized"):
        write_image(tmp_path / f"{name}.jpg", truncated=name == "cut")
    images = [
        {"id": i + 1, "file_name": f"{name}.jpg", "width": 40, "height": 30 if name != "sized" else 31}
        for i, name in enumerate(("good", "cut", "sized"))
    ]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 20, 20, 20]},  # reaches past the image: clipped
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5]},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 5]},  # no width: invalid
    ][: 3 if bad_box else 2]
    if bad_box:  # and a listed image whose file is missing, with a box
        images.append({"id": 4, "file_name": "gone.jpg", "width": 40, "height": 30})
        annotations.append({"id": 4, "image_id": 4, "category_id": 1, "bbox": [1, 1, 5, 5]})
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "x"}]}))
    return path


def test_data_check_on_clean_and_broken_sets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_image(tmp_path / "clean" / "a.jpg")
    write_text(tmp_path / "clean" / "a.xml", voc_xml([("x", (1, 1, 10, 10), 0)]))
    import_voc(tmp_path / "clean", tmp_path / "clean.json")
    assert main(["data", "check", str(tmp_path / "clean.json")]) == 0
    assert "OK: no problems found" in capsys.readouterr().out

    report = check_dataset(broken_set(tmp_path))
    assert not report.ok and report.images == 1 and report.clipped == 1
    assert report.problem_counts == {"missing_image": 1, "non_positive_size": 1, "bad_image": 2}
    assert any("image id 4: file" in p and "gone.jpg is missing" in p for p in report.problems)
    assert any("annotation id 3 (image_id 1 on good.jpg," in p for p in report.problems)
    assert any("cut.jpg (image id 2)" in p for p in report.problems)
    assert any("sized.jpg (image id 3) is 40x30" in p for p in report.problems)
    assert main(["data", "check", str(tmp_path / "broken.json")]) == 1
    out = capsys.readouterr().out
    assert "PROBLEMS: 4" in out and "data.on_invalid=skip" in out and "clipped: 1 box(es)" in out
    assert check_dataset(tmp_path / "broken.json", decode=False).problem_counts == {
        "missing_image": 1,
        "non_positive_size": 1,
    }
    with pytest.raises(DatasetError, match=r"1 image file\(s\) listed .* missing .*data.on_invalid=skip"):
        CocoDetection(None, tmp_path / "broken.json")
    (tmp_path / "not.json").write_text("{")
    assert "not valid JSON" in check_dataset(tmp_path / "not.json").fatal


def test_data_check_counts_the_boxes_left_out_with_their_images(tmp_path: Path, capsys) -> None:
    """Import said 36 boxes, check 29 + 4 crowd: the 3 boxes of a missing image vanished from the count unsaid.
    Boxes on missing or unreadable images are now counted in the summary and the warnings."""
    report = check_dataset(broken_set(tmp_path))  # gone.jpg (missing) and cut.jpg (truncated) hold a box each
    assert report.boxes_left_out == 2
    assert main(["data", "check", str(tmp_path / "broken.json")]) == 1
    assert "boxes:  1 (0 crowd/ignored, not counted; 2 on the images left out below)" in capsys.readouterr().out


def test_data_check_names_an_image_file_listed_under_two_ids(tmp_path: Path, capsys) -> None:
    """One file under two image ids (merged exports) was trained on as two images, each with part of its boxes (the
    rest taught as background), and the check said nothing; it now names the file and its ids."""
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "b.jpg")
    images = [{"id": i, "file_name": name, "width": 40, "height": 30} for i, name in enumerate(["a.jpg", "b.jpg"])]
    images.append({"id": 7, "file_name": "./a.jpg", "width": 40, "height": 30})
    annotations = [{"id": 1, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5]} for i in (0, 7)]
    write_text(
        tmp_path / "d.json",
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "x"}]}),
    )
    report = check_dataset(tmp_path / "d.json", decode=False)
    assert report.repeated_files == [f"{tmp_path / 'a.jpg'} (image ids [0, 7])"]
    assert main(["data", "check", str(tmp_path / "d.json")]) == 0  # training does not fail on it
    assert "repeated: 1 image file(s) listed under more than one image id" in capsys.readouterr().out


def test_a_missing_image_named_by_its_absolute_path_is_not_blamed_on_the_images_folder(tmp_path: Path) -> None:
    """An imported JSON names images outside its folder by absolute path; one of them gone, training said it was
    'missing from <the JSON's folder>' and to check data.<split>.images, which plays no part for such a path."""
    write_image(tmp_path / "photos" / "a.jpg")
    entry = {"id": 1, "file_name": str(tmp_path / "photos" / "gone.jpg"), "width": 40, "height": 30}
    categories = [{"id": 1, "name": "x"}]
    write_text(
        tmp_path / "json" / "d.json", json.dumps({"images": [entry], "annotations": [], "categories": categories})
    )
    with pytest.raises(
        DatasetError, match=r"listed in .*d.json do not exist, e.g. .*gone.jpg.*; restore them or remove"
    ):
        CocoDetection(None, tmp_path / "json" / "d.json")


def test_data_check_counts_the_images_without_boxes(tmp_path: Path, capsys) -> None:
    """A YOLO image whose label file was forgotten is imported as an image without boxes, and the check said only
    'images: 2'; it now counts the images without boxes."""
    write_image(tmp_path / "yolo" / "images" / "a.jpg")
    write_image(tmp_path / "yolo" / "images" / "b.jpg")  # its label file forgotten: an image without boxes
    write_text(tmp_path / "yolo" / "labels" / "a.txt", "0 0.5 0.5 0.2 0.4\n")
    write_text(tmp_path / "yolo" / "classes.txt", "car\n")
    import_yolo(tmp_path / "yolo" / "images", tmp_path / "yolo.json", tmp_path / "yolo" / "classes.txt")
    assert main(["data", "check", str(tmp_path / "yolo.json")]) == 0
    assert "images: 2 (all decoded; 1 without boxes)" in capsys.readouterr().out


def test_data_check_notes_exif_orientation(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An image a viewer would turn (EXIF orientation 6) is named: its boxes are read on the stored pixels."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.effect_noise((40, 30), 60).convert("RGB").save(tmp_path / "phone.jpg", exif=exif)
    write_image(tmp_path / "plain.jpg")
    write_text(tmp_path / "boxes.csv", "phone.jpg,1,1,20,20,cell\nplain.jpg,1,1,20,20,cell\n")
    assert main(["data", "import", "csv", str(tmp_path / "boxes.csv"), "--out", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert "EXIF: 1 image(s) carry an orientation tag" in out and "phone.jpg" in out and "plain.jpg'" not in out
    assert check_dataset(tmp_path / "out.json", decode=False).exif_turned == []


def test_unreadable_image_error_or_counted_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = broken_set(tmp_path, bad_box=False)
    with pytest.raises(DatasetError, match=r"cannot read image .*cut.jpg \(image id 2\).*data.on_invalid=skip"):
        CocoDetection(None, path, check_images=True)
    # up front (data.check_images=true): left out, counted, logged; the evaluation ground truth follows
    with caplog.at_level(logging.WARNING, logger="sparse_detector.data.coco"):
        checked = CocoDetection(None, path, on_invalid="skip", check_images=True)
        assert len(checked) == 1 and checked.skipped["bad_image"] == 2
        assert "left out 2 unreadable or mis-sized image(s)" in caplog.text
        assert checked.coco.getImgIds() == [1]
        # while loading (no check up front): a logged skip that the collate drops ...
        lazy = CocoDetection(None, path, on_invalid="skip")
        assert lazy[1] is None and "skipped an unreadable image" in caplog.text
    batch, targets = collate_detection([lazy[0], lazy[1]])
    assert len(batch) == 1 and [int(t["image_id"]) for t in targets] == [1]
    assert collate_detection([lazy[1]]) == (None, [])
    # ... or by default an error naming the file and both options
    with pytest.raises(DatasetError, match=r"cut.jpg .*data.on_invalid=skip .*data.check_images=true"):
        CocoDetection(None, path)[1]


def test_an_image_above_pillows_size_limit_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A genuine 14000 x 14000 drone mosaic was refused with Pillow's 'could be decompression bomb DOS attack' and
    'replace or remove them'; the message now says to tile it (every image is shrunk to data.max_size anyway)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # a 40 x 30 image is then over twice the limit
    write_image(tmp_path / "images" / "mosaic.png")
    write_text(tmp_path / "labels" / "mosaic.txt", "0 0.5 0.5 0.2 0.4\n")
    write_text(tmp_path / "classes.txt", "tree\n")
    with pytest.raises(DatasetError, match=r"mosaic.png: Image size .*tile a genuine one .*data.max_size"):
        import_yolo(tmp_path / "images", tmp_path / "out.json", tmp_path / "classes.txt")


def test_16_bit_grayscale_png_keeps_its_contrast(tmp_path: Path) -> None:
    """A 16-bit PNG (mode I;16) is scaled to 8 bits, not clipped all white by PIL's RGB conversion."""
    ramp = np.tile(np.linspace(0, 65535, 40).astype(np.uint16), (30, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    write_text(tmp_path / "boxes.csv", "deep.png,1,1,20,20,cell\n")
    import_csv(tmp_path / "boxes.csv", tmp_path / "out.json")
    pixels = np.asarray(CocoDetection(None, tmp_path / "out.json").load_image(0))
    assert pixels.shape == (30, 40, 3) and pixels[0, 0].tolist() == [0, 0, 0] and pixels[0, -1].tolist() == [255] * 3
    assert abs(pixels.mean() - 127.5) < 2


@pytest.mark.parametrize(
    ("name", "pixels"),
    [
        ("twelve_bit.png", (RAMP * 4095).astype(np.uint16)),  # was 16/255 at best: divided by 257
        ("unit_float.tif", RAMP.astype(np.float32)),  # was all 0 or 1
        ("big_float.tif", (RAMP * 4095).astype(np.float32)),  # was clipped white above 255
        ("eight_bit_in_int32.tif", (RAMP * 255).astype(np.int32)),  # was black: divided by 257
    ],
)
def test_deep_grayscale_fills_the_8_bit_range(tmp_path: Path, name: str, pixels: np.ndarray) -> None:
    """12-bit data in a 16-bit PNG, float TIFFs and 8-bit values in a 32-bit TIFF all read as a full 0-255 ramp,
    in the dataset and in drawn figures alike."""
    Image.fromarray(pixels).save(tmp_path / name)
    for rgb in (read_rgb(tmp_path / name), draw_boxes(Image.open(tmp_path / name), [], [], [])):
        ramp = np.asarray(rgb)[0, :, 0]
        assert ramp[0] == 0 and ramp[-1] == 255 and abs(int(ramp[20]) - round(255 * RAMP[0, 20])) <= 1, name


def test_data_bit_depth_reads_one_cameras_images_at_one_scale(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """Two 12-bit images of one camera, one dark (brightest 1000): per image the dark one was read from 1023 as
    white, four times brighter than the other; ``data.bit_depth=12`` reads both from 4095, and warns of a pixel
    above it (read as white) instead of dropping its brightness silently."""
    for name, brightest in (("dark.png", 1000), ("bright.png", 4095), ("hot.png", 8000)):
        Image.fromarray((RAMP * brightest).astype(np.uint16)).save(tmp_path / name)
    rows = "".join(f"{name},1,1,20,20,cell\n" for name in ("dark.png", "bright.png", "hot.png"))
    write_text(tmp_path / "boxes.csv", rows)
    import_csv(tmp_path / "boxes.csv", tmp_path / "out.json")
    ends = {}
    for bit_depth in (0, 12):
        config = load_config(None, [f"data.val.annotations={tmp_path / 'out.json'}", f"data.bit_depth={bit_depth}"])
        dataset = build_dataset(config, "val")
        with caplog.at_level(logging.WARNING):
            images = {dataset.image_path(i).name: np.asarray(dataset.load_image(i)) for i in range(len(dataset))}
        ends[bit_depth] = {name: int(pixels[0, -1, 0]) for name, pixels in images.items()}
    assert ends[0] == {"dark.png": 249, "bright.png": 255, "hot.png": 125}  # per image: 1000 of 1023, 8000 of 16383
    assert ends[12] == {"dark.png": 62, "bright.png": 255, "hot.png": 255}  # one scale: 1000 of 4095
    assert caplog.text.count("above data.bit_depth=12's white (4095)") == 1 and "hot.png" in caplog.text
    with pytest.raises(ConfigError, match=r"data.bit_depth must be 0 .* 8 to 32 .*got 7"):
        load_config(None, ["data.bit_depth=7"])


def _png_16_bit_rgb(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit RGB PNG (Pillow writes none): signature, IHDR, one unfiltered IDAT, IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = pixels.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def test_16_bit_colour_that_pillow_reads_dark_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Pillow decodes a 16-bit colour PNG by each value's high byte: a 12-bit camera's colour image read as values
    0-15 of 255, nearly black, and nothing said so. Full-range 16-bit colour reads as it should, without a word."""
    ramp = np.repeat(RAMP[..., None], 3, axis=2)
    _png_16_bit_rgb(tmp_path / "twelve_bit.png", ramp * 4095)
    _png_16_bit_rgb(tmp_path / "full.png", ramp * 65535)
    with caplog.at_level(logging.WARNING):
        dark, full = (np.asarray(read_rgb(tmp_path / name)) for name in ("twelve_bit.png", "full.png"))
    assert dark.max() == 15 and full.max() == 255  # Pillow's 8 bits, as this Pillow decodes them
    assert caplog.text.count("Pillow reads by their high byte") == 1
    assert (
        "twelve_bit.png has 16 bits a colour channel" in caplog.text and "brightest value is 15 of 255" in caplog.text
    )


def test_split_is_seeded_stratified_and_complete(tmp_path: Path) -> None:
    images = [{"id": i, "file_name": f"im/{i}.jpg", "width": 10, "height": 10} for i in range(1, 41)]
    # class 2 is rare (4 images): stratification puts some in every split
    annotations = [
        {"id": i, "image_id": i, "category_id": 2 if i % 10 == 0 else 1, "bbox": [0, 0, 5, 5]} for i in range(1, 41)
    ]
    source = tmp_path / "all.json"
    source.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            }
        )
    )
    paths = split_coco(source, tmp_path / "splits", val=0.25, test=0.25, seed=1)
    splits = {name: load(p) for name, p in paths.items()}
    ids = {name: {i["id"] for i in s["images"]} for name, s in splits.items()}
    assert [len(ids[s]) for s in ("train", "val", "test")] == [20, 10, 10]
    assert set().union(*ids.values()) == set(range(1, 41)) and sum(map(len, ids.values())) == 40
    for data in splits.values():
        assert {a["category_id"] for a in data["annotations"]} == {1, 2}
        assert all(a["image_id"] in {i["id"] for i in data["images"]} for a in data["annotations"])
        assert data["images"][0]["file_name"] == str((tmp_path / "im" / f"{data['images'][0]['id']}.jpg").resolve())
    again = split_coco(source, tmp_path / "again", val=0.25, test=0.25, seed=1)
    assert load(again["val"])["images"] == splits["val"]["images"]
    assert load(split_coco(source, tmp_path / "other", val=0.25, seed=2)["val"])["images"] != splits["val"]["images"]


def test_split_strata_are_the_rarest_class_of_each_image(tmp_path: Path) -> None:
    """Class b is in 5 of 20 images, each beside the common class a: grouped by their rarest class, a fifth of the b
    images (1) goes to val whatever the seed, not whatever share of them a draw among all 20 leaves there."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in range(1, 21)]
    annotations = [{"image_id": i, "category_id": 1, "bbox": [0, 0, 5, 5]} for i in range(1, 21)]
    annotations += [{"image_id": i, "category_id": 2, "bbox": [5, 5, 5, 5]} for i in range(1, 6)]
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    source = tmp_path / "all.json"
    source.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    for seed in range(10):
        val = load(split_coco(source, tmp_path / f"seed{seed}", val=0.2, seed=seed)["val"])
        assert len(val["images"]) == 4 and sum(image["id"] <= 5 for image in val["images"]) == 1, seed


def test_one_image_and_one_box_are_counted_in_the_singular(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sparse_detector.text import counted

    assert [counted(1, "image"), counted(0, "image"), counted(2, "box", "boxes")] == ["1 image", "0 images", "2 boxes"]
    write_image(tmp_path / "VOC" / "JPEGImages" / "a.jpg")
    write_text(tmp_path / "VOC" / "Annotations" / "a.xml", voc_xml([("dog", (1, 1, 10, 20), 0)], "a.jpg"))
    out = tmp_path / "one.json"
    voc = tmp_path / "VOC"
    command = ["data", "import", "voc", "--annotations", str(voc / "Annotations"), "--images", str(voc / "JPEGImages")]
    assert main([*command, "--out", str(out)]) == 0
    assert f"written: {out} (1 image, 1 box)" in capsys.readouterr().out  # was: (1 images, 1 boxes)
    with pytest.raises(DatasetError, match="has 1 image: too few for a split"):
        split_coco(out, tmp_path / "splits", val=0.5)


def test_coco_roboflow_dataset_name_category_is_left_out_and_named(tmp_path: Path, capsys) -> None:
    """A Roboflow COCO export's category 0, named like the dataset (supercategory "none"), used by no box and the
    supercategory of every class, became a trained class with 0 boxes (model.num_classes had to count it). Import
    now leaves it out and says so, data check notes it; an unused class of its own stays, listed with 0 boxes."""
    write_image(tmp_path / "a.jpg")
    names = ["Platelets", "RBC", "WBC"]
    source = {
        "images": [{"id": 0, "file_name": "a.jpg", "width": 40, "height": 30}],
        "annotations": [{"id": 0, "image_id": 0, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}],
        "categories": [
            {"id": 0, "name": "cells-mZkq", "supercategory": "none"},
            *({"id": i, "name": name, "supercategory": "cells-mZkq"} for i, name in enumerate(names, start=1)),
        ],
    }
    write_text(tmp_path / "_annotations.coco.json", json.dumps(source))
    assert main(["data", "check", str(tmp_path / "_annotations.coco.json")]) == 0
    assert (
        "note: category 0 'cells-mZkq' has no boxes and is the supercategory of every other" in capsys.readouterr().out
    )
    out = tmp_path / "out.json"
    assert main(["data", "import", "coco", str(tmp_path / "_annotations.coco.json"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "left out: category 0 'cells-mZkq', not a class" in printed and "  WBC        0" in printed
    assert "category ids renumbered" not in printed and "note: category" not in printed
    assert [(c["id"], c["name"]) for c in json.loads(out.read_text())["categories"]] == [
        (1, "Platelets"),
        (2, "RBC"),
        (3, "WBC"),
    ]
    assert CocoDetection(None, out).num_classes == 3

    source["categories"][2]["supercategory"] = "blood"  # not every class under it: an unused class like any other
    write_text(tmp_path / "in.json", json.dumps(source))
    assert [c["name"] for c in import_coco(tmp_path / "in.json", out)["categories"]] == ["cells-mZkq", *names]


def test_split_names_what_it_cannot_place_and_keeps_boxes_of_unknown_categories(tmp_path: Path, capsys) -> None:
    """`data split` ended in a traceback (TypeError, KeyError) on a category id that is no whole number, an image id
    written as a string among numbers, a missing key or an annotation of no image (which would have gone into no
    split). Now a box of an unknown category goes with its image, ids are sorted as numbers, and the rest is an error
    naming the entry."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in range(1, 11)]
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 5, 5]} for i in range(1, 11)]
    annotations.append({"id": 11, "image_id": 3, "category_id": "abc", "bbox": [0, 0, 5, 5]})
    data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]}
    source = tmp_path / "all.json"
    source.write_text(json.dumps({**data, "images": [*images[:9], {**images[9], "id": "10"}]}))  # sorted with ints
    paths = split_coco(source, tmp_path / "s", val=3)
    assert sorted(a["id"] for path in paths.values() for a in load(path)["annotations"]) == list(range(1, 12))
    broken = {
        "an annotation of no image": (
            {**data, "annotations": [*annotations, {"id": 12, "image_id": 99, "category_id": 1}]},
            r"1 annotation\(s\) name an image id that is not in 'images', so they would go into no split: "
            r"annotation 12 \(image_id 99\); fix their image_id",
        ),
        "no images": ({"annotations": [], "categories": []}, r"the file lacks required key\(s\) \['images'\]"),
        "no category_id": (
            {**data, "annotations": [{"id": 7, "image_id": 1}]},
            r"annotation 7 lacks required key\(s\) \['category_id'\]",
        ),
        "a repeated image id": ({**data, "images": [*images, images[0]]}, "image id 1 appears twice in 'images'"),
        "an image id no number": ({**data, "images": [{"id": "x1", "file_name": "x.jpg"}]}, "image id 'x1' is not"),
    }
    for name, (content, message) in broken.items():
        source.write_text(json.dumps(content))
        assert main(["data", "split", str(source), "--val", "1", "--out-dir", str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err
        assert re.search(f"error: {re.escape(str(source))}: {message}", err), (name, err)
        assert "Traceback" not in err and not (tmp_path / name).exists()


def test_split_sizes_are_fractions_or_counts_and_an_empty_split_is_an_error(tmp_path: Path, capsys) -> None:
    """`data split --val 0` (or a fraction that rounds to 0 images) wrote an empty val.json without a word, and
    --val 50 (a number of images) was refused as 'not a fraction'. Now a whole number >= 1 is a number of images,
    and a split that would be empty (val, a test asked for, or train) is an error saying what to give instead."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in range(1, 11)]
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 5, 5]} for i in range(1, 11)]
    source = tmp_path / "all.json"
    source.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]})
    )
    sizes = {
        name: len(load(path)["images"]) for name, path in split_coco(source, tmp_path / "s", val=3, test=2).items()
    }
    assert sizes == {"train": 5, "val": 3, "test": 2}
    assert len(load(split_coco(source, tmp_path / "s", val=0.3)["val"])["images"]) == 3
    errors = {
        (0, 0): "--val 0 leaves the val split empty; training evaluates on val",
        (0.01, 0): r"--val 0.01 of 10 images is 0 images; .* a number of images \(e.g. --val 1\)",
        (0.2, 0.01): "--test 0.01 of 10 images is 0 images",
        (10, 0): "has 10 images: 10 images for val leave none for train",
        (0.5, 5): "5 images for val and 5 images for test leave none for train",
        (-1, 0): r"--val -1: give a fraction of the images \(between 0 and 1, e.g. 0.2\) or a number of images",
        (2.5, 0): "--val 2.5: give a fraction",
    }
    for (val, test), message in errors.items():
        with pytest.raises(ValueError, match=message):
            split_coco(source, tmp_path / "bad", val=val, test=test)
    assert not (tmp_path / "bad").exists()
    out_dir = str(tmp_path / "cli")
    assert main(["data", "split", str(source), "--val", "0", "--out-dir", out_dir]) == 2
    assert "error: --val 0 leaves the val split empty" in capsys.readouterr().err and not Path(out_dir).exists()
    assert main(["data", "split", str(source), "--val", "2", "--out-dir", out_dir]) == 0
    assert "val: " in capsys.readouterr().out and len(load(Path(out_dir) / "val.json")["images"]) == 2


def test_data_import_says_each_count_of_its_stats_after_the_summary(tmp_path: Path, capsys, monkeypatch) -> None:
    """Every note of `data import` (cli.data.IMPORT_NOTES), in order, worded as before it became a table; a count of
    0 says nothing."""
    import sparse_detector.cli.data as cli_data
    import sparse_detector.data.check as data_check

    counts = dict.fromkeys(
        ["sizes_from_files", "found_by_name", "boxes_from_segmentation", "turned_from_exif", "scaled_to_resized_image"]
        + ["size_differs_from_xml", "images_without_xml", "images_without_row", "images_without_label_file"]
        + ["label_files_without_image"],
        2,
    ) | {"normalised_coordinates": True, "size_differs_from_csv": 0}
    stats = {"images": 1, "annotations": 3, **counts}
    monkeypatch.setattr(cli_data, "_import_to_coco", lambda args: {"info": {"stats": stats}})
    monkeypatch.setattr(data_check, "check_dataset", lambda *a, **k: type("Report", (), {"ok": True, "format": str})())
    out = tmp_path / "all.json"
    assert main(["data", "import", "coco", str(tmp_path / "src.json"), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:-1] == [
        f"written: {out} (1 image, 3 boxes)",
        "sizes from files: 2 image(s) had no width/height",
        "paths: 2 image(s) named by another machine's path (absolute, or in another case), found by name",
        "boxes from segmentation: 2 annotation(s) had no bbox",
        "coordinates: all within [0, 1], read as fractions of each image's width and height (not pixels)",
        "EXIF: 2 images labelled on the turned view (listed above): boxes turned to the stored pixels",
        "sizes: 2 images resized after labelling (listed above): boxes scaled to the image",
        "sizes: 2 image(s) differ from their XML <size> (listed above)",
        "not imported: 2 image(s) without an XML file (listed above)",
        "not imported: 2 image(s) without a CSV row (listed above)",
        "no labels: 2 image(s) without a label file, imported without boxes",
        "not imported: 2 label file(s) without an image (listed above)",
    ]


def _coco_of(**parts: object) -> str:
    """A COCO JSON text of one 40 x 30 image ``a.jpg`` (its file written by the caller), overridden by ``parts``."""
    source = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 1, "name": "x"}],
    }
    return json.dumps({**source, **parts})


def _import_mistake(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """The `data import` arguments of a user mistake ``case`` (its files written under ``tmp_path``) and the message
    expected for it."""
    image = write_image(tmp_path / "images" / "a.jpg")
    images, gone = image.parent, tmp_path / "gone"
    if case.startswith("coco"):
        text = {
            "coco-lists": json.dumps({"images": []}),
            "coco-no-box": _coco_of(annotations=[{"id": 7, "image_id": 1, "category_id": 1}]),
            "coco-no-file-name": _coco_of(images=[{"id": 1, "width": 40, "height": 30}]),
        }.get(case)
        source = write_text(tmp_path / "in.json", text) if text else gone
        message = {
            "coco-missing": f"COCO file {gone} does not exist",
            "coco-lists": f"{source}: lacks the list(s) ['annotations', 'categories']",
            "coco-no-box": f"{source}: annotation 7 has neither a 'bbox' nor a polygon or RLE 'segmentation'",
            "coco-no-file-name": f"{source}: image 1 has no file_name",
        }[case]
        return ["coco", str(source), "--images", str(images)], message
    if case.startswith("csv"):
        text = {"csv-empty-label": "a.jpg,1,1,10,10,\n", "csv-no-rows": ""}.get(case)
        source = write_text(tmp_path / "in.csv", text) if text is not None else gone
        message = {
            "csv-missing": f"CSV file {gone} does not exist",
            "csv-empty-label": f"{source}:1: the label is empty",
            "csv-no-rows": f"{source} holds no rows; expected file,x1,y1,x2,y2,label",
        }[case]
        return ["csv", str(source), "--images", str(images)], message
    if case.startswith("voc"):
        xml = tmp_path / "xml"
        xml.mkdir()
        if case != "voc-no-xml":
            write_text(xml / "a.xml", voc_xml([("x", (1, 1, 10, 10), 0)], "a.jpg"))
        listed = write_text(tmp_path / "list.txt", "a\nb\n")
        argv, message = {
            "voc-annotations-missing": (
                ["--annotations", str(gone), "--images", str(images)],
                f"annotations folder {gone} does not exist",
            ),
            "voc-no-xml": (["--annotations", str(xml)], f"no .xml files in {xml}"),
            "voc-listed-without-xml": (
                ["--annotations", str(xml), "--list", str(listed)],
                f"{listed}: 1 listed image(s) have no XML in {xml}, e.g. ['b.xml']",
            ),
            "voc-images-missing": (
                ["--annotations", str(xml), "--images", str(gone)],
                f"images folder {gone} does not exist",
            ),
        }[case]
        return ["voc", *argv], message
    classes = write_text(tmp_path / "classes.txt", "x\n")
    write_text(images / "a.txt", "x 0.5 0.5 0.2 0.2\n" if case == "yolo-label-not-numbers" else "0 0.5 0.5 0.2 0.2\n")
    bad_yaml = write_text(tmp_path / "data.yaml", "names: [x\n" if case == "yolo-yaml-invalid" else "names: x\n")
    argv, message = {
        "yolo-yaml-invalid": ([str(images), "--classes", str(bad_yaml)], f"{bad_yaml}: not valid YAML"),
        "yolo-names-not-a-list": (
            [str(images), "--classes", str(bad_yaml)],
            f"{bad_yaml}: expected 'names:' as a list or an index -> name mapping of names, got 'x'",
        ),
        "yolo-classes-missing": ([str(images), "--classes", str(gone)], f"class names file {gone} does not exist"),
        "yolo-label-not-numbers": (
            [str(images), "--classes", str(classes)],
            f"{images / 'a.txt'}:1: expected 'class x_center y_center width height'",
        ),
        "yolo-images-missing": ([str(gone), "--classes", str(classes)], f"images folder {gone} does not exist"),
        "yolo-no-images": (
            [str(tmp_path / "xml"), "--classes", str(classes)],
            f"no images ({', '.join(IMAGE_SUFFIXES)}) in {tmp_path / 'xml'} or its subfolders",
        ),
    }[case]
    (tmp_path / "xml").mkdir()
    return ["yolo", *argv], message


@pytest.mark.parametrize(
    "case",
    [
        *("coco-missing", "coco-lists", "coco-no-box", "coco-no-file-name"),
        *("csv-missing", "csv-empty-label", "csv-no-rows"),
        *("voc-annotations-missing", "voc-no-xml", "voc-listed-without-xml", "voc-images-missing"),
        *("yolo-yaml-invalid", "yolo-names-not-a-list", "yolo-classes-missing", "yolo-label-not-numbers"),
        *("yolo-images-missing", "yolo-no-images"),
    ],
)
def test_data_import_mistakes_name_the_file_and_what_is_wrong_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    """Each importer's refusal of a missing, empty or malformed input, through `data import`: exit status 2, one
    line naming the file and the problem, no traceback and no output written."""
    argv, message = _import_mistake(tmp_path, case)
    out = tmp_path / "out.json"
    assert main(["data", "import", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and not out.exists()
