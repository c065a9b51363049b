"""Inference engines: torch, or a cached ONNX export of the same weights run by ONNX Runtime or OpenVINO (CPU)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hemocount.errors import HemocountError, WeightsError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("hemocount")

ENGINES: tuple[str, ...] = ("auto", "torch", "onnx", "openvino")
#: Arithmetic of the openvino engine: ``auto`` is OpenVINO's own choice (bfloat16 on CPUs with native
#: bfloat16 such as AMX, fp32 elsewhere); torch and onnx always compute in fp32.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")

#: What ``engine="auto"`` runs, in order of preference, per model kind: the fastest engine on CPU as
#: measured by ``benchmarks/count_speed.py`` (numbers in README, "Speed"), among those installed.
AUTO: dict[str, tuple[str, ...]] = {"detect": ("openvino", "onnx", "torch"), "classify": ("openvino", "onnx", "torch")}

#: Set to ``0`` to keep no compiled OpenVINO models on disk.
COMPILED_CACHE_ENV = "HEMOCOUNT_COMPILED_CACHE"

#: What each engine imports to run a model; exports are the training stack's business (hemocount.extras).
_MODULES = {"onnx": ("onnxruntime",), "openvino": ("openvino",), "torch": ("torch", "torchvision", "ultralytics")}
#: How to get an engine that is not installed: ONNX Runtime and OpenVINO come with the plain install.
_INSTALL = {"onnx": "pip install onnxruntime", "openvino": "pip install openvino"}


def resolve_engine(engine: str, kind: str) -> str:
    """Turn ``auto``/``torch``/``onnx``/``openvino`` into the engine to run for a ``detect`` or ``classify`` model.

    ``auto`` takes the first installed engine of :data:`AUTO`; an engine asked for by name must be installed
    (torch comes with the ``train`` extra, ONNX Runtime and OpenVINO with the plain install): never another
    engine in its place.

    Raises:
        HemocountError: Unknown engine name, or the engine (``auto``: every engine) is not installed; the
            message says what to install.
    """
    from hemocount.extras import TRAIN_EXTRA_HINT, require_train

    if engine not in ENGINES:
        raise HemocountError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    if engine == "torch":
        require_train("--engine torch", _MODULES["torch"])
        return engine
    if engine != "auto":
        if not _installed(engine):
            raise HemocountError(f"--engine {engine} needs {', '.join(_MODULES[engine])}, which this install "
                                 f"lacks: {_INSTALL[engine]}")
        return engine
    for choice in AUTO[kind]:
        if _installed(choice):
            return choice
    raise HemocountError(f"no inference engine installed (openvino, onnxruntime or torch): {_INSTALL['openvino']}, "
                         f"or {TRAIN_EXTRA_HINT} for torch")


def check_precision(precision: str, engine: str) -> None:
    """Reject an unknown precision, or bf16 on an engine that only computes in fp32.

    Raises:
        HemocountError: With the valid choices.
    """
    if precision not in PRECISIONS:
        raise HemocountError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision == "bf16" and engine not in ("openvino", "auto"):
        raise HemocountError(f"precision bf16 needs --engine openvino (the {engine} engine computes in fp32)")


def _installed(engine: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in _MODULES[engine])


class OrtRunner:
    """An ONNX Runtime CPU session for one ONNX file (dynamic shapes), :func:`hemocount.runtime.threads` intra-op
    threads."""

    engine = "onnx"
    precision = "fp32"
    compile_seconds = 0.0  # nothing to compile: shapes are dynamic

    def __init__(self, path: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise HemocountError("the onnx engine needs onnxruntime (pip install onnxruntime)") from None

        from hemocount.runtime import threads

        so = ort.SessionOptions()
        # Per session: ONNX Runtime's thread pools belong to this session, nothing process-wide is set.
        so.intra_op_num_threads = threads()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: on a shared 2-core machine spinning steals the cores
        # other work (decoding, crops, the other model) needs, and measured slower, not faster.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind types for bad files
            raise WeightsError(f"{path}: cannot load ONNX model ({type(exc).__name__}: {str(exc)[:200]})") from None
        self.path = path
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray) -> np.ndarray:
        """The model's first output for float32 input ``x``."""
        return self.session.run(None, {self.input: x})[0]

    def run_all(self, x: np.ndarray, n_outputs: int | None = None) -> list[np.ndarray]:
        """The model's outputs in order (the first ``n_outputs``, default all) for float32 input ``x``."""
        return list(self.session.run(self.outputs[:n_outputs], {self.input: x}))


