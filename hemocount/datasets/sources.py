"""Loaders for the staged detection datasets: BCCD (+ TXL-PBC re-annotation) and TXL-PBC's PBC part.

The data root comes from an argument or the ``HEMOCOUNT_DATA`` environment
variable; nothing here knows where the data lives on any one machine.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # size and EXIF warnings would print on stderr
            with Image.open(path) as im:
                return im.size
    # ImportError: ultralytics' Image.open hook tries an optional HEIF plugin on unknown files.
    except (OSError, ImportError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: cannot read image header ({type(exc).__name__})") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _metadata(path: Path) -> list[dict[str, str]]:
    """Rows of a TXL-PBC ``subset_metadata.csv``, checked for the columns and split names used here."""
    rows = list(csv.DictReader(io.StringIO(_read_text(path))))
    need = ("Original_Image_Name", "New_Image_Name", "Split")
    missing = [c for c in need if rows and c not in rows[0]] or ([] if rows else list(need))
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}")
    for lineno, row in enumerate(rows, 2):
        if any(row.get(c) is None for c in need):
            raise DatasetError(f"{path}:{lineno}: row has too few fields")
        if row["Split"] not in SPLITS:
            raise DatasetError(f"{path}:{lineno}: unknown split {row['Split']!r}; valid: {', '.join(SPLITS)}")
    return rows


def _split_ids(bccd: Path, split: str) -> list[str]:
    f = bccd / "BCCD" / "ImageSets" / "Main" / f"{split}.txt"
    if not f.exists():
        raise DatasetError(f"{f}: split file missing")
    return [line.strip() for line in _read_text(f).splitlines() if line.strip()]


def _txl_bccd_index(root: Path) -> dict[str, Path]:
    """Map BCCD image id -> TXL-PBC label file for the re-annotated subset."""
    base = root / "txl_pbc_bccd_subset" / "TXL-PBC"
    meta = base / "subset_metadata.csv"
    if not meta.exists():
        return {}
    out: dict[str, Path] = {}
    for row in _metadata(meta):
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
    rows = sorted(_metadata(meta), key=lambda r: (SPLITS.index(r["Split"]), r["Original_Image_Name"]))
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


def load_bccd_complete(
    root: str | os.PathLike[str] | None = None, splits: tuple[str, ...] = SPLITS
) -> list[AnnotatedImage]:
    """BCCD restricted to the images with complete (TXL-PBC) labels.

    Why a training source of its own: BCCD's original XML boxes about 11 red cells per image where the
    TXL-PBC re-annotation of the same kind of field boxes 20 (292 train+val images), mostly leaving clumped
    cells unboxed. Tried as the BCCD part of training (robust recipe, 60 epochs): worse than all of BCCD on
    every measure (BCCD val RBC recall 0.82 vs 0.91, no platelets learnt; README, leave-one-lab-out).
    """
    return load_bccd(root, splits=splits, labels="txl")


SOURCES = {"bccd": load_bccd, "bccd_complete": load_bccd_complete, "pbc": load_pbc}


def load_sources(names: list[str], root: str | os.PathLike[str] | None, splits: tuple[str, ...]) -> list[AnnotatedImage]:
    """Load several sources by name (``bccd``, ``bccd_complete``, ``pbc``)."""
    out: list[AnnotatedImage] = []
    for name in names:
        if name not in SOURCES:
            raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(SOURCES)}")
        out.extend(SOURCES[name](root, splits=splits))
    return out
