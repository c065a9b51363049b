"""Speed and peak memory of `hemocount count` (torch, ONNX Runtime, OpenVINO engines) against naive loops.

Usage:
    python benchmarks/count_speed.py [--fields 100] [--scale 10,100,1000] [--batch N] [--repeat 1]
           [--contenders count-full-openvino,naive-full,...]

Fields are made from the shipped samples: 2x2 mosaics of randomly flipped samples, cut back to
640x480 at a random offset, so no two inputs are identical. Every contender runs in a fresh
subprocess on the same files; its peak RSS comes from the kernel's rusage for that child
(``os.wait4``, the per-child form of ``resource.getrusage(RUSAGE_CHILDREN)``). Model loading
(and the one-time ONNX export, which is cached) is excluded from fields/s; OpenVINO's compiles of
each new input shape happen during the run and are included, and also reported separately: about
0.5 s a shape the first time, 0.15-0.3 s once OpenVINO's on-disk cache holds it (the prepare step
fills neither, so the first repeat of an openvino contender runs with a cold or stale cache). With ``--repeat N`` the contenders run interleaved N times and the
fastest run of each is reported (this machine's speed drifts by up to 2x over minutes).

Contenders:
  count full   `hemocount.count.count()`: detector + both classifiers, every output file written,
               per engine (openvino at its auto precision: bf16 on CPUs with native bfloat16)
  count det    the same with classify=False
  naive full   per image: `YOLO.predict(path)`, then one classifier call per WBC crop per model
               (torch, all cores, no output files written)
  naive det    per image: `YOLO.predict(path)` only (all cores, nothing written)

`count full` also reports where its time goes (decode, detector, crops, classifiers, outputs).
The scale section runs the real CLI (`python -m hemocount count --engine auto`) on 10 ... 1000 fields.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ENGINES = ("torch", "onnx", "openvino")
CONTENDERS = (*(f"count-full-{e}" for e in ENGINES), "naive-full", *(f"count-det-{e}" for e in ENGINES), "naive-det")


def make_fields(n: int, folder: Path, seed: int = 0) -> list[Path]:
    """``n`` distinct 640x480 JPEG fields tiled and flipped from ``samples/``."""
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    samples = [cv2.imread(str(p)) for p in sorted((ROOT / "samples").glob("*.jpg"))]
    rng = np.random.default_rng(seed)
    h, w = samples[0].shape[:2]
    out = []
    for i in range(n):
        tiles = [samples[int(k)] for k in rng.integers(0, len(samples), 4)]
        tiles = [t if f == 2 else cv2.flip(t, int(f) - 1) for t, f in zip(tiles, rng.integers(0, 4, 4))]
        mosaic = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        p = folder / f"field_{i:04d}.jpg"
        cv2.imwrite(str(p), mosaic[y:y + h, x:x + w], [cv2.IMWRITE_JPEG_QUALITY, 92])
        out.append(p)
    return out


def subset(all_files: list[Path], n: int, folder: Path) -> Path:
    """A folder holding hard links to the first ``n`` fields."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in all_files[:n]:
        os.link(f, folder / f.name)
    return folder


# --- children: each runs in a fresh process and prints one JSON line --------------------------------------------


