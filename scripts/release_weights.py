"""Turn a finished training run into shipped weights: compact file, sha256, thresholds, metrics, manifest entry.

Usage (maintainers; needs the data root):
    python scripts/release_weights.py detect --run runs/det1 --id yolo11n-cells --recipe "..."
    python scripts/release_weights.py frcnn --run runs/frcnn --id frcnn-r50-cells --recipe "..."
    python scripts/release_weights.py classify --task all --run runs/all --id resnet50-all --recipe "..."
    python scripts/release_weights.py all-lolo --id resnet50-all   # + the ALL flag's LOLO rows
    python scripts/release_weights.py subtype-lolo --id resnet50-wbc-subtype --lolo-recipe RECIPE_e12

Thresholds are chosen on the validation split only; the test split is evaluated once,
afterwards, and its numbers go into the manifest unchanged.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hemocount import CELL_CLASSES  # noqa: E402
from hemocount.io import atomic_write_json  # noqa: E402
from hemocount.weights import sha256_file, weights_dir  # noqa: E402

DETECT_LICENCE = ("Weights: AGPL-3.0-or-later (trained with ultralytics, AGPL-3.0). Training data: BCCD (MIT, "
                  "(c) 2017 shenggan), TXL-PBC re-annotation of BCCD and its PBC part (MIT, (c) 2024 lugan; PBC images "
                  "by Acevedo et al. 2020).")


def _upsert(entry: dict[str, Any]) -> None:
    folder = weights_dir()
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {
        "format": 1, "notice": "Research use only, not for diagnosis.", "weights": []}
    manifest["weights"] = [e for e in manifest["weights"] if e["id"] != entry["id"]] + [entry]
    atomic_write_json(path, manifest)


def _update_entry(weights_id: str, **fields: Any) -> None:
    """Set ``fields`` on the manifest entry ``weights_id`` where it stands (the weights themselves unchanged)."""
    path = weights_dir() / "manifest.json"
    manifest = json.loads(path.read_text())
    next(e for e in manifest["weights"] if e["id"] == weights_id).update(fields)
    atomic_write_json(path, manifest)


def release_detect(args: argparse.Namespace) -> None:
    import torch

    from hemocount.detect.ultra_env import ultralytics
    from hemocount.detect.yolo import YoloDetector
    from hemocount.weights import WeightsEntry

    ultralytics()
    from ultralytics.utils.torch_utils import strip_optimizer

    run = Path(args.run)
    best = run / "train" / "weights" / "best.pt"
    dst = weights_dir() / f"{args.id}.pt"
    shutil.copyfile(best, dst)
    strip_optimizer(str(dst))  # fp16 model only, no optimizer/EMA state
    ck = torch.load(dst, map_location="cpu", weights_only=False)
    recipe = json.loads((run / "recipe.json").read_text())
    entry = WeightsEntry(id=args.id, task="detect", backend="yolo", file=dst.name, sha256=sha256_file(dst),
                         classes=list(CELL_CLASSES), imgsz=recipe["recipe"]["imgsz"], path=dst)
    det = YoloDetector(ultralytics().YOLO(str(dst), task="detect"), entry)
    iou, max_det = 0.6, 1000
    val, conf, metrics = _thresholds_and_test_metrics(det, args.data_root, ("bccd", "pbc"), iou, max_det)
    results_csv = (run / "train" / "results.csv").read_text().splitlines()
    _upsert({
        "id": args.id, "version": args.version, "task": "detect", "backend": "yolo", "architecture": "YOLO11n",
        "file": dst.name, "sha256": entry.sha256, "bytes": dst.stat().st_size, "classes": list(CELL_CLASSES),
        "imgsz": entry.imgsz,
        "thresholds": {"conf": conf, "iou": iou, "max_det": max_det,
                       "chosen_on": f"validation split, images with complete labels ({len(val)}: BCCD val with "
                                    "TXL-PBC labels + PBC val); per class, minimising pooled absolute count error",
                       **({"scale_band": [float(v) for v in args.scale_band.split(",")],
                           "scale_band_note": "chosen on the val zoom benchmark (benchmarks/zoom.py --scale-band)"}
                          if args.scale_band else {}),
                       "tile": 640, "tile_note": "field size of the training images (BCCD 640x480; PBC fields are "
                                                 "360x363): images longer than two tiles are tiled at this size"},
        "training_data": {
            "train": "BCCD official ImageSets/Main train (205) + TXL-PBC PBC train (353)",
            "val": "BCCD val (87) + PBC val (97), for checkpoint selection (ultralytics fitness) and thresholds",
            "test": "BCCD test (72) and PBC test (50), evaluated once for this manifest",
            "labels": "BCCD: TXL-PBC re-annotation for the 160 images it covers (complete labels), original VOC "
                      "XML elsewhere (RBCs under-annotated); PBC: TXL-PBC labels",
            "pretrained": None,
        },
        "recipe": args.recipe, "recipe_config": recipe["recipe"], "epochs_run": len(results_csv) - 1,
        "notes": args.notes,
        "metrics": metrics,
        **({"leave_one_lab_out": _lolo(args.lolo_recipe)} if args.lolo_recipe else {}),
        "metrics_labels": "mAP via pycocotools COCOeval (maxDets 1000) at conf 0.001; count errors at the "
                          "thresholds above. bccd_test_best_labels uses TXL-PBC labels where they exist "
                          "(28 of 72 test images) and XML elsewhere; its count.complete_labels block covers "
                          "only those 28 fully labelled images.",
        "eval_command": "hemocount eval detect --weights {id} --dataset bccd --split test --labels best --json",
        "licence": DETECT_LICENCE, "date": date.today().isoformat(),
        "ultralytics_version": ck.get("version"),
    })
    print(json.dumps(metrics, indent=2))


def _lolo(recipe: str) -> dict[str, Any]:
    """The detector leave-one-lab-out test rows of ``recipe`` (weights/eval/lolo_det_*; scripts/lolo_detect.sh)."""
    from lolo_detect_summary import row

    rows = [r for p in sorted((ROOT / "weights" / "eval").glob(f"lolo_det_{recipe}_train-*_test*.json"))
            if (r := row(p)) and r["recipe"] == recipe]
    if not rows:
        raise SystemExit(f"no leave-one-lab-out test results for recipe {recipe!r}: run scripts/lolo_detect.sh first")
    return {"recipe": recipe, "protocol": "train on one lab's train split at this model's budget, thresholds chosen "
                                          "on that lab's val, evaluated once on both labs' test splits "
                                          "(scripts/lolo_detect.sh EPOCHS test)",
            "rows": rows}


def _thresholds_and_test_metrics(det: Any, data_root: str | None, val_sources: tuple[str, ...], iou: float,
                                 max_det: int) -> tuple[list[Any], dict[str, float], dict[str, Any]]:
    """Count thresholds chosen on the fully labelled val images of ``val_sources``, then the test metrics (once)."""
    from hemocount.datasets.sources import load_bccd, load_pbc, load_sources
    from hemocount.detect.evaluate import choose_thresholds, evaluate, predict_records

    val = [r for r in load_sources(list(val_sources), data_root, ("val",)) if r.complete]
    conf = choose_thresholds(val, predict_records(det, val, iou=iou, max_det=max_det))
    print("count thresholds chosen on val:", conf, file=sys.stderr)
    tests = {"bccd_test_best_labels": load_bccd(data_root, splits=("test",)),
             "bccd_test_xml_labels": load_bccd(data_root, splits=("test",), labels="xml"),
             "pbc_test": load_pbc(data_root, splits=("test",))}
    metrics = {k: evaluate(detector=det, records=v, conf=conf, iou=iou, max_det=max_det) for k, v in tests.items()}
    return val, conf, metrics


def release_frcnn(args: argparse.Namespace) -> None:
    """Ship a Faster R-CNN run's ``best.pt`` (already a compact fp16 state dict with its metadata)."""
    from hemocount.detect.frcnn import FrcnnDetector, load_frcnn
    from hemocount.weights import WeightsEntry

    run = Path(args.run)
    dst = weights_dir() / f"{args.id}.pt"
    shutil.copyfile(run / "best.pt", dst)
    model, meta = load_frcnn(dst)
    entry = WeightsEntry(id=args.id, task="detect", backend="frcnn", file=dst.name, sha256=sha256_file(dst),
                         classes=list(CELL_CLASSES), imgsz=int(meta["min_size"]), path=dst)
    det = FrcnnDetector(model, meta, entry)
    iou, max_det = 0.5, 300
    val, conf, metrics = _thresholds_and_test_metrics(det, args.data_root, ("bccd",), iou, max_det)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    recipe = json.loads((run / "recipe.json").read_text())
    _upsert({
        "id": args.id, "version": args.version, "task": "detect", "backend": "frcnn",
        "architecture": f"Faster R-CNN ResNet-50 FPN ({meta['norm']})", "file": dst.name, "sha256": entry.sha256,
        "bytes": dst.stat().st_size, "classes": list(CELL_CLASSES), "imgsz": entry.imgsz,
        "thresholds": {"conf": conf, "iou": iou, "max_det": max_det, "tile": 640,
                       "chosen_on": f"BCCD val images with complete labels ({len(val)}); per class, minimising "
                                    "pooled absolute count error"},
        "training_data": {"train": "BCCD official ImageSets/Main train (205)",
                          "val": "BCCD val (87): checkpoint selection by mAP50 after every epoch, and thresholds",
                          "test": "BCCD test (72), and PBC test (50) as an unseen lab, evaluated once",
                          "labels": "TXL-PBC re-annotation where it exists, original VOC XML elsewhere",
                          "pretrained": None},
        "recipe": args.recipe, "recipe_config": recipe["recipe"], "epochs_run": len(log),
        "selected_epoch": max(log, key=lambda e: e["val_mAP50"])["epoch"], "curve": log, "notes": args.notes,
        "metrics": metrics, "eval_command": "hemocount eval detect --detector frcnn --weights {id} --dataset bccd "
                                            "--split test --json",
        "licence": "Weights: AGPL-3.0-or-later. Training data: BCCD (MIT, (c) 2017 shenggan), TXL-PBC "
                   "re-annotation (MIT, (c) 2024 lugan).", "date": date.today().isoformat(),
    })
    print(json.dumps(metrics, indent=2))


