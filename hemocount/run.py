"""A count run: sources in, a :class:`~hemocount.pipeline.Pipeline` over them, every output file out.

The run owns what the in-memory pipeline does not: finding images and slides, the reader pool, the
resume journal, cross-image classifier batching, the ordered writer and the run records.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hemocount import CELL_CLASSES, RESEARCH_USE, __version__
from hemocount.errors import BadImageError, HemocountError
from hemocount.flags import flags_to_json
from hemocount.io import absolute, atomic_write_json, find_images, progress_bar, read_image, remove_stale_temps
from hemocount.pipeline import Pipeline
from hemocount.results import ImageResult
from hemocount.scale import ScaleInfo
from hemocount.slides import SlideSettings, assign_slides, summarize_slides
from hemocount.summary import SlideSummary, Summary
from hemocount.tiling import AUTO_FACTOR
from hemocount.writeback import OrderedWriter

log = logging.getLogger("hemocount")

JOURNAL = ".hemocount-journal"
#: Bumped when what a journal entry holds or means changes (quality measures, scale handling), so a resume
#: never mixes entries of two pipelines: 2 = scale normalisation, stain features, coverage.
PIPELINE_SCHEMA = 2
EXIT_SKIPPED = 3


@dataclass
class CountRun:
    """What a finished count run produced."""

    out: Path
    results: list[ImageResult]
    run: dict[str, Any]
    slides: list[SlideSummary] = field(default_factory=list)

    @property
    def skipped(self) -> list[ImageResult]:
        """Images that could not be counted."""
        return [r for r in self.results if r.status != "ok"]


def _display_names(sources: Sequence[str | os.PathLike[str]], images: list[Path]) -> list[str]:
    # Paths as given, links not followed (as for slides): a linked field keeps the name it is linked under.
    roots = [absolute(s) for s in sources if Path(s).is_dir()]
    names: list[str] = []
    used: set[str] = set()
    for img in images:
        name = img.name
        for root in roots:
            try:
                name = str(Path(root.name) / absolute(img).relative_to(root))
                break
            except ValueError:
                continue
        base, n = name, 1
        while name in used:
            n += 1
            name = f"{Path(base).with_suffix('')}_{n}{Path(base).suffix}"
        used.add(name)
        names.append(name)
    return names


def prepare_out(out: Path, *, exist_ok: bool, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise HemocountError(f"{out}: output path exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not (exist_ok or resume):
        raise HemocountError(f"{out}: output folder exists and is not empty (use --exist-ok or --resume)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".hemocount-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise HemocountError(f"{out}: cannot write output folder ({exc.strerror})") from None


def clear_annotated(folder: Path) -> int:
    """Delete the annotated images an earlier run wrote into ``folder`` (its JPEGs and half-written temporary
    files; anything else is left, and so are folders that still hold something). Returns how many were removed."""
    if not folder.is_dir() or folder.is_symlink():
        return 0
    stale = [f for f in folder.rglob("*") if (f.is_file() or f.is_symlink()) and f.suffix.lower() in (".jpg", ".jpeg")]
    try:
        remove_stale_temps(folder)
        for f in stale:
            f.unlink(missing_ok=True)
        for d in sorted((d for d in folder.rglob("*") if d.is_dir() and not d.is_symlink()), reverse=True):
            if not any(d.iterdir()):
                d.rmdir()
    except OSError as exc:
        raise HemocountError(f"{exc.filename or folder}: cannot remove an earlier run's annotated image "
                             f"({exc.strerror})") from None
    if stale:
        log.info("%s: removed %d annotated image(s) of an earlier run", folder, len(stale))
    return len(stale)


@dataclass
class _Loaded:
    index: int
    image: np.ndarray
    seconds: float
    quality: dict[str, float]
    scale: ScaleInfo = field(default_factory=ScaleInfo)


def read_one(path: Path) -> tuple[np.ndarray | None, dict[str, float], float, BadImageError | None]:
    """Decode and check one image and measure its quality: ``(image, quality, seconds, error)``, the image
    None and the error set for an unusable file (the reader of local and Ray runs alike)."""
    from hemocount.qc import image_quality

    t0 = time.perf_counter()
    try:
        img = read_image(path)
    except BadImageError as exc:
        return None, {}, time.perf_counter() - t0, exc
    return img, image_quality(img), time.perf_counter() - t0, None


def prefetch(paths: list[Path], todo: list[int], batch: int, workers: int) -> Iterator[list[tuple[int, Any]]]:
    """Batches of ``(index, read_one result)``, decoded by a small thread pool ahead of use.

    OpenCV releases the GIL while decoding, so reading the next batch overlaps inference on this one;
    at most two batches are in flight, which keeps memory flat however many images there are.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hemocount-read") as pool:
        pending: deque[list[tuple[int, Future]]] = deque()
        starts = iter(range(0, len(todo), batch))
        for _ in range(2):
            s = next(starts, None)
            if s is not None:
                pending.append([(i, pool.submit(read_one, paths[i])) for i in todo[s:s + batch]])
        while pending:
            chunk = pending.popleft()
            s = next(starts, None)
            if s is not None:
                pending.append([(i, pool.submit(read_one, paths[i])) for i in todo[s:s + batch]])
            yield [(i, f.result()) for i, f in chunk]


