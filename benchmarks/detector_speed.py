"""Milliseconds per field of every detector backend on the same real fields (BCCD test, 640x480).

Each backend runs in this process one after the other, on all cores, one field per call (the
latency a user sees per field) and four per call, after two warm-up calls; model loading is
excluded. Prints one row per backend and the ratio to YOLO's torch engine.

    python benchmarks/detector_speed.py --data-root ../shared/data [--frcnn-weights runs/frcnn/best.pt]

Each backend runs with its shipped model (``--frcnn-weights`` times another Faster R-CNN checkpoint).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any


def time_backend(det: Any, images: list[Any], batch: int, repeat: int) -> list[float]:
    """Seconds per field of each call, over ``repeat`` passes of ``images`` in batches of ``batch``."""
    conf = det.weights.class_conf()
    iou = float(det.weights.thresholds.get("iou", 0.6))
    max_det = int(det.weights.thresholds.get("max_det", 1000))
    for _ in range(2):
        det.predict(images[:batch], conf=conf, iou=iou, max_det=max_det)
    per_field = []
    for _ in range(repeat):
        for s in range(0, len(images) - batch + 1, batch):
            t0 = time.perf_counter()
            det.predict(images[s:s + batch], conf=conf, iou=iou, max_det=max_det)
            per_field.append((time.perf_counter() - t0) / batch)
    return per_field


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", help="dataset root (default: $HEMOCOUNT_DATA)")
    ap.add_argument("--fields", type=int, default=24, help="BCCD test fields to time (default 24)")
    ap.add_argument("--frcnn-weights", help="a Faster R-CNN checkpoint (default: the shipped model)")
    ap.add_argument("--frcnn-fields", type=int, default=8, help="fields for Faster R-CNN, which is slow (default 8)")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    from hemocount.datasets.sources import load_bccd
    from hemocount.detect import load_detector
    from hemocount.io import read_image
    from hemocount.runtime import use_all_cores

    threads = use_all_cores()
    records = load_bccd(args.data_root, splits=("test",))[: args.fields]
    images = [read_image(r.path) for r in records]
    contenders = [
        ("yolo (torch)", lambda: load_detector("yolo", engine="torch"), images),
        ("yolo (onnx)", lambda: load_detector("yolo", engine="onnx"), images),
        ("classical (opencv)", lambda: load_detector("classical"), images),
        ("frcnn (torch)", lambda: load_detector("frcnn", args.frcnn_weights),
         images[: args.frcnn_fields]),
    ]
    print(f"{len(images)} BCCD test fields 640x480, {threads} torch threads", file=sys.stderr)
    rows = []
    for name, make, imgs in contenders:
        det = make()
        row = {"backend": name}
        for batch in (1, 4):
            t = time_backend(det, imgs, batch, args.repeat if "frcnn" not in name else 1)
            row[f"ms_b{batch}"] = 1000 * statistics.median(t)
        rows.append(row)
        print(f"  {name}: {row['ms_b1']:.1f} ms/field", file=sys.stderr)
    base = rows[0]["ms_b1"]
    print(f"{'backend':<20} {'ms/field (1 per call)':>22} {'ms/field (4 per call)':>22} {'x yolo torch':>13}")
    for r in rows:
        print(f"{r['backend']:<20} {r['ms_b1']:>22.1f} {r['ms_b4']:>22.1f} {base / r['ms_b1']:>13.2f}")


if __name__ == "__main__":
    main()
