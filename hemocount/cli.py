"""Command-line interface: each verb parses arguments, then calls one library function.

Heavy imports (torch, ultralytics, OpenCV) happen after parsing, so ``--help`` is instant.
Results go to stdout; logs, warnings and progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hemocount import CELL_CLASSES, RESEARCH_USE, __version__
from hemocount.classify.train import BALANCES
from hemocount.detect import BACKENDS
from hemocount.engine import ENGINES, PRECISIONS
from hemocount.errors import HemocountError
from hemocount.summary import AllFlag, SlideSummary

log = logging.getLogger("hemocount")
SAMPLES = Path(__file__).resolve().parent.parent / "samples"


DETECTORS = ", ".join(sorted(BACKENDS))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hemocount", description="Blood-smear cell counting. " + RESEARCH_USE)
    p.add_argument("--version", action="version", version=f"hemocount {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or info logs")
    sub = p.add_subparsers(dest="verb", required=True)

    c = sub.add_parser("count", help="count cells in images and folders")
    c.add_argument("sources", nargs="*", metavar="SRC",
                   help=f"image files or folders, searched recursively; each subfolder is a slide, linked files and "
                        f"folders count where they are linked, earlier output folders are skipped "
                        f"(default: the {SAMPLES.name}/ folder of the hemocount checkout, when there is one, said on "
                        f"stderr; with an installed wheel SRC is required)")
    c.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    c.add_argument("--detector", default="yolo", help=f"detector backend: {DETECTORS} (default: yolo)")
    c.add_argument("--weights", help="manifest id or checkpoint path (default: the backend's shipped weights)")
    c.add_argument("--conf", type=float, help="confidence threshold for all classes (default: per class, manifest)")
    c.add_argument("--iou", type=float, help="NMS IoU threshold (default: manifest)")
    c.add_argument("--max-det", type=int, help="detections cap per image (default: manifest)")
    c.add_argument("--batch", type=int, help="images per detector call (default: 8 for yolo, 4 otherwise)")
    c.add_argument("--exist-ok", action="store_true", help="write into an existing non-empty output folder (the "
                   "annotated images an earlier run left in OUT/annotated/ are removed; other files stay)")
    c.add_argument("--resume", action="store_true", help="finish an interrupted run in OUT")
    c.add_argument("--fail-fast", action="store_true", help="stop at the first bad image instead of skipping it")
    c.add_argument("--no-annotate", action="store_true", help="do not write annotated images")
    c.add_argument("--no-report", action="store_true", help="do not write report.html")
    c.add_argument("--no-classify", action="store_true", help="skip the WBC subtype and ALL classifiers")
    c.add_argument("--subtype-weights", help="WBC subtype classifier (manifest id or checkpoint)")
    c.add_argument("--all-weights", help="ALL vs healthy classifier (manifest id or checkpoint)")
    c.add_argument("--tile", type=int, help="tile size in pixels for large images (default: automatic, from the "
                   "detector's field size, for images over 2 fields long; 0: never tile)")
    c.add_argument("--overlap", type=float, default=0.3,
                   help="tile overlap: a fraction of the tile (< 1) or pixels (default: 0.3)")
    c.add_argument("--exclude-edges", action="store_true", help="do not count cells touching the image border")
    c.add_argument("--scale", default="auto", metavar="auto|none|FACTOR",
                   help="magnification: auto (measure it by the red cells and, when they are far from the trained "
                        "size, detect again at the trained scale), none (detect as is), or a fixed resampling "
                        "factor (0.5: cells appear twice the trained size) (default: auto)")
    c.add_argument("--calibration", type=Path, help="JSON/TOML calibration file; estimates cells/uL only with it")
    c.add_argument("--reference-ranges", type=Path, help="JSON/TOML reference ranges (default: built-in adult)")
    c.add_argument("--qc", type=Path, help="JSON/TOML file overriding QC thresholds")
    c.add_argument("--min-wbc", type=int, help="classified WBCs needed to report a differential (default: 100)")
    c.add_argument("--readers", type=int, default=2, help="threads decoding images ahead of inference (default: 2)")
    c.add_argument("--engine", default="auto", choices=ENGINES,
                   help="inference engine: auto (the fastest installed on CPU: openvino, then onnx, then torch), "
                        "torch, onnx (ONNX Runtime) or openvino (both run an ONNX export made once into a local cache)")
    c.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="arithmetic: auto (openvino: bfloat16 where the CPU has it natively, else fp32; "
                        "torch and onnx: fp32), fp32, or bf16 (openvino only)")

    c.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray (pip install \"hemocount[ray]\"): no ADDRESS starts a local Ray instance on this "
                        "machine's cores; auto, HOST:PORT or ray://HOST:PORT joins a cluster whose nodes see SRC and "
                        "the weights at the same paths (README, Run on a cluster); outputs as without --ray")
    c.add_argument("--export-crops", action="store_true",
                   help="also write each classified WBC as OUT/crops/<subtype>/<image path, / as __>__cell<i>.png: move wrong "
                        "ones to the right folder, then `hemocount adapt classify --data OUT/crops`")
    c.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="no progress bar or info logs (also accepted before the subcommand)")

    ad = sub.add_parser("adapt", help="adapt a model to your lab").add_subparsers(dest="what", required=True)
    adc = ad.add_parser("classify", help="fine-tune the WBC-subtype classifier on crops sorted into subtype folders "
                                         "(from `count --export-crops`)")
    adc.add_argument("--data", required=True, type=Path, help="folder with neutrophil/, eosinophil/, lymphocyte/, "
                                                               "monocyte/, basophil/ subfolders of crops")
    adc.add_argument("--out", required=True, type=Path, help="run folder; DIR/best.pt goes to --subtype-weights")
    adc.add_argument("--weights", help="model to start from (default: the shipped subtype model)")
    adc.add_argument("--epochs", type=int, default=8, help="epochs (default: 8)")
    adc.add_argument("--lr", type=float, default=1e-4, help="learning rate (default: 1e-4)")
    adc.add_argument("--samples-per-epoch", type=int, default=320,
                     help="class-balanced draws per epoch (default: 320)")
    adc.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")

    r = sub.add_parser("report", help="re-render OUT/report.html from OUT/summary.json")
    r.add_argument("out", type=Path, metavar="OUT", help="output folder of a count run")

    t = sub.add_parser("train", help="train a model").add_subparsers(dest="what", required=True)
    td = t.add_parser("detect", help="train a cell detector from scratch (YOLO, Faster R-CNN), or tune the "
                      "classical baseline's parameters")
    td.add_argument("--backend", default="yolo", choices=["yolo", "frcnn", "classical"],
                    help="detector (default: yolo)")
    td.add_argument("--out", required=True, type=Path, help="run folder")
    td.add_argument("--data-root", help="dataset root (default: $HEMOCOUNT_DATA)")
    td.add_argument("--sources",
                    help="comma-separated datasets (default: bccd,pbc for yolo, bccd for frcnn and classical)")
    td.add_argument("--epochs", type=int, help="default: 60 (yolo), 20 (frcnn)")
    td.add_argument("--imgsz", type=int, help="yolo input size (default 416) / frcnn short side min_size (default 384)")
    td.add_argument("--batch", type=int, help="default: 16 (yolo), 2 (frcnn)")
    td.add_argument("--seed", type=int, default=0, help="random seed (data order, augmentation, init) (default: 0)")
    td.add_argument("--model", default="yolo11n.yaml", help="yolo: ultralytics model YAML (architecture)")
    td.add_argument("--lr", type=float, help="frcnn: peak learning rate (default 2e-4 adamw)")
    td.add_argument("--optimizer", choices=["adamw", "sgd"], help="frcnn: optimiser (default adamw)")
    td.add_argument("--norm", choices=["gn", "frozen_bn"],
                    help="frcnn: GroupNorm from scratch (default) or frozen BatchNorm for pretrained --weights")
    td.add_argument("--checkpoint-every", type=int, help="frcnn: iterations between last.pt saves (default 25)")
    td.add_argument("--weights", help="optional starting weights: .pt checkpoint, or for frcnn a torchvision "
                    "enum (e.g. FasterRCNN_ResNet50_FPN_Weights.COCO_V1, needs --norm frozen_bn)")
    td.add_argument("--robust-aug", action="store_true",
                    help="yolo: add the lab-robust augmentation (stain jitter in optical density, defocus, noise, "
                         "JPEG, zoom-in to 3x; hemocount.detect.augment)")
    td.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    td.add_argument("--trials", type=int, default=80, help="classical: random-search trials (default 80)")

    tc = t.add_parser("classify", help="train a WBC classifier (ResNet-50 from scratch by default)")
    tc.add_argument("--task", required=True, choices=["wbc_subtype", "all"],
                    help="wbc_subtype (five WBC subtypes) or all (ALL blast vs healthy WBC)")
    tc.add_argument("--out", required=True, type=Path, help="run folder")
    tc.add_argument("--data-root", help="dataset root (default: $HEMOCOUNT_DATA)")
    tc.add_argument("--arch", default="resnet50", choices=["resnet50", "resnet18"],
                    help="network (default: resnet50, as shipped)")
    tc.add_argument("--norm", default="gn", choices=["gn", "bn"], help="GroupNorm (default) or BatchNorm")
    tc.add_argument("--size", type=int, default=64, help="crop size in pixels")
    tc.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    tc.add_argument("--batch", type=int, default=32, help="crops per batch (default 32)")
    tc.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    tc.add_argument("--seed", type=int, default=0, help="random seed for sampling, augmentation and init (default 0)")
    tc.add_argument("--weights", help="pretrained start: checkpoint path or torchvision enum "
                    "(e.g. ResNet50_Weights.IMAGENET1K_V2, needs --norm bn)")
    tc.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    tc.add_argument("--holdout-source", choices=["bccd", "tecom", "pbc", "lisc"],
                    help="wbc_subtype: leave this lab out (train/select on the other three labs, PBC/LISC sets "
                    "included); all (with --negatives all-labs): leave its healthy WBCs out of the negatives")
    tc.add_argument("--sources", help="wbc_subtype: comma-separated labs to train on (bccd,tecom,pbc,lisc; "
                    "default: the committed wbc_subtype split only)")
    tc.add_argument("--negatives", choices=["allidb2", "all-labs"], default="allidb2",
                    help="all: healthy cells from ALL-IDB2 only (default) or also every subtype lab's healthy WBCs")
    tc.add_argument("--samples-per-epoch", type=int, default=0, help="draws per epoch (default: one per cell)")
    tc.add_argument("--balance", default="class", choices=list(BALANCES),
                    help="balanced sampling by label; by label and lab; or by label, labs by sqrt of their counts")
    tc.add_argument("--boost-source", metavar="SOURCE=W", default="",
                    help="with a per-lab balance: draw SOURCE's cells W times as often within each label, "
                    "e.g. allidb2=4 (the ALL model's healthy ALL-IDB2 cells)")
    tc.add_argument("--hed", type=float, default=0.0, help="stain jitter in optical-density (HED) space, e.g. 0.05")
    tc.add_argument("--hue", type=float, default=0.08,
                    help="hue jitter: a crop's hue is shifted by up to this fraction of the colour wheel (0.5 = any)")
    tc.add_argument("--grayscale", type=float, default=0.0,
                    help="probability of training on a crop in grey (colour-independent features), e.g. 0.5")
    tc.add_argument("--rbc-k", type=float, default=0.0,
                    help="RBC-scaled crops: a square this many red-cell diameters wide around each WBC, so a "
                    "cell's size relative to red cells is kept (default 0: the box-scaled crop)")
    tc.add_argument("--scale-min", type=float, default=0.7,
                    help="random zoom augmentation: crops of this fraction of the side and up (default 0.7)")
    tc.add_argument("--input-norm", default="imagenet", choices=["imagenet", "instance"],
                    help="instance: standardise each crop's colour channels inside the model (lab-robust)")
    tc.add_argument("--blur", type=float, default=0.0,
                    help="Gaussian blur of half the training crops, sigma up to this many pixels (e.g. 1.0): "
                    "blurred, low-resolution labs")
    tc.add_argument("--source-prior", type=float, default=0.0,
                    help="wbc_subtype: logit adjustment by each training lab's label mix in the draws (e.g. 1.0): a "
                    "lab's look earns nothing as a cue for the labels that lab shows most (none with an even "
                    "mix, e.g. --balance class_source; default 0 = off)")
    tc.add_argument("--swa-start", type=float, default=0.0,
                    help="weight averaging: from this fraction of the steps on, the running average of the weights "
                    "is what is validated and may be kept as best (e.g. 0.5; default 0 = off)")
    tc.add_argument("--mixstyle", type=float, default=0.0,
                    help="MixStyle probability per batch: crops swap early-layer feature statistics in training "
                    "(e.g. 0.5; default 0 = off)")

    e = sub.add_parser("eval", help="evaluate a model").add_subparsers(dest="what", required=True)
    ed = e.add_parser("detect", help="COCO mAP and counting error on a dataset split")
    ed.add_argument("--detector", default="yolo", help=f"detector backend: {DETECTORS} (default: yolo)")
    ed.add_argument("--weights", help="manifest id or checkpoint path")
    ed.add_argument("--data-root", help="dataset root (default: $HEMOCOUNT_DATA)")
    ed.add_argument("--dataset", default="bccd", choices=["bccd", "pbc"],
                    help="labelled dataset to evaluate on: bccd (BCCD fields) or pbc (TXL-PBC's PBC fields) "
                         "(default: bccd)")
    ed.add_argument("--split", default="test", choices=["train", "val", "test"],
                    help="dataset split (default: test, the held-out one)")
    ed.add_argument("--labels", default="best", choices=["best", "xml", "txl"],
                    help="BCCD labels: TXL re-annotation where it exists (best), original XML, or only re-annotated")
    ed.add_argument("--conf", type=float, help="operating confidence for counting (default: manifest, per class)")
    ed.add_argument("--thresholds", type=Path, metavar="JSON",
                    help="per-class operating confidences from an earlier --choose-thresholds run (e.g. chosen on "
                         "the training lab's val for a leave-one-lab-out evaluation)")
    ed.add_argument("--iou", type=float, help="NMS IoU threshold (default: manifest)")
    ed.add_argument("--max-det", type=int, help="detections cap per image (default: manifest)")
    ed.add_argument("--scale", default="none", choices=["none", "auto"],
                    help="none (default: the detector on each image as it is, as the manifest's metrics) or auto "
                         "(magnification normalised by the red cells first, as `count` does)")
    ed.add_argument("--choose-thresholds", action="store_true",
                    help="pick per-class count thresholds on this split (refused on test)")
    ed.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ed.add_argument("--engine", default="auto", choices=ENGINES, help="auto, torch, onnx or openvino (as for count)")
    ed.add_argument("--precision", default="auto", choices=PRECISIONS, help="auto, fp32 or bf16 (as for count)")

    ec = e.add_parser("classify", help="held-out metrics of a WBC classifier")
    ec.add_argument("--task", required=True, choices=["wbc_subtype", "all"],
                    help="which classifier: wbc_subtype or all")
    ec.add_argument("--weights", help="manifest id or checkpoint path (default: the shipped model)")
    ec.add_argument("--data-root", help="dataset root (default: $HEMOCOUNT_DATA)")
    ec.add_argument("--split", default="test", choices=["train", "val", "test", "dev"],
                    help="dev (= train+val) only with --holdout-source")
    ec.add_argument("--holdout-source", choices=["bccd", "tecom", "pbc", "lisc"],
                    help="wbc_subtype: metrics on this lab only, for a run trained with it held out")
    ec.add_argument("--out", type=Path, help="folder for the confusion-matrix PNGs and metrics.json "
                    "(with --holdout-source: the JSON file to write)")
    ec.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ec.add_argument("--engine", default="auto", choices=ENGINES, help="auto, torch, onnx or openvino (as for count)")
    ec.add_argument("--precision", default="auto", choices=PRECISIONS, help="auto, fp32 or bf16 (as for count)")

    x = sub.add_parser("export", help="export a model to ONNX (with a JSON record next to it)")
    x.add_argument("--weights", help="manifest id or checkpoint path (default: the shipped detector)")
    x.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default: onnx)")
    x.add_argument("--task", choices=["detect", "wbc_subtype", "all"],
                   help="what the weights are for (default: from the manifest or the checkpoint)")
    x.add_argument("-o", "--out", type=Path, help="target .onnx file or existing folder (default: ./ID.onnx)")
    x.add_argument("--ship", action="store_true",
                   help="write weights/ID.onnx (fp16-stored weights) and its manifest entry, which the onnx and "
                        "openvino engines then run: after retraining a shipped model")

    d = sub.add_parser("datasets", help="convert and inspect datasets").add_subparsers(dest="what", required=True)
    dc = d.add_parser("convert", help="write a dataset as YOLO folders or a COCO file")
    dc.add_argument("--to", required=True, choices=["yolo", "coco"],
                    help="yolo (images/, labels/ per split and data.yaml) or coco (one JSON file)")
    dc.add_argument("--dataset", default="bccd", help="comma-separated: bccd, pbc")
    dc.add_argument("--splits", default="train,val,test",
                    help="comma-separated splits to write (default: train,val,test)")
    dc.add_argument("--data-root", help="dataset root (default: $HEMOCOUNT_DATA)")
    dc.add_argument("--out", required=True, type=Path, help="folder (yolo) or .json file (coco)")
    ds = d.add_parser("stats", help="image and box counts per source and split")
    ds.add_argument("--dataset", default="bccd,pbc", help="comma-separated: bccd, pbc (default: bccd,pbc)")
    ds.add_argument("--data-root", help="dataset root (default: $HEMOCOUNT_DATA)")
    ds.add_argument("--json", action="store_true", help="print JSON instead of a table")

    w = sub.add_parser("weights", help="list shipped weights")
    w.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = _parser().parse_args(argv)
    from hemocount.io import LockedStderr

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=LockedStderr(),
                        format="hemocount: %(levelname)s: %(message)s", force=True)
    try:
        return _dispatch(args)
    except HemocountError as exc:
        print(f"hemocount: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"hemocount: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        from hemocount.extras import TRAIN_EXTRA_HINT, TRAIN_MODULES

        if (exc.name or "").split(".")[0] not in TRAIN_MODULES:
            raise
        # A path that needs the training stack and did not check first: still one line, never a traceback.
        print(f"hemocount: error: hemocount {args.verb} needs {exc.name}, which this install lacks: "
              f"{TRAIN_EXTRA_HINT}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hemocount: interrupted (images finished so far are kept: rerun the same command with --resume "
              "to finish)" if getattr(args, "verb", "") == "count" else "hemocount: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.verb in ("train", "adapt", "export"):
        from hemocount.extras import require_train

        require_train(f"hemocount {args.verb}")  # before any data is read or written
    if args.verb in ("count", "eval", "train"):
        from hemocount.runtime import use_all_cores

        use_all_cores()  # the CLI owns its process: all cores (or $HEMOCOUNT_THREADS) for every engine
    if args.verb == "count":
        return _count(args)
    if args.verb == "report":
        return _report(args)
    if args.verb == "adapt":
        return _adapt_classify(args)
    if args.verb == "train":
        return _train_detect(args) if args.what == "detect" else _train_classify(args)
    if args.verb == "eval":
        return _eval_detect(args) if args.what == "detect" else _eval_classify(args)
    if args.verb == "datasets":
        return _datasets(args)
    if args.verb == "export":
        return _export(args)
    return _weights(args)


def _default_sources() -> str:
    """No SRC: the sample fields shipped with a checkout, said out loud (an installed wheel has none)."""
    # A checkout is recognised by its pyproject.toml next to samples/: an installed package's parent is
    # site-packages, where another distribution's top-level samples/ folder must not be counted.
    if not (SAMPLES.is_dir() and (SAMPLES.parent / "pyproject.toml").is_file()):
        raise HemocountError("no SRC given: name image files or folders to count (hemocount count SRC... -o OUT)")
    print(f"hemocount: no SRC given: counting the sample fields in {SAMPLES}", file=sys.stderr)
    return str(SAMPLES)


def _count(args: argparse.Namespace) -> int:
    from hemocount.count import EXIT_SKIPPED, count
    from hemocount.detect import require_backend
    from hemocount.engine import resolve_engine

    require_backend(args.detector)  # what a lean install lacks, said before OUT is made
    resolve_engine(args.engine, "detect")
    sources = args.sources or [_default_sources()]
    run = count(sources=sources, out=args.out, detector=args.detector, weights=args.weights, conf=args.conf,
                iou=args.iou, max_det=args.max_det, batch=args.batch, exist_ok=args.exist_ok, resume=args.resume,
                fail_fast=args.fail_fast, annotate=not args.no_annotate, progress=not args.quiet,
                classify=not args.no_classify, subtype_weights=args.subtype_weights, all_weights=args.all_weights,
                tile=args.tile, overlap=args.overlap, exclude_edges=args.exclude_edges, calibration=args.calibration,
                reference_ranges=args.reference_ranges, qc=args.qc, min_wbc=args.min_wbc, readers=args.readers,
                engine=args.engine, precision=args.precision, report=not args.no_report, scale=args.scale,
                export_crops=args.export_crops, ray=args.ray)
    ok = [r for r in run.results if r.status == "ok"]
    width = max([len(r.name) for r in run.results[:20]] + [5])
    print(f"{'image':<{width}}  " + "  ".join(f"{c:>9}" for c in CELL_CLASSES))
    for r in ok[:20]:
        print(f"{r.name:<{width}}  " + "  ".join(f"{r.counts()[c]:>9}" for c in CELL_CLASSES))
    if len(ok) > 20:
        print(f"... {len(ok) - 20} more in counts.csv")
    totals = run.run["summary"]["totals"]
    print(f"{'total':<{width}}  " + "  ".join(f"{totals[c]:>9}" for c in CELL_CLASSES))
    clf = run.run.get("classifiers", {})
    if clf.get("enabled"):
        pct = clf["subtype"]["percent"]
        cnt = clf["subtype"]["counts"]
        print("WBC differential (all images pooled): " + ", ".join(f"{k} {cnt[k]} ({pct[k]}%)" if pct[k] is not None else f"{k} 0"
                                               for k in pct) + f", uncertain {cnt['uncertain']}")
        flag = AllFlag.from_json(clf["all"]["flag"])
        if flag is None:
            pass
        elif len(run.slides) > 1:  # a flag pooled over slides (patients) would mean nothing
            raised = sum(bool(s.all_flag and s.all_flag.flagged) for s in run.slides)
            print(f"ALL flag: raised on {raised} of {len(run.slides)} slide(s), each judged on its own WBCs "
                  f"(rule: {flag.rule}). {RESEARCH_USE}")
        else:
            print(f"ALL flag: {'RAISED' if flag.flagged else 'not raised'} ({flag.n_above} of "
                  f"{flag.n_wbc} WBCs; rule: {flag.rule}). {RESEARCH_USE}")
    _print_slides(run.slides)
    print(f"{len(ok)} counted, {len(run.skipped)} skipped -> {args.out}")
    if run.skipped:  # each was logged when it happened; one pointer to the record here
        print(f"hemocount: {len(run.skipped)} image(s) skipped, reasons in {args.out / 'run.json'}", file=sys.stderr)
    return EXIT_SKIPPED if run.skipped else 0


def _print_slides(slides: list[SlideSummary]) -> None:
    """One line per slide with its QC flags by code, then a warning naming what cannot be trusted."""
    print(f"{len(slides)} slide(s) in slides.csv:")
    for s in slides[:20]:
        d, flag = s.differential, s.all_flag
        codes = [f.code for f in s.flags if f.doubts_count]
        marks = [f"{r.subtype} {r.direction}" for r in d.rows if r.direction]
        marks += [f"{e.quantity}/uL {e.direction}" for e in s.estimates if e.direction]
        print(f"  {s.slide}: {s.n_fields} field(s), {s.counts['WBC']} WBC, differential "
              f"{d.status} ({d.n_classified} classified{'; ' + ', '.join(marks) if marks else ''})"
              + (f", ALL flag {'RAISED' if flag.flagged else 'not raised'}" if flag else "")
              + (f", QC: {', '.join(codes)}" if codes else ""))
    if len(slides) > 20:
        print(f"  ... {len(slides) - 20} more")
    folders = [str(Path(f.image).parent) for s in slides if s.n_fields == 1 for f in s.fields[:1]]
    if len(folders) > 1 and len(set(folders)) < len(folders):
        print("  (each loose image is its own slide: to pool a slide's fields, put them in a subfolder of SRC, "
              "SRC/SLIDE/fields...)")
    from hemocount.qc import untrusted as doubtful

    untrusted = [(s.slide, f.message) for s in slides for f in doubtful(s.flags)]
    if untrusted:
        print(f"WARNING: counts that may not be trustworthy ({len(untrusted)} flag(s); details in slides.csv, "
              "report.html):")
        for slide, message in untrusted[:10]:
            print(f"  {slide}: {message}")
        if len(untrusted) > 10:
            print(f"  ... {len(untrusted) - 10} more")


def _adapt_classify(args: argparse.Namespace) -> int:
    from hemocount.classify.adapt import adapt_subtype

    best = adapt_subtype(data=args.data, out=args.out, weights=args.weights, epochs=args.epochs, lr=args.lr,
                         samples_per_epoch=args.samples_per_epoch, seed=args.seed)
    print(f"{best}  (use: hemocount count ... --subtype-weights {best})")
    return 0


def _report(args: argparse.Namespace) -> int:
    from hemocount.report import load_summary, write_report

    print(write_report(load_summary(args.out), args.out))
    return 0


def _train_detect(args: argparse.Namespace) -> int:
    if args.robust_aug and args.backend != "yolo":
        raise HemocountError(f"--robust-aug is for the yolo backend (not {args.backend})")
    if args.backend == "frcnn":
        return _train_frcnn(args)
    if args.backend == "classical":
        return _tune_classical(args)
    from hemocount.detect.train_yolo import DetectRecipe, train_detector

    robust = None
    if args.robust_aug:
        from hemocount.detect.augment import RobustAugConfig

        robust = RobustAugConfig().to_json()
    recipe = DetectRecipe(sources=(args.sources or "bccd,pbc").split(","), model=args.model,
                          imgsz=args.imgsz or 416, epochs=args.epochs or 60, batch=args.batch or 16, seed=args.seed,
                          robust=robust)
    best = train_detector(out=args.out, data_root=args.data_root, recipe=recipe, weights=args.weights,
                          resume=args.resume)
    print(best)
    return 0


def _train_frcnn(args: argparse.Namespace) -> int:
    from hemocount.detect.train_frcnn import FrcnnRecipe, train_frcnn

    given = {"sources": args.sources.split(",") if args.sources else None, "epochs": args.epochs,
             "min_size": args.imgsz, "batch": args.batch, "lr": args.lr, "optimizer": args.optimizer,
             "norm": args.norm, "checkpoint_every": args.checkpoint_every}
    recipe = FrcnnRecipe(seed=args.seed, **{k: v for k, v in given.items() if v is not None})
    if recipe.optimizer == "sgd" and args.lr is None:
        recipe.lr, recipe.weight_decay = 0.01, 1e-4
    best = train_frcnn(out=args.out, data_root=args.data_root, recipe=recipe, weights=args.weights,
                       resume=args.resume)
    print(best)
    return 0


def _tune_classical(args: argparse.Namespace) -> int:
    from hemocount.datasets.sources import load_sources
    from hemocount.detect.tune_classical import tune_classical

    records = load_sources((args.sources or "bccd").split(","), args.data_root, ("train",))
    # Only fully labelled fields: BCCD's XML leaves RBCs unboxed, which would punish finding them.
    complete = [r for r in records if r.complete]
    print(tune_classical(out=args.out, records=complete or records, trials=args.trials, seed=args.seed))
    return 0


def _boost(spec: str) -> dict[str, str | float]:
    """``SOURCE=W`` → the recipe's ``boost_source`` and ``boost`` ("" → none)."""
    if not spec:
        return {}
    source, _, weight = spec.partition("=")
    try:
        if source:
            return {"boost_source": source, "boost": float(weight)}
    except ValueError:
        pass
    raise HemocountError(f"--boost-source {spec!r}: expected SOURCE=WEIGHT, e.g. allidb2=4")


