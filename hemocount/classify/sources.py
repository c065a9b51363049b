"""WBC-subtype cells of four labs for leave-one-lab-out work: BCCD, Tecom, PBC (TXL-PBC fields and the
``pbc_wbc`` single-cell set: one lab, source ``pbc``) and LISC (``lisc_wbc``).

The cells of ``splits/wbc_subtype.csv`` (BCCD, Tecom, TXL-PBC) keep their rows and splits. The new cells
live in ``splits/wbc_sources.csv``, written once by :func:`make_source_splits` with each cell's box (from
:mod:`hemocount.classify.stain_box`, so loading reads no image):

- ``pbc_wbc``: its own ``labels.csv`` split (560/120/120 per class).
- ``lisc_wbc``: 3-22 shifted crops per physical cell, so the split is by its ``group`` column only,
  60/20/20 of the groups of each class (seed 0): no group is on two sides.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from hemocount.classify.data import SPLITS_DIR, SUBTYPES, CellSample, _stratified, load_cells
from hemocount.datasets.sources import data_root
from hemocount.errors import DatasetError

log = logging.getLogger("hemocount")

#: The labs of the subtype task (``pbc`` = TXL-PBC fields + ``pbc_wbc`` crops: same lab, scanner, stain).
SUBTYPE_SOURCES = ("bccd", "tecom", "pbc", "lisc")
SOURCES_FILE = SPLITS_DIR / "wbc_sources.csv"
FIELDS = ("id", "source", "label", "split", "group", "file", "x1", "y1", "x2", "y2")


def _stain_box(path: Path) -> tuple[tuple[float, float, float, float], bool]:
    from hemocount.classify.stain_box import central_cell_box
    from hemocount.io import read_image

    bgr = read_image(path)
    valid = bgr.max(axis=2) > 0  # LISC crops near a border are padded with black
    box, found = central_cell_box(bgr[:, :, ::-1], valid)
    if not found:
        log.warning("%s: no stained cell found; central fallback box", path)
    return box, found


def _csv_cells(base: Path, with_boxes: bool,
               make: Callable[[dict[str, str], Path, tuple[float, float, float, float]], CellSample]) -> list[CellSample]:
    """One cell per row of ``base/labels.csv``, its box found from the stain (or zeros)."""
    out = []
    with (base / "labels.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            path = base / row["file"]
            out.append(make(row, path, _stain_box(path)[0] if with_boxes else (0.0, 0.0, 0.0, 0.0)))
    return out


def pbc_wbc_cells(root: Path, with_boxes: bool = True) -> list[CellSample]:
    """``pbc_wbc``'s single-cell images with their own split; the box is found from the stain."""
    return _csv_cells(root / "pbc_wbc", with_boxes, lambda r, path, box: CellSample(
        f"pbcwbc:{Path(r['file']).stem}", "pbc", r["class"], path, box, r["split"]))


def lisc_cells(root: Path, with_boxes: bool = True) -> list[CellSample]:
    """``lisc_wbc``'s crops with their ``group`` (one physical cell); no split yet."""
    return _csv_cells(root / "lisc_wbc", with_boxes, lambda r, path, box: CellSample(
        f"lisc:{r['class']}/{Path(r['file']).stem}", "lisc", r["class"], path, box, group=r["group"]))


def split_by_group(cells: list[CellSample], seed: int = 0) -> None:
    """Assign train/val/test 60/20/20 per class over whole groups (a group never spans two splits)."""
    members: dict[str, list[str]] = defaultdict(list)
    for c in cells:
        members[c.group or c.id].append(c.id.split(":", 1)[1])
    # One representative per group carries the label; _stratified then moves whole groups.
    reps = {g: next(c for c in cells if (c.group or c.id) == g) for g in members}
    units = [CellSample(f"g:{g}", c.source, c.label, c.path, c.box) for g, c in sorted(reps.items())]
    _stratified(units, [], seed)
    split_of = {u.id[2:]: u.split for u in units}
    for c in cells:
        c.split = split_of[c.group or c.id]


def make_source_splits(root: str | None = None, seed: int = 0, path: Path = SOURCES_FILE) -> Path:
    """Write ``splits/wbc_sources.csv`` (run once; committed, never re-tuned). Reads every image once."""
    base = data_root(root)
    cells = pbc_wbc_cells(base)
    lisc = lisc_cells(base)
    split_by_group(lisc, seed)
    cells += lisc
    write_source_rows(cells, base, path)
    return path


