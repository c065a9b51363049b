"""Fields per second of `hemocount count` vs a plain ultralytics predict loop, from one run.

Usage:
    python benchmarks/count_speed.py [--fields 40] [--weights yolo11n-cells]

The fields are the shipped samples, repeated (and flipped, so no two inputs are
identical) until --fields images exist. Both contenders see the same files.
The plain loop is what research scripts do: `YOLO(weights).predict(path)` per file,
with ultralytics' own thread setting (1 torch thread on a 2-core machine). A third
line shows that loop with all cores, to separate the thread fix from batching.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_fields(n: int, folder: Path) -> list[Path]:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    samples = sorted((ROOT / "samples").glob("*.jpg"))
    out = []
    for i in range(n):
        img = cv2.imread(str(samples[i % len(samples)]))
        flip = (i // len(samples)) % 4
        if flip:
            img = cv2.flip(img, flip - 2)
        p = folder / f"field_{i:04d}.jpg"
        cv2.imwrite(str(p), img)
        out.append(p)
    return out


def plain_loop(weights_path: Path, files: list[Path], imgsz: int, threads: int | None) -> float:
    from hemocount.detect.ultra_env import ultralytics

    ul = ultralytics()
    from ultralytics import utils as ul_utils
    from ultralytics.utils import torch_utils

    # hemocount raises ultralytics' thread constant in-process; restore ultralytics' own choice
    # (cores - 1) so this loop behaves as a plain script would, or pin the count asked for.
    torch_utils.NUM_THREADS = threads if threads is not None else ul_utils.NUM_THREADS
    model = ul.YOLO(str(weights_path))
    model.predict(str(files[0]), imgsz=imgsz, verbose=False, device="cpu")  # warm-up (select_device sets threads)
    t = time.perf_counter()
    for f in files:
        r = model.predict(str(f), imgsz=imgsz, verbose=False, device="cpu", conf=0.25)
        _ = len(r[0].boxes)
    elapsed = time.perf_counter() - t
    torch_utils.NUM_THREADS = ul_utils.NUM_THREADS
    import torch

    print(f"  (plain loop ran with {torch.get_num_threads()} torch thread(s))", file=sys.stderr)
    return elapsed


def naive_full_loop(weights_path: Path, files: list[Path], imgsz: int) -> float:
    """Research-script style: predict per file, then one classifier call per WBC crop, per model."""
    import cv2

    from hemocount.classify.crops import crop_cell
    from hemocount.classify.infer import Classifier
    from hemocount.detect.ultra_env import ultralytics

    model = ultralytics().YOLO(str(weights_path))
    clfs = [Classifier.from_weights(None, task=t) for t in ("wbc_subtype", "all")]
    model.predict(str(files[0]), imgsz=imgsz, verbose=False, device="cpu")
    t = time.perf_counter()
    for f in files:
        r = model.predict(str(f), imgsz=imgsz, verbose=False, device="cpu", conf=0.25)[0]
        img = cv2.imread(str(f))
        for box, cls in zip(r.boxes.xyxy.numpy(), r.boxes.cls.numpy()):
            if r.names[int(cls)] == "WBC":
                for clf in clfs:
                    clf.predict_crops(crop_cell(img, box, clf.size, clf.pad)[None, ..., ::-1])
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fields", type=int, default=40)
    ap.add_argument("--weights", default="yolo11n-cells")
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()

    import torch

    from hemocount.count import count
    from hemocount.weights import resolve

    entry = resolve(args.weights, task="detect")
    tmp = Path(tempfile.mkdtemp(prefix="hemocount-bench-"))
    try:
        files = make_fields(args.fields, tmp / "fields")
        # hemocount count: full outputs (CSV, COCO, annotated JPEGs, run.json), model load excluded.
        def timed_count(name: str, classify: bool) -> float:
            count(sources=[tmp / "fields" / files[0].name], out=tmp / f"warm_{name}", weights=args.weights,
                  progress=False, classify=classify)
            t = time.perf_counter()
            run = count(sources=[tmp / "fields"], out=tmp / name, weights=args.weights, batch=args.batch,
                        progress=False, classify=classify)
            return time.perf_counter() - t - run.run["timings_s"]["model_load"]

        t_det = timed_count("det", classify=False)
        t_full = timed_count("full", classify=True)
        t_plain = plain_loop(entry.path, files, entry.imgsz, threads=None)
        from hemocount.detect.ultra_env import use_all_cores

        t_plain_all = plain_loop(entry.path, files, entry.imgsz, threads=use_all_cores())
        t_naive_full = naive_full_loop(entry.path, files, entry.imgsz)
        n = len(files)
        print(f"fields: {n} (640x480 JPEG), weights {entry.id}, imgsz {entry.imgsz}, torch {torch.__version__}, "
              f"cores {torch.get_num_threads()}")
        print(f"hemocount count --no-classify (batch {args.batch}, all outputs): {n / t_det:6.2f} fields/s")
        print(f"plain YOLO.predict loop (ultralytics threads, cores-1): {n / t_plain:6.2f} fields/s")
        print(f"plain YOLO.predict loop (all cores):                   {n / t_plain_all:6.2f} fields/s")
        print(f"hemocount count, full pipeline (detector + 2 classifiers): {n / t_full:6.2f} fields/s")
        print(f"naive full loop (predict, then 1 classifier call per crop): {n / t_naive_full:6.2f} fields/s")
        print(f"ratio detector-only hemocount / plain loop: {t_plain / t_det:.2f}x")
        print(f"ratio full pipeline hemocount / naive loop: {t_naive_full / t_full:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
