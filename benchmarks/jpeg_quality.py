"""Counts and the ``compressed`` QC flag on fields re-encoded as heavier and heavier JPEG.

    python benchmarks/jpeg_quality.py --split val --json benchmarks/results/jpeg_quality_val.json
    python benchmarks/jpeg_quality.py --split test --json benchmarks/results/jpeg_quality_test.json

Fields with complete labels (BCCD with TXL-PBC labels, PBC) are re-encoded with OpenCV at JPEG quality
100 (as shipped, not re-encoded), 50, 30, 20, 15, 10 and 5 and counted with the shipped pipeline
(``classify=False``, scale auto). Per source and quality: pooled count error per class (sum |pred - true| /
sum true), blockiness percentiles (hemocount.qc.blockiness) and the share of fields flagged ``compressed``
and flagged with any trust code. The threshold ``QCConfig.blocky_above`` was read off the val split; test
is reported once. Shipped BCCD fields are themselves JPEGs of unknown quality: "100" means as shipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import split_parser

QUALITIES = (100, 50, 30, 20, 15, 10, 5)


def main() -> None:
    ap = split_parser(__doc__)
    args = ap.parse_args()

    import cv2

    from hemocount import CELL_CLASSES
    from hemocount.datasets.sources import load_sources
    from hemocount.io import read_image
    from hemocount.pipeline import Pipeline
    from hemocount.qc import untrusted

    pipe = Pipeline.from_pretrained("yolo", classify=False)
    out: dict = {"split": args.split, "blocky_above": pipe.qc.blocky_above, "sources": {}}
    for source in ("bccd", "pbc"):
        recs = [r for r in load_sources([source], args.data_root, (args.split,)) if r.complete]
        images = [read_image(r.path) for r in recs]
        true = {c: np.array([sum(x == c for x in r.classes) for r in recs], float) for c in CELL_CLASSES}
        for q in QUALITIES:
            enc = images if q == 100 else [
                cv2.imdecode(cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_COLOR)
                for im in images]
            res = pipe.predict(enc, color="bgr")
            blocky = np.array([r.quality["blockiness"] for r in res])
            row = {"fields": len(res),
                   "count_error": {c: round(float(np.abs(np.array([r.counts()[c] for r in res]) - true[c]).sum()
                                                  / max(true[c].sum(), 1)), 4) for c in CELL_CLASSES},
                   "blockiness_min_p5_p50_p95_max": np.percentile(blocky, [0, 5, 50, 95, 100]).round(2).tolist(),
                   "flagged_compressed": round(float(np.mean([any(f["code"] == "compressed" for f in r.flags)
                                                              for r in res])), 3),
                   "flagged_any_trust_code": round(float(np.mean([bool(untrusted(r.flags)) for r in res])), 3)}
            out["sources"].setdefault(source, {})[str(q)] = row
            print(f"{source} {args.split} q{q:<3} count error {row['count_error']} blockiness "
                  f"{row['blockiness_min_p5_p50_p95_max']} compressed {row['flagged_compressed']:.0%} "
                  f"any {row['flagged_any_trust_code']:.0%}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
