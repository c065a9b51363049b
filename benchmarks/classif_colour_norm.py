"""Does a test-time colour normalisation of each WBC crop lift the leave-one-lab-out (LOLO) subtype folds on
the lab they never saw? Inference only: no model is trained or changed.

What it measures. Each fold ``runs/lolo_base_<LAB>/best.pt`` (ResNet-50 GN, 64 px, trained on the three other
labs without any normalisation) classifies the held-out lab's ``--split`` cells (val by default; ``test`` is
deliberately not offered) with the crops of ``hemocount eval classify --holdout-source`` (same rows, same
``crop_cell``), after one normaliser ``crops_rgb uint8 -> crops_rgb uint8`` (``benchmarks/colour_norm.py``):

- ``none``: the crops as evaluated (must reproduce ``weights/eval/lolo_subtype_base_<LAB>_<split>.json``);
- ``reinhard_lab``: per crop, each L*a*b* channel's mean/std set to the reference's (Reinhard 2001);
- ``rgb_std``: per crop, each RGB channel's mean/std set to the reference's (channel standardisation);
- ``grey_world``: per crop, a gain per RGB channel so the channel means become the reference's;
- ``gray``: luma replicated to three channels (no reference);
- ``hed_std``: per crop, each Ruifrok-Johnston stain density's mean/std (optical density) set to the reference's;
- ``macenko``: per crop, Macenko's two stain vectors fitted and re-expressed in the reference's vectors,
  99th-percentile densities matched;
- ``lab_reinhard_lab``: ONE L*a*b* transform for the whole held-out lab, from its split's mean per-crop
  statistics (unlabelled, transductive: a stand-in for slide- or batch-level normalisation) to the reference.

The reference of a fold is computed on the fold's training crops only (the three other labs' ``train``
split), each crop weighted as the fold's class-balanced sampler draws it (``train.sampling_weights``), i.e.
the colour of a typical training draw before augmentation. Metrics are those of ``hemocount.classify.lolo``:
accuracy, macro-F1 over the classes with >= 10 distinct cells (LISC: groups), per-class F1, per crop and
per cell.

What it cannot tell. The folds were trained on un-normalised crops, so any normaliser moves the input away
from what the model learnt: a gain here is a lower bound on what training with the same normalisation would
give, and a loss does not show that the normalisation is useless once trained with. It is one seed of one
under-trained fold per lab; BCCD (85 val cells) and Tecom (59) average only 2-3 classes and LISC (44 val
cells) one, so differences of a few points there are a handful of cells. Per-crop normalisers also remove
colour that carries class information (a basophil crop is darker overall than a neutrophil crop), which a
model trained with them would have to do without; the lab-level variant keeps it but needs a batch of the
new lab's cells.

    HEMOCOUNT_DATA=../shared/data HEMOCOUNT_THREADS=1 nice -n 19 python benchmarks/classif_colour_norm.py --split val
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks.colour_norm` from any cwd

CLASSES = ("neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil")
CANDIDATES = ("none", "reinhard_lab", "rgb_std", "grey_world", "gray", "hed_std", "macenko", "lab_reinhard_lab")
Normaliser = Callable[[np.ndarray], np.ndarray]


def fold_normalisers(train_crops: np.ndarray, weights: np.ndarray, held_crops: np.ndarray,
                     wanted: list[str]) -> tuple[dict[str, Normaliser], dict[str, Any]]:
    """The candidate normalisers of one fold (references fitted on its training crops) and those references."""
    from benchmarks import colour_norm as cn

    refs = {space: cn.fit_reference(train_crops, space, weights) for space in ("lab", "rgb", "hed")}
    info: dict[str, Any] = {s: r.as_dict() for s, r in refs.items()}
    fns: dict[str, Normaliser] = {
        "none": lambda x: x,
        "reinhard_lab": lambda x: cn.match_to_reference(x, refs["lab"]),
        "rgb_std": lambda x: cn.match_to_reference(x, refs["rgb"]),
        "grey_world": lambda x: cn.grey_world(x, refs["rgb"]),
        "gray": cn.grayscale3,
        "hed_std": lambda x: cn.match_to_reference(x, refs["hed"]),
    }
    if "macenko" in wanted:
        basis = cn.fit_stain_basis(train_crops, weights)
        info["macenko"] = {"vectors": np.round(basis.vectors, 4).tolist(), "max_conc": np.round(basis.max_conc, 4).tolist()}
        fns["macenko"] = lambda x: cn.macenko(x, basis)
    if "lab_reinhard_lab" in wanted:
        src = cn.mean_stats(*cn.crop_stats(held_crops, "lab"))
        info["held_out_lab_stats"] = {"mean": np.round(src[0], 4).tolist(), "std": np.round(src[1], 4).tolist()}
        fns["lab_reinhard_lab"] = lambda x: cn.match_to_reference(x, refs["lab"], source=src)
    return {k: v for k, v in fns.items() if k in wanted}, info


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The part of a ``holdout_report`` view the table needs, plus its confusion matrix."""
    return {"n": report["n"], "accuracy": report["accuracy"], "macro_f1_eligible": report["macro_f1_eligible"],
            "eligible_classes": report["eligible_classes"],
            "f1": {c: report["per_class"][c]["f1"] for c in CLASSES},
            "confusion_rows_true_cols_pred": report["confusion_matrix"]["rows_true_cols_pred"]}


