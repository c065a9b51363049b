"""The WBC side of ``unfamiliar_lab``: the feature reference, its per-slide-size thresholds, the weights that
carry it, and the flag where the user looks (stdout, slides.csv, summary.json), with torch and ONNX Runtime."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hemocount.classify.familiarity import FeatureReference, slide_thresholds
from hemocount.errors import WeightsError
from hemocount.weights import sha256_file

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _blobs(rng: np.random.Generator, shift: float = 0.0, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Features of two classes in 40 dimensions (the second lab: every cell moved by ``shift``)."""
    labels = np.array(["neutrophil", "lymphocyte"] * (n // 2))
    feats = rng.normal(size=(n, 40)) + (labels == "lymphocyte")[:, None] * 3.0 + shift
    return feats, labels


def test_reference_scores_a_shifted_lab_higher_and_judges_only_large_enough_slides(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ref = FeatureReference.fit(*_blobs(rng), dims=8)
    val, val_labels = _blobs(rng)
    far, _ = _blobs(rng, shift=2.0)
    assert np.median(ref.score(far)) > np.quantile(ref.score(val), 0.9)
    t = slide_thresholds({"lab": (ref.score(val), val_labels)}, sizes=(5, 20), n_slides=200)
    assert set(t) == {5, 20} and t[20] < t[5]  # a mean over more cells varies less
    ref = ref.with_thresholds(t)
    assert ref.evaluate(ref.score(far[:30])).flagged
    assert not ref.evaluate(ref.score(val[:30])).flagged
    few = ref.evaluate(ref.score(far[:4]))
    assert few.threshold is None and not few.flagged and few.n_wbc == 4  # too few WBCs to judge
    # the second test: confident cells pass, unsure ones flag the slide although their features look familiar
    unsure = ref.with_thresholds(t, {5: 0.3, 20: 0.2})
    assert not unsure.evaluate(ref.score(val[:30]), np.full(30, 0.95)).flagged
    verdict = unsure.evaluate(ref.score(val[:30]), np.full(30, 0.5))
    assert verdict.flagged and verdict.uncertainty == pytest.approx(0.5) and verdict.uncertainty_threshold == 0.2
    ref.save(tmp_path / "ref.npz")
    back = FeatureReference.load(tmp_path / "ref.npz", {str(k): v for k, v in t.items()})
    np.testing.assert_allclose(back.score(far), ref.score(far), rtol=1e-4)
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(WeightsError, match="cannot read the WBC feature reference"):
        FeatureReference.load(tmp_path / "bad.npz", {})


def _manifest_with_reference(folder: Path, toy: Path, thresholds: dict[str, float]) -> str:
    """A weights folder whose subtype entry is the toy classifier with a reference fitted on random features."""
    import torch

    folder.mkdir()
    shutil.copyfile(toy, folder / "toy-sub.pt")
    meta = torch.load(toy, map_location="cpu", weights_only=True)["meta"]
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(60, 512))  # resnet18 pools 512 features
    FeatureReference.fit(feats, np.array(["neutrophil", "lymphocyte"] * 30), dims=4).save(folder / "toy-sub.ref.npz")
    entry = {"id": "toy-sub", "task": "wbc_subtype", "backend": "resnet", "file": "toy-sub.pt",
             "sha256": sha256_file(folder / "toy-sub.pt"), "classes": meta["classes"], "imgsz": meta["size"],
             "thresholds": {"min_prob": 0.0, "domain": {"reference": "toy-sub.ref.npz",
                                                         "sha256": sha256_file(folder / "toy-sub.ref.npz"),
                                                         "slide_thresholds": thresholds}}}
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "weights": [entry]}))
    return "toy-sub"


