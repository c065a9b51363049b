"""Where the trust flags' thresholds come from: chroma and stain coverage on validation fields.

    python benchmarks/qc_measures.py --json benchmarks/results/qc_measures_val.json

For BCCD val and PBC val fields (the labs the detector was trained on), counted by the shipped detector
as ``count`` does, it prints the distribution of

- ``chroma`` (mean max-min channel difference; ``QCConfig.min_chroma`` flags ``no_colour``), and
- ``coverage`` (share of stained pixels inside a detection box; ``QCConfig.min_coverage`` flags
  ``missed_cells``),

and the same fields made unfamiliar: grayscale, a cyan-tinted background with blue-grey cells (hue
rotated by 90 degrees, as another lab's stain), and a 2-px defocus; the share of fields flagged in each.
These stand-ins are not another lab: they show that the flags fire on such fields, not how often a real
unseen lab trips them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import split_parser


def variants(img: np.ndarray) -> dict[str, np.ndarray]:
    """The field and its unfamiliar stand-ins."""
    import cv2

    gray = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + 45) % 180  # OpenCV hue is 0-179: +45 = 90 degrees
    return {"as is": img, "grayscale": gray, "hue +90 deg": cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR),
            "defocus 2 px": cv2.GaussianBlur(img, (0, 0), 2)}


def main() -> None:
    ap = split_parser(__doc__)
    args = ap.parse_args()

    from hemocount.datasets.sources import load_sources
    from hemocount.io import read_image
    from hemocount.pipeline import Pipeline

    pipe = Pipeline.from_pretrained("yolo", classify=False)
    out: dict = {}
    for source in ("bccd", "pbc"):
        recs = load_sources([source], args.data_root, (args.split,))
        rows: dict[str, list[dict]] = {}
        for r in recs:
            for name, img in variants(read_image(r.path)).items():
                res = pipe.predict([img], color="bgr")[0]
                rows.setdefault(name, []).append({"chroma": res.quality["chroma"], "coverage": res.quality["coverage"],
                                                  "flags": [f["code"] for f in res.flags],
                                                  "counts": res.counts()})
        out[source] = {}
        for name, rs in rows.items():
            ch = np.array([x["chroma"] for x in rs])
            cov = np.array([x["coverage"] for x in rs])
            flagged = {code: round(float(np.mean([code in x["flags"] for x in rs])), 3)
                       for code in ("no_colour", "missed_cells", "scale_unknown", "scale_out_of_range", "blurred")}
            out[source][name] = {"fields": len(rs), "chroma_p0_p5_p50": np.percentile(ch, [0, 5, 50]).round(2).tolist(),
                                 "coverage_p0_p1_p5_p50": np.percentile(cov, [0, 1, 5, 50]).round(3).tolist(),
                                 "flagged": flagged}
            print(f"{source} {args.split} {name:<13} n={len(rs)} chroma p0/p5/p50 {out[source][name]['chroma_p0_p5_p50']} "
                  f"coverage p0/p1/p5/p50 {out[source][name]['coverage_p0_p1_p5_p50']} flagged {flagged}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
