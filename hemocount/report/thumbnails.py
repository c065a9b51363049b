"""Thumbnails of the annotated fields, embedded in the report as JPEG data URIs."""

from __future__ import annotations

import base64
from pathlib import Path

from hemocount.report.markup import THUMB_WIDTH


class Thumbnails:
    """Small JPEG data URIs of annotated images under ``out_dir`` (None when missing or unreadable)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir.resolve()
        self.cache: dict[str, tuple[str, int, int] | None] = {}

    def prefetch(self, rels: list[str]) -> None:
        """Make the thumbnails of ``rels`` on all cores (OpenCV decodes and encodes without the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        from hemocount.runtime import core_count

        todo = [r for r in dict.fromkeys(rels) if r not in self.cache]
        if len(todo) < 2:
            return
        with ThreadPoolExecutor(max_workers=core_count(), thread_name_prefix="hemocount-thumb") as pool:
            for rel, made in zip(todo, pool.map(self._make, todo)):
                self.cache[rel] = made

    def get(self, rel: str) -> tuple[str, int, int] | None:
        if rel not in self.cache:
            self.cache[rel] = self._make(rel)
        return self.cache[rel]

    def _make(self, rel: str) -> tuple[str, int, int] | None:
        import cv2
        import numpy as np

        path = (self.out_dir / rel).resolve()
        if not path.is_relative_to(self.out_dir) or not path.is_file():
            return None  # links in the report point into OUT only
        try:
            data = np.fromfile(path, dtype=np.uint8)
            img = cv2.imdecode(data, reduced_flag(path))
        except (OSError, cv2.error):
            return None
        if img is None or img.ndim != 3 or min(img.shape[:2]) < 1:
            return None
        h, w = img.shape[:2]
        tw = min(THUMB_WIDTH, w)
        th = max(1, round(h * tw / w))
        small = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 70])
        if not ok:
            return None
        return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii"), tw, th


def reduced_flag(path: Path) -> int:
    """Decode big JPEGs at 1/2, 1/4 or 1/8 scale (libjpeg does it while decoding, much faster)."""
    import cv2
    from PIL import Image

    try:
        with Image.open(path) as im:
            width = im.size[0]
    except Exception:  # noqa: BLE001 - PIL raises many types for unreadable headers; OpenCV then decides
        return cv2.IMREAD_COLOR
    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                         (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if width // factor >= THUMB_WIDTH:
            return flag
    return cv2.IMREAD_COLOR