class StageTimer:
    """Wraps library functions with wall-clock accumulators (negligible overhead next to the work)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, attr: str, stage: str) -> None:
        fn = getattr(owner, attr, None)
        if fn is None:  # the pipeline changed shape; that stage is then folded into "other"
            return

        def timed(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds[stage] += time.perf_counter() - t

        setattr(owner, attr, timed)


def child_count(fields: Path, out: Path, engine: str, classify: bool, batch: int) -> dict[str, Any]:
    from hemocount import count as count_mod
    from hemocount import qc, sinks
    from hemocount.classify import pipeline
    from hemocount.classify.infer import Classifier
    from hemocount.detect.yolo import YoloDetector
    from hemocount.runtime import use_all_cores

    use_all_cores()  # as the CLI does before loading models
    first = min(fields.iterdir())
    count_mod.count(sources=[first], out=out / "warm", engine=engine, progress=False, classify=classify)
    timer = StageTimer()
    timer.wrap(count_mod, "read_image", "decode")
    timer.wrap(qc, "image_quality", "qc")
    timer.wrap(YoloDetector, "predict", "detector")
    timer.wrap(pipeline, "crop_cells", "crops")
    timer.wrap(Classifier, "predict_crops", "classifiers")
    timer.wrap(sinks, "write_annotated", "annotation")
    timer.wrap(count_mod, "_journal", "outputs")
    for name in ("write_counts_csv", "write_cells_csv", "predictions_coco", "write_run_json"):
        timer.wrap(sinks, name, "outputs")
    t = time.perf_counter()
    run = count_mod.count(sources=[fields], out=out / "run", engine=engine, batch=batch, progress=False,
                          classify=classify)
    total = time.perf_counter() - t
    load = run.run["timings_s"]["model_load"]
    stages = dict(timer.seconds)
    stages["other"] = max(0.0, total - load - sum(stages.values()))
    return {"n": len(run.results), "seconds": total - load, "model_load": load, "stages": stages,
            "compile": run.run["timings_s"].get("compile", 0.0),
            "engine": run.run.get("engine", {}).get("detector", engine)}


def child_naive(fields: Path, classify: bool) -> dict[str, Any]:
    import cv2

    from hemocount.classify.crops import crop_cell
    from hemocount.classify.infer import Classifier
    from hemocount.detect.ultra_env import ultralytics
    from hemocount.runtime import use_all_cores
    from hemocount.weights import DEFAULT_DETECTOR, resolve

    entry = resolve(DEFAULT_DETECTOR, task="detect")
    ul = ultralytics()
    t = time.perf_counter()
    model = ul.YOLO(str(entry.path))
    clfs = [Classifier.from_weights(None, task=k, engine="torch") for k in ("wbc_subtype", "all")] if classify else []
    use_all_cores()
    load = time.perf_counter() - t
    files = sorted(fields.iterdir())
    kw = {"imgsz": entry.imgsz, "conf": min(entry.class_conf().values()), "iou": entry.thresholds.get("iou", 0.6),
          "max_det": entry.thresholds.get("max_det", 1000), "verbose": False, "device": "cpu"}
    model.predict(str(files[0]), **kw)  # warm-up
    t = time.perf_counter()
    for f in files:
        r = model.predict(str(f), **kw)[0]
        if not clfs:
            continue
        img = cv2.imread(str(f))
        for box, cls in zip(r.boxes.xyxy.numpy(), r.boxes.cls.numpy()):
            if r.names[int(cls)] == "WBC":
                for clf in clfs:
                    clf.predict_crops(crop_cell(img, box, clf.size, clf.pad)[None, ..., ::-1])
    return {"n": len(files), "seconds": time.perf_counter() - t, "model_load": load}


def child_prepare() -> dict[str, Any]:
    """Load every model with the ONNX engines once, so the (cached) export is not timed."""
    from hemocount.classify.infer import Classifier
    from hemocount.detect import load_detector

    t = time.perf_counter()
    for engine in ENGINES[1:]:
        load_detector("yolo", None, engine=engine)
        for task in ("wbc_subtype", "all"):
            Classifier.from_weights(None, task=task, engine=engine)
    return {"seconds": time.perf_counter() - t}


def run_child(args: list[str]) -> tuple[dict[str, Any], float]:
    """Run this script as a child; returns its JSON result and its peak RSS in MiB."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=err, env=env)
        stdout = proc.stdout.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)  # reaps the child with its own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"child {args} failed:\n{err.read().decode()[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1]), usage.ru_maxrss / 1024


