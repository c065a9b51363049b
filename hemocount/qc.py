"""Quality-control flags for fields and slides, with their thresholds in one dataclass.

Each flag is ``{"code", "level", "message"}``; levels are ``info``, ``warning`` and ``error``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hemocount.config_files import load_mapping
from hemocount.errors import HemocountError
from hemocount.flags import Flag

if TYPE_CHECKING:
    from hemocount.domain import StainReference
    from hemocount.scale import ScaleConfig, ScaleInfo
    from hemocount.summary import WbcFamiliarity


@dataclass
class QCConfig:
    """QC thresholds (override any of them with ``--qc FILE.json|toml``).

    Defaults come from the training sources (BCCD, PBC, Tecom fields): their mean luminance lies in
    165-210 and their blur index in 0.27-0.66, while a Gaussian blur of sigma 2 px already gives ~0.74.
    Photographed fields are usually chosen around WBCs, which inflates the WBC share, hence the wide
    ratio ranges.
    """

    dark_below: float = 50.0
    bright_above: float = 235.0
    blur_above: float = 0.72
    low_conf: float = 0.5
    low_conf_share: float = 0.3
    min_detections: int = 1
    rbc_per_wbc: tuple[float, float] = (2.0, 10000.0)
    platelets_per_rbc: tuple[float, float] = (0.002, 1.0)
    min_wbc: int = 100
    min_chroma: float = 6.0
    min_coverage: float = 0.35
    #: JPEG blockiness (see :func:`blockiness`) above which a field is flagged ``compressed``. BCCD and PBC
    #: val fields as shipped: 1.3-2.0; re-encoded at quality 20 / 15 / 10: BCCD 3.6-5.0 / 4.7-6.7 / 6.0-9.4
    #: (RBC count error 0.126 / - / 0.244 vs 0.079 as shipped, no other flag fired at 10), PBC 1.9-2.6 /
    #: 2.2-3.2 / 2.5-4.1 (counts held). benchmarks/jpeg_quality.py.
    blocky_above: float = 4.5

    @classmethod
    def load(cls, path: str | Path | None) -> QCConfig:
        """Defaults, updated from a user's file."""
        if path is None:
            return cls()
        data = load_mapping(path, "QC")
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise HemocountError(f"{path}: unknown QC key(s) {sorted(unknown)}; valid: {', '.join(sorted(names))}")
        for k in ("rbc_per_wbc", "platelets_per_rbc"):
            if k in data:
                v = data[k]
                if not isinstance(v, list | tuple) or len(v) != 2 or v[0] > v[1]:
                    raise HemocountError(f"{path}: QC {k} must be [low, high] with low <= high")
                data[k] = (float(v[0]), float(v[1]))
        for f in fields(cls):
            if f.name in data and f.name not in ("rbc_per_wbc", "platelets_per_rbc"):
                v = data[f.name]
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise HemocountError(f"{path}: QC {f.name} must be a number (got {v!r})")
                data[f.name] = int(v) if f.type in ("int", int) else float(v)
        try:
            return cls(**data)
        except TypeError as exc:
            raise HemocountError(f"{path}: bad QC file ({exc})") from None

    def to_json(self) -> dict[str, Any]:
        """Plain dict for the run record."""
        return asdict(self)