def write_source_rows(cells: list[CellSample], base: Path, path: Path) -> None:
    """Write cells (with boxes) as rows of a source split file; ``file`` is relative to ``base``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(FIELDS)
        for c in sorted(cells, key=lambda c: c.id):
            w.writerow([c.id, c.source, c.label, c.split, c.group, c.path.relative_to(base).as_posix(),
                        *(f"{v:.1f}" for v in c.box)])


def read_source_rows(root: str | None = None, path: Path = SOURCES_FILE) -> list[CellSample]:
    """Cells of the committed source split file, paths resolved under the data root (no image read)."""
    if not path.exists():
        raise DatasetError(f"{path}: split file missing (hemocount.classify.sources.make_source_splits)")
    base = data_root(root)
    out = []
    with path.open(newline="") as fh:
        for r in csv.DictReader(fh):
            box = (float(r["x1"]), float(r["y1"]), float(r["x2"]), float(r["y2"]))
            out.append(CellSample(r["id"], r["source"], r["label"], base / r["file"], box, r["split"], r["group"]))
    return out


def load_subtype_sources(sources: list[str] | tuple[str, ...], root: str | None = None) -> list[CellSample]:
    """Subtype cells of ``sources``: committed ``wbc_subtype.csv`` rows plus ``wbc_sources.csv`` rows."""
    unknown = sorted(set(sources) - set(SUBTYPE_SOURCES))
    if unknown:
        raise DatasetError(f"unknown source(s) {', '.join(unknown)}; valid: {', '.join(SUBTYPE_SOURCES)}")
    cells = [c for c in load_cells("wbc_subtype", root) if c.source in sources]
    cells += [c for c in read_source_rows(root) if c.source in sources]
    bad = sorted({c.label for c in cells} - set(SUBTYPES))
    if bad:
        raise DatasetError(f"unexpected subtype label(s): {', '.join(bad)}")
    return cells


def training_sources(holdout: str) -> list[str]:
    """The labs a leave-one-lab-out fold trains on: every subtype source except ``holdout``."""
    if holdout not in SUBTYPE_SOURCES:
        raise DatasetError(f"unknown holdout source {holdout!r}; valid: {', '.join(SUBTYPE_SOURCES)}")
    return [s for s in SUBTYPE_SOURCES if s != holdout]


def distinct_cells(cells: list[CellSample]) -> dict[str, int]:
    """Distinct physical cells per label (LISC crops of one group count once)."""
    seen: dict[str, set[str]] = defaultdict(set)
    for c in cells:
        seen[c.label].add(c.group or c.id)
    return {k: len(v) for k, v in seen.items()}


def all_task_cells(root: str | None = None, negatives: str = "all-labs",
                   exclude: tuple[str, ...] = ()) -> list[CellSample]:
    """ALL-vs-healthy cells: ALL-IDB2 (blasts and its healthy cells) plus, with ``negatives="all-labs"``,
    every subtype lab's WBCs as ``healthy`` (same splits), except the labs in ``exclude``."""
    from dataclasses import replace

    cells = load_cells("all", root)
    if negatives == "allidb2":
        return cells
    if negatives != "all-labs":
        raise DatasetError(f"unknown negatives {negatives!r}; valid: allidb2, all-labs")
    labs = [s for s in SUBTYPE_SOURCES if s not in exclude]
    return cells + [replace(c, label="healthy") for c in load_subtype_sources(labs, root)]


def classifier_training_cells(task: str, root: str | None = None, *, holdout: str | None = None,
                              sources: str | None = None, negatives: str = "allidb2") -> list[CellSample]:
    """The cells ``hemocount train classify`` trains and selects on, from its options.

    Args:
        task: ``wbc_subtype`` or ``all``.
        root: Data root.
        holdout: the lab left out (LOLO); wbc_subtype: its cells are dropped entirely; all: its healthy
            WBCs are not negatives.
        sources: wbc_subtype: comma-separated labs (default: the committed ``wbc_subtype.csv`` only).
        negatives: all: ``allidb2`` (its own healthy cells) or ``all-labs`` (every lab's WBCs too).
    """
    if task == "all":
        if sources or (holdout and negatives != "all-labs"):
            raise DatasetError("task all: --sources does not apply; --holdout-source needs --negatives all-labs")
        # LOLO over healthy labs: that lab's WBCs are left out of the negatives.
        return all_task_cells(root, negatives, exclude=(holdout,) if holdout else ())
    if holdout:
        return load_cells(task, root, sources=training_sources(holdout))
    if sources:
        return load_cells(task, root, sources=[s.strip() for s in sources.split(",") if s.strip()])
    return load_cells(task, root)
