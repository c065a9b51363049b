"""Output writers of ``hemocount count``: CSVs, COCO, annotated images, run record.

Every file is written atomically (temporary file + rename).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from hemocount import CELL_CLASSES
from hemocount.datasets.formats import xyxy_to_coco
from hemocount.datasets.writers import coco_categories
from hemocount.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from hemocount.results import SUBTYPES, ImageResult
from hemocount.summary import SlideSummary

#: One fixed colour per class (BGR order is handled by supervision): RBC red, WBC violet, platelets amber.
CLASS_COLORS = ("#e6194b", "#7b2cbf", "#f4a300")


def _csv(rows: list[list[Any]], header: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def write_counts_csv(results: list[ImageResult], path: Path, all_threshold: float | None = None,
                     classified: bool = True) -> None:
    """One row per image: size, status, cell counts, WBC differential (counts and % of classified), cap,
    the magnification measured by the red cells (status, resampling factor applied, µm/px), QC flag codes,
    error.

    ``all_cells`` counts WBCs whose ALL probability reaches ``all_threshold`` (empty without the ALL model).
    """
    header = ["image", "width", "height", "status", *CELL_CLASSES, *SUBTYPES, "uncertain",
              *[f"{s}_pct" for s in SUBTYPES], "all_cells", "cap_reached", "scale", "scale_factor", "um_per_px",
              "flags", "error"]
    rows = []
    for r in results:
        if r.status != "ok":
            rows.append([r.name, r.width, r.height, r.status] + [""] * (len(header) - 10) + [0, "", "", "", "",
                                                                                            r.error])
            continue
        counts, sub = r.counts(), r.subtype_counts()
        if classified:
            n_typed = sum(sub[s] for s in SUBTYPES)
            pct = [round(100 * sub[s] / n_typed, 1) if n_typed else "" for s in SUBTYPES]
            sub_cols = [*[sub[s] for s in SUBTYPES], sub["uncertain"], *pct]
        else:  # classifiers off: empty, not zero
            sub_cols = [""] * (2 * len(SUBTYPES) + 1)
        all_cells = int(np.sum(r.all_probs() >= all_threshold)) if all_threshold is not None else ""
        rows.append([r.name, r.width, r.height, r.status, *[counts[c] for c in CELL_CLASSES], *sub_cols, all_cells,
                     int(r.cap_reached), r.scale.status, r.scale.factor, r.scale.um_per_px or "",
                     ";".join(f.code for f in r.flags), r.error])
    atomic_write_text(path, _csv(rows, header))


def write_cells_csv(results: list[ImageResult], path: Path) -> None:
    """One row per detection with its box in original pixel coordinates."""
    header = ["image", "cell", "class", "confidence", "x1", "y1", "x2", "y2", "subtype", "subtype_prob", "all_prob"]
    rows = []
    for r in results:
        d = r.detections
        sub = d.data.get("subtype", [""] * len(d))
        sp = d.data.get("subtype_prob", np.full(len(d), np.nan))
        ap = d.data.get("all_prob", np.full(len(d), np.nan))
        for i in range(len(d)):
            x1, y1, x2, y2 = (round(float(v), 1) for v in d.xyxy[i])
            rows.append([r.name, i, d.data["class_name"][i], round(float(d.confidence[i]), 4), x1, y1, x2, y2,
                         sub[i], "" if np.isnan(sp[i]) else round(float(sp[i]), 4),
                         "" if np.isnan(ap[i]) else round(float(ap[i]), 4)])
    atomic_write_text(path, _csv(rows, header))


def predictions_coco(results: list[ImageResult]) -> dict[str, Any]:
    """COCO dict of predictions: image id = input index + 1, category id = class index + 1.

    Skipped images are left out (they have no size and no predictions); the ids of the others stay their
    input index + 1, so an id names the same input whatever was skipped.
    """
    images, anns = [], []
    for r in results:
        if r.status != "ok":
            continue
        images.append({"id": r.index + 1, "file_name": r.name, "width": r.width, "height": r.height})
        d = r.detections
        for i in range(len(d)):
            bbox = xyxy_to_coco(tuple(float(v) for v in d.xyxy[i]))
            ann = {"id": len(anns) + 1, "image_id": r.index + 1, "category_id": int(d.class_id[i]) + 1,
                   "bbox": [round(v, 2) for v in bbox], "area": round(bbox[2] * bbox[3], 2),
                   "score": round(float(d.confidence[i]), 5), "iscrowd": 0}
            sub = d.data.get("subtype")
            if sub is not None and sub[i]:
                ap = float(d.data["all_prob"][i])
                ann["attributes"] = {"subtype": str(sub[i]), "subtype_prob": round(float(d.data["subtype_prob"][i]), 4),
                                     "all_prob": None if np.isnan(ap) else round(ap, 4)}
            anns.append(ann)
    return {"info": {"description": "hemocount predictions"}, "images": images, "annotations": anns,
            "categories": coco_categories()}


def annotate(image: np.ndarray, result: ImageResult) -> np.ndarray:
    """Draw boxes (all cells) and labels (WBC, platelets) with fixed class colours."""
    import supervision as sv

    d = result.detections
    palette = sv.ColorPalette.from_hex(list(CLASS_COLORS))
    scene = image.copy()
    thickness = max(1, round(min(image.shape[:2]) / 320))
    scene = sv.BoxAnnotator(color=palette, thickness=thickness).annotate(scene, d)
    if len(d):
        keep = d.data["class_name"] != "RBC"
        sub = d[keep]
        subtypes = sub.data.get("subtype", [""] * len(sub))
        labels = [f"{n} {c:.2f}" + (f" {s}" if s else "")
                  for n, c, s in zip(sub.data["class_name"], sub.confidence, subtypes)]
        scene = sv.LabelAnnotator(color=palette, text_scale=0.4 * thickness, text_padding=3,
                                  text_thickness=thickness, smart_position=True).annotate(scene, sub, labels=labels)
    return scene


def annotated_relpath(name: str) -> Path:
    """Where the annotated image of input ``name`` goes, relative to ``annotated/``."""
    p = Path(name)
    # Keep the input's name (a.png -> a.png.jpg) so a.png and a.jpg never overwrite each other.
    return p if p.suffix.lower() in (".jpg", ".jpeg") else Path(f"{p}.jpg")


def encode_annotated(image: np.ndarray, result: ImageResult) -> bytes:
    """The annotated image of one field as JPEG bytes (what :func:`write_annotated` writes)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", annotate(image, result), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise OSError(f"{result.name}: JPEG encoding failed")
    return buf.tobytes()


