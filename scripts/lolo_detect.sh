#!/usr/bin/env bash
# Leave-one-lab-out for the YOLO detector (issue 13): train on one lab's train split, evaluate on the other
# lab, both folds, baseline recipe vs --robust-aug at the same budget. One run at a time (2-core CPU); a
# finished run is skipped, an interrupted one resumed. Val of the held-out lab decides; test is evaluated
# once at the end with `test` as the second argument.
#   HEMOCOUNT_DATA=... bash scripts/lolo_detect.sh EPOCHS [test]
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-60}
SPLIT=${2:-val}
other() { [ "$1" = bccd ] && echo pbc || echo bccd; }
for lab in bccd pbc; do
  for recipe in base robust; do
    out=runs/lolo_det_${recipe}_${lab}_e${EPOCHS}
    extra=""; [ "$recipe" = robust ] && extra="--robust-aug"
    if [ ! -f "$out/done" ]; then
      if [ -f "$out/train/weights/last.pt" ]; then
        hemocount train detect --out "$out" --resume
      else
        hemocount train detect --out "$out" --sources "$lab" --epochs "$EPOCHS" $extra --seed 0
      fi && touch "$out/done"
    fi
    held=$(other "$lab")
    dest="weights/eval/lolo_det_${recipe}_train-${lab}_on-${held}_${SPLIT}_e${EPOCHS}.json"
    # Written under a temporary name first: a failed evaluation never leaves a half-written result behind.
    hemocount eval detect --weights "$out/train/weights/best.pt" --dataset "$held" --split "$SPLIT" --json \
      > "$dest.tmp" && mv "$dest.tmp" "$dest"
  done
done
