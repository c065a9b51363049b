"""Leave-one-lab-out adaptation curve (issue 14, item 5): how much ``hemocount adapt classify`` helps on a
lab the model never saw, as a function of the labelled cells per class.

For a held-out lab L, start from the LOLO fold that never saw L, draw N distinct cells per class from L's
**non-test** rows (train + val; a LISC group or a duplicate pair is one cell, and a unit with any test
crop is never drawn), write one crop per cell as ``count --export-crops`` would (class folders, the
square padded crop at the image's resolution), run the shipped adaptation recipe (:func:`adapt_subtype`
with its CLI defaults) and score L's **test** split with the LOLO metrics (:func:`holdout_report`).
N = 0 is the fold model itself. Draws are nested: with one seed, the 5 cells of a class are among its 10,
and those among its 20, so a curve compares more labels, not other cells.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from hemocount.classify.data import DUPLICATE_GROUPS, SUBTYPES, CellSample
from hemocount.io import atomic_write_json

log = logging.getLogger("hemocount")

#: Labelled cells per class compared (0 = the fold model, not adapted).
CELLS_PER_CLASS = (0, 5, 10, 20)
#: Random draws per N.
SEEDS = (0, 1, 2)
#: Near-identical images listed in the data's PROVENANCE files, as (source, ids): one physical cell each.
DUPLICATES = {("tecom", pair) for pair in DUPLICATE_GROUPS["tecom"]} | {
    ("bccd", ("BloodImage_00037", "BloodImage_00038"))}


def unit_of(cell: CellSample) -> str:
    """The physical cell a row shows: its LISC group, its duplicate pair, or itself."""
    if cell.group:
        return f"{cell.source}:group:{cell.group}"
    key = cell.id.split(":", 1)[1]
    for source, ids in DUPLICATES:
        if cell.source == source and key in ids:
            return f"{source}:dup:{'+'.join(ids)}"
    return cell.id


def adaptation_pool(cells: list[CellSample], lab: str) -> dict[str, list[list[CellSample]]]:
    """Lab ``lab``'s distinct non-test cells per class, each as the list of its crops (sorted, reproducible).

    A unit (group, duplicate pair) with any crop on the test split is left out entirely.
    """
    mine = [c for c in cells if c.source == lab]
    tested = {unit_of(c) for c in mine if c.split == "test"}
    units: dict[str, list[CellSample]] = {}
    for c in mine:
        if c.split in ("train", "val") and unit_of(c) not in tested:
            units.setdefault(unit_of(c), []).append(c)
    pool: dict[str, list[list[CellSample]]] = {label: [] for label in SUBTYPES}
    for key in sorted(units):
        crops = sorted(units[key], key=lambda c: c.id)
        labels = {c.label for c in crops}
        if len(labels) != 1:
            raise ValueError(f"{key}: one cell with labels {sorted(labels)}")
        pool[crops[0].label].append(crops)
    return pool


def draw_cells(pool: dict[str, list[list[CellSample]]], n: int, seed: int) -> list[CellSample]:
    """``n`` distinct cells per class (all of a class that has fewer), one crop each; nested in ``n``."""
    out = []
    for label in SUBTYPES:
        rng = random.Random(f"{seed}:{label}")
        order = rng.sample(pool.get(label, []), len(pool.get(label, [])))
        out += [rng.choice(crops) for crops in order][:n]  # one choice per unit whatever n: nested draws
    return out


def export_cells(cells: list[CellSample], folder: Path, rbc_k: float = 0.0) -> Path:
    """Write the cells as ``folder/<label>/<id>.png``, the crop ``count --export-crops`` writes (for an
    RBC-scaled model, ``rbc_k`` red-cell diameters of the cell's lab: ``count`` would use its field's own)."""
    from hemocount.classify.adapt import write_crop
    from hemocount.classify.train import cell_side
    from hemocount.io import read_image

    for c in cells:
        name = c.id.replace(":", "__").replace("/", "__")
        write_crop(read_image(c.path), np.asarray(c.box, float), folder, c.label, name, side=cell_side(c, rbc_k))
    return folder


def score(weights: Path | str, test: list[CellSample], crops: np.ndarray) -> dict[str, Any]:
    """LOLO metrics of a checkpoint on the held-out test cells, per cell (LISC: a group's mean probability):
    the eligible-class macro-F1 and the macro-F1 over every class with a test cell (fewer than 10 too)."""
    from hemocount.classify.infer import Classifier
    from hemocount.classify.lolo import holdout_report

    clf = Classifier.from_weights(str(weights), task="wbc_subtype", engine="torch")
    rep = holdout_report(test, clf.predict_crops(crops), clf.classes)
    cell = rep["per_cell"]
    return {"macro_f1": cell["macro_f1_eligible"], "eligible_classes": cell["eligible_classes"],
            "macro_f1_all_classes": cell["macro_f1"], "accuracy": cell["accuracy"],
            "per_class_f1": {k: v["f1"] for k, v in cell["per_class"].items()},
            "per_crop_macro_f1": rep["per_crop"]["macro_f1_eligible"]}


def claim(run: Path) -> bool:
    """Take run folder ``run`` for this process (``owner.pid``, created exclusively), so that several
    processes can share one curve's runs; a folder left by a dead process is cleared and taken."""
    import os
    import shutil

    run.mkdir(parents=True, exist_ok=True)
    lock = run / "owner.pid"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        text = lock.read_text().strip()
        if text.isdigit() and Path(f"/proc/{text}").exists() and int(text) != os.getpid():
            return False  # another live process works on it
        shutil.rmtree(run)  # an interrupted run: start it again
        return claim(run)
    with os.fdopen(fd, "w") as fh:
        fh.write(str(os.getpid()))
    return True


def run_lab(lab: str, fold: Path, out: Path, *, data_root: str | None = None,
            ns: tuple[int, ...] = CELLS_PER_CLASS, seeds: tuple[int, ...] = SEEDS,
            adapt_kwargs: dict[str, Any] | None = None, collect_only: bool = False) -> dict[str, Any]:
    """The curve of one held-out lab; each adaptation's result is kept in ``out`` and reused on a rerun (runs
    another process is working on are left out of this call's result: rerun when all are done).
    ``collect_only``: start nothing, gather the finished runs (e.g. to write the tables while others run)."""
    from hemocount.classify.adapt import adapt_subtype
    from hemocount.classify.data import load_cells
    from hemocount.classify.infer import Classifier
    from hemocount.classify.lolo import holdout_cells
    from hemocount.classify.sources import SUBTYPE_SOURCES
    from hemocount.classify.train import classifier_crops
    from hemocount.errors import HemocountError

    start = Classifier.from_weights(str(fold), task="wbc_subtype", engine="torch")
    if start.meta.get("holdout") != lab:
        raise HemocountError(f"{fold} held out {start.meta.get('holdout') or 'no lab'}, not {lab}")
    cells = load_cells("wbc_subtype", data_root, sources=list(SUBTYPE_SOURCES))
    test = holdout_cells(cells, lab, "test")
    test_units = {unit_of(c) for c in test}
    crops = classifier_crops(start, test)
    pool = adaptation_pool(cells, lab)
    res: dict[str, Any] = {
        "lab": lab, "fold_weights": str(fold), "fold_sha256": start.weights.sha256,
        "pool_cells_per_class": {k: len(v) for k, v in pool.items()},
        "test_cells": len(test_units), "test_crops": len(test), "runs": []}
    # seed-major: every N gets its first draw before any N gets its second (a cut-short run still spans N)
    for seed, n in [(0, 0)] * (0 in ns) + [(s, n) for s in seeds for n in ns if n]:
        run = out / lab / f"n{n:02d}_s{seed}"
        done = run / "result.json"
        if done.exists():
            res["runs"].append(json.loads(done.read_text()))
            continue
        if collect_only:
            continue
        if not claim(run):
            log.info("%s: another process is running it; skipped here", run)
            continue
        row: dict[str, Any] = {"n": n, "seed": seed}
        if n == 0:
            row.update(cells_per_class={}, adapt_seconds=0.0, adapt_cpu_seconds=0.0, **score(fold, test, crops))
        else:
            drawn = draw_cells(pool, n, seed)
            assert not {unit_of(c) for c in drawn} & test_units  # never a test cell
            export_cells(drawn, run / "crops", start.rbc_k)
            t0, c0 = time.perf_counter(), time.process_time()
            best = adapt_subtype(data=run / "crops", out=run / "adapt", weights=str(fold),
                                 **(adapt_kwargs or {}))
            row.update(cells_per_class={k: sum(c.label == k for c in drawn) for k in SUBTYPES},
                       cell_ids=sorted(c.id for c in drawn),
                       adapt_seconds=round(time.perf_counter() - t0, 1),
                       adapt_cpu_seconds=round(time.process_time() - c0, 1), **score(best, test, crops))
        log.info("%s N=%d seed %d: macro-F1 %s (%.0f s)", lab, n, seed, row["macro_f1"], row["adapt_seconds"])
        atomic_write_json(done, row)
        res["runs"].append(row)
    res["summary"] = summarize(res["runs"])
    return res


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per N: mean, min and max over draws of the eligible-class and all-class per-cell macro-F1."""
    out = []
    for n in sorted({r["n"] for r in runs}):
        rs = [r for r in runs if r["n"] == n]
        row: dict[str, Any] = {"n": n, "draws": len(rs),
                               "cells_per_class": rs[0]["cells_per_class"]}
        for key in ("macro_f1", "macro_f1_all_classes"):
            v = [r[key] for r in rs if r[key] is not None]
            row[key] = ({"mean": round(float(np.mean(v)), 4), "min": round(min(v), 4), "max": round(max(v), 4)}
                        if v else None)
        for key in ("adapt_seconds", "adapt_cpu_seconds"):
            secs = [r[key] for r in rs if r["n"]]
            row[f"{key}_mean"] = round(float(np.mean(secs)), 1) if secs else 0.0
        out.append(row)
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: per lab and N, the mean [min-max] of both macro-F1s over the draws, and cells per class used."""
    def fmt(v: dict[str, float] | None) -> str:
        return "–" if v is None else f"{v['mean']:.3f} [{v['min']:.3f}-{v['max']:.3f}]"

    head = ("| held-out lab (test cells) | N | cells per class used (n/e/l/m/b) | macro-F1, classes >= 10 test "
            "cells | macro-F1, every class with a test cell | s per adaptation, wall / CPU |")
    rows = [head,
            "| --- | --- | --- | --- | --- | --- |"]
    for lab, res in results.items():
        for s in res["summary"]:
            used = "/".join(str(s["cells_per_class"].get(k, 0)) for k in SUBTYPES) if s["n"] else "–"
            rows.append(f"| {lab} ({res['test_cells']}) | {s['n']} | {used} | {fmt(s['macro_f1'])} | "
                        f"{fmt(s['macro_f1_all_classes'])} | {s['adapt_seconds_mean']:.0f} / {s['adapt_cpu_seconds_mean']:.0f} |")
    return "\n".join(rows)


def plot(results: dict[str, dict[str, Any]], path: Path) -> Path:
    """Mean (line) and min-max (bars) held-out macro-F1 against labelled cells per class, one line a lab."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    for ax, key, title in ((axes[0], "macro_f1", "classes with >= 10 test cells"),
                           (axes[1], "macro_f1_all_classes", "every class with a test cell")):
        for lab, res in results.items():
            pts = [(s["n"], s[key]) for s in res["summary"] if s[key]]
            x = np.array([n for n, _ in pts])
            m = np.array([v["mean"] for _, v in pts])
            err = np.array([[v["mean"] - v["min"] for _, v in pts], [v["max"] - v["mean"] for _, v in pts]])
            k = len(res["runs"][0]["eligible_classes"]) if res.get("runs") else "?"
            ax.errorbar(x, m, yerr=err, marker="o", capsize=3,
                        label=f"{lab} ({k} class{'es' if k != 1 else ''} >= 10)" if key == "macro_f1" else lab)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("labelled cells per class (N)")
        ax.set_xticks(CELLS_PER_CLASS)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out test macro-F1 (per cell)")
    axes[0].set_ylim(0, 1)
    for ax in axes:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
