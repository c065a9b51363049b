"""Cells per microlitre from counts, only with a user-supplied calibration.

Two documented estimators, both printed with their formula and inputs wherever a value appears:

* field factors (the manual smear estimate): ``cells/uL = mean cells per field x factor``, e.g. a WBC
  factor per high-power (40x) field or a platelet factor per oil-immersion (100x) field. Each input
  image is taken to be one such field.
* geometry: ``cells/uL = count / (area_px x (um_per_px)^2 x depth_um) x 1e9``, where ``depth_um`` is the
  effective film depth (volume of blood per unit of film area) that the user calibrated against an analyser.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hemocount import CELL_CLASSES
from hemocount.config_files import load_mapping
from hemocount.errors import HemocountError

UL_IN_UM3 = 1e9


@dataclass
class Calibration:
    """User calibration; every number must be positive when given."""

    wbc_factor: float | None = None
    wbc_field: str = "high-power field (40x)"
    platelet_factor: float | None = None
    platelet_field: str = "oil-immersion field (100x)"
    um_per_px: float | None = None
    depth_um: float | None = None
    source: str = ""

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a JSON/TOML calibration file (keys are this dataclass's fields).

        Raises:
            HemocountError: Unknown keys, non-positive numbers, or geometry without ``depth_um``.
        """
        data = load_mapping(path, "calibration")
        names = {f.name for f in fields(cls)} - {"source"}
        unknown = set(data) - names
        if unknown:
            raise HemocountError(f"{path}: unknown calibration key(s) {sorted(unknown)}; valid: {', '.join(sorted(names))}")
        cal = cls(**data, source=str(path))
        for key in ("wbc_factor", "platelet_factor", "um_per_px", "depth_um"):
            v = getattr(cal, key)
            if v is not None and (not isinstance(v, int | float) or isinstance(v, bool) or v <= 0):
                raise HemocountError(f"{path}: calibration {key} must be a positive number (got {v!r})")
        if (cal.um_per_px is None) != (cal.depth_um is None):
            raise HemocountError(f"{path}: the geometry calibration needs both um_per_px and depth_um")
        if cal.wbc_factor is None and cal.platelet_factor is None and cal.um_per_px is None:
            raise HemocountError(f"{path}: calibration gives no factor and no geometry; nothing to estimate")
        return cal

    def estimates(self, *, n_fields: int, counts: dict[str, int], area_px: float) -> list[dict[str, Any]]:
        """Estimates for one slide, each with its formula and inputs.

        Args:
            n_fields: Counted images of the slide.
            counts: Cells per class over those images.
            area_px: Total counted image area in pixels.
        """
        out: list[dict[str, Any]] = []
        if n_fields <= 0:
            return out
        factors = {"WBC": (self.wbc_factor, self.wbc_field), "Platelets": (self.platelet_factor, self.platelet_field)}
        for cls in CELL_CLASSES:
            factor, field_kind = factors.get(cls, (None, ""))
            if factor is not None:
                mean = counts[cls] / n_fields
                out.append({"quantity": cls, "value": round(mean * factor, 1), "unit": "cells/uL",
                            "formula": f"mean {cls} per {field_kind} x factor",
                            "inputs": {"fields": n_fields, f"{cls}_counted": counts[cls],
                                       "mean_per_field": round(mean, 3), "factor": factor}})
            elif self.um_per_px is not None and self.depth_um is not None and area_px > 0:
                volume_um3 = area_px * self.um_per_px ** 2 * self.depth_um
                out.append({"quantity": cls, "value": round(counts[cls] / volume_um3 * UL_IN_UM3, 1),
                            "unit": "cells/uL",
                            "formula": "count / (area_px x um_per_px^2 x depth_um) x 1e9 um^3/uL",
                            "inputs": {f"{cls}_counted": counts[cls], "area_px": area_px,
                                       "um_per_px": self.um_per_px, "depth_um": self.depth_um}})
        return out

    def to_json(self) -> dict[str, Any]:
        """Plain dict for the run record."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
