"""Which per-slide score tells a lab the subtype classifier never saw? (issue 14, item 4; inference only)

    python benchmarks/classif_domain_shift.py --recipe inorm --split val --json benchmarks/results/classif_domain_shift_val.json
    python benchmarks/classif_domain_shift.py --recipe inorm --split test --json benchmarks/results/classif_domain_shift_test.json

For every leave-one-lab-out fold ``runs/lolo_<recipe>_<lab>/best.pt`` (trained on the other three labs):

1. Per-WBC scores, each "higher = less familiar":
   - ``msp``: 1 - max softmax probability;
   - ``energy``: -logsumexp(logits) (Liu et al. 2020);
   - ``maha``: the product's :class:`hemocount.classify.familiarity.FeatureReference`, fitted on the three
     training labs' *train* crops (Mahalanobis distance to the nearest class mean, PCA to 64 dimensions);
   - ``maha+energy``, ``maha+msp``: a slide flagged if either part is (each part at half the false-alarm rate).
2. Simulated healthy slides (normal adult differential, ``hemocount.classify.allflag.draw_slides``) of
   20, 50, 100 and 200 WBCs, 1000 per lab; a slide's score is the mean of its WBCs' scores.
3. Thresholds per slide size exactly as shipped (:func:`hemocount.classify.familiarity.slide_thresholds`):
   from the three training labs' *val* cells, at most 5 % of each lab's slides flagged. Reported: the share
   of slides flagged on ``--split`` for every lab: the held-out lab (should be high) and the training labs
   (false alarms; on val these are <= 5 % by construction, on test they are a fair estimate).

Choose a score on ``--split val``; run ``--split test`` once afterwards. Features are cached per fold in
``runs/lolo_<recipe>_<lab>/features_*.npz``. Caveats: slides are simulated from single-cell crops (drawn
with replacement: BCCD and Tecom have few val/test cells), the folds are one seed each, and the "unseen
lab" is always one of four similar Wright/Giemsa-stained labs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LABS = ("bccd", "tecom", "pbc", "lisc")
SCORES = ("msp", "energy", "maha")
#: Scores combined: a slide is flagged if any part exceeds its threshold (each at 5 % / parts).
COMBINED = {"maha+energy": ("maha", "energy"), "maha+msp": ("maha", "msp")}
SLIDE_SIZES = (20, 50, 100, 200)
#: Sizes that get a threshold (``--per-size``: every size, the first rule; default: as shipped).
THRESHOLD_SIZES: tuple[int, ...] = (20,)


def features_and_logits(clf: Any, crops: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features (N, 2048) and logits (N, K) of a torch classifier."""
    import torch

    from hemocount.classify.model import logits_and_features
    from hemocount.classify.train import normalize, to_tensor

    net = logits_and_features(clf.model)
    feats, logits = [], []
    with torch.inference_mode():
        for s in range(0, len(crops), batch):
            lg, f = net(normalize(to_tensor(crops[s:s + batch])).contiguous(memory_format=torch.channels_last))
            logits.append(lg.float().numpy())
            feats.append(f.float().numpy())
    return np.concatenate(feats), np.concatenate(logits)


def cell_scores(feats: np.ndarray, logits: np.ndarray, ref: Any) -> dict[str, np.ndarray]:
    """Every candidate score per cell (``ref``: the product's FeatureReference)."""
    from scipy.special import logsumexp, softmax

    return {"msp": 1 - softmax(logits, axis=1).max(1), "energy": -logsumexp(logits, axis=1),
            "maha": ref.score(feats).astype(np.float64)}