def write_annotated(image: np.ndarray, result: ImageResult, folder: Path) -> Path:
    """Write the annotated JPEG for one image under ``folder`` (mirroring the input layout)."""
    return write_annotated_jpeg(encode_annotated(image, result), result, folder)


def write_annotated_jpeg(jpeg: bytes, result: ImageResult, folder: Path) -> Path:
    """Write an annotated image already encoded (by a Ray worker, see :mod:`hemocount.cluster`) where
    :func:`write_annotated` would."""
    out = folder / annotated_relpath(result.name)
    atomic_write_bytes(out, jpeg)
    return out


def write_run_json(path: Path, record: dict[str, Any]) -> None:
    """The run record (versions, weights, thresholds, inputs, per-image status, timings)."""
    atomic_write_json(path, record)


def write_slides_csv(slides: list[SlideSummary], path: Path) -> None:
    """One row per slide: counts, differential with 95 % CIs and out-of-range marks, ALL flag, estimates
    (each with its mark), QC flag codes.

    ``<subtype>_range`` and ``<quantity>_per_uL_range`` are ``high`` or ``low`` for a value outside the
    reference range (only a reportable differential is compared), empty otherwise.
    """
    quantities = sorted({e.quantity for s in slides for e in s.estimates})
    header = ["slide", "fields", "skipped", *CELL_CLASSES, "differential", "classified", "uncertain"]
    for sub in SUBTYPES:
        header += [sub, f"{sub}_pct", f"{sub}_ci_low", f"{sub}_ci_high", f"{sub}_range"]
    header += ["all_flag", "all_cells_above"]
    for q in quantities:
        header += [f"{q}_per_uL", f"{q}_per_uL_range"]
    header.append("flags")
    rows = []
    for s in slides:
        d = s.differential
        row: list[Any] = [s.slide, s.n_fields, s.n_skipped, *[s.counts[c] for c in CELL_CLASSES],
                          d.status, d.n_classified, d.n_uncertain]
        for r in d.rows:
            row += [r.count, *("" if v is None else v for v in (r.pct, r.ci_low, r.ci_high)), r.direction]
        flag = s.all_flag
        row += ["" if flag is None else int(flag.flagged), "" if flag is None else flag.n_above]
        est = {e.quantity: e for e in s.estimates}
        for q in quantities:
            e = est.get(q)
            row += ["", ""] if e is None else [e.value, e.direction]
        row.append(";".join(f.code for f in s.flags))
        rows.append(row)
    atomic_write_text(path, _csv(rows, header))
