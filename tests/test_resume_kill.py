"""A run killed with SIGKILL loses nothing: ``--resume`` finishes it with outputs identical to an uninterrupted run.

The killed runs are real ``python -m hemocount`` processes; the reference and resumed runs are in-process
(a few seconds of imports saved each), with the same thread count so both compute bit-identical results.
One run is killed from outside as soon as its journal holds a finished image; the other kills itself
exactly between writing a temporary file and renaming it (the worst moment for a non-atomic writer).
Every file left behind must still be valid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from hemocount.cli import main
from hemocount.count import JOURNAL

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
N_IMAGES = 10
#: Same thread count everywhere, so in-process and subprocess runs compute bit-identical detections.
ENV = {"HEMOCOUNT_THREADS": "1"}


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten small fields (sample slides, halved, flipped and cropped)."""
    folder = tmp_path_factory.mktemp("kill") / "slides"
    folder.mkdir()
    images = [cv2.resize(cv2.imread(str(p)), (320, 240), interpolation=cv2.INTER_AREA)
              for p in sorted(SAMPLES.glob("*.jpg"))]
    variants = [*images, *(cv2.flip(im, 1) for im in images), images[0][20:220, 30:300], images[1][::-1]]
    for k, im in enumerate(variants[:N_IMAGES]):
        cv2.imwrite(str(folder / f"field_{k:02d}.jpg"), im)
    return folder


@pytest.fixture(scope="module")
def count_args(src: Path, toy_weights: Path, toy_classifiers: dict[str, Path]) -> list[str]:
    return ["-q", "count", str(src), "--weights", str(toy_weights), "--conf", "0.001", "--max-det", "30",
            "--batch", "1", "--subtype-weights", str(toy_classifiers["wbc_subtype"]),
            # torch: bit-identical across processes with fixed threads. ONNX Runtime's kernels may differ in the
            # last float bits between processes, which flips ties in the toy model's thousands of equal scores.
            "--all-weights", str(toy_classifiers["all"]), "--engine", "torch"]


def _in_process(args: list[str]) -> int:
    import torch

    threads = torch.get_num_threads()
    old = os.environ.get("HEMOCOUNT_THREADS")
    os.environ.update(ENV)
    try:
        return main(args)
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("HEMOCOUNT_THREADS")
        else:
            os.environ["HEMOCOUNT_THREADS"] = old


@pytest.fixture(scope="module")
def reference(count_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    assert _in_process([*count_args, "-o", str(out)]) == 0
    return out


def _child_env() -> dict[str, str]:
    env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("HEMOCOUNT_DATA", None)
    return env


def _finished(journal: Path) -> int:
    return len(list(journal.glob("0*.json")))


def _assert_left_files_valid(out: Path) -> None:
    """Whatever a kill left behind is either a whole file or a hidden temporary one, never half a file."""
    for f in (out / JOURNAL).glob("*.json"):
        json.loads(f.read_text())
    for f in (out / "annotated").rglob("*.jpg"):
        if not f.name.startswith("."):
            data = f.read_bytes()
            assert data.endswith(b"\xff\xd9")
            assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    for name in ("counts.csv", "cells.csv", "predictions.coco.json", "run.json"):
        assert not (out / name).exists()  # written only once every image is done


def _run_json(path: Path) -> dict[str, Any]:
    run = json.loads(path.read_text())
    run.pop("timings_s")
    run["summary"].pop("resumed_from_journal")
    for img in run["images"]:
        img.pop("seconds")
    return run


def _assert_same_outputs(out: Path, ref: Path) -> None:
    for name in ("counts.csv", "cells.csv", "predictions.coco.json"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert _run_json(out / "run.json") == _run_json(ref / "run.json")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(ref).as_posix() for p in ref.rglob("*") if p.is_file())
    for f in (out / "annotated").rglob("*.jpg"):
        assert f.read_bytes() == (ref / f.relative_to(out)).read_bytes(), f
    assert len(list((out / "annotated").rglob("*.jpg"))) == N_IMAGES


def test_sigkill_then_resume_matches_uninterrupted_run(count_args: list[str], reference: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hemocount", *count_args, "-o", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while _finished(out / JOURNAL) < 1:
            assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no image finished within 120 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done = _finished(out / JOURNAL)
    assert 1 <= done < N_IMAGES, done
    _assert_left_files_valid(out)

    assert _in_process([*count_args, "-o", str(out), "--resume"]) == 0
    assert json.loads((out / "run.json").read_text())["summary"]["resumed_from_journal"] == done
    _assert_same_outputs(out, reference)


#: Kills the process at its N-th atomic rename: the temporary file is written, the target not yet replaced.
KILL_AT_RENAME = """
import os, signal, sys
real, calls = os.replace, [0]
def replace(a, b):
    calls[0] += 1
    if calls[0] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(a, b)
os.replace = replace
from hemocount.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_sigkill_mid_write_keeps_files_valid(count_args: list[str], reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # Renames: settings.json, then per image its annotated JPEG and its journal entry. The 8th is the
    # annotated JPEG of the fourth image, so three images are finished.
    res = subprocess.run([sys.executable, "-c", KILL_AT_RENAME, "8", *count_args, "-o", str(out)], check=False,
                         cwd=tmp_path, env=_child_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert _finished(out / JOURNAL) == 3
    leftovers = list(out.rglob(".*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].parent.name == "slides"  # the half-done rename
    _assert_left_files_valid(out)

    assert _in_process([*count_args, "-o", str(out), "--resume"]) == 0
    assert not list(out.rglob("*.tmp"))  # the stale temporary file was cleaned up
    _assert_same_outputs(out, reference)
