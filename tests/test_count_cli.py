"""`hemocount count` end to end with a toy model: outputs, bad input, atomicity and resume."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hemocount import CELL_CLASSES
from hemocount.cli import main
from hemocount.count import JOURNAL

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@pytest.fixture
def slides(tmp_path: Path) -> Path:
    """Two sample fields in nested folders, one corrupt file and one grayscale PNG."""
    import cv2

    src = tmp_path / "slides"
    (src / "a").mkdir(parents=True)
    files = sorted(SAMPLES.glob("*.jpg"))
    shutil.copy(files[0], src / "a" / "f1.jpg")
    shutil.copy(files[1], src / "f2.jpg")
    (src / "broken.jpg").write_bytes(files[2].read_bytes()[:3000])
    gray = cv2.cvtColor(cv2.imread(str(files[3])), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(src / "gray.png"), gray)
    return src


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_count_outputs(slides: Path, tmp_path: Path, toy_weights: Path, toy_classifiers: dict[str, Path],
                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["-q", "count", str(slides), "-o", str(out), "--weights", str(toy_weights), "--conf", "0.001", "--scale", "none",
                 "--max-det", "30", "--subtype-weights", str(toy_classifiers["wbc_subtype"]),
                 "--all-weights", str(toy_classifiers["all"])])
    captured = capsys.readouterr()
    assert code == 3  # one image skipped
    assert "broken.jpg: truncated JPEG" in captured.err and "Traceback" not in captured.err
    assert "total" in captured.out

    counts = _rows(out / "counts.csv")
    assert [r["image"] for r in counts] == ["slides/a/f1.jpg", "slides/broken.jpg", "slides/f2.jpg",
                                            "slides/gray.png"]
    subtypes = ["neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil"]
    assert list(counts[0]) == ["image", "width", "height", "status", *CELL_CLASSES, *subtypes, "uncertain",
                               *[f"{s}_pct" for s in subtypes], "all_cells", "cap_reached", "scale",
                               "scale_factor", "um_per_px", "flags", "error"]
    assert counts[1]["status"] == "skipped" and counts[1]["RBC"] == ""
    assert counts[3]["status"] == "ok" and counts[3]["width"] == "640"

    cells = _rows(out / "cells.csv")
    for r in counts:
        if r["status"] == "ok":
            n = sum(int(r[c]) for c in CELL_CLASSES)
            assert n == sum(1 for c in cells if c["image"] == r["image"])
            assert r["cap_reached"] == str(int(n >= 30))
            # every WBC is either given a subtype or marked uncertain
            assert int(r["WBC"]) == sum(int(r[s]) for s in subtypes) + int(r["uncertain"])
    for c in cells:
        if c["class"] == "WBC":
            assert c["subtype"] in [*subtypes, "uncertain"] and 0 <= float(c["all_prob"]) <= 1
        else:
            assert c["subtype"] == "" and c["all_prob"] == ""

    from pycocotools.coco import COCO

    coco = COCO(str(out / "predictions.coco.json"))
    assert sorted(coco.getImgIds()) == [1, 3, 4]  # the skipped image (input 2) has no size: left out
    assert len(coco.getAnnIds()) == len(cells)
    if cells:
        res = coco.loadRes(coco.dataset["annotations"])
        assert len(res.getAnnIds()) == len(cells)

    run = json.loads((out / "run.json").read_text())
    assert run["summary"] == run["summary"] | {"images": 4, "counted": 3, "skipped": 1}
    assert run["thresholds"]["conf"] == {c: 0.001 for c in CELL_CLASSES} and run["thresholds"]["max_det"] == 30
    assert run["detector"]["sha256"] and "ultralytics" in run["versions"]
    assert run["classifiers"]["enabled"] and "research use only" in run["classifiers"]["all"]["notice"]
    assert set(run["classifiers"]["all"]["flag"]) >= {"flagged", "n_above", "n_wbc", "rule"}
    wbc_anns = [a for a in coco.dataset["annotations"] if a["category_id"] == 2]
    assert all(a["attributes"]["subtype"] for a in wbc_anns)
    assert [i["status"] for i in run["images"]] == ["ok", "skipped", "ok", "ok"]
    assert sorted(p.relative_to(out).as_posix() for p in (out / "annotated").rglob("*.jpg")) == [
        "annotated/slides/a/f1.jpg", "annotated/slides/f2.jpg", "annotated/slides/gray.png.jpg"]
    assert any(c["class"] == "WBC" for c in cells)  # the toy model's biased head emits every class
    assert not (out / JOURNAL).exists() and not list(out.rglob("*.tmp"))


def test_existing_output_refused(slides: Path, tmp_path: Path, toy_weights: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["-q", "count", str(slides / "f2.jpg"), "-o", str(out), "--weights", str(toy_weights),
                 "--no-classify"]) == 2
    assert "output folder exists" in capsys.readouterr().err
    assert main(["-q", "count", str(slides / "f2.jpg"), "-o", str(out), "--weights", str(toy_weights),
                 "--exist-ok", "--no-classify"]) == 0
    assert (out / "keep.txt").exists() and (out / "counts.csv").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["MISSING"], "no such file or folder"),
        (["EMPTY"], "folder has no images"),
        (["--fail-fast", "SLIDES"], "broken.jpg: truncated JPEG"),
        (["--weights", "no-such-id", "SLIDES"], "unknown detect weights 'no-such-id'; valid: only-one"),
        (["--detector", "nope", "SLIDES"], "unknown detector 'nope'; valid: classical, frcnn, yolo"),
        (["--batch", "0", "SLIDES"], "--batch must be at least 1"),
    ],
)
def test_bad_input_one_line(args: list[str], message: str, slides: Path, tmp_path: Path, toy_weights: Path,
                            capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # A manifest of our own, so the unknown-id case does not depend on what is shipped.
    wdir = tmp_path / "w"
    wdir.mkdir()
    (wdir / "manifest.json").write_text('{"weights": [{"id": "only-one", "task": "detect", "backend": "yolo", '
                                        '"file": "x.pt", "sha256": "0", "classes": [], "imgsz": 64}]}')
    monkeypatch.setenv("HEMOCOUNT_WEIGHTS_DIR", str(wdir))
    (tmp_path / "empty").mkdir()
    subst = {"MISSING": str(tmp_path / "missing"), "EMPTY": str(tmp_path / "empty"), "SLIDES": str(slides)}
    argv = [subst.get(a, a) for a in args]
    if "--weights" not in argv:
        argv += ["--weights", str(toy_weights)]
    assert main(["-q", "count", *argv, "-o", str(tmp_path / "o"), "--no-classify"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("hemocount: error:")


def test_resume_after_interrupt(slides: Path, tmp_path: Path, toy_weights: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    from hemocount.detect.yolo import YoloDetector

    args = ["-q", "count", str(slides), "--weights", str(toy_weights), "--conf", "0.001", "--scale", "none", "--batch", "1",
            "--max-det", "30", "--no-classify"]
    assert main([*args, "-o", str(tmp_path / "ref")]) == 3

    real = YoloDetector.predict
    calls: list[int] = []
    kill_at = [2]

    def flaky(self: YoloDetector, images: list, **kw: object) -> list:
        calls.append(len(images))
        if len(calls) == kill_at[0]:
            raise KeyboardInterrupt  # stands in for a kill mid-run
        return real(self, images, **kw)

    monkeypatch.setattr(YoloDetector, "predict", flaky)
    out = tmp_path / "out"
    assert main([*args, "-o", str(out)]) == 130
    assert len(list((out / JOURNAL).glob("0*.json"))) == 2  # the first image and the skipped one
    assert not (out / "counts.csv").exists()
    calls.clear()
    kill_at[0] = 0
    assert main([*args, "-o", str(out), "--resume"]) == 3
    assert len(calls) == 2  # only the two unfinished images were detected again
    for name in ("counts.csv", "cells.csv", "predictions.coco.json"):
        assert (out / name).read_text() == (tmp_path / "ref" / name).read_text()


def test_resume_refuses_changed_settings(slides: Path, tmp_path: Path, toy_weights: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from hemocount.count import JOURNAL

    out = tmp_path / "out"
    args = ["-q", "count", str(slides / "f2.jpg"), "--weights", str(toy_weights), "--no-classify", "-o", str(out)]
    assert main(args) == 0
    (out / JOURNAL).mkdir()
    (out / JOURNAL / "settings.json").write_text('{"iou": 0.1}')
    assert main([*args, "--resume"]) == 2
    assert "settings differ" in capsys.readouterr().err


def test_output_inside_source_is_not_an_input(slides: Path, toy_weights: Path) -> None:
    out = slides / "results"
    args = ["-q", "count", str(slides), "-o", str(out), "--weights", str(toy_weights), "--no-classify"]
    assert main(args) == 3
    assert main([*args, "--exist-ok"]) == 3
    with (out / "counts.csv").open(newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 4  # annotated outputs were not counted as inputs


def test_no_classify_leaves_subtype_columns_empty(slides: Path, tmp_path: Path, toy_weights: Path) -> None:
    out = tmp_path / "out"
    assert main(["-q", "count", str(slides / "f2.jpg"), "-o", str(out), "--weights", str(toy_weights),
                 "--no-classify", "--conf", "0.01"]) == 0
    row = _rows(out / "counts.csv")[0]
    assert row["neutrophil"] == "" and row["uncertain"] == "" and row["all_cells"] == "" and row["RBC"] != ""
    assert json.loads((out / "run.json").read_text())["classifiers"] == {"enabled": False}


def test_console_script_smoke(tmp_path: Path) -> None:
    exe = shutil.which("hemocount")
    cmd = [exe] if exe else [sys.executable, "-m", "hemocount"]
    res = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "count" in res.stdout
    res = subprocess.run([*cmd, "count", str(tmp_path / "missing"), "-o", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.strip().endswith("no such file or folder")
    assert "Traceback" not in res.stderr


def test_import_has_no_side_effects() -> None:
    code = ("import sys, hemocount, hemocount.cli, hemocount.detect, hemocount.datasets;"
            "heavy = [m for m in ('torch', 'ultralytics', 'cv2', 'supervision') if m in sys.modules];"
            "print(heavy)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "[]", res.stdout + res.stderr


def test_wbc_crops_wait_for_a_full_classifier_batch() -> None:
    import numpy as np
    import supervision as sv

    from hemocount.run import CLASSIFY_BATCH, MAX_PENDING_PIXELS, _Loaded, _ready_images

    def waiting(wbcs: int, side: int = 10) -> tuple[_Loaded, sv.Detections]:
        d = sv.Detections(xyxy=np.zeros((wbcs + 2, 4), np.float32), class_id=np.zeros(wbcs + 2, int))
        d.data["class_name"] = np.array(["WBC"] * wbcs + ["RBC"] * 2)
        return _Loaded(0, np.broadcast_to(np.uint8(0), (side, side, 3)), 0.0, {}), d  # no memory behind it

    assert CLASSIFY_BATCH == 32
    assert _ready_images([waiting(5)] * 6) == 0  # 30 crops: wait for more
    assert _ready_images([waiting(5)] * 7) == 6  # 35: the first 30 now, 5 wait
    assert _ready_images([waiting(40)]) == 1  # one image over a batch goes alone (chunked by the engine)
    assert _ready_images([waiting(31), waiting(2)]) == 1
    big = int(MAX_PENDING_PIXELS ** 0.5) + 1
    assert _ready_images([waiting(0, big), waiting(1)]) == 2  # pixel cap: everything now