def _train_classify(args: argparse.Namespace) -> int:
    from hemocount.classify.sources import classifier_training_cells
    from hemocount.classify.train import ClassifyRecipe, train_classifier

    recipe = ClassifyRecipe(task=args.task, arch=args.arch, norm=args.norm, size=args.size, epochs=args.epochs,
                            batch=args.batch, lr=args.lr, seed=args.seed, samples_per_epoch=args.samples_per_epoch,
                            balance=args.balance, hed=args.hed, input_norm=args.input_norm,
                            hue=args.hue, grayscale=args.grayscale, rbc_k=args.rbc_k, scale_min=args.scale_min,
                            mixstyle=args.mixstyle, blur=args.blur, source_prior=args.source_prior,
                            swa_start=args.swa_start,
                            holdout=args.holdout_source or "",
                            **_boost(args.boost_source))
    cells = classifier_training_cells(args.task, args.data_root, holdout=args.holdout_source,
                                      sources=args.sources, negatives=args.negatives)
    best = train_classifier(cells=cells, out=args.out, recipe=recipe,
                            weights=args.weights, resume=args.resume, progress=not args.quiet)
    print(best)
    return 0


def _eval_classify(args: argparse.Namespace) -> int:
    from hemocount.classify.evaluate import evaluate_classifier

    if args.holdout_source:
        return _eval_holdout(args)
    if args.split == "dev":
        raise HemocountError("--split dev needs --holdout-source")
    res = evaluate_classifier(task=args.task, weights=args.weights, data_root=args.data_root, split=args.split,
                              out=args.out, engine=args.engine, precision=args.precision)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    o = res["overall"]
    print(f"{res['weights']} on {args.task}/{args.split}: n={o['n']} accuracy {o['accuracy']} "
          f"macro-F1 {o['macro_f1']} macro-AUC {o['macro_roc_auc']}")
    if args.task == "all":
        print("  " + "  ".join(f"{k} {o[k]}" for k in ("sensitivity", "specificity", "ppv", "npv", "f1")))
    print(f"  {'class':<12} {'prec':>6} {'recall':>6} {'f1':>6} {'support':>7}")
    for c, v in o["per_class"].items():
        print(f"  {c:<12} {v['precision'] or 0:>6.3f} {v['recall'] or 0:>6.3f} {v['f1'] or 0:>6.3f} {v['support']:>7}")
    for src, v in res["per_source"].items():
        print(f"  source {src:<8} n={v['n']:<4} accuracy {v['accuracy']} macro-F1 {v['macro_f1']}")
    return 0


