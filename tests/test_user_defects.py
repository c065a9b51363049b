"""Defects a new user hit (issue 15, section 5), each reproduced as it was reported."""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from hemocount.cli import main

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _count(toy_weights: Path, *args: str, quiet: bool = True) -> int:
    """``hemocount count`` with the toy model (no magnification search on its random boxes, no classifiers)."""
    return main([*(["-q"] if quiet else []), "count", *args, "--weights", str(toy_weights), "--scale", "none",
                 "--no-classify", "--no-report"])


def _annotated(out: Path) -> list[str]:
    return sorted(p.relative_to(out / "annotated").as_posix() for p in (out / "annotated").rglob("*") if p.is_file())


@pytest.fixture
def fields() -> list[Path]:
    return sorted(SAMPLES.glob("*.jpg"))


def test_symlinked_fields_keep_the_slide_they_are_linked_into(tmp_path: Path, fields: list[Path],
                                                              toy_weights: Path) -> None:
    # mkdir -p s/A s/B; ln -s X.jpg s/A/field.jpg; ln -s Y.jpg s/B/field.jpg: was one slide "field.jpg".
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(fields[0], store / "X.jpg")
    shutil.copy(fields[1], store / "Y.jpg")
    src = tmp_path / "s"
    for slide, target in (("A", "X.jpg"), ("B", "Y.jpg"), ("C", "X.jpg")):  # C links the same file as A
        (src / slide).mkdir(parents=True)
        (src / slide / "field.jpg").symlink_to(store / target)
    out = tmp_path / "o"
    assert _count(toy_weights, str(src), "-o", str(out)) == 0
    assert [s["slide"] for s in _rows(out / "slides.csv")] == ["A", "B", "C"]
    assert [s["fields"] for s in _rows(out / "slides.csv")] == ["1", "1", "1"]
    assert [r["image"] for r in _rows(out / "counts.csv")] == ["s/A/field.jpg", "s/B/field.jpg", "s/C/field.jpg"]
    assert _annotated(out) == ["s/A/field.jpg", "s/B/field.jpg", "s/C/field.jpg"]


def test_symlinked_slide_folder_is_followed(tmp_path: Path, fields: list[Path], toy_weights: Path) -> None:
    real = tmp_path / "elsewhere" / "slide_1"
    real.mkdir(parents=True)
    shutil.copy(fields[0], real / "f1.jpg")
    src = tmp_path / "in"
    src.mkdir()
    (src / "patient").symlink_to(real, target_is_directory=True)
    (src / "patient" / "loop").symlink_to(src, target_is_directory=True)  # would recurse for ever
    out = tmp_path / "o"
    assert _count(toy_weights, str(src), "-o", str(out)) == 0
    assert [r["image"] for r in _rows(out / "counts.csv")] == ["in/patient/f1.jpg"]
    assert [s["slide"] for s in _rows(out / "slides.csv")] == ["patient"]