def run_fold(lab: str, cells: list[Any], split: str, runs: Path, wanted: list[str],
             crop_cache: dict[tuple[int, float], np.ndarray], eval_dir: Path) -> dict[str, Any]:
    """Every candidate on one fold's held-out cells."""
    from hemocount.classify.infer import Classifier
    from hemocount.classify.lolo import holdout_cells, holdout_report
    from hemocount.classify.sources import training_sources
    from hemocount.classify.train import classifier_crops, sampling_weights

    weights = runs / f"lolo_base_{lab}" / "best.pt"
    clf = Classifier.from_weights(str(weights), task="wbc_subtype", engine="torch")
    if clf.meta.get("holdout") != lab:
        raise SystemExit(f"{weights} held out {clf.meta.get('holdout')!r}, not {lab!r}")
    recipe_file = weights.parent / "recipe.json"
    balance = json.loads(recipe_file.read_text())["recipe"]["balance"] if recipe_file.exists() else "class"
    key = (clf.size, clf.pad)
    all_train = [c for c in cells if c.split == "train"]
    if key not in crop_cache:
        t = time.perf_counter()
        crop_cache[key] = classifier_crops(clf, all_train)
        print(f"loaded {len(all_train)} train crops in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    fold = np.array([c.source in training_sources(lab) for c in all_train])
    train_crops = crop_cache[key][fold]
    train_w = sampling_weights([c for c, f in zip(all_train, fold) if f], balance)

    held = holdout_cells(cells, lab, split)
    x = classifier_crops(clf, held)
    fns, refs = fold_normalisers(train_crops, train_w, x, wanted)
    out: dict[str, Any] = {"weights": str(weights), "sha256": clf.weights.sha256, "n_train_reference": int(fold.sum()),
                           "reference_weighting": f"train.sampling_weights(balance={balance!r})",
                           "references": refs, "candidates": {}}
    for name, fn in fns.items():
        t = time.perf_counter()
        xn = fn(x)
        t_norm = time.perf_counter() - t
        probs = clf.predict_crops(xn)
        rep = holdout_report(held, probs, clf.classes)
        out["distinct_cells"] = rep["distinct_cells"]
        out["candidates"][name] = {"per_crop": summary(rep["per_crop"]), "per_cell": summary(rep["per_cell"]),
                                   "seconds_normalise": round(t_norm, 2),
                                   "seconds_total": round(time.perf_counter() - t, 1)}
        pc = rep["per_crop"]
        print(f"{lab:6s} {name:17s} acc {pc['accuracy']:.4f} macroF1 {pc['macro_f1_eligible']:.4f} "
              f"({time.perf_counter() - t:.0f}s)", file=sys.stderr, flush=True)
    base = eval_dir / f"lolo_subtype_base_{lab}_{split}.json"
    if base.exists() and "none" in out["candidates"]:
        ref = json.loads(base.read_text())["per_crop"]
        mine = out["candidates"]["none"]["per_crop"]
        out["baseline_check"] = {"file": str(base), "accuracy": ref["accuracy"], "macro_f1_eligible": ref["macro_f1_eligible"],
                                 "reproduced": ref["accuracy"] == mine["accuracy"]
                                 and ref["macro_f1_eligible"] == mine["macro_f1_eligible"]}
    return out


def table(results: dict[str, Any], view: str = "per_crop") -> str:
    """Markdown: one row per lab x candidate (macro-F1 over eligible classes, accuracy, per-class F1)."""
    lines = ["| held-out lab | candidate | macro-F1 (classes >= 10 cells) | accuracy | "
             + " | ".join(CLASSES) + " |", "|" + " --- |" * (4 + len(CLASSES))]
    means: dict[str, list[float]] = {}
    for lab, r in results.items():
        for name, c in r["candidates"].items():
            v = c[view]
            means.setdefault(name, []).append(v["macro_f1_eligible"])
            f1 = " | ".join("–" if v["f1"][k] is None else f"{v['f1'][k]:.3f}" for k in CLASSES)
            lines.append(f"| {lab} | {name} | {v['macro_f1_eligible']:.3f} ({len(v['eligible_classes'])}) | "
                         f"{v['accuracy']:.3f} | {f1} |")
    lines.append("")
    lines.append("| candidate | mean macro-F1 over labs |")
    lines.append("| --- | --- |")
    for name, m in means.items():
        lines.append(f"| {name} | {np.mean(m):.3f} ({len(m)} labs) |")
    return "\n".join(lines)


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="val", choices=["val", "dev"], help="held-out lab's split (never test)")
    ap.add_argument("--labs", nargs="+", default=["bccd", "tecom", "pbc", "lisc"])
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--eval-dir", type=Path, default=Path("weights/eval"), help="baseline JSONs to check 'none' against")
    ap.add_argument("--data-root")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    os.environ.setdefault("HEMOCOUNT_THREADS", "1")

    from hemocount.classify.data import load_cells
    from hemocount.classify.sources import SUBTYPE_SOURCES
    from hemocount.io import atomic_write_json
    from hemocount.runtime import core_count, set_threads

    threads = set_threads(core_count())  # $HEMOCOUNT_THREADS (1 by default here): the CPU is shared
    t0, cpu0 = time.perf_counter(), time.process_time()
    cells = load_cells("wbc_subtype", a.data_root, sources=list(SUBTYPE_SOURCES))
    crop_cache: dict[tuple[int, float], np.ndarray] = {}
    results = {lab: run_fold(lab, cells, a.split, a.runs, a.candidates, crop_cache, a.eval_dir) for lab in a.labs}
    res = {"split": a.split, "argv": sys.argv, "torch_threads": threads,
           "wall_seconds": round(time.perf_counter() - t0), "cpu_seconds": round(time.process_time() - cpu0),
           "view_in_table": "per_crop", "folds": results,
           "mean_macro_f1_eligible": {name: round(float(np.mean([r["candidates"][name]["per_crop"]["macro_f1_eligible"]
                                                                  for r in results.values()])), 4)
                                      for name in a.candidates}}
    out = a.out or Path(__file__).resolve().parent / "results" / f"classif_colour_norm_{a.split}.json"
    atomic_write_json(out, res)
    print(f"\n### held-out {a.split}, per crop\n\n{table(results)}\n\n### per cell\n\n{table(results, 'per_cell')}")
    print(f"\nwall {res['wall_seconds']} s, CPU {res['cpu_seconds']} s -> {out}")


if __name__ == "__main__":
    main()
