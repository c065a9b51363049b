"""The in-memory pipeline: detector, scale normalisation, tiling, classifiers and QC on images.

``Pipeline`` is the library API (``pipe = Pipeline.from_pretrained(); result = pipe(image)``) and the
engine of ``hemocount count`` (:mod:`hemocount.run` wraps it with sources, journal and outputs), so a
field counted from Python and from the CLI goes through exactly the same steps.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hemocount.domain import StainReference
from hemocount.errors import BadImageError, HemocountError
from hemocount.flags import Flag
from hemocount.qc import QCConfig, field_flags, image_quality, stain_coverage
from hemocount.results import FieldResult
from hemocount.scale import ScaleConfig, ScaleInfo, rbc_diameter, shrink_and_pad, window_for, zoom_of
from hemocount.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, TilePlan, detect_tiled, needs_tiling
from hemocount.tiling import exclude_edges as exclude_edges_fn

if TYPE_CHECKING:
    import supervision as sv

    from hemocount.classify.pipeline import AllFlagRule

#: Colour orders a numpy image may be given in.
COLOR_ORDERS = ("bgr", "rgb")
#: Windows tried (times the first pass's) when its red cells look too large or too few to measure: the
#: image shrunk 1.5x, 2x, 3x (high magnification: at 3x the first pass finds almost no whole RBC), tiles
#: of a half and a quarter (low magnification; only when no red cell was measured). See benchmarks/zoom.py.
SEARCH_ZOOMS = (0.25, 0.5, 1.5, 2.0, 3.0)
#: Tile overlap when tiling for magnification: at the trained scale a large WBC spans up to about a
#: third of the window (BCCD: 237 px of 640 at the 95th percentile), and the tiling rule (each tile keeps
#: the cells centred in its core) needs cells smaller than the overlap.
SCALE_OVERLAP = 0.45
#: Confidence above which detections count towards :func:`mean_confidence`, and the threshold every
#: pass runs at (lower run thresholds go lower).
PROBE_CONF = 0.25


def confident_count(dets: sv.Detections, level: float = 0.5) -> int:
    """Detections at or above ``level``: the cells a pass is sure of."""
    return 0 if dets.confidence is None else int(np.sum(dets.confidence >= level))


def mean_confidence(dets: sv.Detections) -> float:
    """Mean confidence of the detections at or above :data:`PROBE_CONF` (0 when there are none).

    At the magnification it was trained at the detector is sure of its cells; shown a field at 2-3x
    it finds fragments with low confidence. What choosing the most confident window achieves is
    measured by benchmarks/zoom.py (val to decide, test to report).
    """
    c = dets.confidence
    c = c[c >= PROBE_CONF] if c is not None else np.zeros(0)
    return float(c.mean()) if len(c) else 0.0


@dataclass
class Pipeline:
    """A loaded detector (and classifiers) with every setting ``count`` applies to a field.

    Build it with :meth:`from_pretrained`; call it on one image, or :meth:`predict` on a batch.
    """

    detector: Any
    subtype: Any | None = None
    all_model: Any | None = None
    conf: dict[str, float] = field(default_factory=dict)
    iou: float = 0.6
    max_det: int = 1000
    batch: int = 4
    plan: TilePlan | None = None
    auto_tile: bool = True
    exclude_edges: bool = False
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    qc: QCConfig = field(default_factory=QCConfig)
    min_subtype_prob: float = 0.5
    all_rule: AllFlagRule | None = None
    load_seconds: float = 0.0
    #: Operating RBC confidence the scale is measured at, whatever ``conf`` a run asks for.
    scale_conf: float = 0.5
    #: The training labs' stain statistics (QC flag ``unfamiliar_lab``); None disables the flag.
    stain_ref: StainReference | None = field(default_factory=StainReference.load)

    @classmethod
    def from_pretrained(
        cls,
        detector: str = "yolo",
        *,
        weights: str | None = None,
        engine: str = "auto",
        precision: str = "auto",
        classify: bool = True,
        subtype_weights: str | None = None,
        all_weights: str | None = None,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        batch: int | None = None,
        tile: int | None = None,
        overlap: float = DEFAULT_OVERLAP,
        exclude_edges: bool = False,
        scale: str | float | None = "auto",
        qc: str | os.PathLike[str] | QCConfig | None = None,
        min_wbc: int | None = None,
        threads: int | None = None,
    ) -> Pipeline:
        """Load the models once and fix the settings every field is counted with.

        Args:
            detector: Backend name (``yolo``, ``frcnn``, ``classical``).
            weights: Manifest id or checkpoint path (default: the backend's shipped weights).
            engine: ``auto``, ``torch``, ``onnx`` or ``openvino``.
            precision: ``auto``, ``fp32`` or ``bf16``.
            classify: Load the WBC subtype and ALL classifiers.
            subtype_weights: WBC-subtype classifier (default: shipped).
            all_weights: ALL-vs-healthy classifier (default: shipped).
            conf: One confidence threshold for every class (default: per class from the manifest).
            iou: NMS IoU threshold (default: manifest).
            max_det: Detection cap per image or tile (default: manifest).
            batch: Images per detector call (default: the detector's own).
            tile: Tile size; None tiles images much larger than the training field, 0 never tiles for size
                (scale normalisation may still tile a low-magnification field; ``scale="none"`` does not).
            overlap: Tile overlap, a fraction of the tile (< 1) or pixels.
            exclude_edges: Drop cells whose box touches the image border.
            scale: ``auto`` (normalise magnification by the red cells), ``none`` or a fixed factor.
            qc: QC thresholds: a :class:`QCConfig` or a JSON/TOML file overriding the defaults.
            min_wbc: Classified WBCs a slide needs for a reportable differential.
            threads: Inference threads for torch, ONNX Runtime and OpenVINO (process-wide for torch); None
                leaves the process's settings alone (the CLI uses all cores, see :mod:`hemocount.runtime`).

        Raises:
            HemocountError: Bad options, config files or weights.
        """
        if batch is not None and batch < 1:
            raise HemocountError(f"--batch must be at least 1 (got {batch})")
        if tile is not None and tile < 0:
            raise HemocountError(f"--tile must be 0 (off) or a size in pixels (got {tile})")
        qc_cfg = replace(qc) if isinstance(qc, QCConfig) else QCConfig.load(qc)  # a copy: min_wbc may change it
        if min_wbc is not None:
            if min_wbc < 1:
                raise HemocountError(f"--min-wbc must be at least 1 (got {min_wbc})")
            qc_cfg.min_wbc = min_wbc
        scale_cfg = ScaleConfig.parse(scale)
        from hemocount.detect import load_detector

        if threads is not None:
            from hemocount.runtime import set_threads
            set_threads(threads)
        t0 = time.perf_counter()
        det = load_detector(detector, weights, engine=engine, precision=precision)
        entry = det.weights
        class_conf = entry.class_conf(conf)
        iou_v = float(iou if iou is not None else entry.thresholds.get("iou", 0.6))
        max_det_v = int(max_det if max_det is not None else entry.thresholds.get("max_det", 1000))
        if not 0.0 <= min(class_conf.values()) <= 1.0 or not 0.0 < iou_v <= 1.0 or max_det_v < 1:
            raise HemocountError("thresholds out of range: --conf in [0, 1], --iou in (0, 1], --max-det >= 1")
        band = entry.thresholds.get("scale_band")
        if band and scale_cfg.mode == "auto":
            # A detector trained on a wider range of cell sizes (yolo11n-cells v2: zoom-in augmentation up to
            # 3x) detects those sizes as they are; searching other windows for them was worse on val.
            scale_cfg = replace(scale_cfg, band=(float(band[0]), float(band[1])))
        field_size = int(entry.thresholds.get("tile", DEFAULT_TILE))
        plan = TilePlan.from_options(tile or field_size, overlap) if tile != 0 else None
        pipe = cls(detector=det, conf=class_conf, iou=iou_v, max_det=max_det_v,
                   batch=batch or int(getattr(det, "batch", 4)), plan=plan, auto_tile=tile is None,
                   exclude_edges=exclude_edges, scale=scale_cfg, qc=qc_cfg,
                   scale_conf=float(entry.class_conf(None).get("RBC", 0.5)))
        if classify:
            pipe._load_classifiers(subtype_weights, all_weights, engine, precision)
        pipe.load_seconds = time.perf_counter() - t0
        return pipe

    def _load_classifiers(self, subtype_weights: str | None, all_weights: str | None, engine: str,
                          precision: str) -> None:
        from hemocount.classify.infer import Classifier
        from hemocount.classify.pipeline import AllFlagRule

        self.subtype = Classifier.from_weights(subtype_weights, task="wbc_subtype", engine=engine,
                                               precision=precision)
        self.all_model = Classifier.from_weights(all_weights, task="all", engine=engine, precision=precision)
        self.min_subtype_prob = float(self.subtype.weights.thresholds.get("min_prob", 0.5))
        flag = self.all_model.weights.thresholds.get("slide_flag", {})
        # a user's checkpoint carries no rule: it gets the defaults, the shipped model's (AllFlagRule)
        self.all_rule = AllFlagRule(prob=float(flag.get("prob", AllFlagRule.prob)),
                                    min_cells=int(flag.get("min_cells", AllFlagRule.min_cells)))

    # ----------------------------------------------------------------- one image, the library way
    def __call__(self, image: str | os.PathLike[str] | np.ndarray | Any, *, color: str | None = None) -> FieldResult:
        """Count one field: a path, a PIL image, or a numpy array with ``color="bgr"`` or ``"rgb"``.

        Returns:
            A :class:`FieldResult` with the cells (boxes, classes, subtypes, ALL probabilities), counts,
            QC flags, tiles and scale; ``result.annotate()`` draws it.

        Raises:
            BadImageError: The file cannot be used as an image.
            HemocountError: A numpy array without its colour order.
        """
        return self.predict([image], color=color)[0]

    def predict(self, images: Sequence[Any], *, color: str | None = None) -> list[FieldResult]:
        """Count a batch of fields (see :meth:`__call__` for the accepted inputs)."""
        loaded = [as_bgr(im, color) for im in images]
        names = [str(im) if isinstance(im, str | os.PathLike) else f"image{k}" for k, im in enumerate(images)]
        quality = [image_quality(im) for im in loaded]
        dets, scales = self.detect(loaded)
        self.classify(loaded, dets, scales)
        out = []
        for k, (img, d, s, q) in enumerate(zip(loaded, dets, scales, quality)):
            r = self.result(k, Path(names[k]), names[k], img, d, s, q)
            r.flags = self.flags(r)
            r.image = img
            out.append(r)
        return out

    # ----------------------------------------------------------------- the stages, batch-wise
    def detect(self, images: list[np.ndarray]) -> tuple[list[sv.Detections], list[ScaleInfo]]:
        """Detect cells in BGR images at their normalised scale; boxes in each image's own pixels."""
        dets = self._detect(images, [None] * len(images))
        scales = [self._scale_of(img, d) for img, d in zip(images, dets)]
        for k, s in enumerate(scales):
            if s.status == "search":
                scales[k], found = self._search_scale(images[k], dets[k])
                if found is not None:
                    dets[k] = found
        redo = [k for k, s in enumerate(scales) if s.factor != 1.0 and not s.done]
        for k, d in zip(redo, self._detect([images[k] for k in redo], [scales[k] for k in redo])):
            dets[k] = d
        dets = [self._keep(d) for d in dets]
        for img, d in zip(images, dets):
            # before edge exclusion: cells excluded from the count were still found
            d.metadata["coverage"] = stain_coverage(img, d.xyxy)
        if self.exclude_edges:
            dets = [exclude_edges_fn(d, im.shape[1], im.shape[0]) for d, im in zip(dets, images)]
        return dets, scales

    def classify(self, images: list[np.ndarray], dets: list[sv.Detections],
                 scales: list[ScaleInfo] | None = None) -> None:
        """Attach subtype and ALL probability to every WBC (one batched call per classifier); ``scales``
        (from :meth:`detect`) give RBC-scaled classifiers each field's red-cell size."""
        from hemocount.classify.pipeline import classify_wbcs, empty_fields

        if self.subtype is None:
            for d in dets:
                empty_fields(d)
            return
        rbc_px = [s.rbc_px for s in scales] if scales is not None else None
        classify_wbcs(images, dets, self.subtype, self.all_model, self.min_subtype_prob, rbc_px)

    def result(self, index: int, path: Path, name: str, image: np.ndarray, dets: sv.Detections, scale: ScaleInfo,
               quality: dict[str, float], seconds: float = 0.0, slide: str = "") -> FieldResult:
        """The field's result, with the stain coverage of its detections added to ``quality``."""
        q = {**quality, "coverage": float(dets.metadata.get("coverage", stain_coverage(image, dets.xyxy)))}
        cap = dets.metadata.get("cap_cut", int(dets.metadata.get("raw_count", len(dets))) >= self.max_det)
        return FieldResult(index, path, name, width=image.shape[1], height=image.shape[0], detections=dets,
                           cap_reached=bool(cap),
                           seconds=seconds, slide=slide, quality=q, tiles=int(dets.metadata.get("tiles", 0)),
                           scale=scale)

    def flags(self, r: FieldResult) -> list[Flag]:
        """QC flags of a counted field, from its stored measures (so they follow the current settings)."""
        c = r.detections.confidence
        return field_flags(counts=r.counts(), confidences=np.zeros(0) if c is None else np.asarray(c),
                           quality=r.quality, cap_reached=r.cap_reached, max_det=self.max_det, cfg=self.qc,
                           scale=r.scale, scale_cfg=self.scale, stain_ref=self.stain_ref,
                           crop_rbc_k={name: float(getattr(m, "rbc_k", 0.0)) for name, m in
                                       (("subtype", self.subtype), ("ALL", self.all_model)) if m is not None})

    # ----------------------------------------------------------------- scale normalisation
    def _native_window(self, image: np.ndarray) -> int:
        """The window the first pass saw: the tile of a tiled image, else the whole image."""
        return self.plan.tile if self.plan is not None and self._tiled(image) else max(image.shape[:2])

    def _scale_of(self, image: np.ndarray, dets: sv.Detections) -> ScaleInfo:
        """The first pass's scale: kept when its red cells have the trained size and it is confident,
        else ``search`` (``auto``), or the user's fixed factor."""
        h, w = image.shape[:2]
        rbc_px, n = rbc_diameter(dets, w, h, self.scale.min_rbc, self.scale_conf)
        native = self._native_window(image)
        zoom = round(zoom_of(rbc_px, native), 3) if rbc_px else None
        if self.scale.mode == "fixed":
            window = max(32, round(native / float(self.scale.factor or 1.0)))
            return ScaleInfo("fixed", rbc_px, n, zoom, round(native / window, 4), window)
        if self.scale.mode == "none":
            return ScaleInfo("off", rbc_px, n, zoom)
        lo, hi = self.scale.band
        if rbc_px is None:
            return ScaleInfo("search", None, n, None)
        rel = rbc_px / native
        if lo <= rel <= hi:
            # Red cells of the trained size: the first pass stands, however unsure it is (a less confident
            # first pass on the training labs' own fields was replaced by worse windows before).
            return ScaleInfo("as_is", rbc_px, n, zoom)
        if rel < lo:
            # Cells too small are still found and measured well (0.5x: median RBC within 10 % of the
            # truth on BCCD and PBC val), so one more pass at the measured scale does; too large ones
            # are found as fragments and need the search.
            window = window_for(rbc_px, self.scale.max_zoom, native)
            return ScaleInfo("normalised", rbc_px, n, zoom, round(native / window, 4), window)
        return ScaleInfo("search", rbc_px, n, zoom)

    def _search_scale(self, image: np.ndarray, native_dets: sv.Detections) -> tuple[ScaleInfo, sv.Detections | None]:
        """Detect at other windows; keep the one where the detector is most confident (at the trained
        magnification it is: see ``SEARCH_ZOOMS``), then refine it with the red cells found there.

        Returns the scale and the detections at it when no further pass is needed (else None).
        """
        h, w = image.shape[:2]
        native = self._native_window(image)
        best_zoom, best_conf, best_dets = 1.0, mean_confidence(native_dets), native_dets
        seen, _ = rbc_diameter(native_dets, w, h, self.scale.min_rbc, self.scale_conf)
        # A window must keep a fair share of the first pass's confident cells: a shrunk image with one
        # sure detection is not a better reading of a field where the first pass found a dozen.
        needed = max(1, round(0.25 * confident_count(native_dets)))
        for zoom in SEARCH_ZOOMS:
            if zoom < 1 and seen is not None and seen / native >= self.scale.band[0]:
                continue  # the red cells found are not small: only larger windows can help
            window = max(32, round(native * zoom))
            d = self._detect([image], [ScaleInfo("probe", factor=native / window, window=window)])[0]
            c = mean_confidence(d)
            if c > best_conf + self.scale.min_gain and confident_count(d) >= needed and self._ruler_fits(d, window, native):
                best_zoom, best_conf, best_dets = zoom, c, d
        rbc_px, n = rbc_diameter(best_dets, w, h, self.scale.min_rbc, self.scale_conf)
        if best_zoom == 1.0:
            zoom = round(zoom_of(rbc_px, native), 3) if rbc_px else None
            return ScaleInfo("as_is" if rbc_px is not None else "unknown", rbc_px, n, zoom), native_dets
        probe_window = max(32, round(native * best_zoom))
        if rbc_px is None:
            # The most confident window stands, but with too few red cells there is no ruler: no µm/px,
            # and the field is flagged scale_unknown.
            return ScaleInfo("normalised", None, n, best_zoom, round(native / probe_window, 4), probe_window,
                             done=True), best_dets
        window = window_for(rbc_px, self.scale.max_zoom, native)
        # Within 15 % of the probe's window the probe's own detections stand (a pass saved).
        done = abs(window / probe_window - 1) <= 0.15
        window = probe_window if done else window
        return (ScaleInfo("normalised", rbc_px, n, round(zoom_of(rbc_px, native), 3), round(native / window, 4),
                          window, done=done), best_dets if done else None)

    def _ruler_fits(self, dets: sv.Detections, window: int, native: int) -> bool:
        """Whether a window shows at least one sure red cell of the trained relative size: a 1x field
        shrunk 3x shows only specks, which the detector may still call something with confidence."""
        if len(dets) == 0 or dets.confidence is None:
            return False
        b = dets.xyxy[(dets.data["class_name"] == "RBC") & (dets.confidence >= 0.5)]
        rel = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) / window
        lo, hi = self.scale.band
        # a finer tiling may still show the cells small: then they are measured and the window refined
        return bool(np.any((rel >= lo if window >= native else rel > 0) & (rel <= hi)))

    def _keep(self, dets: sv.Detections) -> sv.Detections:
        """The detections at the run's thresholds (passes run at :data:`PROBE_CONF` or below)."""
        from hemocount.detect.base import filter_by_class_conf

        kept = filter_by_class_conf(dets, self.conf)
        kept.metadata.update(dets.metadata)
        # The cap matters only if it cut boxes the run keeps: passes run at a lower confidence, so a full
        # raw list whose weakest box is below every threshold lost nothing that counts.
        raw = int(dets.metadata.get("raw_count", len(dets)))
        weakest = float(dets.confidence.min()) if len(dets) and dets.confidence is not None else 0.0
        kept.metadata["cap_cut"] = raw >= self.max_det and weakest >= min(self.conf.values())
        return kept

    def _detect(self, images: list[np.ndarray], scales: list[ScaleInfo | None]) -> list[sv.Detections]:
        """Whole images in one batched call; shrunk (zoomed-in) and tiled ones image by image."""
        out: list[Any] = [None] * len(images)
        whole = [k for k, (im, s) in enumerate(zip(images, scales)) if s is None and not self._tiled(im)]
        if whole:
            for k, d in zip(whole, self.detector.predict([images[k] for k in whole], conf=self._probe_conf,
                                                         iou=self.iou, max_det=self.max_det)):
                out[k] = d
        for k, (img, s) in enumerate(zip(images, scales)):
            if out[k] is not None:
                continue
            if s is None:
                assert self.plan is not None
                out[k] = detect_tiled(self.detector, img, self.plan, conf=self._probe_conf, iou=self.iou,
                                      max_det=self.max_det, batch=self.batch)
            elif s.window is not None and s.window < max(img.shape[:2]):
                plan = TilePlan.from_options(s.window, SCALE_OVERLAP)
                out[k] = detect_tiled(self.detector, img, plan, conf=self._probe_conf, iou=self.iou,
                                      max_det=self.max_det, batch=self.batch)
            else:
                out[k] = self._detect_shrunk(img, max(img.shape[:2]) / float(s.window or max(img.shape[:2])))
        return out

    def _detect_shrunk(self, image: np.ndarray, factor: float) -> sv.Detections:
        """Detect on the image shrunk by ``factor`` and padded back; boxes mapped to the image."""
        d = self.detector.predict([shrink_and_pad(image, factor)], conf=self._probe_conf, iou=self.iou,
                                  max_det=self.max_det)[0]
        if len(d) == 0:
            return d
        h, w = image.shape[:2]
        d.xyxy = d.xyxy / factor
        cx, cy = (d.xyxy[:, 0] + d.xyxy[:, 2]) / 2, (d.xyxy[:, 1] + d.xyxy[:, 3]) / 2
        kept = d[(cx < w) & (cy < h)]  # the background padding holds no cell of this image
        kept.metadata.update(d.metadata)
        kept.xyxy = np.clip(kept.xyxy, 0, [w, h, w, h]).astype(kept.xyxy.dtype)
        return kept

    @property
    def _probe_conf(self) -> dict[str, float]:
        """Each class at its run threshold or :data:`PROBE_CONF`, whichever is lower: the scale decision
        must not depend on ``--conf``, and greedy NMS keeps the same boxes above any threshold."""
        return {c: min(v, PROBE_CONF) for c, v in self.conf.items()}

    def _tiled(self, image: np.ndarray) -> bool:
        if self.plan is None:
            return False
        h, w = image.shape[:2]
        return needs_tiling(w, h, self.plan.tile) if self.auto_tile else max(w, h) > self.plan.tile

    # ----------------------------------------------------------------- runs
    def run(self, sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], out: str | os.PathLike[str],
            **options: Any) -> Any:
        """Exactly what ``hemocount count SOURCES -o OUT`` does with this pipeline; see
        :func:`hemocount.run.count_run` for the options (resume, fail_fast, annotate, report, ...)."""
        from hemocount.run import count_run

        return count_run(self, sources=_as_sources(sources), out=out, **options)

    def stream(self, sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
               readers: int = 2) -> Iterator[FieldResult]:
        """Count every image of ``sources`` (files, folders) and yield results in input order, writing
        nothing; an unreadable image yields a ``skipped`` result with its reason."""
        from hemocount.io import find_images
        from hemocount.run import prefetch

        images = find_images(_as_sources(sources))
        for chunk in prefetch(images, list(range(len(images))), self.batch, readers):
            ok = [(i, img, q) for i, (img, q, _s, err) in chunk if err is None]
            dets, scales = self.detect([img for _, img, _ in ok]) if ok else ([], [])
            self.classify([img for _, img, _ in ok], dets, scales)
            by_index = {i: (img, d, s, q) for (i, img, q), d, s in zip(ok, dets, scales)}
            for i, (_img, _q, secs, err) in chunk:
                if err is not None:
                    yield FieldResult(i, images[i], str(images[i]), status="skipped", error=str(err), seconds=secs)
                    continue
                img, d, s, q = by_index[i]
                r = self.result(i, images[i], str(images[i]), img, d, s, q, seconds=secs)
                r.flags = self.flags(r)
                yield r


