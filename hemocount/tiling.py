"""Tiled detection for images much larger than the detector's field size.

Tiles overlap; each tile *owns* the part of the image that is closer to its own centre line than to
its neighbours' (its core). A detection is kept only by the tile whose core holds the box centre, so a
cell cut by a seam is counted once, from the tile that sees it whole, provided cells are smaller than
the overlap. A final class-wise NMS removes the rare duplicate whose two centre estimates straddle a
core boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hemocount.errors import HemocountError

if TYPE_CHECKING:
    import supervision as sv

    from hemocount.detect.base import Detector

#: Images whose longer side exceeds this many tile sizes are tiled automatically.
AUTO_FACTOR = 2.0
DEFAULT_TILE = 640
DEFAULT_OVERLAP = 0.3


@dataclass(frozen=True)
class TilePlan:
    """Tile size and overlap in pixels."""

    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if self.tile < 32:
            raise HemocountError(f"--tile must be at least 32 pixels (got {self.tile})")
        if not 0 <= self.overlap < self.tile:
            raise HemocountError(f"--overlap must be in [0, tile) pixels (got {self.overlap} for tile {self.tile})")

    @classmethod
    def from_options(cls, tile: int, overlap: float) -> TilePlan:
        """``overlap`` below 1 is a fraction of the tile, otherwise pixels."""
        return cls(tile, int(round(overlap * tile)) if overlap < 1 else int(overlap))


def axis_tiles(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis as ``(start, end, core_start, core_end)``; cores partition ``[0, length)``."""
    if length <= tile:
        return [(0, length, 0, length)]
    # Spread the tiles evenly: the overlap is at least the requested one, never a sliver tile.
    n = int(np.ceil((length - overlap) / (tile - overlap)))
    starts = sorted({int(round(v)) for v in np.linspace(0, length - tile, n)})
    out = []
    for k, s in enumerate(starts):
        core_start = 0 if k == 0 else (starts[k - 1] + tile + s) // 2
        core_end = length if k == len(starts) - 1 else (s + tile + starts[k + 1]) // 2
        out.append((s, s + tile, core_start, core_end))
    return out


def tile_grid(width: int, height: int, plan: TilePlan) -> list[tuple[tuple[int, int, int, int], ...]]:
    """All tiles of an image: pairs of x and y axis tiles."""
    xs = axis_tiles(width, plan.tile, plan.overlap)
    ys = axis_tiles(height, plan.tile, plan.overlap)
    return [(x, y) for y in ys for x in xs]


def needs_tiling(width: int, height: int, tile: int) -> bool:
    """The automatic rule: tile when the longer side exceeds ``AUTO_FACTOR`` tile sizes."""
    return max(width, height) > AUTO_FACTOR * tile


def detect_tiled(detector: Detector, image: np.ndarray, plan: TilePlan, *, conf: dict[str, float], iou: float,
                 max_det: int, batch: int = 4) -> sv.Detections:
    """Detect on overlapping tiles of ``image`` and merge into image coordinates.

    ``metadata["raw_count"]`` is the largest raw count of any tile (for the detection-cap flag) and
    ``metadata["tiles"]`` the number of tiles.
    """
    import supervision as sv

    h, w = image.shape[:2]
    grid = tile_grid(w, h, plan)
    parts: list[sv.Detections] = []
    raw = 0
    for s in range(0, len(grid), batch):
        chunk = grid[s:s + batch]
        tiles = [np.ascontiguousarray(image[y[0]:y[1], x[0]:x[1]]) for x, y in chunk]
        for (x, y), d in zip(chunk, detector.predict(tiles, conf=conf, iou=iou, max_det=max_det)):
            raw = max(raw, int(d.metadata.get("raw_count", len(d))))
            if len(d) == 0:
                continue
            d.xyxy = d.xyxy + np.array([x[0], y[0], x[0], y[0]], dtype=d.xyxy.dtype)
            cx = (d.xyxy[:, 0] + d.xyxy[:, 2]) / 2
            cy = (d.xyxy[:, 1] + d.xyxy[:, 3]) / 2
            own = (cx >= x[2]) & (cx < x[3]) & (cy >= y[2]) & (cy < y[3])
            kept = d[own]
            kept.metadata = {}  # per-tile metadata would make merge() refuse the parts
            parts.append(kept)
    merged = sv.Detections.merge(parts) if parts else sv.Detections.empty()
    if len(merged) > 1:
        names = merged.data["class_name"]
        merged = merged.with_nms(threshold=iou, class_agnostic=False)
        if len(merged) and "class_name" not in merged.data:
            merged.data["class_name"] = names
    if len(merged) == 0:
        merged = sv.Detections.empty()
        merged.data["class_name"] = np.array([], dtype=str)
    merged.metadata["raw_count"] = raw
    merged.metadata["tiles"] = len(grid)
    return merged


def exclude_edges(dets: sv.Detections, width: int, height: int, margin: float = 1.0) -> sv.Detections:
    """Drop detections whose box touches the image border (within ``margin`` pixels)."""
    if len(dets) == 0:
        return dets
    b = dets.xyxy
    inside = (b[:, 0] > margin) & (b[:, 1] > margin) & (b[:, 2] < width - margin) & (b[:, 3] < height - margin)
    kept = dets[inside]
    kept.metadata.update(dets.metadata)
    return kept
