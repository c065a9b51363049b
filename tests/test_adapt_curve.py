"""The LOLO adaptation curve's draws: distinct non-test cells, nested in N, exported as `--export-crops` would."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from hemocount.classify.adapt import folder_cells
from hemocount.classify.adapt_curve import adaptation_pool, draw_cells, export_cells, plot, summarize, table, unit_of
from hemocount.classify.data import CellSample


def _cells(path: Path = Path("x.png")) -> list[CellSample]:
    """LISC-like groups (3 crops each, one group with a crop on test) and Tecom rows with a duplicate pair."""
    out = []
    for g, (label, splits) in enumerate([("lymphocyte", ("train",) * 3), ("lymphocyte", ("val",) * 3),
                                         ("lymphocyte", ("train", "train", "test")), ("monocyte", ("train",) * 3),
                                         ("lymphocyte", ("test",) * 3)]):
        out += [CellSample(f"lisc:{label}/{g}{k}", "lisc", label, path, (10, 10, 40, 40), s, f"{label}_g{g}")
                for k, s in enumerate(splits)]
    for key, label, split in [("112", "neutrophil", "train"), ("139", "neutrophil", "train"),
                              ("005", "neutrophil", "val"), ("006", "neutrophil", "test"), ("007", "basophil", "train")]:
        out.append(CellSample(f"tecom:{key}", "tecom", label, path, (10, 10, 40, 40), split))
    return out


def test_pool_counts_physical_cells_and_never_a_tested_one() -> None:
    pool = adaptation_pool(_cells(), "lisc")
    assert [len(u) for u in pool["lymphocyte"]] == [3, 3] and len(pool["monocyte"]) == 1
    assert all(c.split != "test" and c.group != "lymphocyte_g2" for u in pool["lymphocyte"] for c in u)
    tecom = adaptation_pool(_cells(), "tecom")
    assert len(tecom["neutrophil"]) == 2 and len(tecom["basophil"]) == 1  # 112 and 139 are one cell
    assert unit_of(_cells()[-5]) == unit_of(_cells()[-4])


def test_draws_are_distinct_nested_capped_and_reproducible() -> None:
    pool = {"neutrophil": [[CellSample(f"p:{i}", "pbc", "neutrophil", Path("x"), (0, 0, 1, 1))] for i in range(30)],
            "lymphocyte": [[CellSample(f"l:{i}{k}", "lisc", "lymphocyte", Path("x"), (0, 0, 1, 1), group=f"g{i}")
                            for k in range(4)] for i in range(7)]}
    d5, d10, d20 = (draw_cells(pool, n, seed=1) for n in (5, 10, 20))
    assert {c.id for c in d5} <= {c.id for c in d10} <= {c.id for c in d20}
    assert sum(c.label == "lymphocyte" for c in d20) == 7 and sum(c.label == "neutrophil" for c in d20) == 20
    assert len({c.group for c in d20 if c.group}) == 7  # one crop per group
    assert [c.id for c in draw_cells(pool, 10, seed=1)] == [c.id for c in d10]
    assert [c.id for c in draw_cells(pool, 10, seed=2)] != [c.id for c in d10]


def test_exported_draw_is_an_adapt_folder(tmp_path: Path, field: np.ndarray) -> None:
    cv2.imwrite(str(tmp_path / "f.png"), field)
    cells = [CellSample("lisc:monocyte/3", "lisc", "monocyte", tmp_path / "f.png", (98, 38, 142, 82), "train", "g"),
             CellSample("bccd:B_1", "bccd", "neutrophil", tmp_path / "f.png", (98, 38, 142, 82), "val")]
    got = folder_cells(export_cells(cells, tmp_path / "crops"))
    assert sorted((c.label, c.path.name) for c in got) == [("monocyte", "lisc__monocyte__3.png"),
                                                           ("neutrophil", "bccd__B_1.png")]


def test_summary_and_plot(tmp_path: Path) -> None:
    runs = [{"n": 0, "seed": 0, "cells_per_class": {}, "macro_f1": 0.5, "macro_f1_all_classes": 0.4,
             "adapt_seconds": 0.0, "adapt_cpu_seconds": 0.0}]
    runs += [{"n": 5, "seed": s, "cells_per_class": {"neutrophil": 5}, "macro_f1": v, "macro_f1_all_classes": v,
              "adapt_seconds": 60.0, "adapt_cpu_seconds": 50.0} for s, v in enumerate((0.6, 0.7, 0.8))]
    s = summarize(runs)
    assert s[1]["macro_f1"] == {"mean": 0.7, "min": 0.6, "max": 0.8} and s[1]["draws"] == 3
    res = {"lisc": {"summary": s, "test_cells": 44, "runs": [{"eligible_classes": ["lymphocyte"]}]}}
    assert "| lisc (44) | 5 | 5/0/0/0/0 | 0.700 [0.600-0.800] | 0.700 [0.600-0.800] | 60 / 50 |" in table(res)
    assert plot(res, tmp_path / "c.png").stat().st_size > 0


def test_claim_shares_runs_and_restarts_a_dead_one(tmp_path: Path) -> None:
    from hemocount.classify.adapt_curve import claim

    assert claim(tmp_path / "r")
    assert claim(tmp_path / "r")  # our own claim: a rerun in this process restarts it
    (tmp_path / "r" / "junk").write_text("")
    (tmp_path / "r" / "owner.pid").write_text("1")  # a live process (init) holds it
    assert not claim(tmp_path / "r")
    (tmp_path / "r" / "owner.pid").write_text("999999999")  # dead owner: cleared, taken
    assert claim(tmp_path / "r") and not (tmp_path / "r" / "junk").exists()