def _eval_holdout(args: argparse.Namespace) -> int:
    from hemocount.classify.lolo import evaluate_holdout

    if args.task != "wbc_subtype" or not args.weights:
        raise HemocountError("--holdout-source needs --task wbc_subtype and --weights RUN/best.pt")
    res = evaluate_holdout(weights=args.weights, holdout=args.holdout_source, split=args.split,
                           data_root=args.data_root, out=args.out, engine=args.engine)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    for name in ("per_crop", "per_cell"):
        o = res[name]
        print(f"{args.holdout_source}/{args.split} {name}: n={o['n']} accuracy {o['accuracy']} "
              f"macro-F1 {o['macro_f1_eligible']} over {','.join(o['eligible_classes'])} (all classes {o['macro_f1']})")
    print(f"  {'class':<12} {'f1 crop':>7} {'f1 cell':>7} {'crops':>5} {'cells':>5}")
    for c, v in res["per_crop"]["per_class"].items():
        cell = res["per_cell"]["per_class"][c]
        print(f"  {c:<12} {v['f1'] or 0:>7.3f} {cell['f1'] or 0:>7.3f} {v['support']:>5} {res['distinct_cells'].get(c, 0):>5}")
    return 0


def _eval_detect(args: argparse.Namespace) -> int:
    from hemocount import CELL_CLASSES as classes
    from hemocount.datasets.sources import load_bccd, load_pbc
    from hemocount.detect import load_detector
    from hemocount.detect.evaluate import ScaledDetector, choose_thresholds, evaluate, predict_records

    if args.choose_thresholds and args.split == "test":
        raise HemocountError("--choose-thresholds on the test split would tune on test; use --split val")
    records = (load_bccd(args.data_root, splits=(args.split,), labels=args.labels) if args.dataset == "bccd"
               else load_pbc(args.data_root, splits=(args.split,)))
    if args.scale == "auto":
        from hemocount.detect.evaluate import MAP_CONF
        from hemocount.pipeline import Pipeline

        pipe = Pipeline.from_pretrained(args.detector, weights=args.weights, engine=args.engine,
                                        precision=args.precision, classify=False, conf=MAP_CONF, iou=args.iou,
                                        max_det=args.max_det, scale="auto")
        det, backend, iou, max_det = ScaledDetector(pipe), pipe.detector, pipe.iou, pipe.max_det
        entry = det.weights
    else:
        det = backend = load_detector(args.detector, args.weights, engine=args.engine, precision=args.precision)
        entry = det.weights
        iou = float(args.iou if args.iou is not None else entry.thresholds.get("iou", 0.6))
        max_det = int(args.max_det if args.max_det is not None else entry.thresholds.get("max_det", 1000))
    if args.choose_thresholds:
        complete = [r for r in records if r.complete]
        preds = predict_records(det, complete, iou=iou, max_det=max_det)
        chosen = choose_thresholds(complete, preds)
        print(json.dumps({"split": args.split, "dataset": args.dataset, "images": len(complete),
                          "conf": chosen}, indent=2))
        return 0
    conf = _thresholds_file(args.thresholds, classes) if args.thresholds else entry.class_conf(args.conf)
    if isinstance(det, ScaledDetector):  # the red-cell ruler counts the RBCs the operating point keeps
        det.pipe.scale_conf = conf["RBC"]
    res = evaluate(detector=det, records=records, conf=conf, iou=iou, max_det=max_det)
    res = {"weights": entry.id, "sha256": entry.sha256, "dataset": args.dataset, "split": args.split,
           "scale": args.scale,
           "labels": args.labels if args.dataset == "bccd" else "txl_pbc",
           "engine": getattr(backend, "engine", "torch"), "precision": getattr(backend, "precision", "fp32"), **res}
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{entry.id} on {args.dataset}/{args.split} ({res['images']} images, labels {res['labels']})")
    print(f"mAP50 {_num(res['mAP50'])}   mAP50-95 {_num(res['mAP50_95'])}")
    cnt = res["count"]["complete_labels"]["per_class"] or res["count"]["all_images"]["per_class"]
    op = res.get("operating_point", {})
    print(f"{'class':<10} {'AP50':>6} {'AP50-95':>8} {'count acc':>10} {'MAE':>6} {'prec':>6} {'recall':>6}")
    for c in classes:
        pc, oc = res["per_class"][c], op.get(c, {})
        print(f"{c:<10} {_num(pc['AP50']):>6} {_num(pc['AP50_95']):>8} {_num(cnt[c]['accuracy']):>10} "
              f"{_num(cnt[c]['mae'], 2):>6} {_num(oc.get('precision')):>6} {_num(oc.get('recall')):>6}")
    if op:
        share = op["wbc_exact_share"]
        print(f"precision/recall at the operating thresholds (IoU 0.5); WBC count exact on "
              f"{'n/a' if share is None else format(100 * share, '.1f') + ' %'} of {op['images']} images with "
              "complete labels")
    return 0


