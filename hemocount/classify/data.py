"""Labelled WBC crops for the two classifier tasks, read from the data root (never committed).

Tasks:
    ``wbc_subtype``: BCCD (``labels.csv`` + the single XML WBC box), Tecom (mask-derived box)
    and TXL-PBC's PBC fields (the WBC box nearest the centre).
    ``all``: ALL-IDB2 crops (box from the Loddo-Putzu whole-cell mask), ALL vs healthy.

Splits are committed files (``splits/<task>.csv``: id, source, label, split) made once
by :func:`make_splits`; training and evaluation only read them.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemocount import WBC_SUBTYPES
from hemocount.datasets.formats import read_voc, read_yolo
from hemocount.datasets.sources import PBC_SUBTYPES, TXL_CLASSES, data_root
from hemocount.errors import DatasetError

SUBTYPES = WBC_SUBTYPES
ALL_CLASSES = ("healthy", "ALL")
TASKS = {"wbc_subtype": SUBTYPES, "all": ALL_CLASSES}
SPLITS_DIR = Path(__file__).resolve().parent / "splits"
TECOM_CLASSES = {"1": "neutrophil", "2": "lymphocyte", "3": "monocyte", "4": "eosinophil", "5": "basophil"}
#: Byte-identical or near-identical images that must stay on one side of a split.
DUPLICATE_GROUPS = {"tecom": [("112", "139"), ("166", "171")], "allidb2": [("Im223_0", "Im257_0")]}


@dataclass
class CellSample:
    """One labelled cell: where its pixels are and its label."""

    id: str
    source: str
    label: str
    path: Path
    box: tuple[float, float, float, float]
    split: str = ""
    #: Cells that are crops of one physical cell (LISC's shifted copies) share a group; "" = its own.
    group: str = ""
    #: Red-cell diameter in pixels of this image when known per image (exported RBC-scaled crops); 0 = its
    #: lab's (``classify/lab_scale.py``).
    rbc_px: float = 0.0


def _read_bgr(path: Path) -> np.ndarray:
    from hemocount.io import read_image

    return read_image(path)


def _mask_box(mask_path: Path, background: str) -> tuple[float, float, float, float]:
    import cv2

    m = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise DatasetError(f"{mask_path}: cannot read mask")
    fg = (m > 0) if background == "black" else (m.reshape(m.shape[0], m.shape[1], -1).min(axis=2) < 250)
    ys, xs = np.nonzero(fg)
    if len(xs) == 0:
        raise DatasetError(f"{mask_path}: empty mask")
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def bccd_cells(root: Path) -> list[CellSample]:
    """BCCD fields with exactly one subtype label and exactly one WBC box."""
    bccd = root / "bccd"
    official = {}
    for split in ("train", "val", "test"):
        for i in (bccd / "BCCD" / "ImageSets" / "Main" / f"{split}.txt").read_text().split():
            official[i] = split
    out = []
    with (bccd / "labels.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            label = (row.get("Category") or "").strip().lower()
            image_id = f"BloodImage_{int(row['Image']):05d}"
            if not label or "," in label or label not in SUBTYPES or image_id not in official:
                continue
            _, _, boxes, names = read_voc(bccd / "BCCD" / "Annotations" / f"{image_id}.xml")
            wbc = [b for b, n in zip(boxes, names) if n == "WBC"]
            if len(wbc) != 1:
                continue
            out.append(CellSample(f"bccd:{image_id}", "bccd", label, bccd / "BCCD" / "JPEGImages" / f"{image_id}.jpg",
                                  tuple(wbc[0]), official[image_id]))  # type: ignore[arg-type]
    return out


def pbc_cells(root: Path) -> list[CellSample]:
    """The centred WBC of each TXL-PBC PBC field, labelled by its PBC file-name prefix."""
    from PIL import Image

    base = root / "txl_pbc_pbc" / "TXL-PBC"
    out = []
    with (base / "subset_metadata.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            name = Path(row["Original_Image_Name"]).stem
            label = PBC_SUBTYPES.get(name.split("_")[0])
            img = base / "images" / row["Split"] / row["New_Image_Name"]
            with Image.open(img) as im:
                w, h = im.size
            boxes, names = read_yolo(base / "labels" / row["Split"] / f"{Path(row['New_Image_Name']).stem}.txt",
                                     TXL_CLASSES, w, h)
            wbc = [b for b, n in zip(boxes, names) if n == "WBC"]
            if not label or not wbc:
                continue
            centre = min(wbc, key=lambda b: ((b[0] + b[2]) / 2 - w / 2) ** 2 + ((b[1] + b[3]) / 2 - h / 2) ** 2)
            out.append(CellSample(f"pbc:{name}", "pbc", label, img, tuple(centre), row["Split"]))  # type: ignore[arg-type]
    return out


def tecom_cells(root: Path) -> list[CellSample]:
    """Tecom's 300 crops; the box is the bounding box of the nucleus+cytoplasm mask."""
    base = root / "tecom_wbc"
    out = []
    with (base / "Class Labels of Dataset 1.csv").open(newline="", encoding="utf-8-sig") as fh:
        for row in csv.reader(fh):
            if not row or not row[0].strip().isdigit():
                continue
            nid = f"{int(row[0]):03d}"
            label = TECOM_CLASSES.get(row[1].strip())
            if label is None:
                continue
            folder = base / "Dataset 1"
            out.append(CellSample(f"tecom:{nid}", "tecom", label, folder / f"{nid}.bmp",
                                  _mask_box(folder / f"{nid}.png", "black")))
    return out


