"""Classical image-processing baseline (``--detector classical``): OpenCV only, no learned weights.

Per field: flat-field correction against a background estimated by morphological closing;
a *stain* index (blue minus green of the corrected image) marks the violet nuclei of leukocytes
and platelets, a *density* index (how much green the cells absorb) marks every cell. Large stain
blobs, merged across nucleus lobes, are WBCs (box grown to the cell around the nucleus); small ones
are platelets. What remains of the density mask is RBCs, split where they touch by a distance
transform and a marker watershed. Each box gets a confidence from its shape and colour evidence, so
mAP and count thresholds work exactly as for the learned detectors.

Every parameter lives in :class:`ClassicalParams`; the shipped values were chosen on BCCD train
only (``hemocount train detect --backend classical``).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import supervision as sv

from hemocount import CELL_CLASSES
from hemocount.detect.base import DetectorBase
from hemocount.errors import WeightsError
from hemocount.weights import WeightsEntry

#: Operating thresholds per class (chosen on BCCD train, like every other parameter here).
DEFAULT_CONF: dict[str, float] = {"RBC": 0.05, "WBC": 0.74, "Platelets": 0.95}


@dataclass(frozen=True)
class ClassicalParams:
    """Parameters of the classical detector; lengths in pixels of a BCCD field (640x480), areas in px².

    Attributes:
        scale: Image pixels per BCCD pixel; every length and area below is scaled by it.
        work_size: Longest side the field is resized to for processing (boxes come back in original pixels).
        background_kernel: Closing kernel for the background estimate; larger than any cell.
        stain_threshold: Minimum stain index (B - G of the corrected image, 0-255) of nuclei.
        platelet_stain_threshold: Minimum stain index of platelets (paler than nuclei).
        density_threshold: Minimum density index (255 - corrected G) of any cell.
        nucleus_min_area: Smallest stain blob group taken as a WBC nucleus.
        nucleus_merge: Dilation radius merging the lobes of one nucleus.
        wbc_pad: Margin added around the nucleus on each side, as a fraction of its size.
        wbc_min_side: Smallest WBC box side.
        platelet_min_area: Smallest stain blob taken as a platelet.
        platelet_max_area: Largest stain blob taken as a platelet.
        platelet_pad: Margin around a platelet blob.
        pallor_close: Closing kernel that seals an RBC's pale centre before holes are filled.
        wbc_exclusion: Radius of the disc around a WBC removed from the RBC mask, as a fraction of its half box.
        rbc_area: Typical RBC mask area (the centre of the size evidence).
        rbc_area_sigma: Spread of the size evidence, in natural-log units.
        rbc_min_area: Smallest RBC region kept.
        peak_distance: Half-width of the window over which a distance-transform core is compared (about an RBC radius).
        peak_ratio: A core is where the distance reaches this fraction of the window's largest distance.
        min_score: Boxes with a lower confidence are dropped.
    """

    scale: float = 1.0
    work_size: int = 640
    background_kernel: int = 81
    stain_threshold: float = 50.678
    platelet_stain_threshold: float = 31.119
    density_threshold: float = 38.127
    nucleus_min_area: float = 1820.501
    nucleus_merge: int = 11
    wbc_pad: float = 0.222
    wbc_min_side: float = 110.0
    platelet_min_area: float = 40.0
    platelet_max_area: float = 1819.364
    platelet_pad: float = 6.574
    pallor_close: float = 5.0
    wbc_exclusion: float = 0.781
    rbc_area: float = 5037.63
    rbc_area_sigma: float = 0.509
    rbc_min_area: float = 1200.0
    peak_distance: float = 31.879
    peak_ratio: float = 0.59
    min_score: float = 0.02

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "parameters") -> ClassicalParams:
        """Build from a mapping, naming unknown keys.

        Raises:
            WeightsError: Unknown key or a value of the wrong type.
        """
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise WeightsError(f"{source}: unknown classical parameter(s) {', '.join(unknown)}; "
                               f"valid: {', '.join(known)}")
        try:
            values = {k: (int(v) if known[k] == "int" else float(v)) for k, v in data.items()}
        except (TypeError, ValueError) as exc:
            raise WeightsError(f"{source}: bad classical parameter value ({exc})") from None
        return cls(**{**asdict(cls()), **values})

    def fingerprint(self, conf: dict[str, float] | None = None) -> str:
        """sha256 of the canonical JSON of the parameters and thresholds (stands for the weights' sha256)."""
        blob = json.dumps({"params": asdict(self), "conf": conf or {}}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def _odd(n: float) -> int:
    n = max(3, round(n))
    return n if n % 2 else n + 1


def corrected(image: np.ndarray, kernel: int) -> np.ndarray:
    """Flat-field corrected float32 BGR in [0, 255]: each channel divided by its closed (cell-free) background."""
    import cv2

    small = cv2.resize(image, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    k = _odd(kernel / 4)
    bg = cv2.morphologyEx(small, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    bg = cv2.GaussianBlur(bg, (0, 0), k / 2)
    bg = cv2.resize(bg, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    # Anchoring at a common white keeps the thresholds meaningful across exposures.
    return np.clip(image.astype(np.float32) / np.maximum(bg, 1.0) * 235.0, 0, 255)


def _sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-x))


def detect_cells(image: np.ndarray, p: ClassicalParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (xyxy, original pixels), scores and class ids for one BGR uint8 image."""
    import cv2
    from scipy import ndimage

    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    h0, w0 = image.shape[:2]
    resize = min(1.0, p.work_size / max(h0, w0)) if p.work_size > 0 else 1.0
    img = cv2.resize(image, None, fx=resize, fy=resize, interpolation=cv2.INTER_AREA) if resize < 1 else image
    s = p.scale * resize  # work pixels per BCCD pixel
    a = s * s
    boxes: list[list[float]] = []
    scores: list[float] = []
    ids: list[int] = []
    if min(img.shape[:2]) < 4:
        return _pack(boxes, scores, ids, resize)

    norm = corrected(img, p.background_kernel * s)
    b, g = norm[:, :, 0], norm[:, :, 1]
    stain = b - g
    density = 255.0 - g
    # Opening drops the thin coloured fringes that refraction leaves on RBC rims.
    opening = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    nucleus_mask = cv2.morphologyEx((stain > p.stain_threshold).astype(np.uint8), cv2.MORPH_OPEN, opening)
    cell_mask = (density > p.density_threshold).astype(np.uint8)
    # Closing first: the pale centre of an RBC cut by the field's edge is not an enclosed hole.
    k = _odd(p.pallor_close * s)
    cell_mask = _fill_holes(cv2.morphologyEx(cv2.morphologyEx(cell_mask, cv2.MORPH_OPEN, opening), cv2.MORPH_CLOSE,
                                             cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))))
    H, W = img.shape[:2]
    wbc_region = np.zeros((H, W), np.uint8)

    # WBCs: groups of nearby nucleus blobs (the lobes of one nucleus) with enough stained area.
    r = max(1, round(p.nucleus_merge * s))
    merged = cv2.dilate(nucleus_mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    n_groups, group_lab = cv2.connectedComponents(merged, connectivity=8)
    if n_groups > 1:
        in_nucleus = group_lab[nucleus_mask > 0]
        area = np.bincount(in_nucleus, minlength=n_groups)[1:].astype(np.float64)
        strength = np.bincount(in_nucleus, weights=stain[nucleus_mask > 0], minlength=n_groups)[1:] / \
            np.maximum(area, 1.0)
        for gi, sl in enumerate(ndimage.find_objects(group_lab)):
            if sl is None or area[gi] < p.nucleus_min_area * a:
                continue
            ys, xs = np.nonzero((group_lab[sl] == gi + 1) & (nucleus_mask[sl] > 0))
            x1, x2 = xs.min() + sl[1].start, xs.max() + 1 + sl[1].start
            y1, y2 = ys.min() + sl[0].start, ys.max() + 1 + sl[0].start
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            half = max(max(x2 - x1, y2 - y1) * (0.5 + p.wbc_pad), p.wbc_min_side * s / 2)
            box = [max(0.0, cx - half), max(0.0, cy - half), min(float(W), cx + half), min(float(H), cy + half)]
            boxes.append(box)
            scores.append(float(_sigmoid((strength[gi] - p.stain_threshold) / 10.0)
                                * _sigmoid((math.log(area[gi] / (p.nucleus_min_area * a)) + 0.3) * 3.0)))
            ids.append(1)
            cv2.circle(wbc_region, (int(cx), int(cy)), int(half * p.wbc_exclusion), 1, -1)

    # Platelets: small compact stained blobs outside WBCs.
    plt_mask = cv2.morphologyEx((stain > p.platelet_stain_threshold).astype(np.uint8), cv2.MORPH_OPEN, opening)
    plt_mask &= 1 - wbc_region
    n_blobs, _, stats, _ = cv2.connectedComponentsWithStats(plt_mask, connectivity=8)
    for j in range(1, n_blobs):
        x, y, bw, bh, ba = (int(v) for v in stats[j])
        if not p.platelet_min_area * a <= ba <= p.platelet_max_area * a:
            continue
        fill = ba / float(bw * bh)  # compact blobs, not streaks
        strength = float(stain[y:y + bh, x:x + bw].max())
        pad = p.platelet_pad * s
        boxes.append([max(0.0, x - pad), max(0.0, y - pad), min(float(W), x + bw + pad), min(float(H), y + bh + pad)])
        scores.append(float(_sigmoid((strength - p.platelet_stain_threshold) / 10.0) * min(1.0, fill / 0.6)
                            * _sigmoid(math.log(ba / (p.platelet_min_area * a)) * 2.0)))
        ids.append(2)

    # RBCs: the density mask outside the WBCs, split by a marker watershed seeded from distance-transform cores.
    rbc_mask = cell_mask & (1 - wbc_region)
    rbc_mask = cv2.morphologyEx(rbc_mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    for box, score in _split_rbcs(img, rbc_mask, p, s):
        boxes.append(box)
        scores.append(score)
        ids.append(0)
    return _pack(boxes, scores, ids, resize)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes (the pale centre of an RBC) in a binary mask."""
    import cv2

    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros_like(mask)
    cv2.drawContours(out, contours, -1, 1, thickness=-1)
    return out


def _split_rbcs(img: np.ndarray, mask: np.ndarray, p: ClassicalParams, s: float) -> list[tuple[list[float], float]]:
    import cv2

    if not mask.any():
        return []
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    d = max(3, round(p.peak_distance * s))
    # A square window: OpenCV dilates with a rectangle in O(1) per pixel, a disc costs its area.
    local_max = cv2.dilate(dist, np.ones((2 * d + 1, 2 * d + 1), np.uint8))
    # Cores: where the distance reaches peak_ratio of its neighbourhood maximum; a neck between two
    # overlapping cells is narrower than that, so each cell keeps a core (a marker) of its own.
    peaks = ((dist >= p.peak_ratio * local_max) & (dist > 0.15 * d)).astype(np.uint8)
    n_markers, markers = cv2.connectedComponents(peaks, connectivity=8)
    if n_markers <= 1:
        return []
    markers = markers.astype(np.int32) + 1  # 1 = sure background
    markers[(mask == 0)] = 1
    unknown = (mask > 0) & (peaks == 0)
    markers[unknown] = 0
    ws = cv2.watershed(np.ascontiguousarray(img), markers)
    out: list[tuple[list[float], float]] = []
    a = s * s
    stats = _region_stats(ws)
    for lab, (x1, y1, x2, y2, area) in stats.items():
        if lab <= 1 or area < p.rbc_min_area * a:
            continue
        bw, bh = x2 - x1 + 1, y2 - y1 + 1
        fill = area / float(bw * bh)  # a disc fills pi/4 of its box
        aspect = min(bw, bh) / max(bw, bh)
        size = math.exp(-(math.log(area / (p.rbc_area * a)) ** 2) / (2 * p.rbc_area_sigma ** 2))
        if x1 == 0 or y1 == 0 or x2 == mask.shape[1] - 1 or y2 == mask.shape[0] - 1:
            size = max(size, 0.5)  # a cell cut by the field's edge is small for a reason
        shape = math.exp(-((fill - 0.785) / 0.15) ** 2) * aspect
        score = float(size * (0.3 + 0.7 * shape))
        if score >= p.min_score:
            out.append(([float(x1), float(y1), float(x2 + 1), float(y2 + 1)], score))
    return out


def _region_stats(labels: np.ndarray) -> dict[int, tuple[int, int, int, int, int]]:
    """Bounding box and area of every positive label of a watershed result (-1 = ridges)."""
    from scipy import ndimage

    lab = np.where(labels > 0, labels, 0)
    areas = np.bincount(lab.ravel())
    return {k: (sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1, int(areas[k]))
            for k, sl in enumerate(ndimage.find_objects(lab), start=1) if sl is not None}


def _pack(boxes: list[list[float]], scores: list[float], ids: list[int], resize: float) -> tuple[
        np.ndarray, np.ndarray, np.ndarray]:
    xyxy = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / np.float32(resize)
    return xyxy, np.asarray(scores, dtype=np.float32), np.asarray(ids, dtype=int)


class ClassicalDetector(DetectorBase):
    """The OpenCV baseline behind the common detector interface (runs on NumPy/OpenCV, no torch)."""

    name = "classical"
    engine = "opencv"

    def __init__(self, params: ClassicalParams, weights: WeightsEntry) -> None:
        self.params = params
        self.weights = weights

    @classmethod
    def from_weights(cls, spec: str | None, *, device: str = "cpu") -> ClassicalDetector:
        """The shipped parameters, or a JSON file of parameters (``--weights params.json``).

        Raises:
            WeightsError: Unreadable or invalid parameter file, or a spec that is not a JSON file.
        """
        del device  # OpenCV on the CPU
        conf = dict(DEFAULT_CONF)
        if spec is None or spec == "classical":
            params, path, ident = ClassicalParams(), Path(__file__), "classical"
        else:
            path = Path(spec)
            if path.suffix != ".json":
                raise WeightsError(f"{spec}: the classical detector takes no model weights; pass a JSON file of "
                                   "parameters (from `hemocount train detect --backend classical`) or nothing")
            try:
                data = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise WeightsError(f"{path}: cannot read classical parameters ({exc})") from None
            if not isinstance(data, dict):
                raise WeightsError(f"{path}: classical parameters must be a JSON object")
            raw = data["params"] if "params" in data else {k: v for k, v in data.items() if k != "conf"}
            params, ident = ClassicalParams.from_dict(raw, str(path)), path.stem
            try:
                conf.update({str(k): float(v) for k, v in data.get("conf", {}).items() if k in conf})
            except (AttributeError, TypeError, ValueError):
                raise WeightsError(f"{path}: 'conf' must map class names to numbers") from None
        return cls.from_params(params, conf, path=path, ident=ident)

    @classmethod
    def from_params(cls, params: ClassicalParams, conf: dict[str, float] | None = None, *,
                    path: Path = Path(__file__), ident: str = "classical") -> ClassicalDetector:
        """A detector for ``params``; its sha256 is the fingerprint of the parameters and thresholds."""
        conf = dict(conf or DEFAULT_CONF)
        entry = WeightsEntry(id=ident, task="detect", backend="classical", file=path.name,
                             sha256=params.fingerprint(conf), classes=list(CELL_CLASSES), imgsz=params.work_size,
                             thresholds={"conf": conf, "iou": 0.5, "max_det": 1000, "tile": params.work_size},
                             meta={"params": asdict(params), "no_weights": True}, path=path)
        return cls(params, entry)

    def predict(
        self, images: list[np.ndarray], *, conf: dict[str, float], iou: float, max_det: int
    ) -> list[sv.Detections]:
        """Detect cells in each image; boxes in the image's own pixels."""
        out = []
        for im in images:
            xyxy, score, ids = detect_cells(im, self.params)
            dets = sv.Detections(xyxy=xyxy, confidence=score, class_id=ids)
            if len(dets):
                dets = dets.with_nms(threshold=iou, class_agnostic=False)
                dets = dets[np.argsort(-dets.confidence, kind="stable")]
            raw = len(dets)  # before the cap: an image with more cells than max_det is flagged
            kept = self.finish(dets[:max_det], conf)
            kept.metadata["raw_count"] = raw
            out.append(kept)
        return out