def count_run(
    pipe: Pipeline,
    *,
    sources: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    images: list[Path] | None = None,
    exist_ok: bool = False,
    resume: bool = False,
    fail_fast: bool = False,
    annotate: bool = True,
    progress: bool = True,
    calibration: str | os.PathLike[str] | Any | None = None,
    reference_ranges: str | os.PathLike[str] | Any | None = None,
    readers: int = 2,
    report: bool = True,
    export_crops: bool = False,
    detector_name: str | None = None,
    engine_requested: str = "auto",
    precision_requested: str = "auto",
    counter: FieldCounter | None = None,
) -> CountRun:
    """Count every image of ``sources`` with ``pipe`` and write all outputs into ``out``.

    Args:
        pipe: The loaded pipeline (models and per-field settings).
        sources: Image files and folders (searched recursively). Each subfolder of a source folder is
            one slide; loose images are each their own slide.
        out: Output folder.
        images: The images of ``sources`` if already listed (``find_images``).
        exist_ok: Write into an existing non-empty folder.
        resume: Reuse the per-image journal of an interrupted run in ``out``.
        fail_fast: Stop at the first bad image instead of skipping it.
        annotate: Write ``annotated/`` images.
        progress: Show a progress bar on stderr.
        calibration: Calibration file or loaded :class:`~hemocount.calibration.Calibration`; only then are
            cells/uL estimated.
        reference_ranges: Reference-ranges file or loaded object (default: built-in adult ranges).
        readers: Threads decoding images ahead of inference.
        report: Write ``report.html``.
        export_crops: Write every classified WBC as ``OUT/crops/<subtype>/<image>__cell<i>.png`` (for
            relabelling by moving files and ``hemocount adapt classify``).
        detector_name: Backend name for the records (default: the detector's own).
        engine_requested: The ``--engine`` asked for (recorded).
        precision_requested: The ``--precision`` asked for (recorded).
        counter: Who counts the fields (default :func:`count_locally`; :class:`hemocount.cluster.RayCounter`
            on a Ray cluster). Outputs, journal and resume are the same whoever counts.

    Raises:
        HemocountError: Bad paths or config files, or (with ``fail_fast``) a bad image.
    """
    from hemocount.calibration import Calibration
    from hemocount.reference import ReferenceRanges

    t_start = time.perf_counter()
    if readers < 1:
        raise HemocountError(f"--readers must be at least 1 (got {readers})")
    ranges = reference_ranges if isinstance(reference_ranges, ReferenceRanges) else ReferenceRanges.load(reference_ranges)
    cal = calibration if isinstance(calibration, Calibration) or calibration is None else Calibration.load(calibration)
    out = Path(out)
    if images is None:
        images = find_images(sources, exclude=out)
        prepare_out(out, exist_ok=exist_ok, resume=resume)
    if resume:
        remove_stale_temps(out)  # half-written files of the killed run
    elif export_crops and (out / "crops").is_dir() and any((out / "crops").rglob("*")):
        # the user's relabelling work lives there: never mix it with, or clear it for, a new run
        raise HemocountError(f"{out / 'crops'}: holds crops of an earlier run (perhaps relabelled); "
                             "use a new output folder for --export-crops")
    else:
        clear_annotated(out / "annotated")  # a previous run's images (--exist-ok) would pose as this run's
        # and so would its report, left in place by --no-report or by this run stopping before the end
        (out / "report.html").unlink(missing_ok=True)
    names = _display_names(sources, images)
    slide_names = assign_slides(sources, images)
    detector_name = detector_name or getattr(pipe.detector, "name", "yolo")
    journal = out / JOURNAL
    done = _open_journal(journal, _settings(pipe, detector_name, images), resume, out)
    done = {i: r for i, r in done.items() if i < len(images) and Path(r.path) == images[i]}
    for i, r in done.items():
        r.name, r.slide = names[i], slide_names[i]
    sink = FieldSink(images=images, names=names, slide_names=slide_names, done=done, journal=journal, out=out,
                     annotate=annotate, progress=progress, max_det=pipe.max_det,
                     crops=out / "crops" if export_crops else None,
                     crop_rbc_k=float(getattr(pipe.subtype, "rbc_k", 0.0) or 0.0))
    try:
        (counter or count_locally)(pipe, images, sink, fail_fast=fail_fast, readers=readers)
        sink.drain()
    finally:
        sink.close()  # images finished before an error or interrupt are still written and journaled
    ordered = [sink.results[i] for i in range(len(images))]
    for r in ordered:  # flags from stored measures, so they always follow the current QC settings
        if r.status == "ok":
            r.flags = pipe.flags(r)
    run = _run_record(ordered, pipe, detector_name, sources, t_start, resumed=len(done),
                      engine_requested=engine_requested, precision_requested=precision_requested)
    run["timings_s"]["writes"] = round(sink.write_seconds, 3)
    run["execution"] = getattr(counter, "record", None) or {"runner": "local", "readers": readers}
    run["reference_ranges"] = ranges.to_json()
    run["calibration"] = cal.to_json() if cal else None
    slides = _write_outputs_of_run(pipe, ordered, run, sources, out, ranges, cal, annotate=annotate, report=report)
    shutil.rmtree(journal, ignore_errors=True)
    return CountRun(out, ordered, run, slides)


