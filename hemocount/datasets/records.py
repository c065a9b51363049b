"""The annotated-image record every dataset reader returns, and its validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemocount import CELL_CLASSES

#: Spellings seen in public BCCD copies, mapped to canonical class names.
CLASS_ALIASES: dict[str, str] = {
    "rbc": "RBC",
    "wbc": "WBC",
    "platelets": "Platelets",
    "platelet": "Platelets",
    "platetlets": "Platelets",
    "platetets": "Platelets",
    "platlets": "Platelets",
}


def canonical_class(name: str) -> str | None:
    """Return the canonical class name for ``name`` or None if unknown."""
    return CLASS_ALIASES.get(name.strip().lower())


@dataclass
class AnnotatedImage:
    """One image with its boxes.

    Attributes:
        image_id: Stable id (file stem for BCCD, original name where known).
        path: Image file.
        width: Image width in pixels.
        height: Image height in pixels.
        boxes: ``(N, 4)`` float array, xyxy in pixels.
        classes: Class names, one per box, canonical (see ``CELL_CLASSES``).
        source: Dataset name, e.g. ``"bccd"`` or ``"pbc"``.
        split: ``train``, ``val`` or ``test``.
        label_source: Where the boxes came from, e.g. ``"bccd_xml"`` or ``"txl_pbc"``.
        complete: True when every cell is boxed (usable for counting error).
        meta: Extra per-image facts (e.g. WBC subtype).
        issues: Problems found while reading (dropped or clipped boxes).
    """

    image_id: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    classes: list[str]
    source: str
    split: str
    label_source: str
    complete: bool = False
    meta: dict[str, str] = field(default_factory=dict)
    issues: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Number of boxes per canonical class."""
        return {c: sum(1 for k in self.classes if k == c) for c in CELL_CLASSES}


def sanitize_boxes(
    boxes: list[tuple[float, float, float, float]],
    names: list[str],
    width: int,
    height: int,
    where: str,
) -> tuple[np.ndarray, list[str], list[str]]:
    """Clip boxes to the image, drop degenerate ones and unknown classes.

    Args:
        boxes: xyxy boxes in pixels.
        names: Raw class names, one per box.
        width: Image width.
        height: Image height.
        where: File name used in the issue messages.

    Returns:
        ``(boxes, classes, issues)`` with only valid, clipped boxes kept.
    """
    kept: list[tuple[float, float, float, float]] = []
    classes: list[str] = []
    issues: list[str] = []
    for i, (box, raw) in enumerate(zip(boxes, names)):
        cls = canonical_class(raw)
        if cls is None:
            issues.append(f"{where}: box {i}: unknown class {raw!r}, dropped")
            continue
        x1, y1, x2, y2 = box
        if not all(np.isfinite(v) for v in box):
            issues.append(f"{where}: box {i}: non-finite coordinates, dropped")
            continue
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
        # Normalised YOLO coordinates overshoot by rounding; only report real overshoot.
        if max(abs(cx1 - x1), abs(cy1 - y1), abs(cx2 - x2), abs(cy2 - y2)) > 1.0:
            issues.append(f"{where}: box {i}: outside the {width}x{height} image, clipped")
        if cx2 - cx1 < 1.0 or cy2 - cy1 < 1.0:
            issues.append(f"{where}: box {i}: zero-size after clipping, dropped")
            continue
        kept.append((cx1, cy1, cx2, cy2))
        classes.append(cls)
    arr = np.asarray(kept, dtype=np.float64).reshape(-1, 4)
    return arr, classes, issues
