"""Compare ALL-model recipes by their leave-one-healthy-lab-out rows (``scripts/all_flag.py`` outputs), and
pick one on the VAL split by a rule fixed before the folds ran.

    python scripts/all_flag_lolo_summary.py v3f grf --split val            # table + the pick
    # only for the picked recipe, once: score its folds' test rows, then tabulate them
    python scripts/all_flag.py --all-weights runs/all_grf_noLAB/best.pt --name grf_noLAB --splits test
    python scripts/all_flag_lolo_summary.py v3f grf --split test --no-pick

Each recipe NAME has one file per held-out lab, ``weights/eval/all_flag_<NAME>_no<lab>_<split>.json``; only
the held-out lab's rows of each fold are read (the other labs were the fold's negatives).

The pick (written down on 2026-12-02 before any ``grf`` fold finished): a recipe is eligible if in every
fold at least 95 % of the held-out lab's 100-WBC slides with 20 % blasts are flagged (the issue's
sensitivity goal) and the fold's ALL-IDB2 val sensitivity (p >= 0.5) is at least 0.85; among eligible
recipes, the lowest mean false-flag rate of the held-out labs' healthy 100-WBC slides wins; ties (within
0.01) go to the higher mean ALL-IDB2 specificity.

    python scripts/all_flag_lolo_summary.py grft --choose-k        # the slide rule's k, on the LOLO val folds

``--choose-k`` picks the slide rule for a model of the recipe from its leave-one-lab-out VAL folds: each fold's
report re-scored for k = 1..10 at the same t from its counts (``hemocount.classify.allflag.rescore_report``),
the smallest k whose held-out labs all meet the issue's goals (healthy slides of 100 and 200 WBCs <= 1 %
flagged, 100-WBC slides with 20 % blasts >= 95 %). Smallest: the false-flag goal is the constraint, measured
where it matters (a lab the model never saw), and within it sensitivity is what is left to gain. Writes
``weights/eval/all_flag_<NAME>_lolo_rule_val.json``, which ``release_weights.py --slide-flag-from`` reads.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from hemocount.io import atomic_write_json

LABS = ("bccd", "tecom", "pbc", "lisc")
EVAL = Path(__file__).resolve().parent.parent / "weights" / "eval"


def fold_rows(name: str, split: str) -> dict[str, dict[str, float]]:
    """Per held-out lab: healthy slides flagged (100 / 200 WBCs), blast-slide sensitivity, cell FP rate and
    ALL-IDB2 sensitivity / specificity of the fold that left that lab out."""
    rows = {}
    for lab in LABS:
        path = EVAL / f"all_flag_{name}_no{lab}_{split}.json"
        if not path.exists():
            raise SystemExit(f"{path}: missing (bash scripts/lolo_classif.sh ...)")
        r = json.loads(path.read_text())
        s100, s200 = r["slides"][f"{lab}@100"], r["slides"][f"{lab}@200"]
        rows[lab] = {"healthy@100": s100["healthy"], "healthy@200": s200["healthy"], "blast20@100": s100["blast_0.2"],
                     "blast5@100": s100["blast_0.05"], "blast5@200": s200["blast_0.05"],
                     "cells>=0.9": r["cells_ungated_p_ge_0.9"][lab]["positive_rate"],
                     "allidb2_sens": r["allidb2_cells"]["sensitivity_p_ge_0.5"],
                     "allidb2_spec": r["allidb2_cells"]["specificity_p_ge_0.5"]}
    return rows


def verdict(rows: dict[str, dict[str, float]]) -> tuple[bool, float, float]:
    """(eligible, mean healthy@100 false-flag rate, mean ALL-IDB2 specificity) of one recipe."""
    eligible = all(r["blast20@100"] >= 0.95 and r["allidb2_sens"] >= 0.85 for r in rows.values())
    return (eligible, statistics.mean(r["healthy@100"] for r in rows.values()),
            statistics.mean(r["allidb2_spec"] for r in rows.values()))


def choose_k(name: str, max_false_flags: float = 0.01, min_sensitivity: float = 0.95) -> dict[str, Any]:
    """The smallest k (t and gate of the folds' reports) meeting the goals on every held-out lab's val slides."""
    from hemocount.classify.allflag import KS, rescore_report

    reports = {lab: json.loads((EVAL / f"all_flag_{name}_no{lab}_val.json").read_text()) for lab in LABS}
    ts = {r["rule"]["t"] for r in reports.values()}
    if len(ts) != 1:
        raise SystemExit(f"{name}: the folds' reports were scored at different t ({sorted(ts)})")
    table, pick = {}, None
    for k in KS:
        rows = {}
        for lab in LABS:
            r = rescore_report(reports[lab], k)
            s100, s200 = r["slides"][f"{lab}@100"], r["slides"][f"{lab}@200"]
            rows[lab] = {"healthy@100": s100["healthy"], "healthy@200": s200["healthy"],
                         "blast20@100": s100["blast_0.2"], "blast5@100": s100["blast_0.05"],
                         "blast5@200": s200["blast_0.05"]}
        ok = all(max(v["healthy@100"], v["healthy@200"]) <= max_false_flags and v["blast20@100"] >= min_sensitivity
                 for v in rows.values())
        table[k] = {"meets_goals": ok, "held_out": rows}
        if ok and pick is None:
            pick = k
    if pick is None:
        raise SystemExit("no k meets the goals on every held-out lab")
    t = ts.pop()
    return {"split": "val", "recipe": name,
            "choice": {"gate": "none", "k": pick, "t": t, "chosen_by": "smallest k with every held-out lab's "
                       f"healthy slides (100, 200 WBCs) <= {max_false_flags:.0%} flagged and 20 %-blast 100-WBC "
                       f"slides >= {min_sensitivity:.0%} (leave-one-lab-out val folds, re-scored from counts)"},
            "table": table}


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="+", help="recipe names (fold files all_flag_<NAME>_no<lab>_<split>.json)")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--no-pick", action="store_true", help="only print the table")
    ap.add_argument("--choose-k", action="store_true", help="choose the slide rule's k on the val folds of NAME")
    a = ap.parse_args()
    if a.choose_k:
        if len(a.names) != 1 or a.split != "val":
            raise SystemExit("--choose-k takes one recipe name and reads its val folds only")
        res = choose_k(a.names[0])
        atomic_write_json(EVAL / f"all_flag_{a.names[0]}_lolo_rule_val.json", res)
        for k, v in res["table"].items():
            rows = {lab: {c: round(x, 3) for c, x in r.items()} for lab, r in v["held_out"].items()}
            print(k, v["meets_goals"], rows)
        print(json.dumps(res["choice"]))
        return
    cols = ["healthy@100", "healthy@200", "blast20@100", "blast5@100", "blast5@200", "cells>=0.9",
            "allidb2_sens", "allidb2_spec"]
    print(f"| recipe | held-out lab | {' | '.join(cols)} |")
    print("|" + " --- |" * (len(cols) + 2))
    verdicts = {}
    for name in a.names:
        rows = fold_rows(name, a.split)
        for lab, r in rows.items():
            print(f"| {name} | {lab} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
        verdicts[name] = verdict(rows)
        ok, fp, spec = verdicts[name]
        print(f"| {name} | mean | healthy@100 {fp:.3f}, ALL-IDB2 specificity {spec:.3f}, eligible {ok} |")
    if a.no_pick or a.split != "val":
        return
    eligible = {n: v for n, v in verdicts.items() if v[0]}
    if not eligible:
        raise SystemExit("no recipe meets the sensitivity conditions")
    best_fp = min(v[1] for v in eligible.values())
    tied = [n for n, v in eligible.items() if v[1] <= best_fp + 0.01]
    pick = max(tied, key=lambda n: eligible[n][2])
    print(json.dumps({"pick": pick, "split": a.split, "rule": "lowest mean held-out healthy@100 false flags "
                      "among recipes with blast20@100 >= 0.95 and ALL-IDB2 sensitivity >= 0.85 in every fold"}))


if __name__ == "__main__":
    main()