def _pretrained(start: str | None) -> dict[str, Any] | None:
    """Where a fine-tuned run started: a shipped model (by id and sha256) or a user file."""
    if not start:
        return None
    path = Path(start)
    for e in json.loads((weights_dir() / "manifest.json").read_text())["weights"]:
        if path.name == e["file"]:
            return {"from": e["id"], "version": e["version"], "sha256": e["sha256"],
                    "note": "initialised from this hemocount model (trained from scratch here; no ImageNet weights)"}
    return {"from": str(start)}


def release_classify(args: argparse.Namespace) -> None:
    import torch

    from hemocount.classify.evaluate import evaluate_classifier

    run = Path(args.run)
    dst = weights_dir() / f"{args.id}.pt"
    shutil.copyfile(run / "best.pt", dst)
    ck = torch.load(dst, map_location="cpu", weights_only=True)
    meta = ck["meta"]
    recipe = json.loads((run / "recipe.json").read_text())
    history = json.loads((run / "history.json").read_text())
    thresholds: dict[str, Any] = {}
    four_labs = "--sources" in recipe.get("argv", [])
    if args.task == "wbc_subtype" and four_labs:
        thresholds["min_prob"] = 0.5
        thresholds["domain"] = _fit_reference(run / "best.pt", dst.with_suffix(".ref.npz"), args.data_root)
        licence = ("Research use. Training data: BCCD WBC crops (MIT), Tecom WBC 'Dataset 1' (GPL-3.0 repository; "
                   "images from Jiangxi Tecom Science Corporation, cite Zheng et al., Micron 2018), PBC via "
                   "TXL-PBC (MIT) and pbc_wbc (CC BY 4.0; Acevedo et al. 2020), LISC (research use per its authors, "
                   "Rezatofighi & Soltanian-Zadeh 2011; repository MIT).")
        data = {"train/val/test": "four labs' own splits: the committed hemocount/classify/splits/wbc_subtype.csv "
                                  "(BCCD official split, TXL-PBC's, Tecom 60/20/20 with duplicate pairs together) and "
                                  "hemocount/classify/splits/wbc_sources.csv (pbc_wbc's split file; LISC split by "
                                  "distinct-cell group). Train splits trained, the pooled val splits chose the "
                                  "epoch, test splits evaluated once."}
    elif args.task == "wbc_subtype":
        thresholds["min_prob"] = 0.5
        licence = ("Research use. Training data: BCCD WBC crops (MIT), Tecom WBC 'Dataset 1' (GPL-3.0 repository; "
                   "images from Jiangxi Tecom Science Corporation, cite Zheng et al., Micron 2018), PBC via "
                   "TXL-PBC (MIT; Acevedo et al. 2020).")
        data = {"train/val/test": "committed split hemocount/classify/splits/wbc_subtype.csv: BCCD keeps its "
                                  "official split, PBC keeps TXL-PBC's, Tecom stratified 60/20/20 with "
                                  "duplicate pairs kept together"}
    else:
        thresholds["slide_flag"] = _slide_flag(args.slide_flag_from)
        licence = ("RESEARCH USE ONLY. Trained on ALL-IDB2 (Labati, Piuri, Scotti, ICIP 2011), free for research "
                   "per its authors; images are not redistributed. Not for diagnosis.")
        data = {"train/val/test": "committed split hemocount/classify/splits/all.csv: stratified 60/20/20, the "
                                  "byte-identical pair Im223_0/Im257_0 on one side. No patient ids exist: "
                                  "image-level splits are optimistic."}
    entry = {
        "id": args.id, "version": args.version, "task": args.task, "backend": "resnet",
        "architecture": f"{meta['arch']} ({meta['norm']})", "file": dst.name, "sha256": sha256_file(dst),
        "bytes": dst.stat().st_size, "classes": meta["classes"], "imgsz": meta["size"],
        "crop": {"pad": meta["pad"], "square": True, "size": meta["size"],
                 **({"rbc_k": meta["rbc_k"], "side": "rbc_k red-cell diameters of the field (ScaleInfo.rbc_px)"}
                    if meta.get("rbc_k") else {})},
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channel_order": "RGB",
                          "in_model": meta.get("input_norm", "imagenet")},
        "thresholds": thresholds, "training_data": {**data, "pretrained": _pretrained(recipe.get("weights"))},
        "recipe": args.recipe, "recipe_config": recipe["recipe"], "selected_epoch": meta.get("epoch"),
        "epochs_run": len(history), "notes": args.notes, "licence": licence, "date": date.today().isoformat(),
        "eval_command": f"hemocount eval classify --task {args.task} --weights {{id}} --split test --json",
    }
    _upsert(entry)
    # fp32 whatever this CPU offers (auto may pick bf16): the manifest's numbers must not depend on the machine
    res = {s: evaluate_classifier(task=args.task, weights=args.id, data_root=args.data_root, split=s,
                                  out=ROOT / "weights" / "eval", precision="fp32") for s in ("val", "test")}
    entry["metrics"] = {"val": _summary(res["val"]), "test": _summary(res["test"])}
    if args.task == "wbc_subtype" and four_labs:
        entry["metrics"]["new_labs_test"] = _new_lab_rows(args.id, args.data_root)
    if args.lolo_recipe and args.task == "wbc_subtype":
        entry["leave_one_lab_out"] = _lolo_classify(args.lolo_recipe)
    entry["metrics_full"] = f"weights/eval/metrics_{args.task}_test.json"
    _upsert(entry)
    print(json.dumps(entry["metrics"], indent=2))


