"""Counting and mAP at simulated magnifications, with and without scale normalisation.

Zoom z < 1 (a lower magnification): a 2x2 mosaic of four fields of the same source and split, resized
by z and cut back to one field's size (0.5x is exactly four fields at half size). Zoom z > 1: the
centre 1/z of a field enlarged to the field's size. Labels follow the same rule everywhere: a box cut
by the edge is dropped, and the pipeline runs with ``exclude_edges`` (cells touching the border are not
counted), at every zoom including 1x: one border rule for labels and predictions. Only fields with
complete labels are used (BCCD with TXL-PBC labels, PBC).

    python benchmarks/zoom.py --split val  --json benchmarks/results/zoom_val.json    # decide
    python benchmarks/zoom.py --split test --json benchmarks/results/zoom_test.json   # report, once

Per source, zoom and ``--scale`` mode: mAP50 (pycocotools, detections at conf 0.001), per-class count
error sum|pred - true| / sum true at the manifest's operating thresholds, the share of fields whose
WBC count is exact, and fields/s of the detection stage.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import split_parser
from hemocount import CELL_CLASSES
from hemocount.datasets.records import AnnotatedImage

ZOOMS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def _keep_inside(boxes: np.ndarray, w: int, h: int, margin: float = 1.0) -> np.ndarray:
    """Indices of boxes that do not touch the border: the rule ``count --exclude-edges`` applies to its
    detections (``hemocount.tiling.exclude_edges``), so labels and predictions follow one rule."""
    if len(boxes) == 0:
        return np.zeros(0, int)
    b = boxes
    return np.flatnonzero((b[:, 0] > margin) & (b[:, 1] > margin) & (b[:, 2] < w - margin) & (b[:, 3] < h - margin))


def zoom_field(recs: list[AnnotatedImage], images: list[np.ndarray], k: int, z: float
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Field ``k`` of a source at zoom ``z`` (see module docstring): image, boxes, classes."""
    import cv2

    h, w = images[k].shape[:2]
    if z == 1.0:
        img, b, classes = images[k], recs[k].boxes.copy(), list(recs[k].classes)
    if z < 1.0:
        mosaic = np.zeros((2 * h, 2 * w, 3), np.uint8)
        boxes, classes = [], []
        for q in range(4):
            j = (k + q) % len(images)
            sy, sx = images[j].shape[0] / h, images[j].shape[1] / w
            ox, oy = (q % 2) * w, (q // 2) * h
            mosaic[oy:oy + h, ox:ox + w] = cv2.resize(images[j], (w, h), interpolation=cv2.INTER_AREA)
            b = recs[j].boxes / np.array([sx, sy, sx, sy]) + np.array([ox, oy, ox, oy])
            boxes.append(b)
            classes += list(recs[j].classes)
        big = cv2.resize(mosaic, None, fx=z, fy=z, interpolation=cv2.INTER_AREA)
        img = big[:h, :w]
        b = np.concatenate(boxes) * z
    else:
        cw, ch = w / z, h / z
        x0, y0 = (w - cw) / 2, (h - ch) / 2
        crop = images[k][int(round(y0)):int(round(y0 + ch)), int(round(x0)):int(round(x0 + cw))]
        img = cv2.resize(crop, (w, h), interpolation=cv2.INTER_CUBIC)
        b = (recs[k].boxes - np.array([x0, y0, x0, y0])) * z
        classes = list(recs[k].classes)
    keep = _keep_inside(b, w, h)
    return img, b[keep], [classes[i] for i in keep]


def evaluate_set(pipe, recs: list[AnnotatedImage], images: list[np.ndarray], op_conf: dict[str, float]) -> dict:
    """mAP50 and counting errors of ``pipe`` (run at conf 0.001) on in-memory fields."""
    from hemocount.detect.evaluate import coco_map

    t0 = time.perf_counter()
    preds, statuses = [], []
    for s in range(0, len(images), 8):
        dets, scales = pipe.detect(images[s:s + 8])
        preds += dets
        statuses += [sc.status for sc in scales]
    secs = time.perf_counter() - t0
    res = coco_map(recs, preds)
    out = {"images": len(recs), "fields_per_s": round(len(recs) / secs, 2), "mAP50": res["mAP50"],
           "AP50": {c: res["per_class"][c]["AP50"] for c in CELL_CLASSES}, "count_error": {},
           "scale_status": {k: statuses.count(k) for k in sorted(set(statuses))}}
    for k, c in enumerate(CELL_CLASSES):
        true = np.array([sum(x == c for x in r.classes) for r in recs], float)
        pred = np.array([np.sum((d.class_id == k) & (d.confidence >= op_conf[c])) for d in preds], float)
        out["count_error"][c] = round(float(np.abs(pred - true).sum() / max(true.sum(), 1)), 4)
        if c == "WBC":
            out["wbc_exact"] = round(float(np.mean(pred == true)), 4)
    return out


def main() -> None:
    ap = split_parser(__doc__)
    ap.add_argument("--zooms", default=",".join(str(z) for z in ZOOMS))
    ap.add_argument("--modes", default="none,auto", help="--scale modes to compare")
    ap.add_argument("--weights", help="detector weights (default: shipped)")
    ap.add_argument("--scale-band", help="LO,HI: relative RBC sizes detected as they are under auto (default: the "
                                         "detector manifest's scale_band, else hemocount.scale's); to choose it on val")
    args = ap.parse_args()

    from hemocount.datasets.sources import load_sources
    from hemocount.detect.evaluate import MAP_CONF
    from hemocount.io import read_image
    from hemocount.pipeline import Pipeline

    zooms = [float(z) for z in args.zooms.split(",")]
    results: dict = {"split": args.split, "zooms": zooms, "sources": {}}
    pipes = {m: Pipeline.from_pretrained("yolo", weights=args.weights, classify=False, conf=MAP_CONF, scale=m,
                                         exclude_edges=True) for m in args.modes.split(",")}
    if args.scale_band and "auto" in pipes:
        lo, hi = (float(v) for v in args.scale_band.split(","))
        pipes["auto"].scale = replace(pipes["auto"].scale, band=(lo, hi))
    results["scale_band"] = list(pipes["auto"].scale.band) if "auto" in pipes else None
    op_conf = next(iter(pipes.values())).detector.weights.class_conf(None)
    for source in ("bccd", "pbc"):
        recs = [r for r in load_sources([source], args.data_root, (args.split,)) if r.complete]
        images = [read_image(r.path) for r in recs]
        per = results["sources"][source] = {}
        for z in zooms:
            fields = [zoom_field(recs, images, k, z) for k in range(len(recs))]
            zrecs = [AnnotatedImage(f"{r.image_id}@{z}", Path(f"{r.image_id}@{z}.png"), im.shape[1], im.shape[0], b,
                                    cl, source, args.split, "zoom", True)
                     for r, (im, b, cl) in zip(recs, fields)]
            zimgs = [im for im, _, _ in fields]
            for mode, pipe in pipes.items():
                r = evaluate_set(pipe, zrecs, zimgs, op_conf)
                per.setdefault(str(z), {})[mode] = r
                print(f"{source} {args.split} zoom {z:<4} scale {mode:<4} mAP50 {r['mAP50']:.3f} "
                      f"err RBC {r['count_error']['RBC']:.3f} WBC {r['count_error']['WBC']:.3f} "
                      f"Plt {r['count_error']['Platelets']:.3f} WBC exact {r['wbc_exact']:.2f} "
                      f"({r['fields_per_s']} fields/s) {r['scale_status']}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
