"""``hemocount count --ray``: a local run's outputs, the bad-input rules, nothing lost when a Ray worker or the
driver is killed, and no Ray process left behind.

Ray is in the ``test`` extra: without it this module fails at import, never skips. The first test runs the
CLI in a subprocess that starts (and stops) its own local Ray instance; the others share one instance of
2 CPUs on the loopback address, whose workers run ``tests/ray_hooks.py`` (batch markers, optional delay).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import ray  # a missing Ray fails these tests (CI installs the test extra, which includes it)

from hemocount.cli import main
from hemocount.count import JOURNAL

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


# ----------------------------------------------------------------- processes and runs
def _children() -> dict[int, int]:
    """pid -> parent pid of every live (non-zombie) process."""
    out = {}
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text()
        except (OSError, ValueError):
            continue
        if d.name.isdigit():
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                out[int(d.name)] = int(fields[1])
    return out


def _descendants(root: int) -> set[int]:
    parents = _children()
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _assert_gone(pids: set[int], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (alive := pids & set(_children())) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, f"Ray processes left behind: {sorted(alive)}"


def _run(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    """``hemocount -q count ARGV`` in this process: exit code, stdout and stderr lines."""
    capfd.readouterr()
    code = main(["-q", "count", *argv])
    cap = capfd.readouterr()
    assert "Traceback" not in cap.err, cap.err
    return code, cap.out.splitlines(), cap.err.splitlines()


def _hemocount(*argv: str, cwd: Path, stdout: int = subprocess.DEVNULL,
               env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m hemocount ARGV`` as a user would run it (this checkout first on the path)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "hemocount", *argv], cwd=cwd, env=env, stdout=stdout,
                            stderr=subprocess.PIPE, text=True)


def _sigkill_once(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 240) -> None:
    """SIGKILL ``proc`` as soon as ``ready()``; fails if it ends or times out first."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()}"
            assert time.monotonic() < deadline, f"not ready to kill within {timeout} s"
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()


