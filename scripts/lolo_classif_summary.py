"""Evaluate leave-one-lab-out folds on their held-out labs and print the summary table.

    python scripts/lolo_classif_summary.py --recipes base hed --split val
    python scripts/lolo_classif_summary.py --recipes base --split test   # the chosen recipe only, once
    python scripts/lolo_classif_summary.py --pick-size inorm:64 inorm96:96 --split val   # prints 64 or 96
    python scripts/lolo_classif_summary.py --pick inorm inorm_gray inorm_gray_rbc --split val   # a recipe name

Each fold ``runs/lolo_<recipe>_<lab>/best.pt`` is evaluated on lab ``<lab>``'s split (the fold never saw
that lab); metrics go to ``weights/eval/lolo_subtype_<recipe>_<lab>_<split>.json``. The table's macro-F1
averages classes with >= 10 distinct cells on that split (LISC: groups), per crop.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hemocount.classify.lolo import HOLDOUT_SPLITS, evaluate_holdout
from hemocount.classify.sources import SUBTYPE_SOURCES

CLASSES = ("neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil")


def fold_metrics(recipe: str, lab: str, split: str, runs: Path, out_dir: Path, root: str | None) -> dict[str, Any]:
    """Evaluate one fold (or reuse its JSON if it was already written for these weights)."""
    out = out_dir / f"lolo_subtype_{recipe}_{lab}_{split}.json"
    weights = runs / f"lolo_{recipe}_{lab}" / "best.pt"
    if out.exists():
        return json.loads(out.read_text())
    return evaluate_holdout(weights=str(weights), holdout=lab, split=split, data_root=root, out=out)


def table(results: dict[str, dict[str, Any]], view: str = "per_crop") -> str:
    """Markdown table: per lab accuracy, eligible macro-F1, per-class F1 (distinct cells), and the mean."""
    head = "| held-out lab | n | accuracy | macro-F1 (classes >= 10 cells) | " + " | ".join(CLASSES) + " |"
    lines = [head, "|" + " --- |" * (4 + len(CLASSES))]
    f1s = []
    for lab, r in results.items():
        v = r[view]
        cells = " | ".join(f"{v['per_class'][c]['f1'] or 0:.3f} ({r['distinct_cells'].get(c, 0)})" for c in CLASSES)
        m = v["macro_f1_eligible"]
        f1s.append(m)
        lines.append(f"| {lab} | {v['n']} | {v['accuracy']} | {m} ({len(v['eligible_classes'])}) | {cells} |")
    ok = [f for f in f1s if f is not None]
    lines.append(f"| **mean** | | | **{sum(ok) / len(ok):.3f}** | |" + " |" * (len(CLASSES) - 1) if ok else "")
    return "\n".join(lines)


def mean_macro_f1(recipe: str, split: str, labs: list[str], runs: Path, out_dir: Path, root: str | None) -> float:
    """Mean held-out macro-F1 (eligible classes, per crop) of a recipe's folds; every fold must exist."""
    f1s = [fold_metrics(recipe, lab, split, runs, out_dir, root)["per_crop"]["macro_f1_eligible"] for lab in labs]
    return sum(f1s) / len(f1s)


def pick_size(choices: list[str], split: str, labs: list[str], runs: Path, out_dir: Path, root: str | None) -> int:
    """The crop size of the ``recipe:size`` choice with the highest mean held-out macro-F1 (ties: the first)."""
    scored = [(mean_macro_f1(c.split(":")[0], split, labs, runs, out_dir, root), -i, int(c.split(":")[1]))
              for i, c in enumerate(choices)]
    for (f1, _, size), c in zip(scored, choices):
        print(f"{c}: mean {split} macro-F1 {f1:.4f}", file=sys.stderr)
    return max(scored)[2]


def pick_recipe(recipes: list[str], split: str, labs: list[str], runs: Path, out_dir: Path,
                root: str | None) -> str:
    """The recipe with the highest mean held-out macro-F1 (ties: the first)."""
    scored = [(mean_macro_f1(r, split, labs, runs, out_dir, root), -i, r) for i, r in enumerate(recipes)]
    for f1, _, r in scored:
        print(f"{r}: mean {split} macro-F1 {f1:.4f}", file=sys.stderr)
    return max(scored)[2]


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipes", nargs="+", default=["base"])
    ap.add_argument("--split", default="val", choices=HOLDOUT_SPLITS)
    ap.add_argument("--labs", nargs="+", default=list(SUBTYPE_SOURCES))
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--out-dir", type=Path, default=Path("weights/eval"))
    ap.add_argument("--data-root")
    ap.add_argument("--pick-size", nargs="+", metavar="RECIPE:SIZE",
                    help="print the size of the recipe with the highest mean macro-F1 (no table)")
    ap.add_argument("--pick", nargs="+", metavar="RECIPE",
                    help="print the recipe with the highest mean macro-F1 (no table)")
    a = ap.parse_args()
    if a.pick:
        print(pick_recipe(a.pick, a.split, a.labs, a.runs, a.out_dir, a.data_root))
        return
    if a.pick_size:
        print(pick_size(a.pick_size, a.split, a.labs, a.runs, a.out_dir, a.data_root))
        return
    for recipe in a.recipes:
        res = {lab: fold_metrics(recipe, lab, a.split, a.runs, a.out_dir, a.data_root) for lab in a.labs
               if (a.runs / f"lolo_{recipe}_{lab}" / "best.pt").exists()
               or (a.out_dir / f"lolo_subtype_{recipe}_{lab}_{a.split}.json").exists()}
        for view in ("per_crop", "per_cell"):
            print(f"\n### recipe {recipe}, held-out {a.split}, {view.replace('_', ' ')}\n\n{table(res, view)}")


if __name__ == "__main__":
    main()
