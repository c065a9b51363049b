"""``hemocount count``: images in, counts, cells, COCO, annotated images and a run record out."""

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
from typing import Any

import numpy as np

from hemocount import CELL_CLASSES, RESEARCH_USE, __version__
from hemocount.classify.pipeline import classify_wbcs
from hemocount.errors import BadImageError, HemocountError
from hemocount.io import LockedStderr, atomic_write_json, find_images, read_image, remove_stale_temps
from hemocount.qc import field_flags
from hemocount.results import ImageResult
from hemocount.slides import SlideSettings, assign_slides, summarize_slides
from hemocount.tiling import AUTO_FACTOR, DEFAULT_OVERLAP, DEFAULT_TILE, TilePlan, detect_tiled, needs_tiling
from hemocount.tiling import exclude_edges as exclude_edges_fn
from hemocount.writeback import OrderedWriter

log = logging.getLogger("hemocount")

JOURNAL = ".hemocount-journal"
EXIT_SKIPPED = 3


@dataclass
class CountRun:
    """What a finished count run produced."""

    out: Path
    results: list[ImageResult]
    run: dict[str, Any]
    slides: list[dict[str, Any]] = field(default_factory=list)

    @property
    def skipped(self) -> list[ImageResult]:
        """Images that could not be counted."""
        return [r for r in self.results if r.status != "ok"]


def _display_names(sources: Sequence[str | os.PathLike[str]], images: list[Path]) -> list[str]:
    roots = [Path(s) for s in sources if Path(s).is_dir()]
    names: list[str] = []
    used: set[str] = set()
    for img in images:
        name = img.name
        for root in roots:
            try:
                name = str(Path(root.resolve().name) / img.resolve().relative_to(root.resolve()))
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


def _prepare_out(out: Path, *, exist_ok: bool, resume: bool) -> None:
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


@dataclass
class _Loaded:
    index: int
    image: np.ndarray
    seconds: float
    quality: dict[str, float]


def _read_one(path: Path) -> tuple[np.ndarray | None, dict[str, float], float, BadImageError | None]:
    from hemocount.qc import image_quality

    t0 = time.perf_counter()
    try:
        img = read_image(path)
    except BadImageError as exc:
        return None, {}, time.perf_counter() - t0, exc
    return img, image_quality(img), time.perf_counter() - t0, None


