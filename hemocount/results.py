"""Per-field results (of a library call or a count run), and their (de)serialisation for resume."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import supervision as sv

from hemocount import CELL_CLASSES
from hemocount import WBC_SUBTYPES as SUBTYPES
from hemocount.domain import FEATURES as STAIN_FEATURES
from hemocount.flags import Flag, flags_from_json, flags_to_json
from hemocount.scale import ScaleInfo


@dataclass
class FieldResult:
    """What hemocount learned about one field (one input image).

    Attributes:
        index: Position in the sorted input list (stable image id is ``index + 1``).
        path: The input file.
        name: Display/relative name used in outputs (unique within a run).
        status: ``"ok"`` or ``"skipped"``.
        error: One-line reason when skipped.
        width: Image width (0 if unreadable).
        height: Image height (0 if unreadable).
        detections: Cells found (empty when skipped).
        cap_reached: True when the detector returned ``max_det`` boxes (counts may be low).
        seconds: Wall time spent on this image.
        slide: The slide this field belongs to.
        quality: Image-quality measures (see :func:`hemocount.qc.image_quality`).
        flags: QC flags of this field.
        tiles: Number of tiles it was detected on (0 = whole image at once).
        scale: The red-cell scale estimate and what normalisation did (see :mod:`hemocount.scale`).
        image: The BGR image, kept only by library calls (``Pipeline(...)``) so :meth:`annotate` can
            draw it; runs drop it to keep memory flat.
    """

    index: int
    path: Path
    name: str
    status: str = "ok"
    error: str = ""
    width: int = 0
    height: int = 0
    detections: sv.Detections = field(default_factory=sv.Detections.empty)
    cap_reached: bool = False
    seconds: float = 0.0
    slide: str = ""
    quality: dict[str, float] = field(default_factory=dict)
    flags: list[Flag] = field(default_factory=list)
    tiles: int = 0
    scale: ScaleInfo = field(default_factory=ScaleInfo)
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    def annotate(self, image: np.ndarray | None = None) -> np.ndarray:
        """The field with its boxes and labels drawn (BGR), as in ``annotated/`` of a run."""
        from hemocount.sinks import annotate

        img = image if image is not None else self.image
        if img is None:
            raise ValueError(f"{self.name}: no image kept with this result; pass it: result.annotate(image)")
        return annotate(img, self)

    def counts(self) -> dict[str, int]:
        """Cells per class."""
        names = self.detections.data.get("class_name", np.array([]))
        return {c: int(np.sum(names == c)) for c in CELL_CLASSES}

    def subtype_counts(self) -> dict[str, int]:
        """WBCs per subtype, plus ``uncertain`` (below the subtype probability threshold)."""
        sub = self.detections.data.get("subtype", np.array([]))
        return {c: int(np.sum(sub == c)) for c in (*SUBTYPES, "uncertain")}

    def all_probs(self) -> np.ndarray:
        """ALL probabilities of the classified WBCs."""
        p = self.detections.data.get("all_prob", np.array([], np.float32))
        return p[~np.isnan(p)]

    def familiarity_scores(self, exclude_all_at: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Feature distances, top subtype probabilities and crop colours ``(N, 9)`` of the WBCs scored against
        the subtype model's training labs (:mod:`hemocount.classify.familiarity`; empty if the model carries
        no reference; colour rows NaN if its reference has no colour test).

        Args:
            exclude_all_at: Leave out WBCs with ALL probability at or above this: blasts are unlike every
                healthy training cell, and must not make their own slide look like an unfamiliar lab.
        """
        d = self.detections.data
        dist = d.get("unfamiliarity", np.array([], np.float32))
        keep = ~np.isnan(dist)
        if exclude_all_at is not None and "all_prob" in d:
            keep &= ~(d["all_prob"] >= exclude_all_at)  # NaN (not scored by the ALL model) is kept
        top = d.get("subtype_prob", np.full(len(dist), np.nan, np.float32))
        colour = d.get("wbc_stain", np.full((len(dist), len(STAIN_FEATURES)), np.nan, np.float32))
        return dist[keep], top[keep], colour[keep]

    def to_json(self) -> dict[str, Any]:
        """Serialise (for the resume journal)."""
        d = self.detections
        return {
            "index": self.index, "path": str(self.path), "name": self.name, "status": self.status,
            "error": self.error, "width": self.width, "height": self.height, "cap_reached": self.cap_reached,
            "seconds": self.seconds, "slide": self.slide, "quality": self.quality, "flags": flags_to_json(self.flags),
            "tiles": self.tiles, "scale": self.scale.to_json(), "xyxy": d.xyxy.tolist(),
            "confidence": (d.confidence if d.confidence is not None else np.zeros(len(d))).tolist(),
            "class_id": (d.class_id if d.class_id is not None else np.zeros(len(d), int)).tolist(),
            "subtype": [str(x) for x in d.data.get("subtype", [""] * len(d))],
            "subtype_prob": [None if np.isnan(x) else float(x) for x in d.data.get("subtype_prob", [np.nan] * len(d))],
            "all_prob": [None if np.isnan(x) else float(x) for x in d.data.get("all_prob", [np.nan] * len(d))],
            "unfamiliarity": [None if np.isnan(x) else float(x)
                              for x in d.data.get("unfamiliarity", [np.nan] * len(d))],
            "wbc_stain": [None if np.isnan(v).any() else [round(float(x), 2) for x in v]
                          for v in d.data.get("wbc_stain", np.full((len(d), len(STAIN_FEATURES)), np.nan))],
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> FieldResult:
        """Inverse of :meth:`to_json`."""
        ids = np.asarray(obj["class_id"], dtype=int)
        dets = sv.Detections(
            xyxy=np.asarray(obj["xyxy"], dtype=np.float32).reshape(-1, 4),
            confidence=np.asarray(obj["confidence"], dtype=np.float32),
            class_id=ids,
            data={"class_name": np.array([CELL_CLASSES[i] for i in ids], dtype=str),
                  "subtype": np.array(obj.get("subtype", [""] * len(ids)), dtype=str),
                  "subtype_prob": np.array([np.nan if v is None else v for v in obj.get("subtype_prob", [None] * len(ids))],
                                           dtype=np.float32),
                  "all_prob": np.array([np.nan if v is None else v for v in obj.get("all_prob", [None] * len(ids))],
                                       dtype=np.float32),
                  "unfamiliarity": np.array([np.nan if v is None else v
                                             for v in obj.get("unfamiliarity", [None] * len(ids))], dtype=np.float32),
                  "wbc_stain": np.array([[np.nan] * len(STAIN_FEATURES) if v is None else v
                                         for v in obj.get("wbc_stain", [None] * len(ids))],
                                        dtype=np.float32).reshape(len(ids), len(STAIN_FEATURES))},
        )
        return cls(index=obj["index"], path=Path(obj["path"]), name=obj["name"], status=obj["status"],
                   error=obj["error"], width=obj["width"], height=obj["height"], detections=dets,
                   cap_reached=obj["cap_reached"], seconds=obj["seconds"], slide=obj.get("slide", ""),
                   quality=obj.get("quality", {}), flags=flags_from_json(obj.get("flags")), tiles=obj.get("tiles", 0),
                   scale=ScaleInfo.from_json(obj.get("scale")))


#: The name runs used before the library API; the same class.
ImageResult = FieldResult
