#!/usr/bin/env bash
# Leave-one-lab-out for the YOLO detector (issue 13): train on one lab's train split, evaluate on the other
# lab. One run at a time (2-core CPU); a finished run is skipped, an interrupted one resumed.
#   HEMOCOUNT_DATA=... bash scripts/lolo_detect.sh EPOCHS [val|test]
# LABS (default "bccd pbc") and RECIPES (default "base robust") pick folds and recipes:
#   base      the recipe of yolo11n-cells v1
#   robust    + --robust-aug (OD stain jitter, defocus, noise, JPEG, zoom-in; hemocount.detect.augment)
#   *complete BCCD's training images restricted to complete labels (source bccd_complete; PBC is complete)
# Operating thresholds are chosen on the *training* lab's val split (what a user of the model gets on a lab
# nobody tuned for), then the held-out lab's val decides between recipes; test is evaluated once, at the end,
# with `test` as the second argument. Finished steps are skipped on a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-60}
SPLIT=${2:-val}
other() { [ "$1" = bccd ] && echo pbc || echo bccd; }
source_of() { if [ "$1" = bccd ] && [[ "$2" == *complete ]]; then echo bccd_complete; else echo "$1"; fi; }
flags() { if [[ "$1" == robust* ]]; then echo --robust-aug; fi; }
for lab in ${LABS:-bccd pbc}; do
  for recipe in ${RECIPES:-base robust}; do
    out=runs/lolo_det_${recipe}_${lab}_e${EPOCHS}
    if [ ! -f "$out/done" ]; then
      if [ -f "$out/train/weights/last.pt" ]; then
        hemocount train detect --out "$out" --resume
      else
        # shellcheck disable=SC2046
        hemocount train detect --out "$out" --sources "$(source_of "$lab" "$recipe")" --epochs "$EPOCHS" \
          $(flags "$recipe") --seed 0
      fi
      touch "$out/done"
    fi
    best="$out/train/weights/best.pt"
    held=$(other "$lab")
    stem="weights/eval/lolo_det_${recipe}_train-${lab}_e${EPOCHS}"
    # Written under a temporary name first: a failed step never leaves a half-written result behind.
    if [ ! -f "${stem}_thresholds.json" ]; then
      hemocount eval detect --weights "$best" --dataset "$lab" --split val --choose-thresholds \
        > "${stem}_thresholds.json.tmp" && mv "${stem}_thresholds.json.tmp" "${stem}_thresholds.json"
    fi
    # As the detector sees each image (scale none), and as `count` does by default (scale auto: the
    # magnification normalised by the red cells first; whether it helps on a new lab is decided on val).
    for target in "$held" "$lab"; do
      for scale in none auto; do
        suffix=""; [ "$scale" = auto ] && suffix="_scale-auto"
        dest="${stem}_on-${target}_${SPLIT}${suffix}.json"
        [ -f "$dest" ] && continue
        hemocount eval detect --weights "$best" --dataset "$target" --split "$SPLIT" --scale "$scale" \
          --thresholds "${stem}_thresholds.json" --json > "$dest.tmp" && mv "$dest.tmp" "$dest"
      done
    done
  done
done