def _thresholds_file(path: Path, classes: tuple[str, ...]) -> dict[str, float]:
    """Per-class confidences written by ``eval detect --choose-thresholds --json`` (one per class, no more)."""
    try:
        conf = json.loads(path.read_text())["conf"]
        if sorted(conf) != sorted(classes):
            raise ValueError(f"classes {sorted(conf)}, expected {sorted(classes)}")
        return {c: float(conf[c]) for c in classes}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HemocountError(f"{path}: not a thresholds file from --choose-thresholds ({exc})") from exc


def _num(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _datasets(args: argparse.Namespace) -> int:
    from hemocount.datasets.sources import load_sources
    from hemocount.datasets.writers import stats, write_coco, write_yolo

    if args.what == "stats":
        records = load_sources(args.dataset.split(","), args.data_root, ("train", "val", "test"))
        st = stats(records)
        if args.json:
            print(json.dumps(st, indent=2))
        else:
            print(f"{'source/split':<14} {'images':>6} {'complete':>8} " + " ".join(f"{c:>9}" for c in CELL_CLASSES)
                  + f" {'issues':>6}")
            for k, v in st.items():
                print(f"{k:<14} {v['images']:>6} {v['complete_labels']:>8} "
                      + " ".join(f"{v['boxes'][c]:>9}" for c in CELL_CLASSES) + f" {v['issues']:>6}")
        _report_issues(records)
        return 0
    records = load_sources(args.dataset.split(","), args.data_root, tuple(args.splits.split(",")))
    _report_issues(records)
    out = write_yolo(records, args.out) if args.to == "yolo" else write_coco(records, args.out)
    print(out)
    return 0


def _report_issues(records: list, limit: int = 10) -> None:
    issues = [i for r in records for i in r.issues]
    for issue in issues[:limit]:
        log.warning("%s", issue)
    if len(issues) > limit:
        log.warning("... %d more annotation issues (boxes clipped or dropped)", len(issues) - limit)


def _export(args: argparse.Namespace) -> int:
    from hemocount.export import export_weights, record_path, ship_onnx

    if args.ship:
        if args.out is not None or not args.weights:
            raise HemocountError("--ship takes --weights ID (a manifest id) and no --out: it writes weights/ID.onnx")
        block = ship_onnx(args.weights)
        print(f"{args.weights} -> {block['file']} ({block['bytes']} bytes, sha256 {block['sha256'][:12]}, "
              f"exported from {block['exported_from']['file']}); manifest updated")
        return 0
    path, info = export_weights(weights=args.weights, fmt=args.format, out=args.out, task=args.task)
    print(f"{info['source']['weights_id']} ({info['task']}, sha256 {info['source']['sha256'][:12]}) -> {path} "
          f"(opset {info['opset']}, input {info['input_size']} px; record {record_path(path).name})")
    return 0


def _weights(args: argparse.Namespace) -> int:
    from hemocount.weights import list_weights

    entries = list_weights()
    if args.json:
        print(json.dumps([{"id": e.id, "task": e.task, "backend": e.backend, "file": e.file, "classes": e.classes,
                           **e.meta} for e in entries], indent=2))
        return 0
    for e in entries:
        print(f"{e.id:<24} {e.task:<8} {e.backend:<8} {e.file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
