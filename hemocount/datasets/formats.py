"""Readers and writers for Pascal VOC XML and YOLO txt annotations, and the box conversions between formats."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from hemocount.errors import DatasetError

Box = tuple[float, float, float, float]


def yolo_to_xyxy(cx: float, cy: float, w: float, h: float, width: int, height: int) -> Box:
    """Normalised YOLO ``cx cy w h`` -> xyxy in pixels of a ``width`` x ``height`` image."""
    return (cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height


def xyxy_to_yolo(box: Box, width: int, height: int) -> Box:
    """xyxy in pixels -> normalised YOLO ``(cx, cy, w, h)``; inverse of :func:`yolo_to_xyxy`."""
    x1, y1, x2, y2 = box
    return (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height


def xyxy_to_coco(box: Box) -> list[float]:
    """xyxy -> COCO ``[x, y, w, h]`` (top-left corner and size, same units)."""
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1]


def coco_to_xyxy(bbox: list[float]) -> Box:
    """COCO ``[x, y, w, h]`` -> xyxy; inverse of :func:`xyxy_to_coco`."""
    x, y, w, h = bbox
    return x, y, x + w, y + h


def read_voc(path: Path) -> tuple[int, int, list[Box], list[str]]:
    """Read one Pascal VOC XML file.

    Returns:
        ``(width, height, boxes_xyxy, class_names)``; width/height may be 0 when
        the file has no ``<size>``.

    Raises:
        DatasetError: The file is missing or not well-formed VOC XML.
    """
    try:
        root = ET.parse(path).getroot()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read VOC XML ({exc.strerror or exc})") from None
    except ET.ParseError as exc:
        raise DatasetError(f"{path}: cannot read VOC XML ({exc})") from None
    size = root.find("size")
    try:
        width = int(float(size.findtext("width", "0"))) if size is not None else 0
        height = int(float(size.findtext("height", "0"))) if size is not None else 0
    except (ValueError, OverflowError):  # OverflowError: "inf"
        raise DatasetError(f"{path}: <size> is not a finite number") from None
    if width < 0 or height < 0:
        raise DatasetError(f"{path}: <size> is negative ({width}x{height})")
    boxes: list[Box] = []
    names: list[str] = []
    for i, obj in enumerate(root.iter("object")):
        bb = obj.find("bndbox")
        if bb is None:
            raise DatasetError(f"{path}: object {i} has no <bndbox>")
        try:
            box = tuple(float(bb.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            raise DatasetError(f"{path}: object {i} has a non-numeric <bndbox>") from None
        boxes.append(box)  # type: ignore[arg-type]
        names.append((obj.findtext("name") or "").strip())
    return width, height, boxes, names


def read_yolo(
    path: Path, class_names: list[str], width: int, height: int
) -> tuple[list[Box], list[str]]:
    """Read one YOLO label file (``class cx cy w h``, normalised).

    Args:
        path: The ``.txt`` file; a missing file means no boxes.
        class_names: The dataset's own class order (index -> name).
        width: Image width in pixels.
        height: Image height in pixels.

    Returns:
        ``(boxes_xyxy_pixels, class_names)``; unknown class ids are returned as
        ``"<id N>"`` so the caller reports them.

    Raises:
        DatasetError: A line is malformed.
    """
    if not path.exists():
        return [], []
    boxes: list[Box] = []
    names: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text (expected YOLO label lines)") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise DatasetError(f"{path}:{lineno}: expected 'class cx cy w h', got {line.strip()!r}")
        try:
            cid = int(parts[0])
            cx, cy, w, h = (float(p) for p in parts[1:])
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: non-numeric value in {line.strip()!r}") from None
        names.append(class_names[cid] if 0 <= cid < len(class_names) else f"<id {cid}>")
        boxes.append(yolo_to_xyxy(cx, cy, w, h, width, height))
    return boxes, names


def yolo_lines(boxes: np.ndarray, class_ids: list[int], width: int, height: int) -> list[str]:
    """Format xyxy pixel boxes as normalised YOLO label lines."""
    lines = []
    for box, cid in zip(boxes, class_ids):
        cx, cy, w, h = xyxy_to_yolo(tuple(box), width, height)
        lines.append(f"{cid} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines
