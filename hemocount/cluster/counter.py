"""The Ray Data pipeline of a ``--ray`` run: decode -> detect -> classify on workers, records to the driver.

The driver lists the images, owns the journal and writes every file (through the same
:class:`hemocount.run.FieldSink` as a local run) except the annotated images, which the classify workers
write themselves when they see the output folder (a shared filesystem; else they send the JPEG bytes);
workers hold the models. Fault tolerance is Ray's own,
at Ray Data's defaults: an actor of a model stage whose process dies is restarted and the batch it held is
run again (``max_restarts=-1``, ``max_task_retries=-1``), a decode task is retried (Ray's ``max_retries``),
and whatever was journalled survives a driver that dies (``--resume``, with or without ``--ray``). (Ray
2.60 deprecates passing these through ``map_batches``, so they are not restated here.)
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hemocount.cluster.session import ray_session
from hemocount.cluster.stages import ClassifyStage, DetectStage, WorkerSpec, decode, make_probe
from hemocount.errors import BadImageError, HemocountError
from hemocount.io import absolute
from hemocount.results import ImageResult

if TYPE_CHECKING:
    from hemocount.pipeline import Pipeline
    from hemocount.run import FieldSink


@dataclass(frozen=True)
class StagePlan:
    """CPUs each stage asks Ray for, and batch sizes.

    Per field the three stages cost about the same on CPU (README, Speed: decode + QC ~9 ms, detector
    ~11 ms, classifiers + crops + annotation ~13 ms), so each model stage gets a pool of up to one actor
    per (``decode + detect + classify``) CPUs of the cluster, and decode tasks fill the rest.
    """

    decode_cpus: float = 0.5
    detect_cpus: float = 0.75
    classify_cpus: float = 0.75
    #: Images per classifier call: about one WBC per field, and the classifiers are fastest at 16-32 crops.
    classify_batch: int = 16

    @property
    def pipeline_cpus(self) -> float:
        """CPUs one decode task and one actor of each model stage ask for together."""
        return self.decode_cpus + self.detect_cpus + self.classify_cpus

    def pool(self, cluster_cpus: int) -> int:
        """Most actors in each model stage's pool."""
        return max(1, math.floor(cluster_cpus / self.pipeline_cpus))

    def fitted(self, node_cpus: float) -> StagePlan:
        """This plan, its CPU requests scaled down so that one pipeline fits the cluster's largest node.

        Ray never starts a task or actor whose request is not free on one node, so on nodes smaller than
        a pipeline (a local instance on 1 core or with ``HEMOCOUNT_THREADS=1``; two 1-CPU workers, where the
        two actors leave neither node room for a decode task) the unscaled plan waited for ever, without a
        word. Fitted to the largest node, every request fits there whichever nodes the actors land on.

        Raises:
            HemocountError: No node has a CPU (nothing could ever run).
        """
        if node_cpus <= 0:
            raise HemocountError("--ray: the Ray cluster has no CPUs for hemocount's tasks (start its nodes with "
                                 "--num-cpus 1 or more)")
        if node_cpus >= self.pipeline_cpus:
            return self
        k = node_cpus / self.pipeline_cpus
        return replace(self, decode_cpus=self.decode_cpus * k, detect_cpus=self.detect_cpus * k,
                       classify_cpus=self.classify_cpus * k)


