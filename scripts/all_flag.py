"""Measure (and choose on validation) the slide-level ALL flag on healthy blood of every lab.

    python scripts/all_flag.py --all-weights resnet50-all --name shipped --splits val test
    python scripts/all_flag.py --all-weights runs/all_v3/best.pt --name v3 --choose --splits val

``--choose`` picks gate, k and t on the VAL split (``hemocount.classify.allflag.choose_rule``) and then
reports that rule on every split given; ``--k K`` scores the rule >= K cells >= 0.9 (no gate); with neither,
the rule the shipped model of that id carries in the manifest.
Writes ``weights/eval/all_flag_<name>_<split>.json``.

    python scripts/all_flag.py --rescore weights/eval/all_flag_grft_nobccd_val.json --k 2 --name grft_k2_nobccd

re-scores a written report under another k (same t, no gate) from its stored counts
(``hemocount.classify.allflag.rescore_report``), for folds whose checkpoints are gone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hemocount.classify.allflag import all_flag_report, choose_rule, make_draws, rescore_report, score_pools
from hemocount.io import atomic_write_json
from hemocount.weights import list_weights


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--all-weights", help="required unless --rescore")
    ap.add_argument("--rescore", type=Path, help="a written report to re-score under --k")
    ap.add_argument("--k", type=int,
                    help="the rule's k (no gate, t 0.9; default: the shipped model's rule); with --rescore the new k")
    ap.add_argument("--subtype-weights", default=None, help="default: the shipped subtype model (the gate's calls)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--splits", nargs="+", default=["val"], choices=["val", "test"])
    ap.add_argument("--choose", action="store_true", help="choose gate/k/t on val (the split list must start with val)")
    ap.add_argument("--data-root")
    ap.add_argument("--out-dir", type=Path, default=Path("weights/eval"))
    a = ap.parse_args()
    if a.rescore:
        if a.k is None:
            raise SystemExit("--rescore needs --k")
        res = rescore_report(json.loads(a.rescore.read_text()), a.k)
        path = a.out_dir / f"all_flag_{a.name}_{res['split']}.json"
        atomic_write_json(path, res)
        print(json.dumps({"split": res["split"], "rule": res["rule"], "slides": res["slides"]}))
        print("wrote", path)
        return
    if not a.all_weights:
        raise SystemExit("--all-weights is required")
    rule, chosen = (_manifest_rule(a.all_weights) if a.k is None else ("none", a.k, 0.9)), None
    for split in a.splits:
        pools, blasts, healthy = score_pools(a.subtype_weights, a.all_weights, split, a.data_root)
        if a.choose and chosen is None:
            if split != "val":
                raise SystemExit("--choose needs val first: rules are never chosen on test")
            chosen = choose_rule(pools, blasts, make_draws(pools, len(blasts.truth)))
            rule = (chosen["gate"], chosen["k"], chosen["t"])
        res = {"all_weights": a.all_weights, "subtype_weights": a.subtype_weights or "resnet50-wbc-subtype",
               "split": split, "rule_source": "chosen on val" if chosen else f"given ({' '.join(map(str, rule))})",
               "choice": chosen, **all_flag_report(pools, blasts, healthy, rule)}
        path = a.out_dir / f"all_flag_{a.name}_{split}.json"
        atomic_write_json(path, res)
        print(json.dumps({"split": split, "rule": res["rule"], "allidb2": res["allidb2_cells"],
                          "slides": res["slides"],
                          "cells_fp_0.9": {k: v["positive_rate"] for k, v in res["cells_ungated_p_ge_0.9"].items()}}))
        print("wrote", path)


def _manifest_rule(weights: str) -> tuple[str, int, float]:
    """The slide rule a shipped ALL model carries in the manifest (a checkpoint carries none: give --k)."""
    entry = next((e for e in list_weights() if e.id == weights), None)
    flag = entry.thresholds.get("slide_flag") if entry is not None else None
    if not flag:
        raise SystemExit(f"{weights}: no slide rule in the manifest; give --k K (or --choose)")
    return ("none", int(flag["min_cells"]), float(flag["prob"]))


if __name__ == "__main__":
    main()