def image_quality(image_bgr: np.ndarray) -> dict[str, float]:
    """Mean luminance (0-255) and a scale-free blur index (0 sharp .. 1 featureless).

    The blur index is the share of gradient energy that survives a sigma-2 Gaussian blur: a sharp
    image loses most of its gradient energy, an already blurred one keeps it. It is computed on a
    copy scaled to 640 px so it does not depend on the image size.
    """
    import cv2

    gray = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    blocky = blockiness(gray)  # at full resolution: the 8-px grid is in the file's own pixels
    scale = 640 / max(gray.shape)
    if scale < 1:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)

    def energy(g: np.ndarray) -> float:
        # 16-bit Sobel is exact for 8-bit input (|value| <= 1020) and, with cv2.norm's double sum,
        # a third of the time of float32 Sobel plus numpy squares (the QC ran longer than decoding).
        gx = cv2.Sobel(g, cv2.CV_16S, 1, 0)
        gy = cv2.Sobel(g, cv2.CV_16S, 0, 1)
        return (cv2.norm(gx, cv2.NORM_L2SQR) + cv2.norm(gy, cv2.NORM_L2SQR)) / g.size

    total = energy(gray)
    blur = 1.0 if total < 1e-6 else energy(cv2.GaussianBlur(gray, (0, 0), 2)) / total
    from hemocount.domain import stain_features

    return {"brightness": round(cv2.mean(gray)[0], 2), "blur_index": round(min(blur, 1.0), 4),
            "blockiness": blocky, "chroma": chroma(image_bgr), **stain_features(image_bgr)}


