"""`datasets`, `eval detect` and `train detect` verbs on the fixture data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hemocount.cli import main


def test_datasets_stats_and_convert(fixture_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "stats", "--data-root", str(fixture_data), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["bccd/test"]["images"] == 1 and st["pbc/train"]["images"] == 2
    assert main(["datasets", "convert", "--to", "yolo", "--dataset", "bccd,pbc", "--data-root", str(fixture_data),
                 "--out", str(tmp_path / "yolo")]) == 0
    assert (tmp_path / "yolo" / "data.yaml").exists()
    assert main(["datasets", "convert", "--to", "coco", "--dataset", "pbc", "--splits", "test",
                 "--data-root", str(fixture_data), "--out", str(tmp_path / "gt.json")]) == 0
    assert len(json.loads((tmp_path / "gt.json").read_text())["images"]) == 2


def test_datasets_bad_root_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "stats", "--data-root", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hemocount: error:") and "not a folder" in err and len(err.splitlines()) == 1


def test_eval_detect_json_keys(fixture_data: Path, toy_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "detect", "--weights", str(toy_weights), "--data-root", str(fixture_data),
                 "--split", "test", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"mAP50", "mAP50_95", "per_class", "count"} <= set(res)
    assert res["count"]["complete_labels"]["images"] == 1 and 0 <= res["mAP50"] <= 1


def test_choose_thresholds_refused_on_test(fixture_data: Path, toy_weights: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "detect", "--weights", str(toy_weights), "--data-root", str(fixture_data),
                 "--split", "test", "--choose-thresholds"]) == 2
    assert "would tune on test" in capsys.readouterr().err


def test_thresholds_chosen_on_one_split_apply_to_another(fixture_data: Path, toy_weights: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The leave-one-lab-out protocol: thresholds chosen on the training lab's val, applied elsewhere."""
    base = ["eval", "detect", "--weights", str(toy_weights), "--data-root", str(fixture_data)]
    assert main([*base, "--dataset", "pbc", "--split", "val", "--choose-thresholds"]) == 0
    chosen = tmp_path / "thr.json"
    chosen.write_text(capsys.readouterr().out)
    assert main([*base, "--split", "test", "--thresholds", str(chosen), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"]["thresholds"] == json.loads(chosen.read_text())["conf"]
    chosen.write_text('{"conf": {"RBC": 0.5}}')
    assert main([*base, "--split", "test", "--thresholds", str(chosen)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(chosen) in err and "not a thresholds file" in err and len(err.splitlines()) == 1


def test_eval_detect_at_the_normalised_scale(fixture_data: Path, toy_weights: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """--scale auto evaluates what `count` finds (the pipeline's detection), recorded in the result."""
    base = ["eval", "detect", "--weights", str(toy_weights), "--data-root", str(fixture_data), "--json"]
    assert main([*base, "--scale", "auto"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["scale"] == "auto" and 0 <= res["mAP50"] <= 1 and res["engine"] in ("torch", "onnx", "openvino")
    assert main([*base, "--scale", "auto", "--choose-thresholds", "--split", "val"]) == 0
    assert set(json.loads(capsys.readouterr().out)["conf"]) == {"RBC", "WBC", "Platelets"}


def test_bccd_complete_source_keeps_only_complete_labels(fixture_data: Path) -> None:
    from hemocount.datasets.sources import load_sources

    recs = load_sources(["bccd_complete"], fixture_data, ("train", "val", "test"))
    assert recs and all(r.complete and r.label_source == "txl_pbc" for r in recs)
    assert len(recs) < len(load_sources(["bccd"], fixture_data, ("train", "val", "test")))


@pytest.mark.slow
def test_train_detect_one_epoch_and_resume(fixture_data: Path, tmp_path: Path) -> None:
    code = main(["-q", "train", "detect", "--out", str(tmp_path / "run"), "--data-root", str(fixture_data),
                 "--epochs", "1", "--imgsz", "64", "--batch", "2"])
    assert code == 0
    assert (tmp_path / "run" / "train" / "weights" / "last.pt").exists()
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["recipe"]["epochs"] == 1
    assert main(["-q", "train", "detect", "--out", str(tmp_path / "run"), "--data-root", str(fixture_data)]) == 2


def test_weights_listing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "--json"]) == 0
    entries = {e["id"]: e for e in json.loads(capsys.readouterr().out)}
    assert {"yolo11n-cells", "resnet50-wbc-subtype", "resnet50-all"} <= set(entries)
    assert entries["yolo11n-cells"]["metrics"]["bccd_test_best_labels"]["mAP50"] is not None


def test_classical_tune_then_eval_and_count(fixture_data: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "classical"
    assert main(["-q", "train", "detect", "--backend", "classical", "--out", str(out), "--data-root",
                 str(fixture_data), "--trials", "3"]) == 0
    saved = json.loads((out / "params.json").read_text())
    assert saved["images"] >= 1 and set(saved["conf"]) == {"RBC", "WBC", "Platelets"}
    assert len((out / "search.jsonl").read_text().splitlines()) == 4  # the start and three trials
    capsys.readouterr()
    assert main(["eval", "detect", "--detector", "classical", "--weights", str(out / "params.json"),
                 "--data-root", str(fixture_data), "--split", "test", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["weights"] == "params" and 0 <= res["mAP50"] <= 1
    # The tuned thresholds travel with the parameters.
    assert res["count"]["thresholds"] == saved["conf"]