def _fields(folder: Path, n: int, size: tuple[int, int] = (320, 240)) -> Path:
    """``n`` small distinct fields made from the samples (halved, flipped, shifted)."""
    folder.mkdir(parents=True)
    samples = [cv2.resize(cv2.imread(str(p)), size, interpolation=cv2.INTER_AREA) for p in sorted(SAMPLES.glob("*.jpg"))]
    for k in range(n):
        img = samples[k % len(samples)]
        img = cv2.flip(img, 1) if (k // len(samples)) % 2 else img
        cv2.imwrite(str(folder / f"field_{k:03d}.jpg"), np.roll(img, 7 * (k // 8), axis=1))
    return folder


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _assert_cells_match(out: Path, ref: Path) -> None:
    """cells.csv and COCO as the engine tests compare engines: same cells, boxes within 1 px, confidences
    within 1e-3, probabilities within 0.03 (OpenVINO bf16's tolerance; classifier batches differ)."""
    a, b = _rows(out / "cells.csv"), _rows(ref / "cells.csv")
    assert [(r["image"], r["class"], r["subtype"]) for r in a] == [(r["image"], r["class"], r["subtype"]) for r in b]
    for ra, rb in zip(a, b):
        for k, tol in (("x1", 1), ("y1", 1), ("x2", 1), ("y2", 1), ("confidence", 1e-3), ("subtype_prob", 0.03),
                       ("all_prob", 0.03)):
            if ra[k] or rb[k]:
                assert abs(float(ra[k]) - float(rb[k])) <= tol, (ra, rb)
    ca, cb = (json.loads((d / "predictions.coco.json").read_text()) for d in (out, ref))
    assert ca["images"] == cb["images"]
    assert [(x["image_id"], x["category_id"]) for x in ca["annotations"]] == \
        [(x["image_id"], x["category_id"]) for x in cb["annotations"]]
    for xa, xb in zip(ca["annotations"], cb["annotations"]):
        assert np.allclose(xa["bbox"], xb["bbox"], atol=1.0) and abs(xa["score"] - xb["score"]) <= 1e-3


def _assert_same_outputs(out: Path, ref: Path, n_images: int) -> None:
    """Per-field outputs identical to the reference run's (same engine, same batches: bit-identical)."""
    for name in ("counts.csv", "cells.csv", "predictions.coco.json", "slides.csv"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    jpgs = sorted(p.relative_to(out) for p in (out / "annotated").rglob("*.jpg"))
    assert len(jpgs) == n_images and jpgs == sorted(p.relative_to(ref) for p in (ref / "annotated").rglob("*.jpg"))
    assert not (out / JOURNAL).exists()


# ----------------------------------------------------------------- without Ray, and Ray of its own
def test_ray_is_not_imported_by_hemocount() -> None:
    code = "import sys, hemocount, hemocount.cli, hemocount.count, hemocount.run; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_missing_ray_says_how_to_install(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    code, out, err = _run(capfd, str(SAMPLES), "-o", str(tmp_path / "out"), "--ray")
    assert code == 2 and out == []
    assert err == ['hemocount: error: --ray needs Ray, which is not installed: pip install "hemocount[ray]"']
    assert not (tmp_path / "out").exists()  # said before anything was done


def test_ray_address_that_is_a_path_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capfd, "-o", str(tmp_path / "out"), "--ray", str(SAMPLES))  # a slip for SRC --ray
    assert code == 2 and err[-1].startswith("hemocount: error: --ray ") and "not a Ray address" in err[-1]


def test_local_ray_instance_prints_what_a_local_run_prints(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`--ray` without address starts its own Ray (a subprocess here, as a user would), prints exactly the
    local run's stdout, nothing on stderr, writes the same files, and stops every Ray process it started."""
    assert not ray.is_initialized()
    (tmp_path / "local").mkdir()
    (tmp_path / "ray").mkdir()
    src = os.path.relpath(SAMPLES, tmp_path / "local")  # relative: workers must still find the files
    monkeypatch.chdir(tmp_path / "local")
    code, local_out, _ = _run(capfd, src, "-o", "out")
    assert code == 0
    proc = _hemocount("count", src, "-o", "out", "--ray", cwd=tmp_path / "ray", stdout=subprocess.PIPE)
    seen: set[int] = set()
    deadline = time.monotonic() + 600  # a run Ray cannot schedule waits for ever: fail here, not at CI's limit
    while proc.poll() is None:
        seen |= _descendants(proc.pid)
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("hemocount count --ray did not finish within 600 s")
        time.sleep(0.5)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    assert stdout.splitlines() == local_out
    assert stderr == ""  # no Ray banner, worker log or C++ chatter
    out, ref = tmp_path / "ray" / "out", tmp_path / "local" / "out"
    assert (out / "counts.csv").read_bytes() == (ref / "counts.csv").read_bytes()
    _assert_cells_match(out, ref)
    runs = [json.loads((d / "run.json").read_text()) for d in (out, ref)]
    assert runs[0]["execution"]["runner"] == "ray" and runs[1]["execution"]["runner"] == "local"
    # a local instance shares the driver's filesystem: the workers wrote every annotated image themselves,
    # to the same paths as the local run, and the driver's probe file is gone
    assert runs[0]["execution"]["annotated_written_by_workers"] == len(list(SAMPLES.glob("*.jpg")))
    assert sorted(p.relative_to(out) for p in (out / "annotated").rglob("*")) == \
        sorted(p.relative_to(ref) for p in (ref / "annotated").rglob("*"))
    assert not list(out.glob(".hemocount-probe-*"))
    for run in runs:  # the rest is the same, down to each image's path as given
        for key in ("execution", "timings_s", "versions"):  # versions: modules this process had imported
            run.pop(key)
        for img in run["images"]:
            img.pop("seconds")
    assert runs[0] == runs[1]
    assert seen, "no Ray process was seen"
    _assert_gone(seen)


@pytest.mark.slow
def test_local_ray_instance_on_one_cpu_finishes(tmp_path: Path) -> None:
    """A local instance of one CPU (a 1-core machine, or HEMOCOUNT_THREADS=1) counts the samples: the stages'
    CPU requests are scaled to fit it (before, the 2 CPUs one pipeline asked for were never free: a silent hang)."""
    proc = _hemocount("count", str(SAMPLES), "-o", "out", "--ray", cwd=tmp_path, env_extra={"HEMOCOUNT_THREADS": "1"})
    try:
        _, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("hemocount count --ray on one CPU did not finish within 600 s")
    assert proc.returncode == 0, stderr
    execution = json.loads((tmp_path / "out" / "run.json").read_text())["execution"]
    assert execution["cpus"] == 1 and execution["largest_node_cpus"] == 1 and execution["pool"] == 1
    assert sum(v for k, v in execution["stages"].items() if k.endswith("_cpus")) == pytest.approx(1.0)
    with (tmp_path / "out" / "counts.csv").open(newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(list(SAMPLES.glob("*.jpg")))


# ----------------------------------------------------------------- one Ray instance for the rest
@pytest.fixture(scope="module")
def marks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ray_marks")


@pytest.fixture(scope="module")
def cluster(marks: Path) -> Iterator[str]:
    """A Ray instance of 2 CPUs on the loopback address (its GCS address), stopped with all its processes."""
    from hemocount.cluster.session import quiet_ray_env

    quiet_ray_env()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             object_store_memory=512 * 1024**2, logging_level=logging.ERROR,
             runtime_env={"worker_process_setup_hook": "tests.ray_hooks.watch_batches",
                          "env_vars": {"HEMOCOUNT_TEST_MARKS": str(marks), "PYTHONPATH": str(ROOT)}})
    started = _descendants(os.getpid())
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        started |= _descendants(os.getpid())
        ray.shutdown()
        _assert_gone(started)


def _bad_slides(tmp_path: Path) -> Path:
    """Three good fields around a truncated JPEG and a 0-byte file."""
    folder = _fields(tmp_path / "slides", 3)
    data = (folder / "field_000.jpg").read_bytes()
    (folder / "field_001b.jpg").write_bytes(data[: len(data) // 3])
    (folder / "field_002b.jpg").write_bytes(b"")
    return folder


def test_bad_images_are_skipped_as_in_a_local_run(cluster: str, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """...also where the workers do not share OUT (a probe they cannot see): they send the annotated JPEGs
    and the driver writes them, to the same paths as a local run."""
    import contextlib

    from hemocount.cluster import counter

    slides = _bad_slides(tmp_path)
    local = _run(capfd, str(slides), "-o", str(tmp_path / "local"), "--batch", "2")
    monkeypatch.setattr(counter, "_probe", lambda *_: contextlib.nullcontext(str(tmp_path / "nowhere")))
    on_ray = _run(capfd, str(slides), "-o", str(tmp_path / "ray"), "--batch", "2", "--ray", cluster)
    run = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert run["execution"]["annotated_written_by_workers"] == 0
    assert sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray" / "annotated").rglob("*")) == \
        sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local" / "annotated").rglob("*"))
    assert local[0] == on_ray[0] == 3
    assert [ln.replace(str(tmp_path / "ray"), "OUT") for ln in on_ray[2]] == \
        [ln.replace(str(tmp_path / "local"), "OUT") for ln in local[2]]
    assert sum("skipped" in ln and "field_001b.jpg" in ln for ln in on_ray[2]) == 1
    assert sum("skipped" in ln and "field_002b.jpg" in ln for ln in on_ray[2]) == 1
    assert (tmp_path / "ray" / "counts.csv").read_bytes() == (tmp_path / "local" / "counts.csv").read_bytes()


def test_fail_fast_stops_at_the_bad_image_and_resume_finishes(cluster: str, tmp_path: Path,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    slides, out = _bad_slides(tmp_path), tmp_path / "out"
    code, _, err = _run(capfd, str(slides), "-o", str(out), "--batch", "1", "--fail-fast", "--ray", cluster)
    assert code == 2 and len(err) == 1 and err[0].startswith("hemocount: error:") and "field_001b.jpg" in err[0]
    # field_000 and field_001 come before the bad one in input order: finished and journalled, nothing else
    assert sorted(p.name for p in (out / JOURNAL).glob("0*.json")) == ["00000000.json", "00000001.json"]
    code, _, _ = _run(capfd, str(slides), "-o", str(out), "--batch", "1", "--resume")  # a Ray run's journal, locally
    assert code == 3
    assert json.loads((out / "run.json").read_text())["summary"]["resumed_from_journal"] == 2


def test_a_stopped_ray_run_resumes_on_ray(cluster: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """``--resume --ray`` takes up a Ray run's journal on Ray: only the unfinished fields are counted, and the
    outputs equal a local run's."""
    slides, out = _bad_slides(tmp_path), tmp_path / "out"
    assert _run(capfd, str(slides), "-o", str(tmp_path / "local"), "--batch", "1")[0] == 3
    assert _run(capfd, str(slides), "-o", str(out), "--batch", "1", "--fail-fast", "--ray", cluster)[0] == 2
    assert len(list((out / JOURNAL).glob("0*.json"))) == 2
    code, _, err = _run(capfd, str(slides), "-o", str(out), "--batch", "1", "--resume", "--ray", cluster)
    assert code == 3 and sum(ln.startswith("hemocount: WARNING: skipped ") for ln in err) == 2, err
    # the two finished fields were taken from the journal, not counted again
    assert json.loads((out / "run.json").read_text())["summary"]["resumed_from_journal"] == 2
    assert (out / "counts.csv").read_bytes() == (tmp_path / "local" / "counts.csv").read_bytes()


def test_worker_that_differs_from_the_driver_refuses_in_one_line(cluster: str, marks: Path, tmp_path: Path,
                                                                  capfd: pytest.CaptureFixture[str]) -> None:
    (marks / "other_version").touch()  # the workers now see a driver of another hemocount version
    try:
        code, out, err = _run(capfd, str(SAMPLES), "-o", str(tmp_path / "out"), "--ray", cluster)
    finally:
        (marks / "other_version").unlink()
    assert code == 2 and out == []
    assert len(err) == 1 and err[0].startswith("hemocount: error: Ray worker on ") and "0.0-other" in err[0], err


def _kill_first_batch_in_flight(marks: Path, killed: list[tuple[int, str]], stop: threading.Event) -> None:
    """SIGKILL the first worker that starts a detector batch (the batch waits, so it is in flight)."""
    while not stop.is_set():
        started = sorted(marks.glob("start_*"), key=lambda p: p.stat().st_mtime)
        if started:
            _, pid, ids = started[0].name.split("_", 2)
            os.kill(int(pid), signal.SIGKILL)
            killed.append((int(pid), ids))
            return
        time.sleep(0.01)


def test_killed_worker_batch_is_retried_and_outputs_complete(cluster: str, marks: Path, tmp_path: Path,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    slides = _fields(tmp_path / "slides", 8)
    args = [str(slides), "--batch", "2"]
    assert _run(capfd, *args, "-o", str(tmp_path / "ref"))[0] == 0
    for f in marks.iterdir():
        f.unlink()
    (marks / "slow").write_text("2")
    killed: list[tuple[int, str]] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_batch_in_flight, args=(marks, killed, stop))
    killer.start()
    try:
        code, _, err = _run(capfd, *args, "-o", str(tmp_path / "out"), "--ray", cluster)
    finally:
        stop.set()
        killer.join()
        (marks / "slow").unlink()
    assert code == 0, err
    assert len(killed) == 1
    pid, ids = killed[0]
    assert not (marks / f"done_{pid}_{ids}").exists()  # it died holding the batch ...
    redone = [p for p in marks.glob(f"done_*_{ids}")]
    assert redone and all(int(p.name.split("_")[1]) != pid for p in redone)  # ... which another process ran
    _assert_same_outputs(tmp_path / "out", tmp_path / "ref", 8)


def test_killed_driver_leaves_a_run_that_resume_finishes(cluster: str, tmp_path: Path,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    """A driver SIGKILLed mid-run (joined to a running cluster) keeps its journal; --resume without Ray ends it
    with the outputs of an uninterrupted run."""
    n = 40  # more than one classifier batch (16 images): records arrive in several steps
    slides = _fields(tmp_path / "slides", n)
    assert _run(capfd, str(slides), "-o", str(tmp_path / "ref"))[0] == 0
    out = tmp_path / "out"
    proc = _hemocount("-q", "count", str(slides), "-o", str(out), "--ray", cluster, cwd=tmp_path)
    _sigkill_once(proc, lambda: any((out / JOURNAL).glob("0*.json")))
    assert proc.returncode == -signal.SIGKILL
    done = len(list((out / JOURNAL).glob("0*.json")))
    assert 1 <= done < n, done
    assert not (out / "counts.csv").exists()
    code, _, _ = _run(capfd, str(slides), "-o", str(out), "--resume")
    assert code == 0
    assert json.loads((out / "run.json").read_text())["summary"]["resumed_from_journal"] == done
    _assert_same_outputs(out, tmp_path / "ref", n)


# Not marked slow: about 30 s on 2 cores, and the only check that Ray's batching and ordering hold past
# a handful of images, so CI runs it.
def test_a_few_hundred_fields_count_as_locally(cluster: str, tmp_path: Path,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    slides = _fields(tmp_path / "slides", 300, size=(640, 480))
    assert _run(capfd, str(slides), "-o", str(tmp_path / "ref"), "--no-annotate", "--no-report")[0] == 0
    assert _run(capfd, str(slides), "-o", str(tmp_path / "out"), "--no-annotate", "--no-report",
                "--ray", cluster)[0] == 0
    assert (tmp_path / "out" / "counts.csv").read_bytes() == (tmp_path / "ref" / "counts.csv").read_bytes()
    _assert_cells_match(tmp_path / "out", tmp_path / "ref")