def run_cli(fields: Path, out: Path) -> tuple[float, float, dict[str, Any]]:
    """`python -m hemocount count` as a user runs it: wall seconds, peak RSS (MiB), run.json."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "hemocount", "-q", "count", str(fields), "-o", str(out),
                                 "--engine", "auto"], stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=str(ROOT))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"hemocount count failed on {fields}:\n{err.read().decode()[-3000:]}")
    return wall, usage.ru_maxrss / 1024, json.loads((out / "run.json").read_text())


def child_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", required=True)
    ap.add_argument("--fields", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--batch", type=int)
    a = ap.parse_args(argv)
    if a.child == "prepare":
        res = child_prepare()
    elif a.child.startswith("count-"):
        _, kind, engine = a.child.split("-")
        res = child_count(a.fields, a.out, engine, kind == "full", a.batch)
    else:
        res = child_naive(a.fields, a.child == "naive-full")
    print(json.dumps(res))


# --- parent ---------------------------------------------------------------------------------------------------------


def main() -> None:
    if "--child" in sys.argv:
        child_main(sys.argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fields", type=int, default=100, help="fields for the engine comparison (default 100)")
    ap.add_argument("--scale", default="10,100,1000", help="field counts for the growth test ('' to skip)")
    ap.add_argument("--batch", type=int, help="images per detector call (default: count's, 8 for yolo)")
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset (default: all)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per contender; the fastest is reported")
    args = ap.parse_args()
    scale = [int(s) for s in args.scale.split(",") if s]
    chosen = [c for c in args.contenders.split(",") if c]
    if unknown := sorted(set(chosen) - set(CONTENDERS)):
        ap.error(f"unknown contenders {unknown}; valid: {', '.join(CONTENDERS)}")

    import torch

    from hemocount.runtime import core_count

    tmp = Path(tempfile.mkdtemp(prefix="hemocount-bench-"))
    try:
        files = make_fields(max([args.fields, *scale]), tmp / "all")
        main_fields = subset(files, args.fields, tmp / f"f{args.fields}")
        prep, _ = run_child(["--child", "prepare"])
        load1 = os.getloadavg()[0]
        print(f"{args.fields} fields of 640x480 JPEG, shipped weights, torch {torch.__version__}, {core_count()} "
              f"cores; load average {load1:.1f} at start (shared machine: other jobs were running)")
        print(f"(ONNX models loaded from the cache in {prep['seconds']:.1f} s; a first export is a one-time cost)")
        res: dict[str, dict[str, Any]] = {}
        for rep in range(args.repeat):
            for name in chosen:
                out = tmp / f"o_{name}_{rep}"
                batch = ["--batch", str(args.batch)] if args.batch else []
                r, rss = run_child(["--child", name, "--fields", str(main_fields), "--out", str(out), *batch])
                r["rss"] = rss
                if name not in res or r["seconds"] < res[name]["seconds"]:
                    res[name] = r
                res[name]["rss"] = max(rss, res[name].get("rss", 0))
        print(f"\n{'contender':<20} {'fields/s':>9} {'peak RSS MiB':>13} {'load s':>7} {'compile s':>10} "
              f"{'fields/s excl. compile':>23}")
        for name in chosen:
            r = res[name]
            c = r.get("compile", 0.0)
            print(f"{name:<20} {r['n'] / r['seconds']:>9.2f} {r['rss']:>13.0f} {r['model_load']:>7.1f} {c:>10.1f} "
                  f"{r['n'] / (r['seconds'] - c):>23.2f}")
        fps = {k: v["n"] / v["seconds"] for k, v in res.items()}
        for eng in ENGINES:
            if not {f"count-full-{eng}", "naive-full", f"count-det-{eng}", "naive-det"} <= set(fps):
                continue
            print(f"ratio full pipeline {eng} / naive full loop: {fps[f'count-full-{eng}'] / fps['naive-full']:.2f}x;"
                  f"  detector-only {eng} / naive predict loop: {fps[f'count-det-{eng}'] / fps['naive-det']:.2f}x")
        full = res.get("count-full-openvino")
        if full and "naive-full" in fps:
            print(f"ratio full pipeline openvino excluding its one-time shape compiles ({full['compile']:.1f} s) / "
                  f"naive full loop: {full['n'] / (full['seconds'] - full['compile']) / fps['naive-full']:.2f}x")
        for eng in ENGINES[1:]:
            if not {f"count-full-{eng}", "count-full-torch", f"count-det-{eng}", "count-det-torch"} <= set(fps):
                continue
            print(f"ratio {eng} / torch: full {fps[f'count-full-{eng}'] / fps['count-full-torch']:.2f}x, "
                  f"detector-only {fps[f'count-det-{eng}'] / fps['count-det-torch']:.2f}x")
        for eng in ENGINES:
            if f"count-full-{eng}" not in res:
                continue
            st = res[f"count-full-{eng}"]["stages"]
            tot = sum(st.values())
            print(f"count full ({eng}) time per field: " + ", ".join(
                f"{k} {1000 * v / args.fields:.1f} ms ({100 * v / tot:.0f}%)" for k, v in
                sorted(st.items(), key=lambda kv: -kv[1])))
        if scale:
            print("\n`hemocount count --engine auto` (CLI, fresh process each, including imports and model load)")
            print(f"{'fields':>7} {'wall s':>8} {'fields/s excl. load':>20} {'peak RSS MiB':>13}")
            for n in scale:
                folder = subset(files, n, tmp / f"s{n}")
                wall, rss, run = run_cli(folder, tmp / f"cli_{n}")
                t = run["timings_s"]
                print(f"{n:>7} {wall:>8.1f} {n / (t['total'] - t['model_load']):>20.2f} {rss:>13.0f}   "
                      f"(engine {run['engine']['detector']}, {run['engine']['detector_precision']})")
        print(f"load average at end {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
