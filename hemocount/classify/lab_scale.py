"""Each crop source's red-cell diameter in pixels (the four subtype labs and ALL-IDB2; ``splits/lab_scale.json``,
made by ``scripts/lab_rbc_scale.py``), for training and evaluating RBC-scaled WBC crops on the crop sets,
which come without red-cell boxes. ``count`` measures a field's own red cells instead (``ScaleInfo.rbc_px``)."""

from __future__ import annotations

import json
from functools import cache

from hemocount.classify.data import SPLITS_DIR
from hemocount.errors import DatasetError

SCALE_FILE = SPLITS_DIR / "lab_scale.json"


@cache
def lab_rbc_px() -> dict[str, float]:
    """Source name -> median red-cell diameter in pixels on that lab's images."""
    if not SCALE_FILE.exists():
        raise DatasetError(f"{SCALE_FILE}: missing (python scripts/lab_rbc_scale.py)")
    return {lab: float(e["rbc_px"]) for lab, e in json.loads(SCALE_FILE.read_text())["labs"].items()}


def rbc_px_of(source: str) -> float:
    """The red-cell diameter of ``source``'s images; a lab never measured is an error, not a guess."""
    table = lab_rbc_px()
    if source not in table:
        raise DatasetError(f"no red-cell scale for source {source!r} (measured: {', '.join(sorted(table))})")
    return table[source]
