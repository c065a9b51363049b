"""``hemocount count``: build the pipeline from options, then run it over the sources.

Kept as one function with the CLI's options so scripts and tests that call ``count(...)`` keep working;
the pipeline lives in :mod:`hemocount.pipeline`, the run in :mod:`hemocount.run`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hemocount.run import EXIT_SKIPPED, JOURNAL, CountRun, count_run, prepare_out
from hemocount.tiling import DEFAULT_OVERLAP

__all__ = ["EXIT_SKIPPED", "JOURNAL", "CountRun", "count"]


def count(
    *,
    sources: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    detector: str = "yolo",
    weights: str | None = None,
    conf: float | None = None,
    iou: float | None = None,
    max_det: int | None = None,
    batch: int | None = None,
    exist_ok: bool = False,
    resume: bool = False,
    fail_fast: bool = False,
    annotate: bool = True,
    progress: bool = True,
    classify: bool = True,
    subtype_weights: str | None = None,
    all_weights: str | None = None,
    tile: int | None = None,
    overlap: float = DEFAULT_OVERLAP,
    exclude_edges: bool = False,
    calibration: str | os.PathLike[str] | None = None,
    reference_ranges: str | os.PathLike[str] | None = None,
    qc: str | os.PathLike[str] | None = None,
    min_wbc: int | None = None,
    readers: int = 2,
    engine: str = "auto",
    precision: str = "auto",
    report: bool = True,
    scale: str | float | None = "auto",
    export_crops: bool = False,
    ray: str | None = None,
) -> CountRun:
    """Detect and count cells in every image of ``sources``; write all outputs into ``out``.

    Options are those of :meth:`hemocount.pipeline.Pipeline.from_pretrained` (models and per-field
    settings) and :func:`hemocount.run.count_run` (sources, outputs, resume). Config files and the
    output folder are checked before any model is loaded, so a typo fails at once. ``ray`` runs the fields on
    a Ray cluster (``local``, ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``; see :mod:`hemocount.cluster`)
    with the same outputs.

    Raises:
        HemocountError: Bad paths, options, weights or config files, or (with ``fail_fast``) a bad image.
    """
    from hemocount.calibration import Calibration
    from hemocount.errors import HemocountError
    from hemocount.io import find_images
    from hemocount.pipeline import Pipeline
    from hemocount.qc import QCConfig
    from hemocount.reference import ReferenceRanges
    from hemocount.scale import ScaleConfig

    if readers < 1:
        raise HemocountError(f"--readers must be at least 1 (got {readers})")
    if export_crops and not classify:
        raise HemocountError("--export-crops writes WBCs by predicted subtype: it needs the classifiers "
                             "(drop --no-classify)")
    counter = None
    if ray is not None:
        from hemocount.cluster import ray_counter

        if export_crops:
            raise HemocountError("--export-crops is not available with --ray (crops are cut on the driver); "
                                 "run it without --ray")
        counter = ray_counter(ray)  # a missing Ray fails here, before any model is loaded
    qc_cfg = QCConfig.load(qc)
    ScaleConfig.parse(scale)  # a bad --scale fails before the output folder is made
    ranges = ReferenceRanges.load(reference_ranges)
    cal = Calibration.load(calibration) if calibration is not None else None
    out = Path(out)
    images = find_images(sources, exclude=out)
    prepare_out(out, exist_ok=exist_ok, resume=resume)
    pipe = Pipeline.from_pretrained(detector, weights=weights, engine=engine, precision=precision, classify=classify,
                                    subtype_weights=subtype_weights, all_weights=all_weights, conf=conf, iou=iou,
                                    max_det=max_det, batch=batch, tile=tile, overlap=overlap,
                                    exclude_edges=exclude_edges, scale=scale, qc=qc_cfg, min_wbc=min_wbc)
    return count_run(pipe, sources=sources, out=out, images=images, exist_ok=exist_ok, resume=resume,
                     fail_fast=fail_fast, annotate=annotate, progress=progress, calibration=cal,
                     reference_ranges=ranges, readers=readers, report=report, export_crops=export_crops,
                     detector_name=detector, counter=counter,
                     engine_requested=engine, precision_requested=precision)