def blockiness(gray: np.ndarray, side: int = 1024) -> float:
    """How much stronger the jumps between JPEG's 8x8 blocks are than those inside them (1 = no grid).

    Heavy compression leaves a step at every eighth pixel: the mean absolute difference between
    neighbours, averaged per column (and row) phase modulo 8, peaks at one phase. The ratio of that peak
    to the median phase is scale-free and needs no file header, so it also catches a compressed image
    saved again as PNG (not one resized afterwards, which blurs the grid away). Measured on a centre crop
    of at most ``side`` px aligned to the grid, to bound its cost on large images.
    """
    h, w = gray.shape[:2]
    y0, x0 = max(0, (h - side) // 2) // 8 * 8, max(0, (w - side) // 2) // 8 * 8
    g = gray[y0:y0 + side, x0:x0 + side].astype(np.int16)
    ratios = []
    for d in (np.abs(np.diff(g, axis=1)).mean(axis=0), np.abs(np.diff(g, axis=0)).mean(axis=1)):
        n = len(d) // 8 * 8
        if n < 64:
            return 1.0
        per_phase = d[:n].reshape(-1, 8).mean(axis=0)
        med = float(np.median(per_phase))
        ratios.append(float(per_phase.max()) / med if med > 1e-6 else 1.0)
    return round(float(np.mean(ratios)), 3)


def thumbnail(image_bgr: np.ndarray, side: int = 160) -> tuple[np.ndarray, float]:
    """A nearest-neighbour thumbnail (longer side ``side``) and its scale: cheap, enough for statistics."""
    step = max(1, int(max(image_bgr.shape[:2]) // side))
    return image_bgr[::step, ::step], 1.0 / step


def chroma(image_bgr: np.ndarray) -> float:
    """Mean colourfulness (max - min channel, 0-255): about 0 for a grayscale image.

    Stained smears are never grey: training fields (BCCD, PBC) score well above the flag threshold
    (see ``QCConfig.min_chroma`` and benchmarks/qc_measures.py).
    """
    t, _ = thumbnail(image_bgr)
    t = t.astype(np.int16)
    return round(float(np.mean(t.max(axis=2) - t.min(axis=2))), 2)


def stained_mask(image_bgr: np.ndarray) -> np.ndarray:
    """Pixels clearly darker than the background in green (haemoglobin and nuclei absorb it), on a
    thumbnail: where cells are, whatever the detector thinks."""
    t, _ = thumbnail(image_bgr)
    g = t[..., 1].astype(np.float32)
    return g < 0.85 * float(np.percentile(g, 90))


def stain_coverage(image_bgr: np.ndarray, xyxy: np.ndarray) -> float:
    """Share of the stained pixels that lie inside a detection box (1.0 when nothing is stained).

    Far below the training fields' values means cells the detector did not find (another stain,
    magnification or focus), even when it found some.
    """
    mask = stained_mask(image_bgr)
    total = int(mask.sum())
    if total == 0:
        return 1.0
    _, s = thumbnail(image_bgr)
    inside = np.zeros_like(mask)
    for x1, y1, x2, y2 in np.asarray(xyxy, dtype=np.float64).reshape(-1, 4):
        inside[int(y1 * s):int(np.ceil(y2 * s)) + 1, int(x1 * s):int(np.ceil(x2 * s)) + 1] = True
    return round(float((mask & inside).sum()) / total, 4)


#: Flag codes saying a count itself cannot be trusted (not merely that a slide is small); a slide's
#: summary of its fields' flags carries them as ``fields_<code>``.
TRUST_CODES = ("no_colour", "missed_cells", "scale_unknown", "scale_out_of_range", "unfamiliar_lab", "cap_reached",
               "no_cells", "blurred", "compressed", "too_dark", "too_bright", "wbc_crops_unscaled")


def untrusted(flags: list[Flag]) -> list[Flag]:
    """The flags of a slide (or field) that put its counts in doubt, info-level notes left out."""
    return [f for f in flags if f.code.removeprefix("fields_") in TRUST_CODES and f.doubts_count]


def _flag(code: str, level: str, message: str) -> Flag:
    return Flag(code, level, message)


def _ratio_flags(counts: dict[str, int], cfg: QCConfig) -> list[Flag]:
    out = []
    rbc, wbc, plt = counts["RBC"], counts["WBC"], counts["Platelets"]
    if wbc and rbc:
        r = rbc / wbc
        lo, hi = cfg.rbc_per_wbc
        if not lo <= r <= hi:
            out.append(_flag("rbc_wbc_ratio", "warning", f"RBC:WBC ratio {r:.1f} outside the plausible {lo:g}-{hi:g}"))
    if rbc and plt:
        r = plt / rbc
        lo, hi = cfg.platelets_per_rbc
        if not lo <= r <= hi:
            out.append(_flag("platelet_rbc_ratio", "warning",
                             f"platelets per RBC {r:.3f} outside the plausible {lo:g}-{hi:g}"))
    return out


def _trust_flags(quality: dict[str, float], cfg: QCConfig, scale: ScaleInfo | None,
                 scale_cfg: ScaleConfig | None, stain_ref: StainReference | None) -> list[Flag]:
    """Flags saying the field is unlike what the detector was trained and validated on."""
    from hemocount.domain import field_vector

    out = []
    vec = field_vector(quality)
    if stain_ref is not None and vec is not None and (d := stain_ref.distance(vec)) > stain_ref.threshold:
        # info on the field; the slide's warning rests on the mean of its fields (see slide_flags)
        out.append(_flag("unfamiliar_lab", "info", f"stain unlike BCCD's and PBC's fields (distance {d:.1f} > "
                         f"{stain_ref.threshold:.1f})"))
    if "chroma" in quality and quality["chroma"] < cfg.min_chroma:
        out.append(_flag("no_colour", "error", f"the image has almost no colour (chroma {quality['chroma']:.1f}): "
                         "the models were trained on stained colour fields, counts cannot be trusted"))
    if "coverage" in quality and quality["coverage"] < cfg.min_coverage:
        out.append(_flag("missed_cells", "warning",
                         f"detections cover only {quality['coverage']:.0%} of the stained area: cells were "
                         "probably missed (unfamiliar stain, magnification or focus)"))
    if scale is not None and scale.rbc_px is None and scale.status in ("unknown", "normalised"):
        how = ("detected at the window where the detector was most confident" if scale.status == "normalised"
               else "detected at the image's own scale")
        out.append(_flag("scale_unknown", "warning", f"too few red cells ({scale.n_rbc}) to measure the "
                         f"magnification: {how}"))
    elif scale is not None and scale.rbc_px is not None and scale_cfg is not None:
        if scale.rbc_px < scale_cfg.min_rbc_px:
            out.append(_flag("scale_out_of_range", "warning", f"red cells only {scale.rbc_px:.0f} px across "
                             f"(< {scale_cfg.min_rbc_px:g}): too few pixels to tell cells apart"))
        elif scale.zoom is not None and scale.zoom > scale_cfg.max_zoom:
            out.append(_flag("scale_out_of_range", "warning", f"cells appear {scale.zoom:.2f}x the trained size "
                             f"for this image, beyond the {scale_cfg.max_zoom:g}x normalised and validated"))
    return out


def field_flags(*, counts: dict[str, int], confidences: np.ndarray, quality: dict[str, float], cap_reached: bool,
                max_det: int, cfg: QCConfig, scale: ScaleInfo | None = None,
                scale_cfg: ScaleConfig | None = None,
                stain_ref: StainReference | None = None,
                crop_rbc_k: dict[str, float] | None = None) -> list[Flag]:
    """Flags for one counted field: every "can't trust this count" signal goes through here.
    ``crop_rbc_k``: each loaded classifier's RBC-scaled crop width by name (``subtype``, ``ALL``; 0: box-scaled)."""
    out = _trust_flags(quality, cfg, scale, scale_cfg, stain_ref)
    if scale is not None:
        out += crop_scale_flags(crop_rbc_k or {}, scale, counts.get("WBC", 0))
    if cap_reached:
        out.append(_flag("cap_reached", "error", f"detection cap ({max_det}) reached: counts may be low"))
    if sum(counts.values()) < cfg.min_detections:
        out.append(_flag("no_cells", "warning", "no cells detected"))
    if len(confidences) and np.mean(confidences < cfg.low_conf) > cfg.low_conf_share:
        share = float(np.mean(confidences < cfg.low_conf))
        out.append(_flag("low_confidence", "warning",
                         f"{share:.0%} of detections below confidence {cfg.low_conf:g}"))
    if quality:
        if quality["brightness"] < cfg.dark_below:
            out.append(_flag("too_dark", "warning", f"image too dark (mean luminance {quality['brightness']:.0f})"))
        elif quality["brightness"] > cfg.bright_above:
            out.append(_flag("too_bright", "warning", f"image too bright (mean luminance {quality['brightness']:.0f})"))
        if quality["blur_index"] > cfg.blur_above:
            out.append(_flag("blurred", "warning", f"image looks blurred (blur index {quality['blur_index']:.2f})"))
        if quality.get("blockiness", 1.0) > cfg.blocky_above:
            out.append(_flag("compressed", "warning", f"image looks heavily JPEG-compressed (blockiness "
                             f"{quality['blockiness']:.1f} > {cfg.blocky_above:g}): red cells may be undercounted"))
    return out


def crop_scale_flags(rbc_k: dict[str, float], scale: ScaleInfo, n_wbc: int) -> list[Flag]:
    """RBC-scaled classifiers (``rbc_k``: name -> crop width in red-cell diameters) on a field whose red cells
    could not be measured: its WBCs were cut by their boxes instead, a crop those classifiers never saw in
    training, so their calls (subtypes, ALL probabilities) are doubtful."""
    scaled = {name: k for name, k in rbc_k.items() if k > 0}
    if not scaled or scale.rbc_px or not n_wbc:
        return []
    cells = f"{n_wbc} WBC was" if n_wbc == 1 else f"{n_wbc} WBCs were"
    widths = " / ".join(sorted({f"{k:g}" for k in scaled.values()}))
    names = " and ".join(scaled)
    calls = " and ".join({"subtype": "subtypes", "ALL": "ALL probabilities"}.get(n, n) for n in scaled)
    return [_flag("wbc_crops_unscaled", "warning", f"no red-cell size on this field: its {cells} cropped by "
                  f"the detection box, not by {widths} red-cell diameters as the {names} classifier"
                  f"{'s were' if len(scaled) > 1 else ' was'} trained: {calls} less reliable")]


def _all_flag_context(stain: dict[str, Any] | None, wbcs: WbcFamiliarity | None) -> list[Flag]:
    """What a raised ALL flag cannot tell on this slide. Leave-one-lab-out, normal lymphocytes of healthy labs
    the ALL model never saw tripped it on most simulated slides (held-out BCCD and LISC, README); the slide's
    familiarity is judged without the WBCs the ALL model called, so blasts do not make their own lab look
    unfamiliar."""
    if (wbcs is not None and wbcs.flagged) or (stain is not None and stain["flagged"]):
        why = "its non-blast WBCs or its stain look unlike the training labs"
    elif wbcs is None:
        why = "whether its WBCs look like the training labs was not checked (a user's subtype checkpoint)"
    elif not wbcs.judged:
        why = "it has too few WBCs to judge whether they look like the training labs'"
    else:
        return []
    return [_flag("all_flag_unfamiliar_lab", "warning",
                  f"the ALL flag was raised on a slide where {why}: on labs it never saw, healthy lymphocytes "
                  "also tripped it, so it cannot tell blasts from an unfamiliar lab's lymphocytes here; review "
                  "the smear")]


def slide_flags(*, counts: dict[str, int], n_fields: int, n_skipped: int, n_classified: int | None,
                field_flags_: list[list[Flag]], cfg: QCConfig,
                stain: dict[str, Any] | None = None, wbcs: WbcFamiliarity | None = None,
                all_flagged: bool = False) -> list[Flag]:
    """Flags for a slide: its own checks plus a summary of its fields' flags.

    ``stain`` is the slide's :meth:`hemocount.domain.StainReference.evaluate` result, if any; ``wbcs`` the
    verdict on its WBCs' features (:meth:`hemocount.classify.familiarity.FeatureReference.evaluate`);
    ``all_flagged`` whether its ALL flag was raised. ``wbcs`` None means the WBCs were not checked (the
    subtype model carries no feature reference: a user's or adapted checkpoint).
    """
    out = []
    unlike = []
    if stain is not None and stain["flagged"]:
        unlike.append(f"its stain is unlike that of the detector's training labs, BCCD and PBC (distance "
                      f"{stain['distance']:.1f} > {stain['threshold']:.1f})")
    if wbcs is not None and wbcs.flagged:
        why = []
        if wbcs.distance_flagged:
            why.append(f"feature distance {wbcs.score:.1f} > {wbcs.threshold:.1f}")
        if wbcs.uncertainty_flagged:
            why.append(f"mean classifier uncertainty {wbcs.uncertainty:.2f} > {wbcs.uncertainty_threshold:.2f}")
        if wbcs.stain_flagged:
            why.append(f"crop colour distance {wbcs.stain_distance:.2f} > {wbcs.stain_threshold:.2f}")
        unlike.append(f"its {wbcs.n_wbc} WBCs look unlike the subtype classifier's training labs ({', '.join(why)})")
    if unlike:
        out.append(_flag("unfamiliar_lab", "warning",
                         f"{' and '.join(unlike)}: validate counts and differential against a manual count on a "
                         "few fields before relying on them" + (", or adapt the classifier to your lab "
                         "(hemocount count --export-crops, then hemocount adapt classify)" if wbcs and wbcs.flagged
                                                              else "")))
    if all_flagged:
        out += _all_flag_context(stain, wbcs)
    if n_skipped:
        out.append(_flag("skipped_fields", "error", f"{n_skipped} image(s) could not be read and were skipped"))
    if n_fields == 0:
        return out
    if n_classified is None and counts["WBC"] < cfg.min_wbc:
        out.append(_flag("few_wbc", "warning", f"only {counts['WBC']} WBCs detected (< {cfg.min_wbc})"))
    elif n_classified is not None and n_classified < cfg.min_wbc:
        out.append(_flag("insufficient_differential", "warning",
                         f"only {n_classified} confidently classified WBCs of {counts['WBC']} detected "
                         f"(< {cfg.min_wbc}): differential not reportable"))
    out += _ratio_flags(counts, cfg)
    by_code: dict[str, tuple[str, int, str]] = {}
    for flags in field_flags_:
        for f in flags:
            level, n, first = by_code.get(f.code, (f.level, 0, f.message))
            by_code[f.code] = (level, n + 1, first)
    for code, (level, n, first) in sorted(by_code.items()):
        example = f" (first: {first})" if n > 1 else f": {first}"
        out.append(_flag(f"fields_{code}", level, f"{n} of {n_fields} field(s) flagged {code}{example}"))
    return out