class RayCounter:
    """Counts a run's fields on Ray (a :class:`hemocount.run.FieldCounter`).

    Detector batches are the local run's (``pipe.batch`` images of the input order, one Ray block each), so
    detections match a local run's; classifier batches differ, which changes probabilities only by the
    engine's rounding (exactly equal with torch and ONNX Runtime, within bf16's rounding with OpenVINO bf16).
    Records reach the driver in input order, so ``--fail-fast`` stops at the same image as a local run.
    """

    def __init__(self, address: str, plan: StagePlan | None = None) -> None:
        self.address = address
        self.plan = plan or StagePlan()
        #: What run.json records of the execution (filled in by the run).
        self.record: dict[str, Any] = {"runner": "ray", "address": address}

    def __call__(self, pipe: Pipeline, images: list[Path], sink: FieldSink, *, fail_fast: bool,
                 readers: int) -> None:
        """Count ``sink.todo`` on the cluster, handing each field to ``sink`` as its record arrives."""
        if not sink.todo:
            return
        detector_name = getattr(pipe.detector, "name", "yolo")
        spec = WorkerSpec.of(pipe, detector_name)
        annotated = absolute(sink.annotated)
        with ray_session(self.address) as session, _data_context(), _probe(annotated, sink.annotate) as probe:
            plan = self.plan.fitted(session["largest_node_cpus"])
            self.record.update(session, stages=asdict(plan), pool=plan.pool(session["cpus"]))
            rows = self._dataset(plan, spec, images, sink, pipe.batch, session["cpus"], str(annotated),
                                 probe).iter_rows()
            # The driver's own CPU (all its threads: Ray Data's scheduler, records, the writer) caps a cluster.
            cpu0, records, by_workers = time.process_time(), 0.0, 0
            try:
                for row in rows:
                    t0 = time.thread_time()
                    by_workers += _hand_over(row, sink, fail_fast)
                    records += time.thread_time() - t0
                sink.drain()
            except Exception as exc:  # noqa: BLE001 - Ray wraps a worker's error in its own types
                raise _as_user_error(exc) from None
            finally:
                self.record["driver_cpu_seconds"] = round(time.process_time() - cpu0, 3)
                # of which taking in the records (the writer thread's file writes are not in it)
                self.record["records_cpu_seconds"] = round(records, 3)
                self.record["annotated_written_by_workers"] = by_workers

    @staticmethod
    def _dataset(p: StagePlan, spec: WorkerSpec, images: list[Path], sink: FieldSink, batch: int, cpus: int,
                 annotated: str, probe: str | None) -> Any:
        import ray

        todo = sink.todo
        # One row per detector batch of the local run, decoded by one task into one block of that batch's
        # images, so the detector sees the local run's batches. (Made on the driver: from_arrow would run a
        # remote task per block just to read its schema.) Absolute paths: workers run elsewhere.
        chunks = [{"index": todo[s:s + batch], "path": [str(absolute(images[i])) for i in todo[s:s + batch]],
                   "name": [sink.names[i] for i in todo[s:s + batch]]} for s in range(0, len(todo), batch)]
        pool = ray.data.ActorPoolStrategy(min_size=1, max_size=p.pool(cpus))
        ds = ray.data.from_items(chunks, override_num_blocks=len(chunks))
        ds = ds.map_batches(decode, batch_size=1, num_cpus=p.decode_cpus)
        ds = ds.map_batches(DetectStage, fn_constructor_kwargs={"spec": spec, "num_cpus": p.detect_cpus},
                            batch_size=batch, num_cpus=p.detect_cpus, compute=pool)
        return ds.map_batches(ClassifyStage, fn_constructor_kwargs={"spec": spec, "num_cpus": p.classify_cpus,
                                                                    "annotate": sink.annotate, "annotated": annotated,
                                                                    "probe": probe},
                              batch_size=p.classify_batch, num_cpus=p.classify_cpus, compute=pool)


def _hand_over(row: dict[str, Any], sink: FieldSink, fail_fast: bool) -> int:
    """One field's record from the workers into the run's sink (or the end of the run, with ``fail_fast``);
    returns 1 if a worker wrote its annotated image."""
    index, error = int(row["index"]), str(row["error"])
    if error:
        if fail_fast:
            raise BadImageError(error)
        sink.skipped(index, error, float(row["seconds"]))
        return 0
    jpeg, written = bytes(row["jpeg"]), bool(row["written"])
    sink.counted(ImageResult.from_json(json.loads(row["record"])), jpeg=jpeg or None, written=written)
    return int(written)


@contextmanager
def _probe(annotated: Path, annotate: bool) -> Iterator[str | None]:
    """A file in ``annotated/`` that a worker seeing it takes as proof that it shares the driver's folder
    there (so it may write annotated images itself); removed at the end. Named like an atomic write's
    temporary file, so one left by a killed driver goes with the next run's or resume's clean-up."""
    if not annotate:
        yield None
        return
    annotated.mkdir(parents=True, exist_ok=True)
    path = make_probe(annotated)
    try:
        yield str(path)
    finally:
        path.unlink(missing_ok=True)


#: How a worker's own error reads inside Ray's messages.
_WORKER_ERROR = re.compile(r"hemocount\.errors\.\w+: ([^\n]+)")


def _as_user_error(exc: Exception) -> BaseException:
    """A worker's :class:`HemocountError` (a model that differs from the driver's, bad weights) as the one
    line it is locally; any other failure of the cluster as one line pointing to ``--resume``."""
    seen: Exception | None = exc
    while seen is not None:
        # Ray re-raises a worker's error as a class deriving from it; the worker's own is its .cause
        if isinstance(seen, HemocountError) and type(seen).__module__.startswith("hemocount."):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    # An actor that died raising in __init__ keeps its error only as text (Ray's ActorDiedError)
    told = _WORKER_ERROR.search(str(exc))
    if told:
        return HemocountError(told.group(1))
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return HemocountError(f"Ray run failed ({type(exc).__name__}: {first[:300]}); finished images are journalled: "
                          "rerun the same command with --resume")


@contextmanager
def _data_context() -> Iterator[None]:
    """Ray Data settings of a hemocount run, restored afterwards (a caller's own Ray session keeps its own)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    # In input order (the order of --fail-fast and of the progress), without Ray Data's bars and banners.
    wanted = {"enable_progress_bars": False, "print_on_execution_start": False,
              # a worker that refuses its model (another precision, other weights) ends the run at once
              "actor_init_retry_on_errors": False, "max_consecutive_actor_init_deaths": 1}
    saved = {k: getattr(ctx, k) for k in wanted if hasattr(ctx, k)}
    order = ctx.execution_options.preserve_order
    for k in saved:
        setattr(ctx, k, wanted[k])
    ctx.execution_options.preserve_order = True
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        ctx.execution_options.preserve_order = order


__all__ = ["RayCounter", "StagePlan"]
