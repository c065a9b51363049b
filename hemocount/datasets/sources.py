"""Loaders for the staged detection datasets: BCCD (+ TXL-PBC re-annotation) and TXL-PBC's PBC part.

The data root comes from an argument or the ``HEMOCOUNT_DATA`` environment
variable; nothing here knows where the data lives on any one machine.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from hemocount.datasets.formats import read_voc, read_yolo
from hemocount.datasets.records import AnnotatedImage, sanitize_boxes
from hemocount.errors import DatasetError

DATA_ENV = "HEMOCOUNT_DATA"
SPLITS = ("train", "val", "test")
#: TXL-PBC's own class order (``data.yaml``), which differs from ours.
TXL_CLASSES = ["WBC", "RBC", "Platelets"]
#: PBC file-name prefixes -> WBC subtype.
PBC_SUBTYPES = {"BA": "basophil", "BNE": "neutrophil", "EO": "eosinophil", "LY": "lymphocyte", "MO": "monocyte"}


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the folder holding ``bccd/``, ``txl_pbc_bccd_subset/`` and ``txl_pbc_pbc/``.

    Raises:
        DatasetError: Neither ``root`` nor ``$HEMOCOUNT_DATA`` names an existing folder.
    """
    value = root if root is not None else os.environ.get(DATA_ENV)
    if not value:
        raise DatasetError(f"no data root: pass --data-root DIR or set {DATA_ENV}")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{path}: data root is not a folder")
    return path


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read image header ({exc})") from None


def _split_ids(bccd: Path, split: str) -> list[str]:
    f = bccd / "BCCD" / "ImageSets" / "Main" / f"{split}.txt"
    if not f.exists():
        raise DatasetError(f"{f}: split file missing")
    return [line.strip() for line in f.read_text().splitlines() if line.strip()]


def _txl_bccd_index(root: Path) -> dict[str, Path]:
    """Map BCCD image id -> TXL-PBC label file for the re-annotated subset."""
    base = root / "txl_pbc_bccd_subset" / "TXL-PBC"
    meta = base / "subset_metadata.csv"
    if not meta.exists():
        return {}
    out: dict[str, Path] = {}
    with meta.open(newline="") as fh:
        for row in csv.DictReader(fh):
            stem = Path(row["New_Image_Name"]).stem
            out[Path(row["Original_Image_Name"]).stem] = base / "labels" / row["Split"] / f"{stem}.txt"
    return out


def load_bccd(
    root: str | os.PathLike[str] | None = None,
    splits: tuple[str, ...] = SPLITS,
    labels: str = "best",
) -> list[AnnotatedImage]:
    """Load BCCD with its official ``ImageSets/Main`` split.

    Args:
        root: Data root (see :func:`data_root`).
        splits: Which official splits to load.
        labels: ``"best"`` uses the TXL-PBC re-annotation for the 160 images it
            covers and the original XML elsewhere; ``"xml"`` uses the XML only;
            ``"txl"`` keeps only the re-annotated images.

    Returns:
        Records in split order, then file order.
    """
    if labels not in ("best", "xml", "txl"):
        raise DatasetError(f"unknown BCCD label choice {labels!r}; valid: best, xml, txl")
    base = data_root(root)
    bccd = base / "bccd"
    txl = _txl_bccd_index(base) if labels != "xml" else {}
    records: list[AnnotatedImage] = []
    for split in splits:
        for image_id in _split_ids(bccd, split):
            img = bccd / "BCCD" / "JPEGImages" / f"{image_id}.jpg"
            xml = bccd / "BCCD" / "Annotations" / f"{image_id}.xml"
            width, height, boxes, names = read_voc(xml)
            if not width or not height:
                width, height = _image_size(img)
            label_source, complete = "bccd_xml", False
            if image_id in txl:
                boxes, names = read_yolo(txl[image_id], TXL_CLASSES, width, height)
                label_source, complete = "txl_pbc", True
            elif labels == "txl":
                continue
            arr, classes, issues = sanitize_boxes(boxes, names, width, height, str(xml))
            records.append(
                AnnotatedImage(image_id, img, width, height, arr, classes, "bccd", split, label_source, complete,
                               issues=issues)
            )
    return records


def load_pbc(root: str | os.PathLike[str] | None = None, splits: tuple[str, ...] = SPLITS) -> list[AnnotatedImage]:
    """Load TXL-PBC's PBC part (500 fields, second lab) with TXL's own split."""
    base = data_root(root) / "txl_pbc_pbc" / "TXL-PBC"
    meta = base / "subset_metadata.csv"
    if not meta.exists():
        raise DatasetError(f"{meta}: PBC metadata missing")
    records: list[AnnotatedImage] = []
    with meta.open(newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: (SPLITS.index(r["Split"]), r["Original_Image_Name"]))
    for row in rows:
        if row["Split"] not in splits:
            continue
        stem = Path(row["New_Image_Name"]).stem
        img = base / "images" / row["Split"] / row["New_Image_Name"]
        width, height = _image_size(img)
        boxes, names = read_yolo(base / "labels" / row["Split"] / f"{stem}.txt", TXL_CLASSES, width, height)
        arr, classes, issues = sanitize_boxes(boxes, names, width, height, str(img))
        original = Path(row["Original_Image_Name"]).stem
        prefix = original.split("_")[0]
        records.append(
            AnnotatedImage(f"pbc_{original}", img, width, height, arr, classes, "pbc", row["Split"], "txl_pbc",
                           True, meta={"subtype": PBC_SUBTYPES.get(prefix, "")}, issues=issues)
        )
    return records


SOURCES = {"bccd": load_bccd, "pbc": load_pbc}


def load_sources(names: list[str], root: str | os.PathLike[str] | None, splits: tuple[str, ...]) -> list[AnnotatedImage]:
    """Load several sources by name (``bccd``, ``pbc``)."""
    out: list[AnnotatedImage] = []
    for name in names:
        if name not in SOURCES:
            raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(SOURCES)}")
        out.extend(SOURCES[name](root, splits=splits))
    return out
