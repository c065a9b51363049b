"""Issue 14 ALL flag: seeded slide simulation, gate and rule (toy scores, no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hemocount.classify.allflag import (
    LEGACY_RULE,
    ScoredPool,
    all_flag_report,
    choose_rule,
    draw_slides,
    flag_rates,
    make_draws,
    rescore_report,
)

SUBTYPES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]


def _healthy(neutro_p: float = 0.0, lympho_p: float = 0.0, n_each: int = 20) -> ScoredPool:
    """A lab whose cells are called correctly; neutrophils score ``neutro_p``, lymphocytes ``lympho_p``."""
    truth = np.repeat(SUBTYPES, n_each)
    p = np.where(truth == "neutrophil", neutro_p, np.where(truth == "lymphocyte", lympho_p, 0.0))
    return ScoredPool(truth, truth.copy(), p)


def _blasts(n: int = 10, called: str = "lymphocyte") -> ScoredPool:
    return ScoredPool(np.array(["ALL"] * n), np.array([called] * n), np.ones(n))


def test_draws_are_seeded_and_follow_the_differential() -> None:
    pool = _healthy()
    a, b = draw_slides(pool, 10, 200, n_slides=50, seed=3), draw_slides(pool, 10, 200, n_slides=50, seed=3)
    assert np.array_equal(a.healthy, b.healthy) and np.array_equal(a.blasts[0.05][1], b.blasts[0.05][1])
    assert not np.array_equal(a.healthy, draw_slides(pool, 10, 200, n_slides=50, seed=4).healthy)
    share = np.mean(pool.truth[a.healthy] == "neutrophil")
    assert share == pytest.approx(0.6, abs=0.02)
    assert a.blasts[0.2][0].shape == (50, 40) and a.blasts[0.05][0].shape == (50, 10)


def test_gate_is_applied() -> None:
    # Every neutrophil scores 1.0: without a gate every slide is flagged; gated to lymphoid cells, none is.
    pool, blasts = _healthy(neutro_p=1.0), _blasts()
    d = draw_slides(pool, 10, 100, n_slides=200, seed=0)
    assert flag_rates(d, pool, blasts, "none", 3, 0.9)["healthy"] == 1.0
    gated = flag_rates(d, pool, blasts, "lymph_mono", 3, 0.9)
    assert gated["healthy"] == 0.0 and gated["blast_0.2"] == 1.0 and gated["blast_0.05"] == 1.0
    # Blasts the subtype model calls neutrophils fall outside the gate: sensitivity goes.
    assert flag_rates(d, pool, _blasts(called="neutrophil"), "lymph_mono", 3, 0.9)["blast_0.2"] == 0.0


def test_rule_k_and_t_are_applied() -> None:
    pool, blasts = _healthy(lympho_p=0.95, n_each=20), _blasts()
    d = draw_slides(pool, 10, 100, n_slides=200, seed=0)
    assert flag_rates(d, pool, blasts, "none", 3, 0.9)["healthy"] == 1.0  # ~30 lymphocytes at 0.95
    assert flag_rates(d, pool, blasts, "none", 3, 0.96)["healthy"] == 0.0  # t above their score
    assert flag_rates(d, pool, blasts, "none", 60, 0.9)["healthy"] == 0.0  # k above their number
    # 5 % of 100 = 5 blasts, each a hit: k = 5 flags all, k = 6 none (healthy cells score 0).
    clean = _healthy()
    d = draw_slides(clean, 10, 100, n_slides=100, seed=1)
    assert flag_rates(d, clean, blasts, "none", 5, 0.9)["blast_0.05"] == 1.0
    assert flag_rates(d, clean, blasts, "none", 6, 0.9)["blast_0.05"] == 0.0


def test_choose_rule_prefers_a_gate_that_removes_false_flags() -> None:
    pools = {"a": _healthy(neutro_p=1.0), "b": _healthy()}
    blasts = _blasts()
    best = choose_rule(pools, blasts, make_draws(pools, 10, (100,), n_slides=100))
    assert best["qualified"] and best["gate"] in ("lymph_mono", "lymph") and best["worst_false_flags"] == 0.0
    assert best["worst_sensitivity_5pct"] == 1.0


def test_report_is_deterministic(tmp_path: Path) -> None:
    pools = {"a": _healthy(lympho_p=0.92), "b": _healthy()}
    healthy_allidb2 = ScoredPool(np.array(["allidb2_healthy"] * 4), np.array(["lymphocyte"] * 4), np.zeros(4))
    r1 = all_flag_report(pools, _blasts(), healthy_allidb2, LEGACY_RULE, n_slides=50)
    r2 = all_flag_report(pools, _blasts(), healthy_allidb2, LEGACY_RULE, n_slides=50)
    assert r1 == r2 and r1["slides"]["a@100"]["healthy"] == 1.0 and r1["slides"]["b@200"]["healthy"] == 0.0
    assert r1["allidb2_cells"]["specificity_p_ge_0.5"] == 1.0


def test_choose_rule_takes_the_most_conservative_rule_meeting_sensitivity() -> None:
    # Nothing healthy scores: every rule is free of false flags; 5 % of 100 WBCs = 5 blasts, all hits,
    # so k up to 5 keeps sensitivity: the choice is the largest such k at the highest t.
    pools = {"a": _healthy()}
    best = choose_rule(pools, _blasts(), make_draws(pools, 10, (100,), n_slides=100))
    assert (best["k"], best["t"], best["worst_sensitivity_5pct"]) == (5, 0.995, 1.0)


def test_rescore_from_counts_equals_scoring_the_cells() -> None:
    """A report re-scored under another k from its stored counts flags exactly what scoring the cells under
    that k does, when the cells are laid out as the counts rebuild them (sorted subtypes, positives first)."""
    rng = np.random.default_rng(0)
    truth = np.repeat(sorted(SUBTYPES), 30)
    p = np.zeros(len(truth))
    for c in SUBTYPES:  # a few positives per subtype, first in each block
        i = np.flatnonzero(truth == c)
        p[i[: rng.integers(0, 4)]] = 0.95
    lab = ScoredPool(truth, truth.copy(), p)
    blasts = ScoredPool(np.array(["ALL"] * 10), np.array(["lymphocyte"] * 10), np.array([0.97] * 7 + [0.2] * 3))
    healthy = ScoredPool(np.array(["healthy"] * 5), np.array(["lymphocyte"] * 5), np.zeros(5))
    at3 = all_flag_report({"x": lab}, blasts, healthy, ("none", 3, 0.9), n_slides=200)
    at2 = all_flag_report({"x": lab}, blasts, healthy, ("none", 2, 0.9), n_slides=200)
    again = rescore_report(at3, 2)
    assert again["slides"] == at2["slides"] and again["rule"] == at2["rule"]
    assert at2["slides"] != at3["slides"]  # k matters here, so the equality above says something
    with pytest.raises(ValueError, match="gate"):
        rescore_report(all_flag_report({"x": lab}, blasts, healthy, ("lymph", 2, 0.9), n_slides=20), 3)