# threshold 0 from 1 WBC on: any scored WBC flags; a huge one: none does (one engine each, to keep it short)
@pytest.mark.parametrize(("engine", "thresholds", "flagged"), [("torch", {"1": 0.0}, True), ("onnx", {"1": 1e9}, False)])
def test_unfamiliar_wbcs_flag_the_slide_where_the_user_looks(engine: str, thresholds: dict[str, float], flagged: bool,
                                                             tmp_path: Path, toy_weights: Path,
                                                             toy_classifiers: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from hemocount.cli import main

    slide = tmp_path / "slides" / "s1"
    slide.mkdir(parents=True)
    for p in sorted(SAMPLES.glob("*.jpg"))[:2]:  # real fields: the toy detector finds WBCs there
        shutil.copyfile(p, slide / p.name)
    monkeypatch.setenv("HEMOCOUNT_WEIGHTS_DIR", str(tmp_path / "w"))
    sub = _manifest_with_reference(tmp_path / "w", toy_classifiers["wbc_subtype"], thresholds)
    out = tmp_path / "out"
    code = main(["count", str(tmp_path / "slides"), "-o", str(out), "--weights", str(toy_weights), "--conf",
                 "0.001", "--scale", "none", "--max-det", "30", "--subtype-weights", sub, "--all-weights",
                 str(toy_classifiers["all"]), "--engine", engine, "--no-annotate", "--no-report"])
    stdout = capsys.readouterr().out
    assert code in (0, 1), stdout
    s = json.loads((out / "summary.json").read_text())["slides"][0]
    fam = s["wbc_familiarity"]
    assert fam["n_wbc"] > 0 and fam["score"] > 0 and fam["flagged"] is flagged
    with (out / "slides.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert ("unfamiliar_lab" in rows[0]["flags"]) is flagged
    assert ("unfamiliar_lab" in stdout) is flagged
    if flagged:
        msg = next(f["message"] for f in s["flags"] if f["code"] == "unfamiliar_lab")
        assert "WBCs look unlike the subtype classifier's training labs" in msg and "adapt classify" in msg


def test_altered_reference_is_refused(tmp_path: Path, toy_classifiers: dict[str, Path],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from hemocount.classify.infer import Classifier

    sub = _manifest_with_reference(tmp_path / "w", toy_classifiers["wbc_subtype"], {"20": 1.0})
    monkeypatch.setenv("HEMOCOUNT_WEIGHTS_DIR", str(tmp_path / "w"))
    assert Classifier.from_weights(sub, task="wbc_subtype", engine="torch").reference is not None
    with open(tmp_path / "w" / "toy-sub.ref.npz", "ab") as f:
        f.write(b"x")
    with pytest.raises(WeightsError, match="sha256 does not match"):
        Classifier.from_weights(sub, task="wbc_subtype", engine="torch")


@pytest.mark.parametrize(("unfamiliar", "all_raised", "judged", "checked", "qualified"), [
    (True, True, True, True, True), (True, False, True, True, False), (False, True, True, True, False),
    (False, True, False, True, True),  # too few WBCs to judge the lab
    (False, True, True, False, True),  # a user's checkpoint: no reference, not checked
])
def test_all_flag_is_qualified_where_the_lab_is_unfamiliar_or_unjudged(unfamiliar: bool, all_raised: bool,
                                                                      judged: bool, checked: bool,
                                                                      qualified: bool) -> None:
    from hemocount.qc import QCConfig, slide_flags
    from hemocount.summary import WbcFamiliarity

    wbcs = WbcFamiliarity(9.0 if unfamiliar else 5.0, 40, 8.6 if judged else None, 0.2,
                          0.38 if judged else None) if checked else None  # None: not checked
    flags = slide_flags(counts={"RBC": 500, "WBC": 40, "Platelets": 30}, n_fields=4, n_skipped=0, n_classified=40,
                        field_flags_=[[]] * 4, cfg=QCConfig(), wbcs=wbcs, all_flagged=all_raised)
    codes = [f.code for f in flags]
    assert ("all_flag_unfamiliar_lab" in codes) is qualified
    assert ("unfamiliar_lab" in codes) is unfamiliar


def test_blasts_do_not_make_their_own_slide_look_unfamiliar() -> None:
    import supervision as sv

    from hemocount.results import FieldResult

    n = 4
    dets = sv.Detections(xyxy=np.zeros((n, 4), np.float32), confidence=np.ones(n, np.float32),
                         class_id=np.ones(n, int),
                         data={"class_name": np.array(["WBC"] * n), "subtype": np.array(["lymphocyte"] * n),
                               "subtype_prob": np.array([0.9, 0.8, 0.7, 0.6], np.float32),
                               "all_prob": np.array([0.1, 0.95, np.nan, 0.2], np.float32),
                               "unfamiliarity": np.array([5.0, 20.0, 6.0, np.nan], np.float32)})
    r = FieldResult(index=0, path=Path("f.png"), name="f.png", width=10, height=10,
                    detections=dets)
    colour = np.arange(n * 9, dtype=np.float32).reshape(n, 9)
    dets.data["wbc_stain"] = colour
    dist, top, col = r.familiarity_scores(exclude_all_at=0.9)
    np.testing.assert_array_equal(dist, [5.0, 6.0])  # the blast (ALL 0.95) and the unscored cell left out
    np.testing.assert_allclose(top, [0.9, 0.7])
    np.testing.assert_array_equal(col, colour[[0, 2]])
    back = FieldResult.from_json(json.loads(json.dumps(r.to_json())))  # the resume journal keeps the columns
    np.testing.assert_array_equal(back.familiarity_scores()[0], [5.0, 20.0, 6.0])
    np.testing.assert_array_equal(back.familiarity_scores()[2], colour[:3])


def test_crop_colour_test_flags_another_stain() -> None:
    """The third test needs no model: the mean colour of a slide's WBC crops, far from every training lab's,
    flags the slide; the training lab's own slides pass; the threshold comes from simulated val slides."""
    from hemocount.classify.familiarity import crop_stain_vectors, stain_slide_thresholds
    from hemocount.domain import StainReference

    rng = np.random.default_rng(1)

    def crops(tint: tuple[int, int, int], n: int) -> np.ndarray:
        """Pale background, pink cells and a dark violet nucleus, in ``tint``-shifted RGB, with noise."""
        img = np.full((n, 32, 32, 3), (235, 225, 230), np.int16)
        img[:, 4:28, 4:28] = (200, 120, 160)
        img[:, 12:20, 12:20] = (90, 40, 120)
        img = img + np.array(tint, np.int16) + rng.integers(-12, 13, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)

    labels = np.array(["neutrophil", "lymphocyte"] * 40)
    home_train, home_val = crop_stain_vectors(crops((0, 0, 0), 80)), crop_stain_vectors(crops((0, 0, 0), 80))
    ref = StainReference.fit({"home": home_train})
    t = stain_slide_thresholds(ref, {"home": (home_val, labels)}, sizes=(20,), n_slides=200)
    fam = FeatureReference.fit(*_blobs(rng, n=80), dims=4).with_thresholds({20: 1e9}, None, ref, t)
    other = crop_stain_vectors(crops((-40, 10, 40), 30))  # a bluer stain
    no_feature_doubt = np.zeros(30)
    assert fam.evaluate(no_feature_doubt, None, other).stain_flagged
    home = fam.evaluate(no_feature_doubt, None, crop_stain_vectors(crops((0, 0, 0), 30)))
    assert not home.flagged and home.stain_threshold == t[20] and home.stain_distance is not None
    assert fam.evaluate(no_feature_doubt[:5], None, other[:5]).stain_threshold is None  # too few to judge