def cached_features(clf: Any, cells: list[Any], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features and logits of ``cells``, cached in ``path`` (keyed by the cells' ids)."""
    from hemocount.classify.train import classifier_crops

    ids = np.array([c.id for c in cells])
    if path.exists():
        z = np.load(path)
        if np.array_equal(z["ids"], ids):
            return z["feats"], z["logits"]
    f, lp = features_and_logits(clf, classifier_crops(clf, cells))
    np.savez(path, ids=ids, feats=f.astype(np.float32), logits=lp)
    return f, lp


def run_fold(recipe: str, lab: str, split: str, root: str | None, runs: Path, n_slides: int) -> dict[str, Any]:
    """One fold: thresholds from the training labs' val cells (as shipped), flag rates on ``split``'s slides."""
    from hemocount.classify.familiarity import FeatureReference, simulated_slide_means, slide_thresholds
    from hemocount.classify.infer import Classifier
    from hemocount.classify.sources import load_subtype_sources

    t0 = time.time()
    clf = Classifier.from_weights(str(runs / f"lolo_{recipe}_{lab}" / "best.pt"), task="wbc_subtype", engine="torch")
    cells = load_subtype_sources(LABS, root)
    cache = runs / f"lolo_{recipe}_{lab}"
    train = [c for c in cells if c.split == "train" and c.source != lab]
    f_tr, _ = cached_features(clf, train, cache / "features_train.npz")
    ref = FeatureReference.fit(f_tr, np.array([c.label for c in train]))
    scored: dict[str, dict[str, tuple[dict[str, np.ndarray], np.ndarray]]] = {}
    for sp in sorted({"val", split}):
        scored[sp] = {}
        for src in LABS:
            sel = [c for c in cells if c.split == sp and c.source == src]
            f, lg = cached_features(clf, sel, cache / f"features_{sp}_{src}.npz")
            scored[sp][src] = (cell_scores(f, lg, ref), np.array([c.label for c in sel]))
    inside = [src for src in LABS if src != lab]
    out: dict[str, Any] = {"cells": {src: len(scored[split][src][1]) for src in LABS}, "flagged": {}}
    for name in (*SCORES, *COMBINED):
        parts = COMBINED.get(name, (name,))
        alarm = 0.05 / len(parts)  # Bonferroni: a slide flagged by any part stays <= 5 % per lab
        # as shipped: one threshold per score, from 20-WBC slides (hemocount.classify.familiarity.SLIDE_SIZES)
        th = {p: slide_thresholds({src: (scored["val"][src][0][p], scored["val"][src][1]) for src in inside},
                                  THRESHOLD_SIZES, n_slides, alarm) for p in parts}
        out["flagged"][name] = {}
        for n in SLIDE_SIZES:
            rates = {}
            for i, src in enumerate(LABS):
                sc, truth = scored[split][src]
                hit = np.zeros(n_slides, bool)
                for p in parts:  # the same seeded slides for every part
                    t = th[p][max(k for k in th[p] if k <= n)]
                    hit |= simulated_slide_means(sc[p], truth, n, n_slides, 7919 + 100 * i + n) > t
                rates[src] = round(float(hit.mean()), 4)
            out["flagged"][name][str(n)] = {"thresholds": {p: th[p][max(k for k in th[p] if k <= n)]
                                                           for p in parts}, **rates}
    out["seconds"] = round(time.time() - t0, 1)
    return out


def shipped_rates(split: str, root: str | None, n_slides: int) -> dict[str, Any]:
    """The shipped subtype model's check as ``count`` applies it (its reference and thresholds from the
    manifest) on simulated healthy slides of every lab's ``split`` cells: all four labs are in-domain for it,
    so every flag is a false alarm."""
    from hemocount.classify.familiarity import crop_stain_vectors, simulated_slide_means
    from hemocount.classify.infer import Classifier
    from hemocount.classify.sources import load_subtype_sources
    from hemocount.classify.train import classifier_crops

    clf = Classifier.from_weights(None, task="wbc_subtype", engine="torch")
    ref = clf.reference
    if ref is None:
        raise SystemExit("the shipped subtype model carries no feature reference")
    cells = load_subtype_sources(LABS, root)
    out: dict[str, Any] = {"weights": clf.weights.id, "sha256": clf.weights.sha256, "split": split, "labs": {}}
    for i, src in enumerate(LABS):
        sel = [c for c in cells if c.split == split and c.source == src]
        crops = classifier_crops(clf, sel)
        probs, f = clf.predict_with_features(crops)
        dist, unc, truth = ref.score(f), 1 - probs.max(1), np.array([c.label for c in sel])
        colour = crop_stain_vectors(crops) if ref.stain is not None else None
        rates, by_test = {}, {}
        for n in SLIDE_SIZES:
            seed = 7919 + 100 * i + n  # the same slides for every test
            tests = {}
            if ref.thresholds:
                tests["distance"] = simulated_slide_means(dist, truth, n, n_slides, seed) > ref.threshold_for(n)
            if ref.uncertainty_thresholds:
                tests["uncertainty"] = simulated_slide_means(unc, truth, n, n_slides, seed) > ref.threshold_for(
                    n, ref.uncertainty_thresholds)
            if colour is not None and ref.stain_thresholds:
                means = simulated_slide_means(np.asarray(colour, np.float64), truth, n, n_slides, seed)
                tests["colour"] = np.array([ref.stain.distance(m) for m in means]) > ref.threshold_for(
                    n, ref.stain_thresholds)
            rates[str(n)] = round(float(np.any(list(tests.values()), axis=0).mean()), 4)
            by_test[str(n)] = {k: round(float(v.mean()), 4) for k, v in tests.items()}
        out["labs"][src] = {"cells": len(sel), "flagged": rates, "flagged_by_test": by_test}
        print(f"shipped {split} {src}: {len(sel)} cells, slides flagged {rates}", flush=True)
    return out


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="inorm")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--labs", nargs="+", default=list(LABS), choices=LABS, help="folds (held-out labs) to run")
    ap.add_argument("--slides", type=int, default=1000)
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--data-root")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--per-size", action="store_true", help="a threshold per slide size (the first rule)")
    ap.add_argument("--shipped", action="store_true", help="the shipped model's own check on every lab's slides")
    a = ap.parse_args()
    if a.per_size:
        global THRESHOLD_SIZES
        THRESHOLD_SIZES = SLIDE_SIZES
    if a.shipped:
        res_shipped = shipped_rates(a.split, a.data_root, a.slides)
        if a.json:
            a.json.write_text(json.dumps(res_shipped, indent=1) + "\n")
        return
    res = {"recipe": a.recipe, "split": a.split, "slide_sizes": list(SLIDE_SIZES), "n_slides": a.slides, "folds": {}}
    for lab in a.labs:
        res["folds"][lab] = run_fold(a.recipe, lab, a.split, a.data_root, a.runs, a.slides)
        for s, rows in res["folds"][lab]["flagged"].items():
            row = " ".join(f"n={n}: held-out {f[lab]:.3f} in-domain max "
                           f"{max(v for k, v in f.items() if k not in (lab, 'thresholds')):.3f}"
                           for n, f in rows.items())
            print(f"fold {lab} {s:7s} {row}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
