"""Red cells in clumps: how many RBCs a detector counts on BCCD fields, against two label sets.

BCCD's original VOC XML leaves most clumped red cells unboxed; the TXL-PBC re-annotation covers 160 BCCD
images with complete labels. On the split's fields *without* TXL labels only the XML exists (an
under-count: the XML boxes about 11 RBCs per field where TXL boxes 20 on comparable fields), so a
detector that counts far below the XML there misses clumped cells for certain; on the fields *with* TXL
labels, RBC recall (IoU >= 0.5, one-to-one) and the count against the complete labels say how much.

    python benchmarks/clumps.py --split val                       # the shipped detector
    python benchmarks/clumps.py --split test --weights runs/det2/train/weights/best.pt

What it cannot tell: the XML total is a floor, not the truth, so counting more than the XML on the
XML-only fields is not an error by itself; the issue's reference numbers (v1 on BCCD test's XML-only
fields: 290 RBCs counted where the XML boxes 349; Faster R-CNN 424) come from the same fields.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import split_parser
from hemocount import CELL_CLASSES


def rbc_counts(records: list[Any], preds: list[Any], conf: dict[str, float]) -> dict[str, Any]:
    """Counted vs labelled RBCs, recall at the operating point, and the five fields counted furthest below."""
    from hemocount.detect.evaluate import operating_point

    k = CELL_CLASSES.index("RBC")
    rows = [{"image": r.image_id, "counted": int(np.sum((d.class_id == k) & (d.confidence >= conf["RBC"]))),
             "labelled": sum(c == "RBC" for c in r.classes)} for r, d in zip(records, preds)]
    worst = sorted(rows, key=lambda x: x["counted"] - x["labelled"])[:5]
    return {"fields": len(rows), "counted": sum(x["counted"] for x in rows),
            "labelled": sum(x["labelled"] for x in rows),
            "recall": operating_point(records, preds, conf)["RBC"]["recall"], "worst": worst}


def main() -> None:
    ap = split_parser(__doc__)
    ap.add_argument("--weights", default="yolo11n-cells", help="detector weights (default: shipped)")
    args = ap.parse_args()
    from hemocount.datasets.sources import load_bccd
    from hemocount.detect import load_detector
    from hemocount.detect.evaluate import predict_records

    det = load_detector("yolo", args.weights, engine="torch")
    th = det.weights.thresholds
    conf = det.weights.class_conf(None)
    best = load_bccd(args.data_root, splits=(args.split,))
    xml = {r.image_id: r for r in load_bccd(args.data_root, splits=(args.split,), labels="xml")}
    complete = [r for r in best if r.complete]
    xml_only = [xml[r.image_id] for r in best if not r.complete]
    iou, max_det = float(th.get("iou", 0.6)), int(th.get("max_det", 1000))
    out = {"weights": args.weights, "split": args.split, "rbc_conf": conf["RBC"],
           "xml_only_fields": rbc_counts(xml_only, predict_records(det, xml_only, iou=iou, max_det=max_det), conf),
           "complete_fields": rbc_counts(complete, predict_records(det, complete, iou=iou, max_det=max_det), conf)}
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
