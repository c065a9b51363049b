"""The slide-level ALL flag on healthy blood: per-cell false positives, simulated slides, gate and rule.

A slide is flagged when at least ``k`` of its WBCs that pass the ``gate`` (the subtype model's call,
e.g. lymphocyte or monocyte: blasts look lymphoid) have ALL probability ``>= t``. Healthy slides are
simulated per lab from that lab's labelled WBCs with a normal adult differential; ALL slides are the same
slides with a fraction of the WBCs replaced by ALL-IDB2 blasts. Draws are seeded and shared by every
rule compared (common random numbers), so rules differ only by the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np

#: Normal adult differential (fractions of WBCs), issue 14.
DIFFERENTIAL = {"neutrophil": 0.60, "lymphocyte": 0.30, "monocyte": 0.06, "eosinophil": 0.03, "basophil": 0.01}
#: Which subtype calls the ALL score applies to.
GATES: dict[str, tuple[str, ...]] = {
    "none": ("neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil"),
    "lymph_mono": ("lymphocyte", "monocyte"),
    "lymph": ("lymphocyte",),
}
#: The rule ``resnet50-all`` v1-v3 shipped with: >= 3 cells with ALL probability >= 0.9, no gate (v4's, >= 5
#: cells, chosen on the leave-one-lab-out val folds, is in its manifest entry, ``thresholds.slide_flag``).
LEGACY_RULE = ("none", 3, 0.9)
THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)
KS = tuple(range(1, 11))


@dataclass
class ScoredPool:
    """Scored WBCs of one lab and split: true subtype (or ``ALL``), subtype-model call, ALL probability."""

    truth: np.ndarray
    called: np.ndarray
    p_all: np.ndarray
    ids: list[str] = field(default_factory=list)

    def hits(self, gate: str, t: float) -> np.ndarray:
        """Boolean per cell: passes the gate and scores ``>= t``."""
        return np.isin(self.called, GATES[gate]) & (self.p_all >= t)

    def subset(self, mask: np.ndarray) -> ScoredPool:
        """The cells where ``mask`` is True."""
        return ScoredPool(self.truth[mask], self.called[mask], self.p_all[mask],
                          [i for i, m in zip(self.ids, mask) if m] if self.ids else [])


@dataclass
class SlideDraws:
    """Seeded cell indices of simulated slides of one lab: ``healthy`` (S, n) into the lab's pool, and for
    each blast fraction the replaced positions and blast indices into the blast pool."""

    healthy: np.ndarray
    blasts: dict[float, tuple[np.ndarray, np.ndarray]]


def healthy_slides(truth: np.ndarray, n_wbc: int, n_slides: int, rng: np.random.Generator) -> np.ndarray:
    """Cell indices ``(n_slides, n_wbc)`` into ``truth`` (the cells' subtypes) of simulated healthy slides: a
    multinomial normal differential, cells drawn with replacement within each subtype; subtypes absent from
    ``truth`` are redistributed."""
    classes = [c for c in DIFFERENTIAL if np.any(truth == c)]
    probs = np.array([DIFFERENTIAL[c] for c in classes])
    probs /= probs.sum()
    counts = rng.multinomial(n_wbc, probs, size=n_slides)
    members = [np.flatnonzero(truth == c) for c in classes]
    healthy = np.empty((n_slides, n_wbc), int)
    for s in range(n_slides):
        healthy[s] = np.concatenate([rng.choice(m, size=k) for m, k in zip(members, counts[s])])
    return healthy


def draw_slides(pool: ScoredPool, blast_pool_size: int, n_wbc: int, n_slides: int = 1000, seed: int = 0,
                blast_fractions: tuple[float, ...] = (0.2, 0.05)) -> SlideDraws:
    """Draw healthy slides (multinomial differential, cells with replacement from the lab's pool of each
    subtype) and which WBCs each blast fraction replaces. Subtypes absent from the pool are redistributed."""
    rng = np.random.default_rng(seed)
    healthy = healthy_slides(pool.truth, n_wbc, n_slides, rng)
    blasts = {}
    for frac in blast_fractions:
        n_b = int(round(frac * n_wbc))
        pos = np.stack([rng.choice(n_wbc, size=n_b, replace=False) for _ in range(n_slides)])
        blasts[frac] = (pos, rng.integers(0, blast_pool_size, size=(n_slides, n_b)))
    return SlideDraws(healthy, blasts)


def flag_rates(draws: SlideDraws, pool: ScoredPool, blast_pool: ScoredPool, gate: str, k: int,
               t: float) -> dict[str, float]:
    """Fraction of simulated slides flagged: healthy (false flags) and per blast fraction (sensitivity)."""
    h = pool.hits(gate, t)[draws.healthy]
    out = {"healthy": float(np.mean(h.sum(axis=1) >= k))}
    bh = blast_pool.hits(gate, t)
    for frac, (pos, idx) in draws.blasts.items():
        slide = h.copy()
        np.put_along_axis(slide, pos, bh[idx], axis=1)
        out[f"blast_{frac:g}"] = float(np.mean(slide.sum(axis=1) >= k))
    return out


def cell_rates(pool: ScoredPool, gate: str, t: float) -> dict[str, Any]:
    """Per-cell positive rate (gate and threshold), overall and per true subtype."""
    hits = pool.hits(gate, t)
    out: dict[str, Any] = {"n": int(len(hits)), "positive_rate": round(float(hits.mean()), 4) if len(hits) else None}
    out["per_subtype"] = {c: {"n": int((pool.truth == c).sum()), "positive": int(hits[pool.truth == c].sum())}
                          for c in sorted(set(pool.truth.tolist()))}
    return out


def evaluate_rule(pools: dict[str, ScoredPool], blast_pool: ScoredPool, draws: dict[tuple[str, int], SlideDraws],
                  gate: str, k: int, t: float) -> dict[str, Any]:
    """Per lab and slide size: false-flag rate and sensitivities of rule (gate, k, t)."""
    return {f"{lab}@{n}": flag_rates(d, pools[lab], blast_pool, gate, k, t) for (lab, n), d in sorted(draws.items())}


def choose_rule(pools: dict[str, ScoredPool], blast_pool: ScoredPool, draws: dict[tuple[str, int], SlideDraws],
                max_false_flags: float = 0.01, min_sensitivity: float = 0.95) -> dict[str, Any]:
    """The (gate, k, t) to use, chosen on VALIDATION pools only.

    A rule qualifies when its worst lab flags at most ``max_false_flags`` of healthy slides (every slide
    size). Among those, the most conservative rule that still flags ``min_sensitivity`` of the worst lab's
    20 %-blast and then 5 %-blast slides: the largest k, then the highest t. Why conservative: validation
    pools are a few hundred cells per lab, so a rule that zero observed false positives make look perfect
    at k = 1 may still flag real slides on one stray cell; a larger k and t leave that margin. Ties after
    that go to the better sensitivities. If no rule qualifies, the one with the fewest worst-lab false flags.
    """
    scored = []
    for gate, k, t in product(GATES, KS, THRESHOLDS):
        res = evaluate_rule(pools, blast_pool, draws, gate, k, t)
        worst_ff = max(v["healthy"] for v in res.values())
        sens5 = min(v.get("blast_0.05", 0.0) for v in res.values())
        sens20 = min(v.get("blast_0.2", 0.0) for v in res.values())
        key = (worst_ff <= max_false_flags, sens20 >= min_sensitivity, sens5 >= min_sensitivity, k, t, sens5, sens20)
        scored.append((key, {"gate": gate, "k": k, "t": t, "worst_false_flags": worst_ff,
                             "worst_sensitivity_5pct": sens5, "worst_sensitivity_20pct": sens20}))
    ok = [s for s in scored if s[0][0]]
    best = max(ok, key=lambda s: s[0])[1] if ok else min(scored, key=lambda s: s[1]["worst_false_flags"])[1]
    best["qualified"] = bool(ok)
    return best


def score_pools(subtype_weights: str | None, all_weights: str | None, split: str, root: str | None,
                labs: tuple[str, ...] = ("bccd", "tecom", "pbc", "lisc"),
                engine: str = "torch") -> tuple[dict[str, ScoredPool], ScoredPool, ScoredPool]:
    """Score ``split`` of every healthy lab and of ALL-IDB2 with both models.

    Returns:
        Per-lab healthy pools, the ALL-IDB2 blast pool and the ALL-IDB2 healthy pool.
    """
    from hemocount.classify.data import load_cells
    from hemocount.classify.infer import Classifier
    from hemocount.classify.sources import load_subtype_sources

    sub = Classifier.from_weights(subtype_weights, task="wbc_subtype", engine=engine)
    alm = Classifier.from_weights(all_weights, task="all", engine=engine)
    cells = [c for c in load_subtype_sources(labs, root) if c.split == split]
    cells += [c for c in load_cells("all", root) if c.split == split]
    called, p_all = _score(cells, sub, alm)
    truth = np.array([c.label if c.source != "allidb2" else ("ALL" if c.label == "ALL" else "allidb2_healthy")
                      for c in cells])
    src = np.array([c.source for c in cells])
    full = ScoredPool(truth, called, p_all, [c.id for c in cells])
    pools = {lab: full.subset(src == lab) for lab in labs}
    return pools, full.subset(truth == "ALL"), full.subset(truth == "allidb2_healthy")


def _score(cells: list[Any], sub: Any, alm: Any) -> tuple[np.ndarray, np.ndarray]:
    """Subtype call and ALL probability of each cell (crops cut with each model's own geometry)."""
    from hemocount.classify.train import classifier_crops

    ps = sub.predict_crops(classifier_crops(sub, cells))
    pa = alm.predict_crops(classifier_crops(alm, cells))[:, list(alm.classes).index("ALL")]
    return np.array(sub.classes)[ps.argmax(axis=1)], pa


def all_flag_report(pools: dict[str, ScoredPool], blasts: ScoredPool, allidb2_healthy: ScoredPool,
                    rule: tuple[str, int, float], n_wbcs: tuple[int, ...] = (100, 200), n_slides: int = 1000,
                    seed: int = 0) -> dict[str, Any]:
    """Per-cell rates and simulated-slide flag rates of ``rule`` (gate, k, t) on one split's pools."""
    gate, k, t = rule
    draws = make_draws(pools, len(blasts.truth), n_wbcs, n_slides, seed)
    cm_neg = allidb2_healthy.p_all >= 0.5
    return {
        "rule": {"gate": gate, "k": k, "t": t},
        "cells_ungated_p_ge_0.9": {lab: cell_rates(p, "none", 0.9) for lab, p in pools.items()},
        "cells_rule": {lab: cell_rates(p, gate, t) for lab, p in pools.items()},
        "allidb2_cells": {"sensitivity_p_ge_0.5": _rate(blasts.p_all >= 0.5),
                          "specificity_p_ge_0.5": _rate(~cm_neg),
                          "sensitivity_rule": _rate(blasts.hits(gate, t)),
                          "specificity_rule": _rate(~allidb2_healthy.hits(gate, t)),
                          "n_blasts": int(len(blasts.truth)), "n_healthy": int(len(allidb2_healthy.truth))},
        "slides": evaluate_rule(pools, blasts, draws, gate, k, t),
        "simulation": {"n_slides": n_slides, "seed": seed, "differential": DIFFERENTIAL, "n_wbc": list(n_wbcs),
                       "blast_fractions": [0.2, 0.05]},
    }


def rescore_report(report: dict[str, Any], k: int) -> dict[str, Any]:
    """A scored report (:func:`all_flag_report`, no gate) under the rule with another ``k``, same ``t``,
    from the counts it stores: which cells are >= t is all a rule without a gate reads, so pools rebuilt
    from the per-subtype counts (positives given probability 1, the rest 0) flag the same slides in
    distribution (not draw for draw: which cell of a subtype was positive is not stored). For a rule chosen
    after a model's checkpoint is gone (its leave-one-lab-out folds).

    Raises:
        ValueError: The report used a gate (the counts then depend on the subtype calls too).
    """
    rule = report["rule"]
    if rule["gate"] != "none":
        raise ValueError(f"can only re-score a report without a gate (it has gate {rule['gate']!r})")
    pools = {}
    for lab, cells in report["cells_rule"].items():
        truth, p_all = [], []
        for subtype, c in sorted(cells["per_subtype"].items()):
            truth += [subtype] * c["n"]
            p_all += [1.0] * c["positive"] + [0.0] * (c["n"] - c["positive"])
        pools[lab] = ScoredPool(np.array(truth), np.array(truth), np.array(p_all))
    cells = report["allidb2_cells"]
    n_pos = round((cells["sensitivity_rule"] or 0.0) * cells["n_blasts"])  # None: no blasts
    blasts = ScoredPool(np.array(["ALL"] * cells["n_blasts"]), np.array(["lymphocyte"] * cells["n_blasts"]),
                        np.array([1.0] * n_pos + [0.0] * (cells["n_blasts"] - n_pos)))
    sim = report["simulation"]
    draws = make_draws(pools, len(blasts.truth), tuple(sim["n_wbc"]), sim["n_slides"], sim["seed"])
    return {**report, "rule": {**rule, "k": k}, "rescored_from": {"k": rule["k"]},
            "rule_source": f"re-scored under k = {k} from a k = {rule['k']} report", "choice": None,
            "slides": evaluate_rule(pools, blasts, draws, "none", k, rule["t"])}


def make_draws(pools: dict[str, ScoredPool], n_blasts: int, n_wbcs: tuple[int, ...] = (100, 200),
               n_slides: int = 1000, seed: int = 0) -> dict[tuple[str, int], SlideDraws]:
    """Seeded slide draws for every lab and slide size (seed offset per lab and size, fixed order)."""
    return {(lab, n): draw_slides(p, n_blasts, n, n_slides, seed + 1000 * i + n)
            for i, (lab, p) in enumerate(sorted(pools.items())) for n in n_wbcs}


def _rate(x: np.ndarray) -> float | None:
    return round(float(np.mean(x)), 4) if len(x) else None
