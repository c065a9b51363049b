"""Does a slide look like the labs the detector was trained on (BCCD, PBC)? (QC flag ``unfamiliar_lab``)

Each field is described by its stain: the CIE Lab colour of its background (plasma), of its stained
pixels (cells) and of its darkest pixels (nuclei, platelets) — nine numbers measured on a thumbnail
with the QC measures, whatever the detector found. Each training lab is a Gaussian in that space (mean
and covariance of its *train* fields); a slide's score is the Mahalanobis distance of its fields' mean
to the nearest lab. The threshold is set on the training labs' *validation* fields: 1.25 x the largest
single-field distance there (loose images are one-field slides; a slide's mean over more fields is
steadier, so larger slides are flagged less often by chance). ``benchmarks/domain_shift.py`` fits the reference
(``hemocount/stain_reference.json``) and measures the flag on labs the models never saw.

What it cannot tell: a lab whose stain happens to look like BCCD's or PBC's but whose cells differ (a
different magnification is caught by the scale checks instead), and whether the models would in fact
do well there — it says "validate first", not "wrong".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Names of the stain features, in order (keys of a field's ``quality``).
FEATURES = ("bg_L", "bg_a", "bg_b", "cell_L", "cell_a", "cell_b", "dark_L", "dark_a", "dark_b")
REFERENCE = Path(__file__).resolve().parent / "stain_reference.json"


def stain_features(image_bgr: np.ndarray) -> dict[str, float]:
    """The nine stain features of a field (8-bit OpenCV Lab, on a thumbnail)."""
    import cv2

    from hemocount.qc import stained_mask, thumbnail

    t, _ = thumbnail(image_bgr)
    lab = cv2.cvtColor(np.ascontiguousarray(t), cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float64)
    cells = stained_mask(image_bgr).reshape(-1)
    g = t[..., 1].reshape(-1)
    dark = g <= np.percentile(g, 3)
    parts = [~cells if (~cells).any() else np.ones_like(cells), cells if cells.any() else np.ones_like(cells), dark]
    values = np.concatenate([lab[m].mean(axis=0) for m in parts])
    return {k: round(float(v), 2) for k, v in zip(FEATURES, values)}


@dataclass
class StainReference:
    """Per training lab, the mean and inverse covariance of its fields' stain features, and the threshold."""

    labs: dict[str, tuple[np.ndarray, np.ndarray]]
    threshold: float
    chosen_on: str = ""

    @classmethod
    def fit(cls, fields: dict[str, np.ndarray], shrink: float = 0.05) -> StainReference:
        """Gaussians of each lab's feature rows (``n x 9``), the covariance shrunk towards its diagonal."""
        labs = {}
        for lab, x in fields.items():
            cov = np.cov(x, rowvar=False)
            cov = (1 - shrink) * cov + shrink * np.diag(np.diag(cov)) + 1e-3 * np.eye(len(FEATURES))
            labs[lab] = (x.mean(axis=0), np.linalg.inv(cov))
        return cls(labs, float("inf"))

    def distance(self, features: np.ndarray) -> float:
        """Mahalanobis distance of the mean of ``features`` (``n x 9`` or ``9``) to the nearest lab."""
        f = np.atleast_2d(np.asarray(features, dtype=float)).mean(axis=0)
        return float(min(np.sqrt((f - m) @ inv @ (f - m)) for m, inv in self.labs.values()))

    def evaluate(self, features: np.ndarray) -> dict[str, Any]:
        """Score and verdict for a slide's fields."""
        d = self.distance(features)
        return {"distance": round(d, 2), "threshold": round(self.threshold, 2), "flagged": d > self.threshold}

    def to_json(self) -> dict[str, Any]:
        """Plain dict (the reference file)."""
        return {"features": list(FEATURES), "threshold": self.threshold, "chosen_on": self.chosen_on,
                "labs": {k: {"mean": m.round(4).tolist(), "inv_cov": inv.round(6).tolist()}
                         for k, (m, inv) in self.labs.items()}}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> StainReference:
        """Inverse of :meth:`to_json`."""
        labs = {k: (np.array(v["mean"]), np.array(v["inv_cov"])) for k, v in obj["labs"].items()}
        return cls(labs, float(obj["threshold"]), obj.get("chosen_on", ""))

    @classmethod
    def load(cls, path: Path = REFERENCE) -> StainReference | None:
        """The shipped reference (None, with a warning, if the installation lacks it: no unfamiliar_lab flag).

        Raises:
            HemocountError: The file is there but unreadable or malformed.
        """
        if not path.exists():
            import logging

            logging.getLogger("hemocount").warning("%s missing: the unfamiliar_lab flag is off", path)
            return None
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            from hemocount.errors import HemocountError

            raise HemocountError(f"{path}: cannot read the stain reference ({exc})") from None


def field_vector(quality: dict[str, float]) -> np.ndarray | None:
    """A field's stain features from its stored quality measures (None for results without them)."""
    if not all(k in quality for k in FEATURES):
        return None
    return np.array([quality[k] for k in FEATURES], dtype=float)
