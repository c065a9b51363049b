"""Measure each subtype lab's red-cell diameter in pixels (its magnification), for RBC-scaled WBC crops.

The crop sets come without red-cell boxes, so the shipped detector measures them as ``count`` would: on a
seeded sample of each lab's images (all splits: the measurement uses no label), the median of the per-image
median RBC diameter (longer box side of whole red cells, at the operating thresholds). A lab whose images
show too few whole red cells (Tecom's tight 120 px crops) gets a label-free estimate instead: its median
WBC box side divided by the other labs' pooled median WBC-side / RBC-diameter ratio. Writes
``hemocount/classify/splits/lab_scale.json``; run once, committed, never tuned.

    HEMOCOUNT_DATA=../shared/data python scripts/lab_rbc_scale.py [--per-lab 120]
    HEMOCOUNT_DATA=../shared/data python scripts/lab_rbc_scale.py --labs allidb2   # add one source

``--labs`` measures only those sources and merges them into the existing file (ALL-IDB2, source
``allidb2``, is measured so that an RBC-scaled ALL model can be trained on its crops).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

#: What is measured: the four subtype labs and ALL-IDB2 (for an RBC-scaled ALL model).
ALL_SOURCES = ["bccd", "tecom", "pbc", "lisc", "allidb2"]
#: Fewer images with a red-cell estimate than this: the lab's scale comes from its WBC sizes instead.
MIN_IMAGES = 20


def relative_sizes(cells: list, rbc_px: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per lab and class, the median WBC box side in red-cell diameters (why RBC-scaled crops: the size a
    box-scaled crop throws away). Labels are used for this report only, never for the scale."""
    sides: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in (c for c in cells if c.source in rbc_px):
        sides[c.source][c.label].append(max(c.box[2] - c.box[0], c.box[3] - c.box[1]) / rbc_px[c.source])
    return {lab: {k: round(statistics.median(v), 2) for k, v in sorted(by.items())} for lab, by in sides.items()}


def main() -> None:
    import hemocount
    from hemocount.classify.data import load_cells
    from hemocount.classify.lab_scale import SCALE_FILE
    from hemocount.classify.sources import SUBTYPE_SOURCES, load_subtype_sources
    from hemocount.io import atomic_write_json, read_image
    from hemocount.scale import rbc_diameter

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-lab", type=int, default=120, help="images measured per lab (seeded sample)")
    ap.add_argument("--out", type=Path, default=SCALE_FILE)
    # "none": each image read at its own scale, as count reads a field whose red cells are in the detector's
    # band (BCCD, PBC, LISC); Tecom's tight crops would otherwise send every image through the slow window
    # search for the red cells its crops do not show
    ap.add_argument("--scale", default="none", help="the detector's scale handling (default none)")
    ap.add_argument("--labs", nargs="+", default=ALL_SOURCES, choices=ALL_SOURCES,
                    help="sources to measure (default: all); a subset is merged into the existing --out")
    ap.add_argument("--sizes-only", action="store_true",
                    help="only (re)compute the relative WBC sizes from the red-cell diameters in --out")
    args = ap.parse_args()
    table = json.loads(args.out.read_text()) if args.out.exists() else {"labs": {}}
    cells = load_subtype_sources(SUBTYPE_SOURCES)
    wanted = set(table["labs"]) if args.sizes_only else set(args.labs)
    if "allidb2" in wanted:  # its data is only needed where ALL-IDB2 is measured
        cells += load_cells("all")
    if args.sizes_only:
        table["wbc_side_in_rbc_diameters"] = relative_sizes(cells, {k: v["rbc_px"] for k, v in table["labs"].items()})
        atomic_write_json(args.out, table)
        print(json.dumps(table["wbc_side_in_rbc_diameters"], indent=1))
        return
    by_lab: dict[str, dict[Path, tuple[float, ...]]] = defaultdict(dict)
    for c in cells:
        by_lab[c.source].setdefault(c.path, c.box)
    pipe = hemocount.Pipeline.from_pretrained(classify=False, scale=args.scale)
    rng = random.Random(0)
    per_image: dict[str, list[float]] = {}
    for lab in args.labs:
        paths = sorted(by_lab[lab])
        sample = rng.sample(paths, min(len(paths), args.per_lab))
        found = []
        for p in sample:
            img = read_image(p)
            d = pipe.detect([img])[0][0]
            px, _ = rbc_diameter(d, img.shape[1], img.shape[0], min_rbc=1)
            if px:
                found.append(px)
        per_image[lab] = found
        print(lab, len(sample), "images,", len(found), "with red cells, median",
              round(statistics.median(found), 1) if found else None, flush=True)
    measured = {lab: statistics.median(v) for lab, v in per_image.items() if len(v) >= MIN_IMAGES}

    def side(box: tuple[float, ...]) -> float:
        return max(box[2] - box[0], box[3] - box[1])

    merge = set(args.labs) != set(ALL_SOURCES)
    old = table if merge else {}
    # the WBC-size fallback's ratio comes from the four subtype labs: recomputed when they were all measured
    # now, else kept from the file (the top-level detector / per_lab / scale then describe this last run)
    ratio = (statistics.median(side(c.box) / measured[c.source] for c in cells
                               if c.source in measured and c.source in SUBTYPE_SOURCES)
             if set(SUBTYPE_SOURCES) <= set(args.labs) else old["wbc_side_over_rbc_pooled"])
    labs = dict(old.get("labs", {}))
    for lab in args.labs:
        v = per_image[lab]
        entry = {"images_measured": min(len(by_lab[lab]), args.per_lab), "images_with_rbc": len(v)}
        if lab in measured:
            entry |= {"rbc_px": round(measured[lab], 2), "method": "detector",
                      "iqr": [round(float(np.percentile(v, q)), 2) for q in (25, 75)]}
        else:
            wbc = statistics.median(side(c.box) for c in cells if c.source == lab)
            entry |= {"rbc_px": round(wbc / ratio, 2), "method": "wbc_size", "median_wbc_side": round(wbc, 2),
                      "detector_rbc_px": round(statistics.median(v), 2) if v else None}
        labs[lab] = entry
        print(lab, json.dumps(entry))
    atomic_write_json(args.out, {**old, "labs": labs, "wbc_side_over_rbc_pooled": round(ratio, 4),
                                 "wbc_side_in_rbc_diameters": relative_sizes(cells, {k: v["rbc_px"]
                                                                                     for k, v in labs.items()}),
                                 "detector": pipe.detector.weights.id if hasattr(pipe.detector, "weights") else "",
                                 "per_lab": args.per_lab, "seed": 0, "scale": args.scale})


if __name__ == "__main__":
    main()