def _settings(pipe: Pipeline, detector_name: str, images: list[Path]) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one."""
    plan, sub = pipe.plan, pipe.subtype
    settings = {"detector": detector_name, "weights_sha256": pipe.detector.weights.sha256, "conf": pipe.conf,
            "iou": pipe.iou, "max_det": pipe.max_det, "images": [str(p) for p in images],
            "tiling": {"auto": pipe.auto_tile, "tile": plan.tile, "overlap": plan.overlap} if plan else None,
            "exclude_edges": pipe.exclude_edges, "engine": getattr(pipe.detector, "engine", "torch"),
            "precision": [getattr(pipe.detector, "precision", "fp32"), getattr(sub, "precision", None)],
            "subtype_sha256": sub.weights.sha256 if sub else None,
            "subtype_reference_sha256": getattr(getattr(sub, "reference", None), "sha256", None),
            "all_sha256": pipe.all_model.weights.sha256 if pipe.all_model else None,
            "scale": pipe.scale.to_json(), "hemocount_version": __version__, "pipeline_schema": PIPELINE_SCHEMA,
            "stain_threshold": pipe.stain_ref.threshold if pipe.stain_ref else None}
    return json.loads(json.dumps(settings))  # as it reads back from the journal (tuples become lists)


def _open_journal(journal: Path, settings: dict[str, Any], resume: bool, out: Path) -> dict[int, ImageResult]:
    """Create the journal (refusing a resume with other settings) and read what it already holds."""
    journal.mkdir(exist_ok=True)
    settings_file = journal / "settings.json"
    if resume and settings_file.exists():
        try:
            previous = json.loads(settings_file.read_text())
        except (OSError, ValueError):
            previous = None
        if previous is not None and previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise HemocountError(f"{out}: cannot resume, settings differ from the interrupted run "
                                 f"({', '.join(changed)}); rerun with the same options or a new output folder")
    atomic_write_json(settings_file, settings)
    done: dict[int, ImageResult] = {}
    if resume:
        for f in journal.glob("0*.json"):
            try:
                r = ImageResult.from_json(json.loads(f.read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a journal entry cut by a kill is simply redone
            done[r.index] = r
    return done


class FieldSink:
    """Where every field of a run ends, whoever counted it (this process, or Ray workers).

    It keeps each result, says what the user must know (a skipped image, a detection cap reached),
    writes the field's annotated image (unless a Ray worker already wrote it into the shared ``annotated/``)
    and WBC crops, then its journal entry, on one background thread in the order given, and moves the
    progress bar. A local and a Ray run share it, so their
    per-field outputs, messages and resume journal cannot drift apart.
    """

    def __init__(self, *, images: list[Path], names: list[str], slide_names: list[str],
                 done: dict[int, ImageResult], journal: Path, out: Path, annotate: bool, progress: bool,
                 max_det: int, crops: Path | None = None, crop_rbc_k: float = 0.0) -> None:
        self.images, self.names, self.slide_names = images, names, slide_names
        #: Exported WBC crops are cut as the subtype classifier saw them: RBC-scaled when ``> 0``.
        self.crop_rbc_k = crop_rbc_k
        self.results: dict[int, ImageResult] = dict(done)
        self.journal, self.annotated, self.crops = journal, out / "annotated", crops
        self.annotate, self.max_det = annotate, max_det
        self.todo = [i for i in range(len(images)) if i not in done]
        self.bar = progress_bar(total=len(images), initial=len(done), desc="counting", unit="field",
                                enabled=progress and len(images) >= 2)
        self.writer = OrderedWriter()
        #: Wall seconds the writer thread spent on per-field files (what caps a Ray run's driver).
        self.write_seconds = 0.0

    def skipped(self, index: int, error: str, seconds: float) -> None:
        """An image that could not be used: one warning line, then journalled as skipped."""
        log.warning("skipped %s", error)
        r = ImageResult(index, self.images[index], self.names[index], status="skipped", error=error,
                        seconds=seconds, slide=self.slide_names[index])
        self.results[index] = r
        self.writer.submit(self._timed, _journal, self.journal, r)
        self.bar.update(1)

    def counted(self, r: ImageResult, image: np.ndarray | None = None, jpeg: bytes | None = None,
                written: bool = False) -> None:
        """A counted field: ``image`` (BGR) to draw it from, or its annotated JPEG already encoded, or
        ``written``: a Ray worker already wrote its annotated image into ``annotated/``."""
        i = r.index
        # as the driver names them (a worker may have read the file by another, absolute, path)
        r.path, r.name, r.slide = self.images[i], self.names[i], self.slide_names[i]
        if r.cap_reached:
            log.warning("%s: detection cap (%d) reached; counts may be low (raise --max-det)",
                        self.images[i], self.max_det)
        self.results[i] = r
        # The journal entry follows the annotated image (same job, one thread), so a resumed run
        # never skips an image whose outputs were not all written.
        draw = self.annotate and not written
        self.writer.submit(self._timed, _write_outputs, image if draw else None, r, self.annotated,
                           self.journal, image if self.crops is not None else None, self.crops,
                           jpeg if draw else None, self.crop_rbc_k)
        self.bar.update(1)

    def _timed(self, write: Any, *args: Any) -> None:
        t0 = time.perf_counter()
        try:
            write(*args)
        finally:
            self.write_seconds += time.perf_counter() - t0  # one writer thread: no race

    def drain(self) -> None:
        """Wait for every queued write; raises the first failure."""
        self.writer.drain()

    def close(self) -> None:
        """Write what was queued (after an error or interrupt too) and remove the bar."""
        try:
            self.writer.close()
        finally:
            self.bar.close()


class FieldCounter(Protocol):
    """Counts the fields ``sink.todo`` of ``images`` with ``pipe``, handing each to ``sink`` as it is done:
    :func:`count_locally`, or :class:`hemocount.cluster.RayCounter` on a Ray cluster."""

    def __call__(self, pipe: Pipeline, images: list[Path], sink: FieldSink, *, fail_fast: bool,
                 readers: int) -> None: ...


def count_locally(pipe: Pipeline, images: list[Path], sink: FieldSink, *, fail_fast: bool, readers: int) -> None:
    """Detect, classify, write and journal every image of ``sink.todo`` in this process."""
    # Detected images wait here until their WBC crops fill a classifier batch (see _ready_images).
    pending: list[tuple[_Loaded, Any]] = []

    def finish(k: int | None = None) -> None:
        """Classify the WBCs of the first ``k`` pending images (default all) in one call per model, then
        hand each to the sink."""
        ready = pending[:k] if k is not None else list(pending)
        if not ready:
            return
        t_cls = time.perf_counter()
        pipe.classify([x.image for x, _ in ready], [d for _, d in ready], [x.scale for x, _ in ready])
        share = (time.perf_counter() - t_cls) / len(ready)
        for x, d in ready:
            i = x.index
            sink.counted(pipe.result(i, images[i], sink.names[i], x.image, d, x.scale, x.quality,
                                     seconds=x.seconds + share, slide=sink.slide_names[i]), image=x.image)
        del pending[:len(ready)]

    for chunk in prefetch(images, sink.todo, pipe.batch, readers):
        loaded: list[_Loaded] = []
        for i, (img, quality, secs, err) in chunk:
            if err is not None:
                if fail_fast:
                    finish()  # images detected before the bad one: classify and write them first
                    raise err
                sink.skipped(i, str(err), secs)
                continue
            loaded.append(_Loaded(i, img, secs, quality))
        if not loaded:
            continue
        t_det = time.perf_counter()
        dets, scales = pipe.detect([x.image for x in loaded])
        det_share = (time.perf_counter() - t_det) / len(loaded)
        for x, d, s in zip(loaded, dets, scales):
            x.seconds += det_share
            x.scale = s
            pending.append((x, d))
        if pipe.subtype is None:
            finish()
        while pending and (ready := _ready_images(pending)):
            finish(ready)
    finish()


def _write_outputs_of_run(pipe: Pipeline, ordered: list[ImageResult], run: dict[str, Any],
                          sources: Sequence[Any], out: Path, ranges: Any, cal: Any, *, annotate: bool,
                          report: bool) -> list[SlideSummary]:
    """Slides, summary and every run-level file; returns the slide summaries."""
    from hemocount import sinks

    slide_settings = SlideSettings(qc=pipe.qc, ranges=ranges, calibration=cal, classified=pipe.subtype is not None,
                                   all_rule=pipe.all_rule, stain_ref=pipe.stain_ref,
                                   wbc_ref=getattr(pipe.subtype, "reference", None))
    annotated = {r.name: (f"annotated/{sinks.annotated_relpath(r.name).as_posix()}"
                          if annotate and r.status == "ok" else None) for r in ordered}
    slides = summarize_slides(ordered, slide_settings, annotated)
    summary = Summary(_summary_run(run, ordered, sources, pipe.all_rule), slides)
    sinks.write_counts_csv(ordered, out / "counts.csv", all_threshold=pipe.all_rule.prob if pipe.all_rule else None,
                           classified=pipe.subtype is not None)
    sinks.write_cells_csv(ordered, out / "cells.csv")
    sinks.write_slides_csv(slides, out / "slides.csv")
    atomic_write_json(out / "predictions.coco.json", sinks.predictions_coco(ordered))
    atomic_write_json(out / "summary.json", summary.to_json())
    if report:
        from hemocount.report import write_report

        write_report(summary, out)
    sinks.write_run_json(out / "run.json", run)
    return slides


#: WBC crops collected across images before the classifiers run: large batches are what makes them fast
#: on CPU (OpenVINO compiles 32; ONNX Runtime and torch also run far faster per crop at 32 than at 4).
CLASSIFY_BATCH = 32
#: ...unless the waiting images hold this many pixels (a few tiled whole-slide images): memory stays flat.
MAX_PENDING_PIXELS = 64_000_000


def _ready_images(pending: list[tuple[_Loaded, Any]]) -> int:
    """How many leading waiting images to classify now: 0 while their WBCs do not fill a batch.

    Once they do, the longest prefix whose WBCs fit in one batch (at least one image), so calls stay
    close to :data:`CLASSIFY_BATCH` crops; all of them once the waiting pixels reach the cap.
    """
    wbcs = np.array([np.count_nonzero(d.data["class_name"] == "WBC") for _, d in pending])
    if sum(x.image.shape[0] * x.image.shape[1] for x, _ in pending) >= MAX_PENDING_PIXELS:
        return len(pending)
    if wbcs.sum() < CLASSIFY_BATCH:
        return 0
    return max(1, int(np.searchsorted(np.cumsum(wbcs), CLASSIFY_BATCH, side="right")))


def _summary_run(run: dict[str, Any], results: list[ImageResult], sources: Sequence[Any],
                 all_rule: Any) -> dict[str, Any]:
    clf = run["classifiers"]
    return {
        "hemocount_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sources": [str(s) for s in sources],
        "detector": {"backend": run["detector"]["backend"], "weights": run["detector"]["weights_id"]},
        "classifiers": ({"wbc_subtype": clf["subtype"]["weights_id"], "all": clf["all"]["weights_id"]}
                        if clf.get("enabled") else {}),
        "n_images": len(results),
        "n_done": sum(r.status == "ok" for r in results),
        "skipped": [{"image": r.name, "error": r.error} for r in results if r.status != "ok"],
        "edge_rule": run["edge_rule"],
        "tiling": run["tiling"],
        "all_flag_rule": (f"at least {all_rule.min_cells} WBCs with ALL probability >= {all_rule.prob:g}"
                          if all_rule else None),
        "reference_ranges": run["reference_ranges"],
        "calibration": run["calibration"],
    }


def _familiarity_record(subtype_clf: Any) -> dict[str, Any] | None:
    """The WBC side of unfamiliar_lab as this run applied it (None: off, the weights carry no reference)."""
    ref = getattr(subtype_clf, "reference", None)
    if ref is None:
        return None
    return {"reference": subtype_clf.weights.thresholds["domain"]["reference"], "sha256": ref.sha256,
            "distance_thresholds": {str(k): v for k, v in ref.thresholds.items()},
            "uncertainty_thresholds": {str(k): v for k, v in ref.uncertainty_thresholds.items()},
            "stain_thresholds": {str(k): v for k, v in ref.stain_thresholds.items()} if ref.stain else None}


def _classifier_record(results: list[ImageResult], subtype_clf: Any, all_clf: Any, min_prob: float,
                       rule: Any) -> dict[str, Any]:
    if subtype_clf is None:
        return {"enabled": False}
    from hemocount.results import SUBTYPES

    ok = [r for r in results if r.status == "ok"]
    sub = {c: sum(r.subtype_counts()[c] for r in ok) for c in (*SUBTYPES, "uncertain")}
    classified = sum(sub[c] for c in SUBTYPES)
    probs = np.concatenate([r.all_probs() for r in ok]) if ok else np.zeros(0)
    return {
        "enabled": True,
        "subtype": {"weights_id": subtype_clf.weights.id, "sha256": subtype_clf.weights.sha256,
                    # the unfamiliar_lab check on WBC features: off (None) for weights without a reference
                    "familiarity": _familiarity_record(subtype_clf),
                    "min_prob": min_prob, "counts": sub,
                    "percent": {c: round(100 * sub[c] / classified, 1) if classified else None for c in SUBTYPES}},
        "all": {"weights_id": all_clf.weights.id, "sha256": all_clf.weights.sha256,
                "licence": all_clf.weights.meta.get("licence", ""),
                "notice": "ALL model trained on ALL-IDB2: research use only. The flag is a screening aid "
                          "computed by the rule below, never a diagnosis.",
                "flag": rule.evaluate(probs).to_json(),
                "per_image": {r.name: rule.evaluate(r.all_probs()).to_json() for r in ok}},
    }


def _write_outputs(image: np.ndarray | None, result: ImageResult, annotated: Path, journal: Path,
                   crop_source: np.ndarray | None = None, crops: Path | None = None, jpeg: bytes | None = None,
                   crop_rbc_k: float = 0.0) -> None:
    """The per-image outputs (annotated image drawn from ``image``, or its JPEG ``jpeg`` already encoded; WBC
    crops into ``crops``; then the journal entry, last, so a resumed run redoes an image whose outputs were
    not all written)."""
    from hemocount import sinks

    if jpeg is not None:
        sinks.write_annotated_jpeg(jpeg, result, annotated)
    elif image is not None:
        sinks.write_annotated(image, result, annotated)
    if crops is not None and crop_source is not None:
        _write_crops(crop_source, result, crops, crop_rbc_k)
    _journal(journal, result)


def _write_crops(image: np.ndarray, result: ImageResult, folder: Path, rbc_k: float = 0.0) -> None:
    from hemocount.classify.adapt import UNSCALED_MARK, write_crop
    from hemocount.classify.crops import crop_side

    d = result.detections
    stem = str(Path(result.name).with_suffix("")).replace("/", "__").replace("\\", "__")
    # an RBC-scaled classifier's crops are cut as it saw them; on a field without a red-cell size they fall
    # back to the box and say so in their name, so adaptation can leave them out
    side = crop_side(rbc_k, result.scale.rbc_px)
    mark = UNSCALED_MARK if rbc_k > 0 and side is None else ""
    for i in np.flatnonzero(d.data["class_name"] == "WBC"):
        label = str(d.data["subtype"][i]) or "unclassified"
        write_crop(image, d.xyxy[i], folder, label, f"{stem}__cell{i}{mark}", side=side)


def _journal(folder: Path, result: ImageResult) -> None:
    atomic_write_json(folder / f"{result.index:08d}.json", result.to_json())


def _versions() -> dict[str, str]:
    out = {"hemocount": __version__, "python": platform.python_version()}
    for mod in ("torch", "torchvision", "ultralytics", "supervision", "cv2", "numpy", "onnxruntime", "openvino"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = str(getattr(m, "__version__", "?"))
    return out


def _run_record(results: list[ImageResult], pipe: Pipeline, detector: str, sources: Sequence[Any], t_start: float,
                resumed: int, engine_requested: str, precision_requested: str) -> dict[str, Any]:
    ok = [r for r in results if r.status == "ok"]
    totals = {c: sum(r.counts()[c] for r in ok) for c in CELL_CLASSES}
    det_seconds = sum(r.seconds for r in ok)
    entry, plan, sub = pipe.detector.weights, pipe.plan, pipe.subtype
    models = (pipe.detector, pipe.subtype, pipe.all_model)
    seconds = {"total": time.perf_counter() - t_start, "model_load": pipe.load_seconds,
               "compile": sum(getattr(m, "compile_seconds", 0.0) for m in models)}
    tiling = (f"{'auto, for images longer than ' + format(AUTO_FACTOR, 'g') + ' tiles; ' if pipe.auto_tile else ''}"
              f"tile {plan.tile} px, overlap {plan.overlap} px, each cell kept by the tile owning its centre"
              if plan else "off")
    return {
        "notice": RESEARCH_USE,
        "versions": _versions(),
        "detector": {"backend": detector, "weights_id": entry.id, "weights_file": str(entry.path),
                     "sha256": entry.sha256, "classes": list(entry.classes), "imgsz": entry.imgsz},
        "thresholds": {"conf": pipe.conf, "iou": pipe.iou, "max_det": pipe.max_det},
        "inputs": [str(s) for s in sources],
        "summary": {"images": len(results), "counted": len(ok), "skipped": len(results) - len(ok),
                    "resumed_from_journal": resumed, "cap_reached": sum(r.cap_reached for r in ok),
                    "totals": totals},
        "timings_s": {**{k: round(v, 3) for k, v in seconds.items()},
                      "per_image_mean": round(det_seconds / len(ok), 4) if ok else None},
        "edge_rule": ("cells whose box touches the image border are excluded" if pipe.exclude_edges
                      else "cells touching the image border are counted"),
        "tiling": tiling,
        "scale": pipe.scale.to_json(),
        "engine": {"requested": engine_requested, "detector": getattr(pipe.detector, "engine", "torch"),
                   "classifiers": getattr(sub, "engine", None), "precision_requested": precision_requested,
                   "detector_precision": getattr(pipe.detector, "precision", "fp32"),
                   "classifiers_precision": getattr(sub, "precision", None)},
        "classifiers": _classifier_record(results, sub, pipe.all_model, pipe.min_subtype_prob, pipe.all_rule),
        "qc": pipe.qc.to_json(),
        "images": [{"image": r.name, "path": str(r.path), "status": r.status, "error": r.error,
                    "width": r.width, "height": r.height, "counts": r.counts() if r.status == "ok" else None,
                    "cap_reached": r.cap_reached, "tiles": r.tiles, "slide": r.slide, "quality": r.quality,
                    "scale": r.scale.to_json() if r.status == "ok" else None,
                    "flags": flags_to_json(r.flags), "seconds": round(r.seconds, 4)} for r in results],
    }