def _prefetch(paths: list[Path], todo: list[int], batch: int, workers: int) -> Iterator[list[tuple[int, Any]]]:
    """Batches of ``(index, _read_one result)``, decoded by a small thread pool ahead of use.

    OpenCV releases the GIL while decoding, so reading the next batch overlaps inference on this one;
    at most two batches are in flight, which keeps memory flat however many images there are.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hemocount-read") as pool:
        pending: deque[list[tuple[int, Future]]] = deque()
        starts = iter(range(0, len(todo), batch))
        for _ in range(2):
            s = next(starts, None)
            if s is not None:
                pending.append([(i, pool.submit(_read_one, paths[i])) for i in todo[s:s + batch]])
        while pending:
            chunk = pending.popleft()
            s = next(starts, None)
            if s is not None:
                pending.append([(i, pool.submit(_read_one, paths[i])) for i in todo[s:s + batch]])
            yield [(i, f.result()) for i, f in chunk]


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
) -> CountRun:
    """Detect and count cells in every image of ``sources``; write all outputs into ``out``.

    Args:
        sources: Image files and folders (searched recursively). Each subfolder of a source folder is
            one slide; loose images are each their own slide.
        out: Output folder.
        detector: Backend name (see ``hemocount.detect.BACKENDS``).
        weights: Manifest id or checkpoint path (default: the backend's shipped weights).
        conf: Confidence threshold for every class (default: per-class values from the manifest).
        iou: NMS IoU threshold (default: manifest).
        max_det: Detection cap per image, or per tile for tiled images (default: manifest).
        batch: Images (or tiles) per detector call (default: the detector's ``batch``, else 4).
        exist_ok: Write into an existing non-empty folder.
        resume: Reuse the per-image journal of an interrupted run in ``out``.
        fail_fast: Stop at the first bad image instead of skipping it.
        annotate: Write ``annotated/`` images.
        progress: Show a progress bar on stderr.
        classify: Classify each WBC (subtype, ALL probability); False skips both classifiers.
        subtype_weights: WBC-subtype classifier (manifest id or checkpoint; default: shipped).
        all_weights: ALL-vs-healthy classifier (manifest id or checkpoint; default: shipped).
        tile: Tile size in pixels; None tiles automatically images much larger than the detector's
            field size (manifest ``tile``), 0 never tiles.
        overlap: Tile overlap, a fraction of the tile (< 1) or pixels.
        exclude_edges: Drop cells whose box touches the image border (default: count them).
        calibration: JSON/TOML calibration file; only then are cells/uL estimated.
        reference_ranges: JSON/TOML reference ranges (default: built-in adult ranges).
        qc: JSON/TOML file overriding QC thresholds.
        min_wbc: Classified WBCs needed to report a differential (default 100).
        readers: Threads decoding images ahead of inference.
        report: Write ``report.html`` (self-contained HTML, rendered from ``summary.json``).
        engine: Inference engine for all models: ``auto``, ``torch``, ``onnx`` or ``openvino`` (see
            ``hemocount.engine``).
        precision: ``auto``, ``fp32`` or ``bf16`` (bf16 only with the openvino engine).

    Raises:
        HemocountError: Bad paths, options, weights or config files, or (with ``fail_fast``) a bad image.
    """
    from hemocount import sinks
    from hemocount.calibration import Calibration
    from hemocount.qc import QCConfig
    from hemocount.reference import ReferenceRanges

    t_start = time.perf_counter()
    if batch is not None and batch < 1:
        raise HemocountError(f"--batch must be at least 1 (got {batch})")
    if readers < 1:
        raise HemocountError(f"--readers must be at least 1 (got {readers})")
    # Config files first: a typo should fail before any model is loaded.
    qc_cfg = QCConfig.load(qc)
    if min_wbc is not None:
        if min_wbc < 1:
            raise HemocountError(f"--min-wbc must be at least 1 (got {min_wbc})")
        qc_cfg.min_wbc = min_wbc
    ranges = ReferenceRanges.load(reference_ranges)
    cal = Calibration.load(calibration) if calibration is not None else None
    out = Path(out)
    images = find_images(sources, exclude=out)
    _prepare_out(out, exist_ok=exist_ok, resume=resume)
    if resume:
        remove_stale_temps(out)  # half-written files of the killed run
    names = _display_names(sources, images)
    slide_names = assign_slides(sources, images)

    from hemocount.detect import load_detector

    t0 = time.perf_counter()
    det = load_detector(detector, weights, engine=engine, precision=precision)
    t_load = time.perf_counter() - t0
    batch = batch or int(getattr(det, "batch", 4))
    entry = det.weights
    class_conf = entry.class_conf(conf)
    iou_v = float(iou if iou is not None else entry.thresholds.get("iou", 0.6))
    max_det_v = int(max_det if max_det is not None else entry.thresholds.get("max_det", 1000))
    if not 0.0 <= min(class_conf.values()) <= 1.0 or not 0.0 < iou_v <= 1.0 or max_det_v < 1:
        raise HemocountError("thresholds out of range: --conf in [0, 1], --iou in (0, 1], --max-det >= 1")
    field_size = int(entry.thresholds.get("tile", DEFAULT_TILE))
    if tile is not None and tile < 0:
        raise HemocountError(f"--tile must be 0 (off) or a size in pixels (got {tile})")
    plan = TilePlan.from_options(tile or field_size, overlap) if tile != 0 else None

    subtype_clf = all_clf = None
    min_subtype_prob, all_rule = 0.5, None
    if classify:
        from hemocount.classify.infer import Classifier
        from hemocount.classify.pipeline import AllFlagRule

        t0 = time.perf_counter()
        subtype_clf = Classifier.from_weights(subtype_weights, task="wbc_subtype", engine=engine, precision=precision)
        all_clf = Classifier.from_weights(all_weights, task="all", engine=engine, precision=precision)
        t_load += time.perf_counter() - t0
        min_subtype_prob = float(subtype_clf.weights.thresholds.get("min_prob", 0.5))
        flag = all_clf.weights.thresholds.get("slide_flag", {})
        all_rule = AllFlagRule(prob=float(flag.get("prob", 0.9)), min_cells=int(flag.get("min_cells", 3)))

    journal = out / JOURNAL
    journal.mkdir(exist_ok=True)
    settings = {"detector": detector, "weights_sha256": entry.sha256, "conf": class_conf, "iou": iou_v,
                "max_det": max_det_v, "images": [str(p) for p in images],
                "tiling": {"auto": tile is None, "tile": plan.tile, "overlap": plan.overlap} if plan else None,
                "exclude_edges": exclude_edges, "engine": getattr(det, "engine", "torch"),
                "precision": [getattr(det, "precision", "fp32"), getattr(subtype_clf, "precision", None)],
                "subtype_sha256": subtype_clf.weights.sha256 if subtype_clf else None,
                "all_sha256": all_clf.weights.sha256 if all_clf else None}
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
            except (OSError, ValueError, KeyError):
                continue  # a journal entry cut by a kill is simply redone
            if r.index < len(images) and Path(r.path) == images[r.index]:
                r.name = names[r.index]
                r.slide = slide_names[r.index]
                done[r.index] = r

    from tqdm import tqdm

    results: dict[int, ImageResult] = dict(done)
    todo = [i for i in range(len(images)) if i not in done]
    bar = tqdm(total=len(images), initial=len(done), desc="counting", unit="field", file=LockedStderr(),
               disable=not progress or len(images) < 2, leave=False)
    # Detected images wait here until their WBC crops fill a classifier batch (see _ready_images).
    pending: list[tuple[_Loaded, Any]] = []

    def finish(k: int | None = None) -> None:
        """Classify the WBCs of the first ``k`` pending images (default all) in one call per model, then
        write and journal each of them."""
        ready = pending[:k] if k is not None else list(pending)
        if not ready:
            return
        t_cls = time.perf_counter()
        classify_wbcs([x.image for x, _ in ready], [d for _, d in ready], subtype_clf, all_clf, min_subtype_prob)
        share = (time.perf_counter() - t_cls) / len(ready)
        for x, d in ready:
            i, img = x.index, x.image
            r = ImageResult(i, images[i], names[i], width=img.shape[1], height=img.shape[0], detections=d,
                            cap_reached=int(d.metadata.get("raw_count", len(d))) >= max_det_v,
                            seconds=x.seconds + share, slide=slide_names[i], quality=x.quality,
                            tiles=int(d.metadata.get("tiles", 0)))
            if r.cap_reached:
                log.warning("%s: detection cap (%d) reached; counts may be low (raise --max-det)",
                            images[i], max_det_v)
            results[i] = r
            # The journal entry follows the annotated image (same job, one thread), so a resumed run
            # never skips an image whose outputs were not all written.
            writer.submit(_write_outputs, img if annotate else None, r, out / "annotated", journal)
            bar.update(1)
        del pending[:len(ready)]

    writer = OrderedWriter()
    try:
        for chunk in _prefetch(images, todo, batch, readers):
            loaded: list[_Loaded] = []
            for i, (img, quality, secs, err) in chunk:
                if err is not None:
                    if fail_fast:
                        finish()  # images detected before the bad one: classify and write them first
                        raise err
                    log.warning("skipped %s", err)
                    results[i] = ImageResult(i, images[i], names[i], status="skipped", error=str(err),
                                             seconds=secs, slide=slide_names[i])
                    writer.submit(_journal, journal, results[i])
                    bar.update(1)
                    continue
                loaded.append(_Loaded(i, img, secs, quality))
            if not loaded:
                continue
            t_det = time.perf_counter()
            dets = _detect(det, [x.image for x in loaded], plan=plan, auto=tile is None, conf=class_conf,
                           iou=iou_v, max_det=max_det_v, batch=batch)
            if exclude_edges:
                dets = [exclude_edges_fn(d, x.image.shape[1], x.image.shape[0]) for d, x in zip(dets, loaded)]
            det_share = (time.perf_counter() - t_det) / len(loaded)
            for x, d in zip(loaded, dets):
                x.seconds += det_share
                pending.append((x, d))
            if subtype_clf is None:
                finish()
            while pending and (ready := _ready_images(pending)):
                finish(ready)
        finish()
        writer.drain()
    finally:
        writer.close()  # images finished before an error or interrupt are still written and journaled
        bar.close()

    ordered = [results[i] for i in range(len(images))]
    for r in ordered:  # flags from stored measures, so they always follow the current QC settings
        if r.status == "ok":
            r.flags = field_flags(counts=r.counts(), confidences=_confidences(r), quality=r.quality,
                                  cap_reached=r.cap_reached, max_det=max_det_v, cfg=qc_cfg)
    edge_rule = ("cells whose box touches the image border are excluded" if exclude_edges
                 else "cells touching the image border are counted")
    tiling = (f"{'auto, for images longer than ' + format(AUTO_FACTOR, 'g') + ' tiles; ' if tile is None else ''}"
              f"tile {plan.tile} px, overlap {plan.overlap} px, each cell kept by the tile owning its centre"
              if plan else "off")
    run = _run_record(ordered, entry, detector, class_conf, iou_v, max_det_v, sources,
                      seconds={"total": time.perf_counter() - t_start, "model_load": t_load,
                               "compile": sum(getattr(m, "compile_seconds", 0.0) for m in (det, subtype_clf, all_clf))},
                      resumed=len(done))
    run["edge_rule"] = edge_rule
    run["tiling"] = tiling
    run["engine"] = {"requested": engine, "detector": getattr(det, "engine", "torch"),
                     "classifiers": getattr(subtype_clf, "engine", None), "precision_requested": precision,
                     "detector_precision": getattr(det, "precision", "fp32"),
                     "classifiers_precision": getattr(subtype_clf, "precision", None)}
    run["classifiers"] = _classifier_record(ordered, subtype_clf, all_clf, min_subtype_prob, all_rule)
    run["qc"] = qc_cfg.to_json()
    run["reference_ranges"] = ranges.to_json()
    run["calibration"] = cal.to_json() if cal else None

    slide_settings = SlideSettings(qc=qc_cfg, ranges=ranges, calibration=cal, classified=subtype_clf is not None,
                                   all_rule=all_rule)
    annotated = {r.name: (f"annotated/{sinks.annotated_relpath(r.name).as_posix()}"
                          if annotate and r.status == "ok" else None) for r in ordered}
    slides = summarize_slides(ordered, slide_settings, annotated)
    summary = {"research_use": RESEARCH_USE, "run": _summary_run(run, ordered, sources, all_rule), "slides": slides}

    sinks.write_counts_csv(ordered, out / "counts.csv", all_threshold=all_rule.prob if all_rule else None,
                           classified=subtype_clf is not None)
    sinks.write_cells_csv(ordered, out / "cells.csv")
    sinks.write_slides_csv(slides, out / "slides.csv")
    atomic_write_json(out / "predictions.coco.json", sinks.predictions_coco(ordered))
    atomic_write_json(out / "summary.json", summary)
    if report:
        from hemocount.report import write_report

        write_report(summary, out)
    sinks.write_run_json(out / "run.json", run)
    shutil.rmtree(journal, ignore_errors=True)
    return CountRun(out, ordered, run, slides)


def _confidences(r: ImageResult) -> np.ndarray:
    c = r.detections.confidence
    return np.zeros(0) if c is None else np.asarray(c)


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


def _detect(det: Any, images: list[np.ndarray], *, plan: TilePlan | None, auto: bool, conf: dict[str, float],
            iou: float, max_det: int, batch: int) -> list[Any]:
    """Whole images in one batched call; large ones (or all, with an explicit tile) tile by tile."""
    def tiled(img: np.ndarray) -> bool:
        if plan is None:
            return False
        h, w = img.shape[:2]
        return needs_tiling(w, h, plan.tile) if auto else max(w, h) > plan.tile

    whole = [k for k, img in enumerate(images) if not tiled(img)]
    out: list[Any] = [None] * len(images)
    if whole:
        for k, d in zip(whole, det.predict([images[k] for k in whole], conf=conf, iou=iou, max_det=max_det)):
            out[k] = d
    for k, img in enumerate(images):
        if out[k] is None:
            assert plan is not None
            out[k] = detect_tiled(det, img, plan, conf=conf, iou=iou, max_det=max_det, batch=batch)
    return out


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
                    "min_prob": min_prob, "counts": sub,
                    "percent": {c: round(100 * sub[c] / classified, 1) if classified else None for c in SUBTYPES}},
        "all": {"weights_id": all_clf.weights.id, "sha256": all_clf.weights.sha256,
                "licence": all_clf.weights.meta.get("licence", ""),
                "notice": "ALL model trained on ALL-IDB2: research use only. The flag is a screening aid "
                          "computed by the rule below, never a diagnosis.",
                "flag": rule.evaluate(probs),
                "per_image": {r.name: rule.evaluate(r.all_probs()) for r in ok}},
    }


def _write_outputs(image: np.ndarray | None, result: ImageResult, annotated: Path, journal: Path) -> None:
    """The per-image outputs (annotated image unless ``image`` is None, then the journal entry)."""
    from hemocount import sinks

    if image is not None:
        sinks.write_annotated(image, result, annotated)
    _journal(journal, result)


def _journal(folder: Path, result: ImageResult) -> None:
    atomic_write_json(folder / f"{result.index:08d}.json", result.to_json())


def _versions() -> dict[str, str]:
    out = {"hemocount": __version__, "python": platform.python_version()}
    for mod in ("torch", "torchvision", "ultralytics", "supervision", "cv2", "numpy", "onnxruntime", "openvino"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = str(getattr(m, "__version__", "?"))
    return out


def _run_record(results: list[ImageResult], entry: Any, detector: str, conf: dict[str, float], iou: float,
                max_det: int, sources: Sequence[Any], seconds: dict[str, float], resumed: int) -> dict[str, Any]:
    ok = [r for r in results if r.status == "ok"]
    totals = {c: sum(r.counts()[c] for r in ok) for c in CELL_CLASSES}
    det_seconds = sum(r.seconds for r in ok)
    return {
        "notice": RESEARCH_USE,
        "versions": _versions(),
        "detector": {"backend": detector, "weights_id": entry.id, "weights_file": str(entry.path),
                     "sha256": entry.sha256, "classes": list(entry.classes), "imgsz": entry.imgsz},
        "thresholds": {"conf": conf, "iou": iou, "max_det": max_det},
        "inputs": [str(s) for s in sources],
        "summary": {"images": len(results), "counted": len(ok), "skipped": len(results) - len(ok),
                    "resumed_from_journal": resumed, "cap_reached": sum(r.cap_reached for r in ok),
                    "totals": totals},
        "timings_s": {**{k: round(v, 3) for k, v in seconds.items()},
                      "per_image_mean": round(det_seconds / len(ok), 4) if ok else None},
        "images": [{"image": r.name, "path": str(r.path), "status": r.status, "error": r.error,
                    "width": r.width, "height": r.height, "counts": r.counts() if r.status == "ok" else None,
                    "cap_reached": r.cap_reached, "tiles": r.tiles, "slide": r.slide, "quality": r.quality,
                    "flags": r.flags, "seconds": round(r.seconds, 4)} for r in results],
    }