class OvRunner:
    """An OpenVINO CPU model for one ONNX file, compiled once per input shape.

    Static shapes let OpenVINO fold the shape arithmetic of the graph (GroupNorm's reshapes above all)
    and pick its fastest kernels: measured about 2x faster than the same graph with a dynamic batch
    axis. Each new shape costs a compile (about 0.5 s), so batches are padded up to one of a few
    ``batches`` sizes (each sample is computed on its own, so the padding changes results only by
    rounding: another batch size may take other kernels).

    With a cache folder (:func:`compiled_cache_dir`), each shape's static model is saved there once
    (OpenVINO IR, fp32 weights as in the ONNX file) and compiled from that file with OpenVINO's model
    cache, so later runs import the compiled blob (about half a compile) without reading or keeping
    the ONNX graph: an ``ov.Model`` held beside a compiled model imported from the cache doubles its
    weights in memory, so the graph is only read again for a shape never seen.

    ``snippets=False`` turns off OpenVINO's fused-subgraph code generation: the YOLO detector compiles
    in half the time without it and runs as fast, whereas the classifiers' GroupNorm runs about 1.4x
    slower (measured, see README "Speed").
    """

    engine = "openvino"
    #: Compiled shapes kept per model; each holds its own weights in the compiled layout.
    MAX_SHAPES = 8
    #: Padded samples a smaller batch size may cost (run in a larger compiled shape) before it is compiled.
    PAD_BUDGET = 64

    def __init__(self, path: Path, precision: str = "auto", batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
                 snippets: bool = True) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise HemocountError("the openvino engine needs OpenVINO (pip install openvino)") from None

        from hemocount.runtime import threads

        self.core = ov.Core()
        # Per compiled model: INFERENCE_NUM_THREADS goes with compile_model's config (not core.set_property),
        # so it sets nothing process-wide.
        self.config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads(), "PERFORMANCE_HINT": "LATENCY"}
        if not snippets:
            self.config["SNIPPETS_MODE"] = "DISABLE"
        if precision == "fp32":
            self.config["INFERENCE_PRECISION_HINT"] = "f32"
        elif precision == "bf16":
            if "BF16" not in self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
                raise HemocountError("precision bf16: this CPU has no native bfloat16 (use auto or fp32)")
            self.config["INFERENCE_PRECISION_HINT"] = "bf16"
        self.path = path
        self.model: Any = None  # the ONNX graph, read only when a shape must be built from it
        self.cache = compiled_cache_dir()
        if self.cache is None:
            self.model = self._read()
        else:
            try:
                st = path.stat()
            except OSError as exc:
                raise WeightsError(f"{path}: cannot load ONNX model ({exc.strerror})") from None
            # Names the ONNX file's version: a re-export (new mtime/size) never meets a stale static model.
            self._key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
            if not any(self.cache.glob(self._ir_name("*"))):
                # Read only to fail at load time on a bad file (a version in the cache was read before);
                # not kept, since beside a compiled model from the cache it doubles the weights.
                self._read()
        self.batches = tuple(sorted(batches))
        self._requests: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._padded: dict[tuple[int, ...], int] = {}
        self.precision = self._compiled_precision(precision)
        #: Seconds spent compiling shapes so far (a per-process cost, like loading).
        self.compile_seconds = 0.0

    def _read(self) -> Any:
        try:
            return self.core.read_model(str(self.path))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own RuntimeError subtypes for bad files
            raise WeightsError(f"{self.path}: cannot load ONNX model ({type(exc).__name__}: {str(exc)[:200]})") from None

    def _static(self, shape: tuple[int, ...]) -> Any:
        """The model reshaped to ``shape``: an IR file in the cache folder, else an ``ov.Model``."""
        import openvino as ov

        if self.cache is not None:
            xml = self.cache / self._ir_name("x".join(map(str, shape)))
            if xml.exists():
                return str(xml)
        model = self._graph(shape)
        if self.cache is None:
            return model
        tmp = xml.with_name(f".{xml.stem}.{os.getpid()}.tmp")
        try:
            ov.save_model(model, str(tmp) + ".xml", compress_to_fp16=False)
            os.replace(str(tmp) + ".bin", xml.with_suffix(".bin"))
            os.replace(str(tmp) + ".xml", xml)  # last: a complete .xml means a complete pair
        except Exception as exc:  # noqa: BLE001 - OSError, or OpenVINO's RuntimeError: a full or read-only
            log.debug("cannot cache %s (%s)", xml, exc)  # cache only costs the speed-up
            for suffix in (".xml", ".bin"):
                Path(str(tmp) + suffix).unlink(missing_ok=True)
            return model
        self.model = None  # compiled from the file next, which OpenVINO reads itself
        return str(xml)

    def _ir_name(self, shape: str) -> str:
        return f"{self.path.stem[:16]}-{self._key}-{shape}.xml"

    def _graph(self, shape: tuple[int, ...]) -> Any:
        if self.model is None:
            self.model = self._read()
        model = self.model.clone()
        model.reshape(list(shape))
        return model

    def _compile_shape(self, shape: tuple[int, ...]) -> Any:
        model = self._static(shape)
        if isinstance(model, str):
            try:
                return self._compile(model)
            except Exception as exc:  # noqa: BLE001 - a damaged cache entry: drop it, build from the graph
                log.debug("dropping damaged cache entry %s (%s)", model, exc)
                for f in (Path(model), Path(model).with_suffix(".bin")):
                    f.unlink(missing_ok=True)
                model = self._graph(shape)
        return self._compile(model)

    def _compile(self, model: Any) -> Any:
        config = {**self.config, "CACHE_DIR": str(self.cache)} if isinstance(model, str) else self.config
        return self.core.compile_model(model, "CPU", config).create_infer_request()

    def _compiled_precision(self, requested: str) -> str:
        if requested in ("fp32", "bf16"):
            return requested
        hint = str(self.core.get_property("CPU", "INFERENCE_PRECISION_HINT")).lower()
        return "bf16" if "bf16" in hint or "bfloat16" in hint else "fp32"

    def _request(self, shape: tuple[int, ...]) -> Any:
        req = self._requests.get(shape)
        if req is not None:
            self._requests.move_to_end(shape)
            return req
        t0 = time.perf_counter()
        try:
            req = self._compile_shape(shape)
        except Exception as exc:  # noqa: BLE001 - OpenVINO's RuntimeError subtypes
            raise WeightsError(f"{self.path}: OpenVINO cannot compile it for input {shape} "
                               f"({type(exc).__name__}: {str(exc)[:200]})") from None
        self.compile_seconds += time.perf_counter() - t0
        self._requests[shape] = req
        if len(self._requests) > self.MAX_SHAPES:
            self._requests.popitem(last=False)
        return req

    def _batch_size(self, n: int, sample: tuple[int, ...]) -> int:
        """The batch to run ``n`` samples as: their bucket, or a larger one already compiled.

        Padding into a compiled shape beats compiling a new one (0.2-0.5 s, and some 150 MB for a
        ResNet-50) until the padding has cost about as much: a run's last, short batch pads, while many
        short calls in a row earn their own shape once ``PAD_BUDGET`` padded samples have been spent.
        """
        size = next(b for b in self.batches if b >= n)
        if (size, *sample) in self._requests:
            return size
        larger = [b for b in self.batches if b > size and (b, *sample) in self._requests]
        if larger:
            key = (size, *sample)
            self._padded[key] = self._padded.get(key, 0) + larger[0] - n
            if self._padded[key] <= self.PAD_BUDGET:
                return larger[0]
        return size

    def run(self, x: np.ndarray) -> np.ndarray:
        """The model's first output for float32 input ``x`` (any batch size)."""
        return self.run_all(x, 1)[0]

    def run_all(self, x: np.ndarray, n_outputs: int | None = None) -> list[np.ndarray]:
        """The model's outputs in order (the first ``n_outputs``, default all) for float32 input ``x`` (any
        batch size)."""
        import numpy as np

        top = self.batches[-1]
        if len(x) > top:
            parts = [self.run_all(x[s:s + top], n_outputs) for s in range(0, len(x), top)]
            return [np.concatenate(o) for o in zip(*parts)]
        n = len(x)
        size = self._batch_size(n, tuple(x.shape[1:]))
        if size > n:
            x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
        res = self._request(tuple(x.shape)).infer({0: np.ascontiguousarray(x)})
        # copies: the request reuses its output buffers on the next call
        return [np.array(res[i][:n]) for i in range(min(len(res), n_outputs or len(res)))]


