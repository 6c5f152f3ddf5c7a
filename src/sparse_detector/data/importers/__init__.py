"""Importers: common annotation layouts -> one COCO instances JSON (written where ``out_file`` says).

Every importer writes image paths absolute or relative to the output file, so the JSON works from any working
directory, and reports what it kept and dropped in ``info["stats"]``.
"""

from .coco import import_coco
from .common import CocoBuilder, write_coco
from .csvfile import import_csv
from .voc import import_voc, import_voc_root, parse_voc_xml
from .yolo import import_yolo, read_class_names

__all__ = [
    "CocoBuilder",
    "import_coco",
    "import_csv",
    "import_voc",
    "import_voc_root",
    "import_yolo",
    "parse_voc_xml",
    "read_class_names",
    "write_coco",
]