def test_earlier_output_folder_inside_the_input_is_skipped(tmp_path: Path, fields: list[Path], toy_weights: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for f in fields[:2]:
        shutil.copy(f, src / f.name)
    assert _count(toy_weights, str(src), "-o", str(src / "out")) == 0
    assert (src / "out" / "annotated").is_dir()
    capsys.readouterr()
    out2 = tmp_path / "out2"
    assert _count(toy_weights, str(src), "-o", str(out2)) == 0
    err = capsys.readouterr().err
    assert [r["image"] for r in _rows(out2 / "counts.csv")] == [f"in/{f.name}" for f in fields[:2]]
    assert [s["slide"] for s in _rows(out2 / "slides.csv")] == [f.name for f in fields[:2]]
    said = [line for line in err.splitlines() if "earlier hemocount run" in line]
    assert len(said) == 1 and str(src / "out") in said[0], err


def test_interrupted_output_folder_is_recognised(tmp_path: Path) -> None:
    from hemocount.io import find_images

    src = tmp_path / "in"
    (src / "old" / ".hemocount-journal").mkdir(parents=True)
    (src / "old" / "annotated").mkdir()
    shutil.copy(next(SAMPLES.glob("*.jpg")), src / "old" / "annotated" / "a.jpg")
    shutil.copy(next(SAMPLES.glob("*.jpg")), src / "a.jpg")
    assert find_images([src]) == [src / "a.jpg"]


def test_broken_links_are_skipped_with_a_reason_and_webp_is_counted(tmp_path: Path, fields: list[Path],
                                                                    toy_weights: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import cv2

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(fields[0], src / "a.jpg")
    cv2.imwrite(str(src / "b.webp"), cv2.imread(str(fields[1])))
    (src / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (src / "loop.png").symlink_to(src / "loop.png")
    out = tmp_path / "o"
    assert _count(toy_weights, str(src), "-o", str(out)) == 3
    err = capsys.readouterr().err
    rows = {r["image"]: r for r in _rows(out / "counts.csv")}
    assert set(rows) == {"in/a.jpg", "in/b.webp", "in/dangling.jpg", "in/loop.png"}
    assert rows["in/b.webp"]["status"] == "ok" and rows["in/b.webp"]["width"] == "640"
    assert rows["in/dangling.jpg"]["status"] == "skipped"
    assert "broken symbolic link" in rows["in/dangling.jpg"]["error"] and "gone.jpg" in rows["in/dangling.jpg"]["error"]
    assert rows["in/loop.png"]["status"] == "skipped" and "symbolic link loop" in rows["in/loop.png"]["error"]
    for name in ("dangling.jpg", "loop.png"):
        lines = [line for line in err.splitlines() if name in line and "WARNING" in line]
        assert len(lines) == 1, err
    assert "Traceback" not in err
    assert _annotated(out) == ["in/a.jpg", "in/b.webp.jpg"]


def test_broken_link_given_directly_is_one_line(tmp_path: Path, toy_weights: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    link = tmp_path / "x.jpg"
    link.symlink_to(tmp_path / "missing.jpg")
    assert _count(toy_weights, str(link), "-o", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken symbolic link" in err and "x.jpg" in err


def test_exist_ok_removes_the_previous_runs_annotated_images(tmp_path: Path, fields: list[Path],
                                                             toy_weights: Path) -> None:
    src = tmp_path / "in"
    (src / "s1").mkdir(parents=True)
    for f in fields[:2]:
        shutil.copy(f, src / "s1" / f.name)
    out = tmp_path / "o"
    assert _count(toy_weights, str(src), "-o", str(out)) == 0
    assert len(_annotated(out)) == 2
    (out / "annotated" / "notes.txt").write_text("mine")  # not hemocount's: stays
    (src / "s1" / fields[1].name).unlink()
    shutil.copy(fields[2], src / "s2.jpg")
    assert _count(toy_weights, str(src), "-o", str(out), "--exist-ok") == 0
    assert _annotated(out) == ["in/s1/" + fields[0].name, "in/s2.jpg", "notes.txt"]
    assert len(_rows(out / "counts.csv")) == 2
    # Without annotation the old images go too: none of them belongs to this run; nor does its report.
    (out / "report.html").write_text("an earlier run's report")  # this helper's runs pass --no-report
    assert _count(toy_weights, str(src), "-o", str(out), "--exist-ok", "--no-annotate") == 0
    assert _annotated(out) == ["notes.txt"]
    assert not (out / "report.html").exists()


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += _walk(sub, (*path, name))
        elif action.help is None:
            missing.append((" ".join(path), "/".join(action.option_strings) or action.dest))
    return missing


def test_every_option_has_help() -> None:
    from hemocount.cli import _parser

    assert _walk(_parser()) == []


def _screen(text: str) -> list[str]:
    """What a terminal shows after ``text``: carriage returns go back to the start of the line."""
    lines: list[str] = []
    cur: list[str] = []
    col = 0
    for ch in text:
        if ch == "\n":
            lines.append("".join(cur).rstrip())
            cur, col = [], 0
        elif ch == "\r":
            col = 0
        else:
            if col < len(cur):
                cur[col] = ch
            else:
                cur.append(ch)
            col += 1
    lines.append("".join(cur).rstrip())
    return lines


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def three_with_a_bad_one(tmp_path: Path, fields: list[Path]) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(fields[0], src / "a.jpg")
    (src / "b.jpg").write_bytes(fields[1].read_bytes()[:3000])  # truncated: a warning mid-run
    shutil.copy(fields[2], src / "c.jpg")
    return src


def test_no_progress_bar_when_stderr_is_not_a_terminal(three_with_a_bad_one: Path, tmp_path: Path,
                                                      toy_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _count(toy_weights, str(three_with_a_bad_one), "-o", str(tmp_path / "o"), quiet=False) == 3
    err = capsys.readouterr().err
    assert "counting" not in err and "\r" not in err
    assert any(line.startswith("hemocount: WARNING: skipped") and "b.jpg" in line for line in err.splitlines())


def test_warning_gets_its_own_line_under_the_progress_bar(three_with_a_bad_one: Path, tmp_path: Path,
                                                          toy_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert _count(toy_weights, str(three_with_a_bad_one), "-o", str(tmp_path / "o"), "--readers", "1",
                  quiet=False) == 3
    text = term.getvalue()
    assert "counting" in text  # the bar was drawn on the terminal
    warning = [line for line in _screen(text) if "b.jpg: truncated JPEG" in line]
    assert len(warning) == 1 and warning[0].startswith("hemocount: WARNING: skipped"), _screen(text)
    assert not any("counting" in line for line in _screen(text))  # and cleared at the end


def test_slides_csv_marks_out_of_range_values(tmp_path: Path) -> None:
    from hemocount.reference import ReferenceRanges
    from hemocount.sinks import write_slides_csv
    from hemocount.slides import differential

    ranges = ReferenceRanges.load(None)
    sub = {"neutrophil": 30, "eosinophil": 20, "lymphocyte": 30, "monocyte": 5, "basophil": 15, "uncertain": 0}
    from dataclasses import replace

    from hemocount.summary import Estimate, SlideSummary

    estimates = [Estimate(quantity=q, value=v, **ranges.mark("counts_per_uL", q, v))
                 for q, v in (("WBC", 20000.0), ("Platelets", 100000.0), ("RBC", 5e6))]
    slide = SlideSummary("s", 3, 0, {"RBC": 900, "WBC": 100, "Platelets": 40}, differential(sub, 100, ranges), None,
                         [], None, estimates, [])
    small = replace(slide, slide="small", differential=differential(sub, 1000, ranges))  # not reportable
    write_slides_csv([slide, small], tmp_path / "slides.csv")
    rows = _rows(tmp_path / "slides.csv")
    r = rows[0]
    assert r["neutrophil_pct"] == "30.0" and r["neutrophil_range"] == "low"
    assert r["eosinophil_range"] == "high" and r["basophil_range"] == "high"
    assert r["lymphocyte_range"] == "" and r["monocyte_range"] == ""
    assert r["WBC_per_uL_range"] == "high" and r["Platelets_per_uL_range"] == "low" and r["RBC_per_uL_range"] == ""
    assert all(rows[1][f"{s}_range"] == "" for s in ("neutrophil", "eosinophil", "basophil"))


def test_skipped_images_are_not_coco_images_and_ids_stay_input_index(tmp_path: Path) -> None:
    from hemocount.results import ImageResult
    from hemocount.sinks import predictions_coco

    results = [ImageResult(0, tmp_path / "a.jpg", "a.jpg", width=640, height=480),
               ImageResult(1, tmp_path / "b.jpg", "b.jpg", status="skipped", error="b.jpg: truncated JPEG"),
               ImageResult(2, tmp_path / "c.jpg", "c.jpg", width=320, height=240)]
    coco = predictions_coco(results)
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [
        (1, "a.jpg", 640, 480), (3, "c.jpg", 320, 240)]
    json.dumps(coco)


def test_count_help_mentions_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["count", "--help"])
    assert "--quiet" in capsys.readouterr().out


def test_many_symlinked_fields_in_one_slide_folder_are_one_slide(tmp_path: Path, fields: list[Path],
                                                                 toy_weights: Path) -> None:
    # 144 symlinked fields in s144/slide/ gave 144 one-field slides: links to files of other names and folders.
    store = tmp_path / "store"
    slide = tmp_path / "s144" / "slide"
    slide.mkdir(parents=True)
    for i in range(6):
        target = store / f"scan{i % 3}" / f"IMG_{i:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fields[i % len(fields)], target)
        (slide / f"field_{i:03d}.jpg").symlink_to(target)
    out = tmp_path / "o"
    assert _count(toy_weights, str(tmp_path / "s144"), "-o", str(out)) == 0
    assert [(s["slide"], s["fields"]) for s in _rows(out / "slides.csv")] == [("slide", "6")]
    assert [r["image"] for r in _rows(out / "counts.csv")] == [f"s144/slide/field_{i:03d}.jpg" for i in range(6)]


def test_quiet_after_the_subcommand(tmp_path: Path, fields: list[Path], toy_weights: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    # `hemocount count x -o o -q` was "unrecognized arguments".
    assert main(["count", str(fields[0]), "-o", str(tmp_path / "o"), "--weights", str(toy_weights), "--scale",
                 "none", "--no-classify", "--no-report", "-q"]) == 0
    assert "INFO" not in capsys.readouterr().err


def test_readme_names_the_first_column_of_counts_csv(tmp_path: Path, fields: list[Path], toy_weights: Path) -> None:
    # README said counts.csv starts with a `path` column; it is `image`.
    readme = (SAMPLES.parent / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `counts.csv` |"))
    assert _count(toy_weights, str(fields[0]), "-o", str(tmp_path / "o")) == 0
    header = (tmp_path / "o" / "counts.csv").read_text().splitlines()[0].split(",")
    assert f"`{header[0]}`" in row.split("|")[2].split(",")[0], row
