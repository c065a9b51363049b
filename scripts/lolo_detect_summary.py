"""Print the detector leave-one-lab-out table from the JSON files ``scripts/lolo_detect.sh`` writes.

    python scripts/lolo_detect_summary.py --split val            # recipes compared (val decides)
    python scripts/lolo_detect_summary.py --split test           # the once-only test evaluation

One row per (training lab, recipe, evaluated lab, scale): mAP50, mAP50-95, AP50 per class, and at the
operating thresholds (chosen on the training lab's val) the per-image count error per class
(sum |pred - true| / sum true over fields), the share of fields with the exact WBC count and platelet
precision/recall. Goals of issue 13 for the held-out lab's test split: mAP50 >= 0.85, RBC count error
<= 0.10, WBC exact on >= 90 % of fields, platelet precision >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

CLASSES = ("RBC", "WBC", "Platelets")
NAME = re.compile(r"lolo_det_(?P<recipe>\w+?)_train-(?P<lab>bccd|pbc)_e(?P<epochs>\d+)_on-(?P<target>bccd|pbc)_"
                  r"(?P<split>val|test)(?P<scale>_scale-auto)?\.json$")


def row(path: Path) -> dict[str, Any] | None:
    """One table row from one evaluation file (None for other files)."""
    m = NAME.match(path.name)
    if not m:
        return None
    r = json.loads(path.read_text())
    op = r["operating_point"]
    counts = r["count"]["complete_labels"]["per_class"] or r["count"]["all_images"]["per_class"]
    return {**m.groupdict(), "scale": "auto" if m["scale"] else "none", "held_out": m["lab"] != m["target"],
            "mAP50": r["mAP50"], "mAP50_95": r["mAP50_95"],
            "AP50": {c: r["per_class"][c]["AP50"] for c in CLASSES},
            "count_error": {c: None if counts[c]["accuracy"] is None else round(1 - counts[c]["accuracy"], 3)
                            for c in CLASSES},
            "wbc_exact": op["wbc_exact_share"], "plt_precision": op["Platelets"]["precision"],
            "plt_recall": op["Platelets"]["recall"], "images": op["images"]}


def _f(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.0f} %" if pct else f"{v:.3f}"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown, held-out rows first, sorted by training lab, recipe and scale."""
    head = ("| trained on | recipe | evaluated on | scale | mAP50 | mAP50-95 | AP50 RBC / WBC / PLT | count error "
            "RBC / WBC / PLT | WBC exact | PLT precision / recall |")
    out = [head, "|" + " --- |" * 10]
    for r in sorted(rows, key=lambda r: (not r["held_out"], r["lab"], r["recipe"], r["scale"])):
        where = f"{r['target']} ({'held out' if r['held_out'] else 'in-domain'}, {r['images']})"
        out.append(f"| {r['lab']} | {r['recipe']} | {where} | {r['scale']} | {_f(r['mAP50'])} | "
                   f"{_f(r['mAP50_95'])} | {' / '.join(_f(r['AP50'][c]) for c in CLASSES)} | "
                   f"{' / '.join(_f(r['count_error'][c]) for c in CLASSES)} | {_f(r['wbc_exact'], True)} | "
                   f"{_f(r['plt_precision'])} / {_f(r['plt_recall'])} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent.parent / "weights" / "eval")
    args = ap.parse_args()
    rows = [r for p in sorted(args.dir.glob("lolo_det_*.json")) if (r := row(p)) and r["split"] == args.split]
    print(table(rows))


if __name__ == "__main__":
    main()