def allidb2_cells(root: Path) -> list[CellSample]:
    """ALL-IDB2's 260 crops; ``_1`` = ALL (lymphoblast), ``_0`` = healthy; box from the whole-cell mask."""
    base = root / "all_idb2"
    out = []
    for img in sorted((base / "images").glob("Im*_*.tif")):
        label = "ALL" if img.stem.endswith("_1") else "healthy"
        out.append(CellSample(f"allidb2:{img.stem}", "allidb2", label, img,
                              _mask_box(base / "masks_loddo_putzu" / img.name, "white")))
    return out


def load_cells(task: str, root: str | None = None, sources: list[str] | tuple[str, ...] | None = None) -> list[CellSample]:
    """All samples of ``task`` with their committed split (samples not in the split file are dropped).

    ``sources=None`` gives exactly the cells of ``splits/<task>.csv`` (what the shipped models were
    trained and tested on). For ``wbc_subtype``, a list of sources (:data:`SUBTYPE_SOURCES`) gives those
    labs' cells of that file plus their rows of ``splits/wbc_sources.csv`` (``pbc_wbc`` crops under
    source ``pbc``, LISC under ``lisc``); see :mod:`hemocount.classify.sources`.
    """
    if sources is not None:
        from hemocount.classify.sources import load_subtype_sources

        if task != "wbc_subtype":
            raise DatasetError(f"--sources/--holdout-source apply to task wbc_subtype, not {task!r}")
        return load_subtype_sources(sources, root)
    if task not in TASKS:
        raise DatasetError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    base = data_root(root)
    try:
        cells = ((bccd_cells(base) + tecom_cells(base) + pbc_cells(base)) if task == "wbc_subtype"
                 else allidb2_cells(base))
    except OSError as exc:
        raise DatasetError(f"{exc.filename or base}: cannot read ({exc.strerror or exc}); "
                           "is the data root complete?") from None
    splits = read_splits(task)
    out = []
    for c in cells:
        if c.id in splits:
            c.split = splits[c.id]
            out.append(c)
    return out


def read_splits(task: str) -> dict[str, str]:
    """id -> split from the committed split file."""
    path = SPLITS_DIR / f"{task}.csv"
    if not path.exists():
        raise DatasetError(f"{path}: split file missing")
    with path.open(newline="") as fh:
        return {r["id"]: r["split"] for r in csv.DictReader(fh)}


def _stratified(cells: list[CellSample], groups: list[tuple[str, ...]], seed: int,
                fractions: tuple[float, float] = (0.6, 0.2)) -> None:
    """Assign train/val/test per label, keeping duplicate groups together."""
    rng = random.Random(seed)
    by_id = {c.id.split(":", 1)[1]: c for c in cells}
    unit_of: dict[str, tuple[str, ...]] = {}
    for g in groups:
        for k in g:
            unit_of[k] = g
    units: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    seen: set[tuple[str, ...]] = set()
    for key, c in sorted(by_id.items()):
        unit = unit_of.get(key, (key,))
        if unit not in seen:
            seen.add(unit)
            units[c.label].append(unit)
    for label, us in sorted(units.items()):
        rng.shuffle(us)
        n = len(us)
        n_train = max(1, round(n * fractions[0]))
        n_val = round(n * fractions[1]) if n >= 3 else 0
        for i, u in enumerate(us):
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            for k in u:
                if k in by_id:
                    by_id[k].split = split


def make_splits(task: str, root: str | None = None, seed: int = 0) -> Path:
    """Write ``splits/<task>.csv`` (run once; the file is then committed and never re-tuned).

    BCCD keeps its official ``ImageSets`` split and PBC keeps TXL-PBC's split, so that
    no detector test field is a classifier training cell; Tecom and ALL-IDB2 get a
    stratified 60/20/20 split with their duplicate pairs on one side.
    """
    base = data_root(root)
    if task == "wbc_subtype":
        cells = bccd_cells(base) + pbc_cells(base)
        tecom = tecom_cells(base)
        _stratified(tecom, DUPLICATE_GROUPS["tecom"], seed)
        cells += tecom
    elif task == "all":
        cells = allidb2_cells(base)
        _stratified(cells, DUPLICATE_GROUPS["allidb2"], seed)
    else:
        raise DatasetError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    SPLITS_DIR.mkdir(parents=True, exist_ok=True)
    path = SPLITS_DIR / f"{task}.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["id", "source", "label", "split"])
        for c in sorted(cells, key=lambda c: c.id):
            w.writerow([c.id, c.source, c.label, c.split])
    return path
