"""A Ray worker refuses a model that differs from the driver's in weights, engine or precision (unit level:
no cluster; ``tests/test_ray.py`` covers the version refusal end to end)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from hemocount.cluster.stages import ModelSpec
from hemocount.errors import HemocountError
from hemocount.weights import WeightsEntry


@dataclass
class _Model:
    weights: WeightsEntry
    engine: str = "onnx"
    precision: str = "fp32"
    reference: object | None = None


def _entry(sha: str) -> WeightsEntry:
    return WeightsEntry(id="resnet50-wbc-subtype", task="wbc_subtype", backend="resnet", file="x.pt", sha256=sha,
                        classes=[], imgsz=64, path=Path("x.pt"))


def test_spec_accepts_the_drivers_model() -> None:
    driver = _Model(_entry("a" * 64))
    ModelSpec.of(driver, "wbc_subtype").check(_Model(_entry("a" * 64)))


@pytest.mark.parametrize("worker, differs", [
    (_Model(_entry("b" * 64)), "bbbbbbbbbbbb"),
    (_Model(_entry("a" * 64), engine="openvino"), "openvino fp32"),
    (_Model(_entry("a" * 64), precision="bf16"), "onnx bf16"),
], ids=["weights", "engine", "precision"])
def test_spec_refuses_other_weights_engine_or_precision(worker: _Model, differs: str) -> None:
    spec = ModelSpec.of(_Model(_entry("a" * 64)), "wbc_subtype")
    with pytest.raises(HemocountError) as e:
        spec.check(worker)
    msg = str(e.value)
    assert "\n" not in msg and differs in msg and "onnx fp32 with aaaaaaaaaaaa" in msg


def _with_domain(stain_threshold: float) -> _Model:
    from types import SimpleNamespace

    entry = _entry("a" * 64)
    entry.thresholds["domain"] = {"sha256": "c" * 64, "stain": {"slide_thresholds": {"20": stain_threshold}}}
    return _Model(entry, reference=SimpleNamespace(sha256="c" * 64))


def test_spec_refuses_another_unfamiliar_lab_reference() -> None:
    spec = ModelSpec.of(_with_domain(1.474), "wbc_subtype")
    spec.check(_with_domain(1.474))
    with pytest.raises(HemocountError, match="unfamiliar_lab reference"):
        spec.check(_Model(_entry("a" * 64)))  # a worker whose weights carry no reference
    # the same reference file with other colour thresholds (a refit that left the .npz alone)
    with pytest.raises(HemocountError, match="unfamiliar_lab reference"):
        spec.check(_with_domain(1.6))


def test_classify_workers_write_annotated_images_only_where_they_see_the_driver_probe(tmp_path: Path) -> None:
    """A worker writes annotated images itself only if it sees the probe file the driver put into annotated/
    (a shared filesystem) and can write there; otherwise it sends the JPEG bytes back, as before. A probe
    left by a killed driver goes with the next run's clean-up of temporary files."""
    import os
    from unittest.mock import MagicMock

    from hemocount.cluster.counter import _probe
    from hemocount.cluster.stages import ClassifyStage
    from hemocount.io import remove_stale_temps

    spec, folder = MagicMock(), tmp_path / "annotated"
    with _probe(folder, annotate=True) as probe:
        assert probe is not None and Path(probe).is_file() and Path(probe).parent == folder
        assert ClassifyStage(spec, 1, True, str(folder), probe).write_to == folder
        elsewhere = tmp_path / "not-shared"
        assert ClassifyStage(spec, 1, True, str(elsewhere), str(elsewhere / Path(probe).name)).write_to is None
        assert ClassifyStage(spec, 1, False, str(folder), probe).write_to is None  # --no-annotate
        if os.geteuid() != 0:  # root writes anywhere
            folder.chmod(0o500)
            try:
                assert ClassifyStage(spec, 1, True, str(folder), probe).write_to is None  # seen, not writable
            finally:
                folder.chmod(0o700)
        assert remove_stale_temps(folder) == 1  # as if the driver had been killed here
    assert not Path(probe).exists() and list(folder.iterdir()) == []
    with _probe(tmp_path / "none", annotate=False) as none:
        assert none is None and not (tmp_path / "none").exists()


def test_stage_plan_fits_a_cluster_smaller_than_one_pipeline() -> None:
    """Nodes of one CPU (a 1-core machine, HEMOCOUNT_THREADS=1, or a cluster of 1-CPU workers): the unscaled
    plan asks for 2 CPUs per pipeline, which Ray would never place (the run hung without a word); the plan
    fitted to the largest node asks for at most what it has."""
    from hemocount.cluster.counter import StagePlan

    plan = StagePlan()
    assert plan.pipeline_cpus == pytest.approx(2.0)
    one = plan.fitted(1)
    assert one.pipeline_cpus == pytest.approx(1.0) and one.pool(1) == 1
    assert one.decode_cpus / one.detect_cpus == pytest.approx(plan.decode_cpus / plan.detect_cpus)
    assert one.classify_batch == plan.classify_batch
    assert plan.fitted(2) is plan and plan.fitted(8) is plan and plan.pool(8) == 4
    assert plan.fitted(1.5).pipeline_cpus == pytest.approx(1.5)
    with pytest.raises(HemocountError, match="no CPUs"):
        plan.fitted(0)
