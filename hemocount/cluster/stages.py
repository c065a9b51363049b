"""What a Ray worker runs: decode, detect, classify (Ray Data ``map_batches`` stages), and what it must
agree on with the driver before it counts anything.

Batches are dicts of columns. Every image of a batch travels to the end, a bad one as a row with its
one-line ``error`` and a 1x1 placeholder image, so the driver hears of each image in input order. Records
leave the last stage as the JSON of :meth:`hemocount.results.FieldResult.to_json` (what the journal
holds). The annotated image is written by the worker itself when it sees the run's output folder (a shared
filesystem, proved by the driver's probe file), else sent along encoded: the driver then only writes bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import socket
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hemocount import __version__
from hemocount.errors import HemocountError
from hemocount.pipeline import Pipeline

Batch = dict[str, Any]
_PLACEHOLDER = np.zeros((1, 1, 3), np.uint8)


@dataclass(frozen=True)
class ModelSpec:
    """One model as the driver resolved it: workers load it by ``weights`` and must end up with the same
    file (``sha256``), engine and precision."""

    task: str
    weights: str
    sha256: str | None
    engine: str
    precision: str
    backend: str = ""
    #: sha256 of the subtype weights' unfamiliar_lab reference (manifest block: file sha, colour, thresholds).
    reference_sha256: str | None = None

    @classmethod
    def of(cls, model: Any, task: str, backend: str = "") -> ModelSpec:
        """The spec of a model loaded on the driver (shipped weights by manifest id, a checkpoint by path)."""
        entry = model.weights
        spec = str(Path(entry.path).resolve()) if entry.meta.get("user_checkpoint") else entry.id
        return cls(task, spec, entry.sha256, getattr(model, "engine", "torch"), getattr(model, "precision", "fp32"),
                   backend, _reference_sha(model))

    def check(self, model: Any) -> None:
        """Refuse a model that is not the driver's: a worker must never count with other weights or another
        arithmetic (``--precision auto`` may pick bf16 on one CPU and fp32 on another).

        Raises:
            HemocountError: Naming the worker's host and what differs.
        """
        ref = _reference_sha(model)
        if ref != self.reference_sha256:
            raise HemocountError(
                f"Ray worker on {socket.gethostname()}: {self.task} model's unfamiliar_lab reference (statistics and "
                f"thresholds) is {str(ref)[:12]}, the driver's {str(self.reference_sha256)[:12]}: refusing to mix "
                "them in one run (install the same hemocount and weights on every node)")
        got = (model.weights.sha256, getattr(model, "engine", "torch"), getattr(model, "precision", "fp32"))
        if got != (self.sha256, self.engine, self.precision):
            raise HemocountError(
                f"Ray worker on {socket.gethostname()}: {self.task} model is {got[1]} {got[2]} with weights "
                f"sha256 {str(got[0])[:12]}, the driver's is {self.engine} {self.precision} with {str(self.sha256)[:12]}: "
                "refusing to mix them in one run (install the same hemocount and weights on every node, "
                "or pass --precision fp32)")


def _reference_sha(model: Any) -> str | None:
    """A sha256 of what a loaded model's ``unfamiliar_lab`` check reads, if it carries one: its manifest
    block (the reference file's sha256, the crop-colour reference and every threshold), since a refit may
    change the thresholds and the colour statistics without touching the file."""
    if getattr(model, "reference", None) is None:
        return None
    domain = model.weights.thresholds.get("domain", {})
    return hashlib.sha256(json.dumps(domain, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to count as the driver would: the driver's pipeline settings (without
    models), the models as resolved there, and the hemocount version."""

    settings: Pipeline
    detector: ModelSpec
    subtype: ModelSpec | None
    all_model: ModelSpec | None
    version: str = __version__

    @classmethod
    def of(cls, pipe: Pipeline, detector_name: str) -> WorkerSpec:
        """The spec of the driver's loaded pipeline."""
        bare = replace(pipe, detector=None, subtype=None, all_model=None)
        sub, all_model = pipe.subtype, pipe.all_model
        return cls(bare, ModelSpec.of(pipe.detector, "detect", detector_name),
                   ModelSpec.of(sub, "wbc_subtype") if sub is not None else None,
                   ModelSpec.of(all_model, "all") if all_model is not None else None)

    def load(self, stage: str, threads: int) -> Pipeline:
        """The pipeline of one stage (``detect`` or ``classify``), models loaded with ``threads`` threads.

        Raises:
            HemocountError: Another hemocount version, or a model that differs from the driver's.
        """
        if self.version != __version__:
            raise HemocountError(f"Ray worker on {socket.gethostname()} has hemocount {__version__}, the driver "
                                 f"{self.version}: install the same version on every node")
        from hemocount.runtime import set_threads

        set_threads(threads)
        if stage == "detect":
            from hemocount.detect import load_detector

            d = self.detector
            det = load_detector(d.backend, d.weights, engine=d.engine, precision=d.precision)
            d.check(det)
            return replace(self.settings, detector=det)
        if self.subtype is None or self.all_model is None:
            return replace(self.settings)  # --no-classify: records and annotated images only
        from hemocount.classify.infer import Classifier

        models = []
        for m in (self.subtype, self.all_model):
            model = Classifier.from_weights(m.weights, task=m.task, engine=m.engine, precision=m.precision)
            m.check(model)
            models.append(model)
        return replace(self.settings, subtype=models[0], all_model=models[1])


def decode(batch: Batch) -> Batch:
    """Read and check each image of each chunk (rows of ``index`` and ``path`` lists), and measure its quality
    (the local run's reader, on a worker): one row per image."""
    from hemocount.run import read_one

    indices = [int(i) for chunk in batch["index"] for i in chunk]
    paths = [str(p) for chunk in batch["path"] for p in chunk]
    names = [str(n) for chunk in batch["name"] for n in chunk]
    images, quality, seconds, errors = [], [], [], []
    for path in paths:
        img, q, secs, err = read_one(Path(path))
        images.append(_PLACEHOLDER if img is None else img)
        quality.append(json.dumps(q))
        seconds.append(secs)
        errors.append("" if err is None else str(err))
    return {"index": np.asarray(indices), "path": paths, "name": names, "image": images, "quality": quality,
            "seconds": np.asarray(seconds), "error": errors}


def _cpus_threads(num_cpus: float) -> int:
    return max(1, math.ceil(num_cpus))


class DetectStage:
    """A Ray Data actor holding the detector: cells, scale normalisation and tiling of each good image."""

    def __init__(self, spec: WorkerSpec, num_cpus: float) -> None:
        self.pipe = spec.load("detect", _cpus_threads(num_cpus))
        self.pid = os.getpid()

    def __call__(self, batch: Batch) -> Batch:
        """Adds ``found``: the pickled detections and scale of each good image (empty for bad ones)."""
        good = [k for k, e in enumerate(batch["error"]) if not e]
        seconds = np.asarray(batch["seconds"], dtype=float).copy()
        found = [b""] * len(batch["error"])
        if good:
            t0 = time.perf_counter()
            dets, scales = self.pipe.detect([batch["image"][k] for k in good])
            share = (time.perf_counter() - t0) / len(good)
            for k, d, s in zip(good, dets, scales):
                found[k] = pickle.dumps((d, s), protocol=pickle.HIGHEST_PROTOCOL)
                seconds[k] += share
        return {**batch, "seconds": seconds, "found": found}


class ClassifyStage:
    """A Ray Data actor holding the classifiers: WBC subtypes and ALL probabilities, then each field's
    record and annotated JPEG (images stop here; only records travel on to the driver).

    ``annotated`` and ``probe``: the run's ``annotated/`` folder and a file the driver put into it; an actor
    that sees the file and can write there writes the annotated images itself (the driver's writer thread is
    what caps a cluster); one that cannot, or whose write fails, sends the JPEG bytes to the driver.
    """

    def __init__(self, spec: WorkerSpec, num_cpus: float, annotate: bool, annotated: str | None = None,
                 probe: str | None = None) -> None:
        self.pipe = spec.load("classify", _cpus_threads(num_cpus))
        self.annotate = annotate
        shared = annotate and annotated is not None and probe is not None and Path(probe).is_file()
        self.write_to = Path(annotated) if shared and annotated is not None and _writable(Path(annotated)) else None

    def __call__(self, batch: Batch) -> Batch:
        """Returns ``index``, ``error``, ``seconds``, ``record`` (JSON, empty for bad images), ``jpeg`` (empty
        when this worker wrote the annotated image itself: ``written``)."""
        from hemocount.sinks import encode_annotated, write_annotated_jpeg

        good = [k for k, e in enumerate(batch["error"]) if not e]
        images = [batch["image"][k] for k in good]
        found = [pickle.loads(batch["found"][k]) for k in good]
        t0 = time.perf_counter()
        if good:
            self.pipe.classify(images, [d for d, _ in found], [s for _, s in found])
        share = (time.perf_counter() - t0) / len(good) if good else 0.0
        n = len(batch["error"])
        records, jpegs, written = [""] * n, [b""] * n, [False] * n
        for k, img, (d, s) in zip(good, images, found):
            # named as the driver names it: the annotated image's path mirrors the input layout
            r = self.pipe.result(int(batch["index"][k]), Path(str(batch["path"][k])), str(batch["name"][k]), img,
                                 d, s, json.loads(batch["quality"][k]), seconds=float(batch["seconds"][k]) + share)
            records[k] = json.dumps(r.to_json())
            if not self.annotate:
                continue
            jpeg = encode_annotated(img, r)
            if self.write_to is not None:
                try:
                    write_annotated_jpeg(jpeg, r, self.write_to)
                    written[k] = True
                    continue
                except (OSError, HemocountError):
                    self.write_to = None  # e.g. a full or read-only share: the driver writes from now on
            jpegs[k] = jpeg
        return {"index": batch["index"], "error": batch["error"], "seconds": batch["seconds"],
                "record": records, "jpeg": jpegs, "written": written}


def make_probe(folder: Path) -> Path:
    """An empty file in ``folder``, named like an atomic write's temporary file (so one a killed process
    leaves behind goes with the next run's clean-up, :func:`hemocount.io.remove_stale_temps`).

    Raises:
        OSError: ``folder`` is not writable.
    """
    fd, name = tempfile.mkstemp(dir=folder, prefix=".hemocount-probe.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def _writable(folder: Path) -> bool:
    """Whether this process can create (and remove) a file in ``folder``: seeing the driver's probe does not
    prove it (a read-only mount, another user on the share)."""
    try:
        make_probe(folder).unlink()
        return True
    except OSError:
        return False


__all__ = ["ClassifyStage", "DetectStage", "ModelSpec", "WorkerSpec", "decode"]
