"""A WBC box for single-cell images that come without one (PBC and LISC crop sets), from the stain.

Why: inference crops a detector's WBC box with 15 % context (:mod:`hemocount.classify.crops`); training on
the whole single-cell image instead would show the model a cell at another scale and with other context.
Romanowsky-type stains (May-Gruenwald-Giemsa in PBC, Gismo-Right in LISC) colour WBC nuclei and much of
their cytoplasm violet/magenta: green is absorbed more than both red and blue. Red cells absorb green
and blue (pink in PBC) or red (lavender in LISC), so ``min(R, B) - G`` separates the WBC from red cells
and background in both labs. An Otsu threshold of that index, a closing that joins the lobes of a
segmented nucleus, and the component nearest the image centre give the box. On TXL-PBC's 500 annotated
PBC fields (same lab as ``pbc_wbc``) these boxes were compared to the human WBC boxes (see
``docs/classifier_robustness.md``).
"""

from __future__ import annotations

import numpy as np

#: Fallback when no stained component is found: a central square of this fraction of the shorter side.
FALLBACK_FRACTION = 0.5
#: Components smaller than this fraction of the image are platelets or noise.
MIN_AREA_FRACTION = 0.004


def violet_index(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel stain index in [-1, 1]: ``(min(R, B) - G) / max(R, G, B)``; high on WBC nuclei."""
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    return (np.minimum(r, b) - g) / (x.max(axis=2) + 1.0)


def stain_mask(rgb: np.ndarray) -> np.ndarray:
    """Binary uint8 mask of violet-stained pixels (Otsu on :func:`violet_index`), lobes joined."""
    import cv2

    idx = np.clip(violet_index(rgb) * 510.0, 0, 255).astype(np.uint8)
    idx = cv2.GaussianBlur(idx, (5, 5), 0)
    t, _ = cv2.threshold(idx, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = (idx > max(t, 8)).astype(np.uint8)  # floor: an image with no stained cell has a tiny Otsu level
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    # Closing with a kernel ~4 % of the image joins a neutrophil's lobes into one component.
    k = max(3, int(round(0.04 * min(mask.shape))) | 1)
    return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))


def central_cell_box(rgb: np.ndarray, valid: np.ndarray | None = None) -> tuple[tuple[float, float, float, float], bool]:
    """Box (xyxy) of the stained component nearest the image centre, and whether it was found.

    Args:
        rgb: ``HxWx3`` uint8 RGB image centred (roughly) on one WBC.
        valid: Optional boolean mask of real pixels (False on padding), excluded from the search.

    Returns:
        The box and True, or a central square of :data:`FALLBACK_FRACTION` and False.
    """
    import cv2

    h, w = rgb.shape[:2]
    mask = stain_mask(rgb)
    if valid is not None:
        mask &= valid.astype(np.uint8)
    n, _, stats, centres = cv2.connectedComponentsWithStats(mask)
    best, best_d = 0, float("inf")
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] < MIN_AREA_FRACTION * h * w:
            continue
        d = float(np.hypot(centres[i, 0] - w / 2, centres[i, 1] - h / 2))
        if d < best_d:
            best, best_d = i, d
    if best == 0:
        half = FALLBACK_FRACTION * min(h, w) / 2
        return (w / 2 - half, h / 2 - half, w / 2 + half, h / 2 + half), False
    x, y, bw, bh = (int(v) for v in stats[best, :4])
    return (float(x), float(y), float(x + bw), float(y + bh)), True


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two xyxy boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
