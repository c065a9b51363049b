"""Write annotated images as a YOLO training folder or a COCO ground-truth file."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from hemocount import CELL_CLASSES
from hemocount.datasets.formats import xyxy_to_coco, yolo_lines
from hemocount.datasets.records import AnnotatedImage
from hemocount.io import atomic_write_json, atomic_write_text


def _image_suffix(path: Path) -> str:
    # TXL-PBC stores JPEG data under .png names; name copies by content.
    with path.open("rb") as fh:
        head = fh.read(8)
    if head.startswith(b"\xff\xd8"):
        return ".jpg"
    if head.startswith(b"\x89PNG"):
        return ".png"
    return path.suffix.lower()


def write_yolo(records: list[AnnotatedImage], out: Path, classes: tuple[str, ...] = CELL_CLASSES) -> Path:
    """Write ``out/images/<split>/``, ``out/labels/<split>/`` and ``out/data.yaml``.

    Images are hard-linked where possible (copied otherwise), named by image id.

    Returns:
        The path of ``data.yaml``.
    """
    index = {c: i for i, c in enumerate(classes)}
    splits = sorted({r.split for r in records})
    for rec in records:
        img_dir = out / "images" / rec.split
        lbl_dir = out / "labels" / rec.split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        dst = img_dir / f"{rec.image_id}{_image_suffix(rec.path)}"
        if not dst.exists():
            try:
                dst.hardlink_to(rec.path)
            except OSError:
                shutil.copyfile(rec.path, dst)
        lines = yolo_lines(rec.boxes, [index[c] for c in rec.classes], rec.width, rec.height)
        atomic_write_text(lbl_dir / f"{rec.image_id}.txt", "\n".join(lines) + ("\n" if lines else ""))
    yaml_lines = [f"path: {out.resolve()}"]
    yaml_lines += [f"{s}: images/{s}" for s in splits]
    yaml_lines.append("names:")
    yaml_lines += [f"  {i}: {c}" for i, c in enumerate(classes)]
    data_yaml = out / "data.yaml"
    atomic_write_text(data_yaml, "\n".join(yaml_lines) + "\n")
    return data_yaml


def coco_categories(classes: tuple[str, ...] = CELL_CLASSES) -> list[dict[str, Any]]:
    """COCO categories with stable ids (1-based, in ``classes`` order)."""
    return [{"id": i + 1, "name": c, "supercategory": "cell"} for i, c in enumerate(classes)]


def to_coco(records: list[AnnotatedImage], classes: tuple[str, ...] = CELL_CLASSES) -> dict[str, Any]:
    """Build a COCO ground-truth dict; image ids follow the record order (1-based)."""
    cat = {c: i + 1 for i, c in enumerate(classes)}
    images, anns = [], []
    for img_id, rec in enumerate(records, 1):
        images.append({"id": img_id, "file_name": rec.path.name, "width": rec.width, "height": rec.height,
                       "hemocount_id": rec.image_id, "source": rec.source, "split": rec.split,
                       "label_source": rec.label_source})
        for box, c in zip(rec.boxes.tolist(), rec.classes):
            bbox = xyxy_to_coco(box)
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat[c],
                         "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})
    return {"info": {"description": "hemocount ground truth"}, "images": images, "annotations": anns,
            "categories": coco_categories(classes)}


def write_coco(records: list[AnnotatedImage], path: Path) -> Path:
    """Write :func:`to_coco` of ``records`` to ``path`` atomically."""
    atomic_write_json(path, to_coco(records))
    return path


def stats(records: list[AnnotatedImage]) -> dict[str, Any]:
    """Per source/split image and box counts, plus the annotation issues found."""
    out: dict[str, Any] = {}
    for rec in records:
        key = f"{rec.source}/{rec.split}"
        entry = out.setdefault(key, {"images": 0, "complete_labels": 0, "boxes": Counter(), "issues": 0})
        entry["images"] += 1
        entry["complete_labels"] += int(rec.complete)
        entry["boxes"].update(rec.classes)
        entry["issues"] += len(rec.issues)
    for entry in out.values():
        entry["boxes"] = {c: entry["boxes"].get(c, 0) for c in CELL_CLASSES}
    return out
