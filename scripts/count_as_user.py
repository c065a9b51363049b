"""Run ``hemocount count`` on labelled single-cell images as a user would, and score what it reports.

The images of one source's split are linked into one slide folder and counted by the CLI (shipped models,
default options). Each image's labelled cell is the detected WBC whose box overlaps the dataset's own
(stain-segmented) box best (IoU >= 0.3); an image with no such WBC counts as a missed cell, a WBC called
``uncertain`` as wrong. This is issue 14's "tried as a new user would" measurement, made repeatable:

    python scripts/count_as_user.py --source pbc --split test --out runs/user_pbc --json weights/eval/user_count_pbc_test.json
    python scripts/count_as_user.py --source lisc --split test --one-per-group --out runs/user_lisc
    python scripts/count_as_user.py --source allidb2 --split test --label healthy --out runs/user_allidb2_healthy

Only the split's images are used, so a source the shipped model trained on is still scored on cells it
never saw (same lab, though: in-domain for every source the manifest lists).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from hemocount.classify.data import CellSample, load_cells
from hemocount.classify.metrics import classification_report
from hemocount.classify.sources import read_source_rows
from hemocount.classify.stain_box import box_iou

SUBTYPES = ("neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil")


def _cells(source: str, split: str, label: str | None, one_per_group: bool) -> list[CellSample]:
    pool = load_cells("all") if source == "allidb2" else read_source_rows()
    cells = [c for c in pool if c.source == source and c.split == split and (label is None or c.label == label)]
    if one_per_group:  # LISC: 3-8 shifted crops of each physical cell; keep the first of each
        seen: set[str] = set()
        cells = [c for c in sorted(cells, key=lambda c: c.id) if not (c.group in seen or seen.add(c.group))]
    return cells


def _link(cells: list[CellSample], slide: Path) -> dict[str, CellSample]:
    slide.mkdir(parents=True)
    names = {}
    for i, c in enumerate(cells):
        name = f"{i:05d}_{c.path.name}"
        (slide / name).symlink_to(c.path.resolve())
        names[name] = c
    return names


def _score(names: dict[str, CellSample], out: Path) -> dict[str, Any]:
    wbcs: dict[str, list[dict[str, str]]] = {}
    with (out / "cells.csv").open(newline="") as fh:
        for r in csv.DictReader(fh):
            if r["class"] == "WBC":
                wbcs.setdefault(Path(r["image"]).name, []).append(r)
    preds, all_probs, n_wbc = {}, [], Counter()
    for name, c in names.items():
        found = wbcs.get(name, [])
        n_wbc[min(len(found), 3)] += 1
        all_probs += [float(r["all_prob"]) for r in found if r["all_prob"]]
        best = max(found, key=lambda r: box_iou(c.box, tuple(float(r[k]) for k in ("x1", "y1", "x2", "y2"))),
                   default=None)
        ok = best is not None and box_iou(c.box, tuple(float(best[k]) for k in ("x1", "y1", "x2", "y2"))) >= 0.3
        preds[name] = (best["subtype"] or "uncertain") if ok else "missed"
    with (out / "slides.csv").open(newline="") as fh:
        slide = next(csv.DictReader(fh))
    res: dict[str, Any] = {
        "images": len(names), "wbcs_found": sum(len(v) for v in wbcs.values()),
        "images_by_wbcs_found": {("3+" if k == 3 else str(k)): v for k, v in sorted(n_wbc.items())},
        "labelled_cell": dict(Counter(preds.values())),
        "all_prob_ge_0.9": int(sum(p >= 0.9 for p in all_probs)), "all_prob_ge_0.5": int(sum(p >= 0.5 for p in all_probs)),
        "slide_all_flag": slide["all_flag"], "slide_flags": slide["flags"]}
    labels = [names[n].label for n in names]
    if set(labels) <= set(SUBTYPES):
        classes = (*SUBTYPES, "uncertain", "missed")
        y = np.array([classes.index(v) for v in labels])
        onehot = np.eye(len(classes))[[classes.index(preds[n]) for n in names]]
        rep = classification_report(y, onehot, classes)
        res["accuracy"] = float(np.mean([preds[n] == names[n].label for n in names]))
        found = [n for n in names if preds[n] != "missed"]  # the classifier's share, apart from the detector's
        res["accuracy_where_found"] = float(np.mean([preds[n] == names[n].label for n in found])) if found else None
        res["macro_f1_subtypes"] = float(np.mean([rep["per_class"][c]["f1"] for c in SUBTYPES
                                                  if rep["per_class"][c]["support"] > 0]))
        res["per_class"] = {c: rep["per_class"][c] for c in SUBTYPES}
        res["confusion"] = {lab: dict(Counter(preds[n] for n in names if names[n].label == lab)) for lab in SUBTYPES}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, choices=("pbc", "lisc", "allidb2"))
    ap.add_argument("--split", default="test", choices=("train", "val", "test"))
    ap.add_argument("--label", help="only cells of this label (e.g. healthy)")
    ap.add_argument("--one-per-group", action="store_true", help="one crop per distinct cell (LISC)")
    ap.add_argument("--out", type=Path, required=True, help="new folder: the slide's links and the run")
    ap.add_argument("--json", type=Path)
    ap.add_argument("count_args", nargs="*", help="extra options for hemocount count, after --")
    a = ap.parse_args()
    if a.out.exists():
        sys.exit(f"{a.out}: exists; choose a new folder")
    names = _link(_cells(a.source, a.split, a.label, a.one_per_group), a.out / "slides" / a.source)
    cmd = ["hemocount", "count", str(a.out / "slides"), "-o", str(a.out / "run"), "--no-report", "--no-annotate", *a.count_args]
    print(" ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=sys.stderr)  # stdout: the JSON only
    res = {"source": a.source, "split": a.split, "label": a.label, "one_per_group": a.one_per_group,
           "command": " ".join(cmd), **_score(names, a.out / "run")}
    text = json.dumps(res, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
