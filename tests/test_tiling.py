"""Tiled detection: seams never double-count or lose cells; tile geometry invariants."""

from __future__ import annotations

import numpy as np
import pytest
import supervision as sv
from hypothesis import given, settings
from hypothesis import strategies as st

from hemocount import CELL_CLASSES
from hemocount.errors import HemocountError
from hemocount.tiling import TilePlan, axis_tiles, detect_tiled, exclude_edges, needs_tiling, tile_grid


class BlobDetector:
    """A deterministic stand-in detector: every dark connected blob is one RBC."""

    name = "blob"
    classes = CELL_CLASSES

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def predict(self, images: list[np.ndarray], *, conf: dict[str, float], iou: float,
                max_det: int) -> list[sv.Detections]:
        import cv2

        out = []
        for img in images:
            self.calls.append(img.shape[:2])
            mask = (cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) < 128).astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:]], np.float32).reshape(-1, 4)
            d = sv.Detections(xyxy=boxes, confidence=np.full(len(boxes), 0.9, np.float32),
                              class_id=np.zeros(len(boxes), int))
            d.data["class_name"] = np.array(["RBC"] * len(boxes), dtype=str)
            d.metadata["raw_count"] = len(boxes)
            out.append(d)
        return out


def _smear(width: int, height: int, centres: list[tuple[int, int]], r: int = 18) -> np.ndarray:
    import cv2

    img = np.full((height, width, 3), 230, np.uint8)
    for cx, cy in centres:
        cv2.circle(img, (cx, cy), r, (60, 40, 150), -1)
    return img


def _grid_centres(width: int, height: int, step: int, margin: int) -> list[tuple[int, int]]:
    return [(x, y) for y in range(margin, height - margin, step) for x in range(margin, width - margin, step)]


def test_tiled_count_equals_known_cells_on_seams() -> None:
    plan = TilePlan(tile=256, overlap=64)
    w, h = 1000, 700
    centres = _grid_centres(w, h, 50, 25)
    # Put cells exactly on every seam and every core boundary as well.
    seams = {t[0] for t in axis_tiles(w, plan.tile, plan.overlap)} | {t[1] for t in axis_tiles(w, 256, 64)}
    cores = {t[2] for t in axis_tiles(w, plan.tile, plan.overlap)}
    extra = [(x, 12 + 40 * k) for k, x in enumerate(sorted((seams | cores) - {0, w}))]
    centres = [c for c in centres if all(abs(c[0] - e[0]) > 40 or abs(c[1] - e[1]) > 40 for e in extra)] + extra
    img = _smear(w, h, centres, r=10)
    det = BlobDetector()
    whole = det.predict([img], conf={}, iou=0.5, max_det=10000)[0]
    tiled = detect_tiled(det, img, plan, conf={}, iou=0.5, max_det=10000, batch=3)
    assert len(whole) == len(centres)
    assert len(tiled) == len(centres)
    assert tiled.metadata["tiles"] == len(tile_grid(w, h, plan)) > 1
    assert all(s[0] <= 256 and s[1] <= 256 for s in det.calls[1:])  # tiles, never the whole image
    # Same boxes as whole-image detection (each cell found whole, once).
    a = np.array(sorted(map(tuple, whole.xyxy.round(1))))
    b = np.array(sorted(map(tuple, tiled.xyxy.round(1))))
    np.testing.assert_allclose(a, b)


def test_tiled_count_equals_sum_of_parts() -> None:
    """A large image made of four fields counts the same as the four fields counted one by one."""
    rng = np.random.default_rng(1)
    parts = []
    for _ in range(4):
        centres = [(int(x), int(y)) for x, y in zip(rng.integers(30, 370, 15), rng.integers(30, 270, 15))]
        parts.append(_smear(400, 300, centres, r=8))
    big = np.vstack([np.hstack(parts[:2]), np.hstack(parts[2:])])
    det = BlobDetector()
    per_part = sum(len(d) for d in det.predict(parts, conf={}, iou=0.5, max_det=10000))
    tiled = detect_tiled(det, big, TilePlan(160, 48), conf={}, iou=0.5, max_det=10000)
    assert len(tiled) == per_part


def test_tiled_empty_image_and_cap_metadata() -> None:
    det = BlobDetector()
    d = detect_tiled(det, np.full((600, 900, 3), 230, np.uint8), TilePlan(256, 64), conf={}, iou=0.5, max_det=5)
    assert len(d) == 0 and "class_name" in d.data and d.metadata["raw_count"] == 0


@settings(max_examples=80, deadline=None)
@given(length=st.integers(1, 5000), tile=st.integers(32, 1024), frac=st.floats(0, 0.45))
def test_axis_tiles_cover_and_cores_partition(length: int, tile: int, frac: float) -> None:
    overlap = int(tile * frac)
    tiles = axis_tiles(length, tile, overlap)
    assert tiles[0][0] == 0 and tiles[-1][1] == max(length, tiles[-1][1]) and tiles[-1][1] >= length
    assert tiles[0][2] == 0 and tiles[-1][3] == length
    for (s, e, cs, ce), nxt in zip(tiles, tiles[1:] + [None]):
        assert e - s == min(tile, length) and s <= cs <= ce <= e
        if nxt is not None:
            assert ce == nxt[2]  # cores are contiguous and disjoint
            assert nxt[0] - s <= tile - overlap  # the requested overlap is met
            # A cell of diameter <= overlap centred in this core is entirely inside this tile.
            assert e - ce >= overlap // 2 and nxt[2] - nxt[0] >= overlap // 2


def test_plan_options_and_auto_rule() -> None:
    assert TilePlan.from_options(640, 0.25) == TilePlan(640, 160)
    assert TilePlan.from_options(640, 100) == TilePlan(640, 100)
    with pytest.raises(HemocountError, match="overlap"):
        TilePlan.from_options(640, 700)
    with pytest.raises(HemocountError, match="tile"):
        TilePlan(8, 0)
    assert not needs_tiling(640, 480, 640) and not needs_tiling(1280, 960, 640)
    assert needs_tiling(5000, 4000, 640)


def test_exclude_edges() -> None:
    d = sv.Detections(xyxy=np.array([[0, 5, 10, 15], [5, 5, 15, 15], [90, 90, 100, 100]], np.float32),
                      confidence=np.ones(3, np.float32), class_id=np.zeros(3, int))
    kept = exclude_edges(d, 100, 100)
    assert kept.xyxy.tolist() == [[5, 5, 15, 15]]
