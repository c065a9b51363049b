"""hemocount: complete blood counts from photographs of stained blood smears.

Importing this package has no side effects: torch, ultralytics and OpenCV are
imported only by the functions that need them.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: Canonical detector classes, in the order used by every shipped model.
CELL_CLASSES: tuple[str, ...] = ("RBC", "WBC", "Platelets")

#: WBC subtypes, in the order of the shipped subtype classifier's outputs.
WBC_SUBTYPES: tuple[str, ...] = ("neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil")

RESEARCH_USE = "Research use only, not for diagnosis."

#: Public names imported on first use, so ``import hemocount`` stays light (no torch, no OpenCV).
_LAZY = {"Pipeline": "hemocount.pipeline", "FieldResult": "hemocount.results", "Flag": "hemocount.flags"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hemocount' has no attribute {name!r}")


__all__ = ["CELL_CLASSES", "RESEARCH_USE", "WBC_SUBTYPES", "FieldResult", "Flag", "Pipeline", "__version__"]