#: Tests of the WBC side of ``unfamiliar_lab`` given thresholds, chosen on the leave-one-lab-out *val* rows of
#: the shipped recipe (inorm_gray_rbc, slides of 20 WBCs): the crop colour flagged every held-out lab on 100 %
#: of its slides (benchmarks/results/wbc_stain_shift_val.json), feature distance and uncertainty together held-out
#: BCCD only (100 %; Tecom, PBC, LISC 0 %: classif_domain_shift_inorm_gray_rbc_val.json) and would only spend
#: false-alarm budget. The other two are still computed and reported per slide, without a threshold.
DOMAIN_TESTS = ("colour",)


def _fit_reference(checkpoint: Path, dst: Path, data_root: str | None,
                   tests: tuple[str, ...] = DOMAIN_TESTS) -> dict[str, Any]:
    """The WBC side of ``unfamiliar_lab`` for a four-lab subtype model: feature statistics and per-lab crop
    colours from every lab's train crops, per-slide-size thresholds of ``tests`` (``distance``,
    ``uncertainty``, ``colour``) from every lab's val crops, the false-alarm rate split between them."""
    from hemocount.classify.familiarity import (
        FALSE_ALARM,
        SLIDE_SIZES,
        FeatureReference,
        crop_stain_vectors,
        slide_thresholds,
        stain_slide_thresholds,
    )
    from hemocount.classify.infer import Classifier
    from hemocount.classify.sources import SUBTYPE_SOURCES, load_subtype_sources
    from hemocount.classify.train import classifier_crops
    from hemocount.domain import StainReference

    clf = Classifier.from_weights(str(checkpoint), task="wbc_subtype", engine="torch")
    cells = load_subtype_sources(SUBTYPE_SOURCES, data_root)

    def run(sel: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        crops = classifier_crops(clf, sel)
        return (*clf.predict_with_features(crops), crop_stain_vectors(crops))

    train = [c for c in cells if c.split == "train"]
    _, f_train, v_train = run(train)
    ref = FeatureReference.fit(f_train, np.array([c.label for c in train]))
    colour = StainReference.fit({lab: v_train[[c.source == lab for c in train]] for lab in SUBTYPE_SOURCES})
    dist, unc, vec = {}, {}, {}
    for lab in SUBTYPE_SOURCES:
        v = [c for c in cells if c.split == "val" and c.source == lab]
        probs, f, col = run(v)
        truth = np.array([c.label for c in v])
        dist[lab], unc[lab], vec[lab] = (ref.score(f), truth), (1 - probs.max(1), truth), (col, truth)
    # a slide flagged by any test: each at its share of the false-alarm rate (hemocount.classify.familiarity)
    alarm = FALSE_ALARM / len(tests)
    th = slide_thresholds(dist, SLIDE_SIZES, false_alarm=alarm) if "distance" in tests else {}
    tu = slide_thresholds(unc, SLIDE_SIZES, false_alarm=alarm) if "uncertainty" in tests else {}
    tc = stain_slide_thresholds(colour, vec, SLIDE_SIZES, false_alarm=alarm) if "colour" in tests else {}
    ref.save(dst)
    print("unfamiliar_lab thresholds chosen on val:", th, tu, tc, file=sys.stderr)
    stain = colour.to_json()
    return {"reference": dst.name, "sha256": sha256_file(dst), "slide_thresholds": {str(k): v for k, v in th.items()},
            "uncertainty_thresholds": {str(k): v for k, v in tu.items()},
            "stain": {"features": stain["features"], "labs": stain["labs"],
                      "slide_thresholds": {str(k): v for k, v in tc.items()}},
            "tests": list(tests), "false_alarm_per_lab_val": FALSE_ALARM, "slide_sizes": list(SLIDE_SIZES),
            "fitted_on": f"train crops of {', '.join(SUBTYPE_SOURCES)}; thresholds on their val crops "
                         "(hemocount.classify.familiarity)"}


def refit_domain(args: argparse.Namespace) -> None:
    """Refit the ``unfamiliar_lab`` reference and thresholds of shipped subtype weights in place (the weights
    themselves unchanged): the manifest entry's ``thresholds.domain`` and its ``.ref.npz``."""
    path = weights_dir() / "manifest.json"
    entry = next(e for e in json.loads(path.read_text())["weights"] if e["id"] == args.id)
    dst = weights_dir() / entry["file"]
    entry["thresholds"]["domain"] = _fit_reference(dst, dst.with_suffix(".ref.npz"), args.data_root)
    if args.notes:
        entry["notes"] = f"{entry.get('notes', '')} {args.notes}".strip()
    _upsert(entry)


def _new_lab_rows(weights: str, data_root: str | None) -> dict[str, Any]:
    """Test metrics on the rows outside the committed split (pbc_wbc, LISC), per crop, LOLO counting rules."""
    from hemocount.classify.infer import Classifier
    from hemocount.classify.lolo import new_lab_reports

    clf = Classifier.from_weights(weights, task="wbc_subtype", engine="torch")
    return {lab: {k: rep["per_crop"][k] for k in ("n", "accuracy", "macro_f1", "macro_f1_eligible")}
            for lab, rep in new_lab_reports(clf, "test", data_root).items()}


def _lolo_classify(recipe: str) -> dict[str, Any]:
    """The subtype leave-one-lab-out rows of ``recipe`` (weights/eval/lolo_subtype_*; scripts/lolo_classif.sh)."""
    from hemocount.classify.sources import SUBTYPE_SOURCES

    rows: dict[str, Any] = {}
    for split in ("val", "test"):
        # one file per lab by exact name: a glob would also take another budget's files (recipe_e12_lab_split)
        paths = [ROOT / "weights" / "eval" / f"lolo_subtype_{recipe}_{lab}_{split}.json" for lab in SUBTYPE_SOURCES]
        for p in (p for p in paths if p.exists()):
            r = json.loads(p.read_text())
            v = r["per_crop"]
            rows.setdefault(split, {})[r["holdout"]] = {
                "n": v["n"], "accuracy": v["accuracy"], "macro_f1_eligible": v["macro_f1_eligible"],
                "eligible_classes": v["eligible_classes"],
                "f1": {c: m["f1"] for c, m in v["per_class"].items()}, "distinct_cells": r["distinct_cells"]}
    if "test" not in rows:
        raise SystemExit(f"no leave-one-lab-out test results for recipe {recipe!r}: run scripts/lolo_classif.sh")
    for split, labs in rows.items():
        f1 = [r["macro_f1_eligible"] for r in labs.values() if r["macro_f1_eligible"] is not None]
        labs["mean_macro_f1_eligible"] = round(sum(f1) / len(f1), 4)
    m = re.search(r"_e(\d+)$", recipe)  # scripts/lolo_classif.sh names a non-default budget recipe_eN
    epochs = int(m.group(1)) if m else 4
    return {"recipe": recipe, "protocol": "train on three labs' train splits (same recipe at a smaller budget: "
                                          f"{epochs} epochs x 3000 draws), epoch on their val, scored on the fourth lab; "
                                          "recipe chosen at 4 epochs on the held-out labs' val rows (or their dev "
                                          "rows: docs/classifier_robustness.md), test rows evaluated once "
                                          "(scripts/lolo_classif.sh, scripts/lolo_classif_summary.py)", **rows}


def release_subtype_lolo(args: argparse.Namespace) -> None:
    """Replace the ``args.id`` entry's subtype leave-one-lab-out rows with ``--lolo-recipe``'s (e.g. once that
    recipe's longer-budget folds are done); the weights and every other field are unchanged."""
    if not args.lolo_recipe:
        raise SystemExit("subtype-lolo needs --lolo-recipe")
    rows = _lolo_classify(args.lolo_recipe)
    _update_entry(args.id, leave_one_lab_out=rows)
    print(json.dumps({s: rows[s]["mean_macro_f1_eligible"] for s in ("val", "test") if s in rows}))


def release_all_lolo(args: argparse.Namespace) -> None:
    """Add the ALL flag's leave-one-healthy-lab-out rows (weights/eval/all_flag_<NAME>_no*, scripts/all_flag.py;
    NAME is ``--lolo-recipe``, default v3f) to the ``args.id`` entry; the weights themselves are unchanged."""
    name = args.lolo_recipe or "v3f"
    rows: dict[str, Any] = {}
    for p in sorted((ROOT / "weights" / "eval").glob(f"all_flag_{name}_no*_*.json")):
        lab, split = p.stem.removeprefix(f"all_flag_{name}_no").rsplit("_", 1)
        r = json.loads(p.read_text())
        cells = r["cells_rule"][lab]
        rows.setdefault(lab, {})[split] = {
            "held_out_cells_flagged": sum(v["positive"] for v in cells["per_subtype"].values()),
            "held_out_cells": cells["n"],
            "healthy_slides_flagged": {n: r["slides"][f"{lab}@{n}"]["healthy"] for n in (100, 200)},
            "blast_20pct_slides_flagged_100": r["slides"][f"{lab}@100"]["blast_0.2"],
            "blast_5pct_slides_flagged": {n: r["slides"][f"{lab}@{n}"]["blast_0.05"] for n in (100, 200)},
            "allidb2_specificity": r["allidb2_cells"]["specificity_p_ge_0.5"],
            "allidb2_sensitivity": r["allidb2_cells"]["sensitivity_p_ge_0.5"]}
    if not rows:
        raise SystemExit(f"no all_flag_{name}_no* results: run bash scripts/lolo_classif.sh "
                         + {"v3f": "allfolds", "grf": "allfolds_gr", "grft": "allfolds_grt"}.get(
                             name, "allfolds_grt, then scripts/all_flag.py --rescore ... --k K") + " first")
    recipe, _, k = name.partition("_k")  # grft_k5: the grft folds' reports re-scored under k = 5
    v4 = "version 2 fine-tuned as version 4 (instance input norm, half the crops grey, RBC-scaled crops)"
    _update_entry(args.id, leave_one_lab_out={
        "protocol": {"v3f": "version 2 fine-tuned as version 3", "grf": v4, "grft": v4}.get(recipe, recipe)
                    + ", without one healthy lab's cells among the negatives; the shipped slide rule on that "
                      f"lab's simulated slides (weights/eval/all_flag_{name}_no*"
                    + (f"; re-scored under k = {k} from the fold reports' counts, scripts/all_flag.py --rescore: "
                       "equal in distribution to scoring the folds' checkpoints, which are gone)" if k else ")"),
        "rows": rows})
    print(json.dumps(rows, indent=1))


def _slide_flag(chosen_on_val: str) -> dict[str, Any]:
    """The ALL slide rule picked on val: a report of ``scripts/all_flag.py --choose`` for this run's
    checkpoint, or of ``scripts/all_flag_lolo_summary.py --choose-k`` for its recipe's leave-one-lab-out
    folds (a rule that met its goals there, without a gate: the product scores every WBC)."""
    if not chosen_on_val:
        raise SystemExit("classify --task all needs --slide-flag-from: the slide rule is chosen on val, never assumed")
    report = json.loads(Path(chosen_on_val).read_text())
    choice = report.get("choice")
    if report.get("split") != "val" or not choice or choice["gate"] != "none" or choice.get("qualified") is False:
        raise SystemExit(f"{chosen_on_val}: not a val report with a qualified rule chosen without a gate "
                         "(the product applies the ALL score to every WBC)")
    return {"prob": float(choice["t"]), "min_cells": int(choice["k"]),
            "chosen_on": f"weights/eval/{Path(chosen_on_val).name}: "
                         + choice.get("chosen_by", "scripts/all_flag.py --choose on the val split")}


def _summary(res: dict[str, Any]) -> dict[str, Any]:
    keep = ("n", "accuracy", "macro_f1", "macro_roc_auc", "sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc")
    o = res["overall"]
    return {**{k: o[k] for k in keep if k in o},
            "per_class": o["per_class"], "confusion_matrix": o["confusion_matrix"],
            "per_source": {s: {k: v[k] for k in ("n", "accuracy", "macro_f1")} for s, v in res["per_source"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["detect", "frcnn", "classify", "all-lolo", "subtype-lolo", "refit-domain"])
    ap.add_argument("--run", default="")
    ap.add_argument("--id", required=True)
    ap.add_argument("--task", default="")
    ap.add_argument("--version", default="1")
    ap.add_argument("--recipe", default="", help="the exact command that trained the run")
    ap.add_argument("--notes", default="")
    ap.add_argument("--scale-band", default="", help="detect: LO,HI relative RBC sizes detected as they are")
    ap.add_argument("--lolo-recipe", default="", help="detect, classify wbc_subtype: embed this recipe's "
                    "leave-one-lab-out test rows; all-lolo: the fold name (default v3f)")

    ap.add_argument("--slide-flag-from", default="", help="classify --task all: the val report of scripts/all_flag.py "
                    "--choose for this run's checkpoint; its rule is shipped (default: >= 3 cells >= 0.9)")
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    if args.kind not in ("all-lolo", "subtype-lolo", "refit-domain") and not (args.run and args.recipe):
        ap.error(f"{args.kind} needs --run and --recipe")
    {"detect": release_detect, "frcnn": release_frcnn, "classify": release_classify,
     "all-lolo": release_all_lolo, "subtype-lolo": release_subtype_lolo, "refit-domain": refit_domain}[args.kind](args)


if __name__ == "__main__":
    main()
