"""Compare subtype checkpoints on validation data only, per lab, to choose which one ships.

    python scripts/compare_subtype_candidates.py --weights runs/v1.pt runs/sub_all4_inorm/best.pt ... \
        --json benchmarks/results/subtype_candidates_val.json

Per lab, val macro-F1: BCCD and Tecom from the committed split's val rows (``hemocount/classify/splits/
wbc_subtype.csv``; all classes present there), PBC from ``pbc_wbc``'s val rows, LISC from its val groups
(classes with >= 10 distinct cells, per crop, as the LOLO tables). The criterion, fixed before any
candidate was scored: the highest mean of the four; the committed split's overall val macro-F1 is shown
beside it. Test splits are never read here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hemocount.classify.evaluate import evaluate_classifier  # noqa: E402
from hemocount.classify.infer import Classifier  # noqa: E402
from hemocount.classify.lolo import new_lab_reports  # noqa: E402


def score(weights: str, root: str | None) -> dict[str, Any]:
    """Per-lab val macro-F1 of one checkpoint and their mean."""
    committed = evaluate_classifier(task="wbc_subtype", weights=weights, data_root=root, split="val", engine="torch")
    labs = {src: committed["per_source"][src]["macro_f1"] for src in ("bccd", "tecom")}
    clf = Classifier.from_weights(weights, task="wbc_subtype", engine="torch")
    for lab, rep in new_lab_reports(clf, "val", root).items():
        labs[lab] = rep["per_crop"]["macro_f1_eligible"]
    return {"weights": weights, "labs": labs, "mean": round(sum(labs.values()) / len(labs), 4),
            "committed_val_macro_f1": committed["overall"]["macro_f1"]}


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", nargs="+", required=True)
    ap.add_argument("--data-root")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = [score(w, a.data_root) for w in a.weights]
    print("| weights | BCCD | Tecom | PBC (pbc_wbc) | LISC | mean | committed val macro-F1 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        lab = r["labs"]
        print(f"| {r['weights']} | {lab['bccd']:.3f} | {lab['tecom']:.3f} | {lab['pbc']:.3f} | {lab['lisc']:.3f} "
              f"| **{r['mean']:.3f}** | {r['committed_val_macro_f1']:.3f} |")
    best = max(rows, key=lambda r: r["mean"])
    print(f"chosen (highest mean): {best['weights']}")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "chosen": best["weights"]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