def compiled_cache_dir() -> Path | None:
    """Where OpenVINO keeps compiled models: ``openvino/`` beside the ONNX cache (see
    :func:`hemocount.onnx_cache.cache_dir`); ``None`` (no caching) if ``HEMOCOUNT_COMPILED_CACHE=0`` or the
    folder cannot be created."""
    from hemocount.onnx_cache import cache_dir

    if os.environ.get(COMPILED_CACHE_ENV, "1") == "0":
        return None
    path = cache_dir().parent / "openvino"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.debug("no OpenVINO model cache (%s: %s)", path, exc.strerror)
        return None
    return path


def open_runner(path: Path, engine: str, precision: str = "auto",
                batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32), snippets: bool = True) -> OrtRunner | OvRunner:
    """The runner of an ONNX file for ``engine`` ``onnx`` or ``openvino`` (``batches`` and ``snippets``:
    see :class:`OvRunner`).

    Raises:
        HemocountError: The engine is not installed, or ``precision`` does not fit it.
        WeightsError: The runtime cannot load the file.
    """
    check_precision(precision, engine)
    if engine == "onnx":
        return OrtRunner(path)
    if engine == "openvino":
        return OvRunner(path, precision, batches, snippets)
    raise HemocountError(f"engine {engine!r} does not run ONNX files; valid: onnx, openvino")


__all__ = ["AUTO", "COMPILED_CACHE_ENV", "ENGINES", "PRECISIONS", "OrtRunner", "OvRunner", "check_precision",
           "compiled_cache_dir", "open_runner", "resolve_engine"]