def _as_sources(sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str | os.PathLike[str]]:
    """One path or many: ``pipe.run("slides/")`` means the folder, not its characters."""
    return [sources] if isinstance(sources, str | os.PathLike) else list(sources)


def as_bgr(image: Any, color: str | None) -> np.ndarray:
    """An 8-bit BGR copy-free view of a path, PIL image or numpy array (``color`` names its order).

    A numpy array must say its colour order: an RGB array read as BGR swaps the stain's blue and red
    and silently changes the counts (0 RBC / 4 WBC instead of 11 / 1 on a BCCD field).
    """
    from hemocount.io import read_image

    if isinstance(image, str | os.PathLike):
        return read_image(Path(image))
    if isinstance(image, np.ndarray):
        order = color.lower() if isinstance(color, str) else None
        if image.ndim == 2:
            return _to_bgr(image, rgb=False)  # grayscale: no colour order to get wrong
        if order not in COLOR_ORDERS:
            raise HemocountError("a colour numpy image needs its colour order: pass color='bgr' (OpenCV) or "
                                 "color='rgb' (PIL, matplotlib, skimage)")
        return _to_bgr(image, rgb=order == "rgb")
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None  # type: ignore[assignment]
    if Image is not None and isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            # 16-bit and float grayscale: convert("RGB") clips them white; scale through numpy instead
            arr = np.asarray(image, dtype=np.float64)
            top = 65535.0 if image.mode.startswith("I;16") else max(float(arr.max()), 1.0)
            return _to_bgr((np.clip(arr / top, 0, 1) * 255 + 0.5).astype(np.uint8), rgb=True)
        return _to_bgr(np.asarray(image.convert("RGB")), rgb=True)
    raise HemocountError(f"cannot count a {type(image).__name__}: give a path, a PIL image or a numpy array")


def _to_bgr(arr: np.ndarray, *, rgb: bool) -> np.ndarray:
    import cv2

    if arr.dtype == np.uint16:
        arr = (arr / 257).astype(np.uint8)
    if arr.dtype != np.uint8:
        raise BadImageError(f"numpy image: unsupported pixel type {arr.dtype} (give uint8 or uint16)")
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise BadImageError(f"numpy image: unsupported shape {arr.shape} (give HxW, HxWx3 or HxWx4)")
    if arr.shape[2] == 4:
        return cv2.cvtColor(arr, cv2.COLOR_RGBA2BGR if rgb else cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(arr[..., ::-1]) if rgb else arr
