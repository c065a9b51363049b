"""WBC crop extraction, shared by training and inference so the two can never drift apart."""

from __future__ import annotations

import numpy as np

#: Context around the box on each side, as a fraction of the box's longer side.
DEFAULT_PAD = 0.15


def square_box(box: np.ndarray | list[float], pad: float = DEFAULT_PAD,
               side: float | None = None) -> tuple[int, int, int, int]:
    """Square box centred on ``box`` (xyxy); may extend past the image.

    Its side is the box's longer side padded by ``pad`` a side, or ``side`` pixels when given (a crop
    scaled by the image's red-cell size, so the cell's own size is kept: see :func:`rbc_side`).
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if side is None:
        side = max(x2 - x1, y2 - y1, 1.0) * (1.0 + 2.0 * pad)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    half = side / 2.0
    return (int(round(cx - half)), int(round(cy - half)), int(round(cx + half)), int(round(cy + half)))


def rbc_side(rbc_px: float, rbc_k: float) -> float:
    """Side in pixels of an RBC-scaled crop: ``rbc_k`` red-cell diameters, whatever the WBC's box.

    Why: a box-scaled crop shows every cell at one size, so a lymphocyte (about 1.2-1.4 red-cell diameters
    across in BCCD, PBC and LISC, measured with the shipped detector) and a monocyte (about 2.0) lose
    their main difference; scaled by the red cells, the crop keeps it in every lab.
    """
    return max(8.0, float(rbc_px) * float(rbc_k))


def crop_side(rbc_k: float, rbc_px: float | None) -> float | None:
    """The crop side for a classifier trained with ``rbc_k`` (0: box-scaled) on an image whose red cells
    measure ``rbc_px`` (None: not measured): RBC-scaled when both are known, else None (the box's square;
    ``count`` flags such a field ``wbc_crops_unscaled``, :func:`hemocount.qc.crop_scale_flags`)."""
    return rbc_side(rbc_px, rbc_k) if rbc_k > 0 and rbc_px else None


def crop_cell(image: np.ndarray, box: np.ndarray | list[float], size: int, pad: float = DEFAULT_PAD,
              side: float | None = None) -> np.ndarray:
    """Square crop of ``image`` (HxWx3 uint8) around ``box``, resized to ``size`` x ``size``.

    ``side`` fixes the square's side in pixels (RBC-scaled crops); by default it follows the box.
    Parts of the square outside the image are filled by reflecting the border, so a cell
    on the edge keeps its scale and stays centred instead of being stretched.
    """
    import cv2

    h, w = image.shape[:2]
    x1, y1, x2, y2 = square_box(box, pad, side)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"empty box {box}")
    left, top = max(0, -x1), max(0, -y1)
    right, bottom = max(0, x2 - w), max(0, y2 - h)
    crop = image[max(0, y1):min(h, y2), max(0, x1):min(w, x2)]
    if crop.size == 0:
        raise ValueError(f"box {box} lies outside the {w}x{h} image")
    if left or top or right or bottom:
        mode = cv2.BORDER_REFLECT_101 if min(crop.shape[:2]) > 1 else cv2.BORDER_REPLICATE
        crop = cv2.copyMakeBorder(crop, top, bottom, left, right, mode)
    interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def crop_cells(image: np.ndarray, boxes: np.ndarray, size: int, pad: float = DEFAULT_PAD,
               side: float | None = None) -> np.ndarray:
    """Crops for many boxes as one ``(N, size, size, 3)`` uint8 array (``side``: as :func:`crop_cell`)."""
    if len(boxes) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([crop_cell(image, b, size, pad, side) for b in boxes])


def normalize_crops(crops_rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 crops ``(N, H, W, 3)`` as the classifiers' float32 ``(N, 3, H, W)`` input: /255, then ImageNet
    mean/std (``model.MEAN``/``STD``), the same float32 arithmetic as the torch path (``train.normalize``)."""
    from hemocount.classify.model import MEAN, STD

    x = np.ascontiguousarray(crops_rgb).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    return (x - np.array(MEAN, np.float32).reshape(1, 3, 1, 1)) / np.array(STD, np.float32).reshape(1, 3, 1, 1)
