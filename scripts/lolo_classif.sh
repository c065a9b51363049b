#!/usr/bin/env bash
# Issue 14 training queue, one run at a time (2-core CPU): the ALL model with every lab's healthy WBCs as
# negatives, then leave-one-lab-out folds of the subtype classifier for each recipe, each with the same
# budget (4 epochs x 3000 class-balanced draws at 64 px). A finished run (history has all epochs) is skipped,
# an interrupted one resumed. Usage: HEMOCOUNT_DATA=... bash scripts/lolo_classif.sh [all] [base] [hed] [inorm] [inorm_gray] [inorm_gray_rbc] [inorm_rbc] [inorm_gray25_rbc] [inorm_gray_rbc25] [inorm_rbc25] [inorm_gray25_rbc25] [inorm_gray25_rbc25_csq] [inorm_gray25_rbc25_hed] [inorm_gray25_rbc25_hue] [inorm_gray25_rbc25_s1] [inorm_gray25_rbc25_ms] [inorm_gray25_rbc25_blur] [inorm_gray25_rbc25_csq_spa] [inorm_gray25_rbc25_csq_swa] [inorm_gray25_rbc25_csq_stack] [inorm_gray25_rbc25_csq_s1] [inorm_gray25_rbc25_csq_spa_s1] [rbc25] [final4] [final4_long] [final5] [inorm96] [allfolds] [allfolds_gr] [allfolds_grt] [allfolds_gr25] [allfolds_gr96] [allfolds_grb4] [all_gr] [final] [final3]
# After each fold of a subtype recipe its held-out lab is scored on the splits in SPLITS (default "val dev";
# "test" only once a recipe is chosen), into weights/eval/lolo_subtype_RECIPE_LAB_SPLIT.json (kept if present).
set -u
# One torch thread: this machine is shared, and two threads under contention ran at a sixth of their speed.
export HEMOCOUNT_THREADS=${HEMOCOUNT_THREADS:-1}
cd "$(dirname "$0")/.."
# LOLO_EPOCHS: the folds' budget (default 4 x 3,000 draws); any other value is a recipe of its own, named
# RECIPE_eN (runs/lolo_RECIPE_eN_LAB, weights/eval/lolo_subtype_RECIPE_eN_*), e.g. 12 = the shipped run's budget
EPOCHS=${LOLO_EPOCHS:-4}
SUFFIX=""; [ "$EPOCHS" = 4 ] || SUFFIX="_e$EPOCHS"
ALL_GR="--input-norm instance --grayscale 0.5 --rbc-k 3 --scale-min 0.85"
ALL_GR25="--input-norm instance --grayscale 0.25 --rbc-k 2.5 --scale-min 0.85"
run() {  # run OUT ARGS...: train unless OUT already finished
  local out=$1; shift
  if [ -f "$out/history.json" ] && python -c "import json,sys; sys.exit(len(json.load(open('$out/history.json'))) < int(sys.argv[1]))" "$1"; then
    echo "skip $out (finished)"; return
  fi
  local resume=""; [ -f "$out/last.pt" ] && resume="--resume"
  echo "$(date -u +%FT%TZ) start $out"
  hemocount train classify --out "$out" "${@:2}" $resume || echo "FAILED $out"
  echo "$(date -u +%FT%TZ) end $out"
}
folds() {  # folds RECIPE ARGS...: the four leave-one-lab-out folds of a subtype recipe, each scored
  local recipe=$1$SUFFIX; shift
  for lab in lisc pbc bccd tecom; do
    run runs/lolo_${recipe}_$lab $EPOCHS --task wbc_subtype --holdout-source $lab --size 64 --lr 1e-3 \
      --epochs $EPOCHS --samples-per-epoch 3000 --seed 0 "$@"
    for split in ${SPLITS:-val dev}; do
      local dest=weights/eval/lolo_subtype_${recipe}_${lab}_${split}.json
      [ -f "$dest" ] || hemocount eval classify --task wbc_subtype --holdout-source $lab \
        --weights runs/lolo_${recipe}_$lab/best.pt --split $split --out "$dest" || echo "FAILED eval $dest"
    done
  done
}
recipe_args() {  # the training flags of a subtype recipe built on v3's (inorm_gray_rbc), one place for folds and final4
  case $1 in
    inorm_gray_rbc) echo "--input-norm instance --grayscale 0.5 --rbc-k 3 --scale-min 0.85" ;;
    inorm_rbc) echo "--input-norm instance --rbc-k 3 --scale-min 0.85" ;;
    inorm_gray25_rbc) echo "--input-norm instance --grayscale 0.25 --rbc-k 3 --scale-min 0.85" ;;
    # 2.5 red-cell diameters a side instead of 3: the cell gets more of the 64 px (granules, nuclear texture),
    # still wide enough for a monocyte (1.7-2.2 diameters)
    inorm_gray_rbc25) echo "--input-norm instance --grayscale 0.5 --rbc-k 2.5 --scale-min 0.85" ;;
    inorm_rbc25) echo "--input-norm instance --rbc-k 2.5 --scale-min 0.85" ;;
    inorm_gray25_rbc25) echo "--input-norm instance --grayscale 0.25 --rbc-k 2.5 --scale-min 0.85" ;;
    # v4's recipe with each label's draws spread over the training labs by the square root of their counts:
    # PBC holds 3,153 of the 4,365 train cells (LISC per crop), so per class the model mostly sees one lab's
    # look (held-out Tecom's monocytes: 0 of 10 on val). Not class_source: BCCD and Tecom have one basophil
    # each, which would then make up two thirds of a fold's basophil draws
    inorm_gray25_rbc25_csq) echo "$(recipe_args inorm_gray25_rbc25) --balance class_source_sqrt" ;;
    # v4's recipe with stain jitter in optical-density space (tried only on the base recipe so far, together
    # with class_source balance; 2026-12-04)
    inorm_gray25_rbc25_hed) echo "$(recipe_args inorm_gray25_rbc25) --hed 0.05" ;;
    # v4's recipe with any hue (default jitter 0.08 of the wheel): a lab's stain hue is no cue, while the
    # contrast between granules, nucleus and cytoplasm that grey crops lose stays
    inorm_gray25_rbc25_hue) echo "$(recipe_args inorm_gray25_rbc25) --hue 0.5" ;;
    # v4's recipe with another seed (the later --seed wins): how far the 4-epoch val mean moves by chance alone
    inorm_gray25_rbc25_s1) echo "$(recipe_args inorm_gray25_rbc25) --seed 1" ;;
    # v4's recipe with MixStyle (classify/mixstyle.py; p 0.5, alpha 0.1, after stages 1-3 as in Zhou et al.
    # 2021): the lab's stain statistics are swapped between crops in the early feature maps during training
    inorm_gray25_rbc25_ms) echo "$(recipe_args inorm_gray25_rbc25) --mixstyle 0.5" ;;
    # v4's recipe with half the training crops blurred (sigma up to 1 px at 64 px): the labs' crops differ
    # tenfold in sharpness, PBC (most of the training cells) is the sharpest, BCCD and Tecom the blurriest
    inorm_gray25_rbc25_blur) echo "$(recipe_args inorm_gray25_rbc25) --blur 1.0" ;;
    # v5's recipe (csq) with the loss adjusted by each training lab's label mix in the draws: held-out labs'
    # errors are per-class biases (held-out Tecom's dev: eosinophil precision 0.26; BCCD's draws are 37 %
    # neutrophils, 26 % eosinophils, 4 % basophils) while per-class ROC AUCs are 0.84-1.00 (2026-12-04);
    # no measurable effect over two seeds
    inorm_gray25_rbc25_csq_spa) echo "$(recipe_args inorm_gray25_rbc25_csq) --source-prior 1.0" ;;
    # v5's recipe (csq) validated and saved as the running average of the weights over the second half of
    # the steps: averaged weights (flat minima) carried over to unseen domains in SWAD (2026-12-04); dev 0.641
    # against 0.661, not used
    inorm_gray25_rbc25_csq_swa) echo "$(recipe_args inorm_gray25_rbc25_csq) --swa-start 0.5" ;;
    # v5's recipe with the three levers that each moved held-out dev by +0.01 to +0.025 on one seed (source
    # prior, blur, HED jitter), each aimed at a different difference between labs (label mix, sharpness,
    # stain) (2026-12-04); dev 0.628 (held-out BCCD -0.085), not used
    inorm_gray25_rbc25_csq_stack) echo "$(recipe_args inorm_gray25_rbc25_csq_spa) --blur 1.0 --hed 0.05" ;;
    # second seeds of v5's recipe and of _csq_spa: how far chance alone moves a 4-epoch fold (descriptive)
    inorm_gray25_rbc25_csq_s1) echo "$(recipe_args inorm_gray25_rbc25_csq) --seed 1" ;;
    inorm_gray25_rbc25_csq_spa_s1) echo "$(recipe_args inorm_gray25_rbc25_csq_spa) --seed 1" ;;
    *) echo "unknown recipe $1" >&2; return 1 ;;
  esac
}
v2_start() {  # resnet50-all v2 (ALL-IDB2 negatives only) from git: the start of every healthy-lab LOLO fold
  local f=runs/resnet50-all-v2.pt sha=61d548ba824e1edb9ebb83c8d96ae33102366c9099c77a8bf943ab52b2b2e739
  [ -f $f ] || git show 778542c:weights/resnet50-all.pt > $f
  echo "$sha  $f" | sha256sum -c --quiet || { echo "$f: not resnet50-all v2"; exit 1; }
  echo $f
}
all_val_folds() {  # all_val_folds NAME "LABS" ARGS...: leave-one-healthy-lab-out ALL folds from v2 (12 x 1,600
  # draws, lr 3e-4), each scored on val at grf's k = 3 so that all_flag_lolo_summary.py compares like with like
  local name=$1 labs=$2 start lab; shift 2
  start=$(v2_start) || exit 1
  for lab in $labs; do
    run runs/all_${name}_no$lab 12 --task all --negatives all-labs --holdout-source $lab --balance class_source \
      --lr 3e-4 --epochs 12 --samples-per-epoch 1600 --weights "$start" --seed 0 "$@"
    [ -f weights/eval/all_flag_${name}_no${lab}_val.json ] || python scripts/all_flag.py --k 3 \
      --all-weights runs/all_${name}_no$lab/best.pt --name ${name}_no$lab --splits val || echo "FAILED all_flag $lab"
  done
}
for what in "${@:-all base hed}"; do for w in $what; do
  case $w in
    all) run runs/all_v3 12 --task all --negatives all-labs --balance class_source --size 64 --lr 3e-4 \
           --epochs 12 --samples-per-epoch 1600 --weights weights/resnet50-all.pt --seed 0 ;;
    base) folds base ;;
    hed) folds hed --balance class_source --hed 0.05 ;;
    # per-crop channel standardisation inside the model (benchmarks/classif_colour_norm.py: the one
    # test-time normalisation that helped every held-out lab)
    inorm) folds inorm --input-norm instance ;;
    # inorm + half the training crops shown in grey: the unseen-lab failures are colour shortcuts (PBC's dark
    # lymphocytes called basophils, the only dark violet cells the other labs teach), so make shape count
    inorm_gray) folds inorm_gray --input-norm instance --grayscale 0.5 ;;
    # inorm_gray + RBC-scaled crops (3 red-cell diameters a side, classify/lab_scale.py): a cell's size relative
    # to the red cells is kept (lymphocyte ~1.3, monocyte ~2.0 in three labs); milder zoom jitter (0.85)
    # so that size is not scrambled by the augmentation
    inorm_gray_rbc) folds inorm_gray_rbc $(recipe_args inorm_gray_rbc) ;;
    # v3's recipe with less grey (a quarter of the crops) or none: held-out BCCD's eosinophils were called
    # neutrophils under inorm_gray_rbc (F1 0.095 on test) and BCCD fell when grey was added (inorm 0.589 ->
    # inorm_gray 0.512 on val); an eosinophil's orange granules are a colour cue that grey crops hide
    # (these variants and every later one are the recipe_args names: the default branch below runs them)
    # the same at 96 px (64 px hides granules and nuclear texture): same draws and epochs, ~2.3x the time
    inorm96) folds inorm96 --input-norm instance --size 96 ;;
    # the shipped candidate: all four labs' train splits, the crop size whose LOLO mean val macro-F1 is
    # higher (inorm vs inorm96), three times the LOLO epochs; best epoch chosen on the pooled val split
    final) size=$(python scripts/lolo_classif_summary.py --pick-size inorm:64 inorm96:96 --split val) || exit 1
      echo "final: size $size (LOLO val)"
      run runs/sub_all4_inorm 12 --task wbc_subtype --sources bccd,tecom,pbc,lisc --input-norm instance \
        --size "$size" --lr 1e-3 --epochs 12 --samples-per-epoch 3000 --seed 0 ;;
    # v3 candidate (this session): the recipe with the highest mean LOLO val macro-F1 among inorm, inorm_gray
    # and inorm_gray_rbc, on all four labs at v2's budget (12 x 3,000 draws), epoch chosen on the pooled val
    final3) r=$(python scripts/lolo_classif_summary.py --pick inorm inorm_gray inorm_gray_rbc --split val) || exit 1
      echo "final3: recipe $r (LOLO val)"
      case $r in
        inorm) extra="--input-norm instance" ;;
        inorm_gray) extra="--input-norm instance --grayscale 0.5" ;;
        inorm_gray_rbc) extra="--input-norm instance --grayscale 0.5 --rbc-k 3 --scale-min 0.85" ;;
      esac
      run runs/sub_all4_$r 12 --task wbc_subtype --sources bccd,tecom,pbc,lisc $extra \
        --size 64 --lr 1e-3 --epochs 12 --samples-per-epoch 3000 --seed 0 ;;
    # the 2.5-diameter variant of whichever grey setting won on val (rule fixed before the grey folds finished)
    rbc25) g=$(python scripts/lolo_classif_summary.py --pick inorm_gray_rbc inorm_rbc inorm_gray25_rbc --split val) || exit 1
      echo "rbc25: grey setting of $g (LOLO val)"; args=$(recipe_args ${g}25) || exit 1; folds ${g}25 $args ;;
    # v4 candidate: the highest mean LOLO val macro-F1 among v3's recipe, its two less-grey variants and
    # $FINAL4_EXTRA (e.g. a 2.5-diameter variant, run after seeing which grey setting won on val); if
    # v3's recipe wins there is nothing new to train (v3 is that model)
    final4) r=$(python scripts/lolo_classif_summary.py --pick inorm_gray_rbc inorm_rbc inorm_gray25_rbc ${FINAL4_EXTRA:-} \
          --split val) || exit 1
      echo "final4: recipe $r (LOLO val)"
      if [ "$r" = inorm_gray_rbc ]; then echo "final4: v3's recipe kept; nothing to train"
      else args=$(recipe_args $r) || exit 1
        run runs/sub_all4_$r 12 --task wbc_subtype --sources bccd,tecom,pbc,lisc $args \
          --size 64 --lr 1e-3 --epochs 12 --samples-per-epoch 3000 --seed 0
      fi ;;
    # final4's recipe at 2.5 times its budget (30 x 3,000 draws), epoch on the pooled val. Which of the two
    # ships, fixed before either was scored: the higher mean of the four labs' val macro-F1
    # (scripts/compare_subtype_candidates.py); the recipe itself was chosen on LOLO val (final4)
    final4_long) r=$(python scripts/lolo_classif_summary.py --pick inorm_gray_rbc inorm_rbc inorm_gray25_rbc ${FINAL4_EXTRA:-} \
          --split val) || exit 1
      args=$(recipe_args $r) || exit 1
      run runs/sub_all4_${r}_e30 30 --task wbc_subtype --sources bccd,tecom,pbc,lisc $args \
        --size 64 --lr 1e-3 --epochs 30 --samples-per-epoch 3000 --seed 0 ;;
    # v5 candidate: a recipe that qualified on the held-out labs' dev cells (docs/classifier_robustness.md,
    # 2026-12-04: inorm_gray25_rbc25_csq) at v4's budget; it replaces v4 only with a higher mean per-lab val
    # macro-F1 (scripts/compare_subtype_candidates.py), the rule v4 was chosen by
    final5) r=${FINAL5_RECIPE:?set FINAL5_RECIPE}; args=$(recipe_args $r) || exit 1
      run runs/sub_all4_${r}_e30 30 --task wbc_subtype --sources bccd,tecom,pbc,lisc $args \
        --size 64 --lr 1e-3 --epochs 30 --samples-per-epoch 3000 --seed 0 ;;
    # ALL flag, leave one healthy lab out of the negatives. Started from v2, which saw no healthy lab:
    # starting from the shipped v3 (whose negatives include every lab) would leak the held-out lab.
    allfolds) start=$(v2_start) || exit 1
      for lab in bccd tecom lisc pbc; do
        run runs/all_v3f_no$lab 12 --task all --negatives all-labs --holdout-source $lab --balance class_source \
          --size 64 --lr 3e-4 --epochs 12 --samples-per-epoch 1600 --weights "$start" --seed 0
        [ -f weights/eval/all_flag_v3f_no${lab}_test.json ] || python scripts/all_flag.py \
          --all-weights runs/all_v3f_no$lab/best.pt --name v3f_no$lab --splits val test || echo "FAILED all_flag $lab"
      done ;;
    # the same folds with the subtype model's unseen-lab recipe (v3: instance input norm, half the crops grey,
    # RBC-scaled crops of 3 red-cell diameters): a blast is larger than a lymphocyte relative to red cells,
    # which a box-scaled crop hides, and colour is the shortcut a single-lab positive class invites. Scored
    # on val only (scripts/all_flag_lolo_summary.py picks between v3f and grf on val; v3f's test rows exist
    # since v3 shipped, grf's are scored only if it is picked). A fold whose val rows are committed is not
    # retrained (its run folder may be on another machine).
    allfolds_gr) start=$(v2_start) || exit 1
      for lab in bccd tecom lisc pbc; do
        [ -f weights/eval/all_flag_grf_no${lab}_val.json ] && { echo "skip grf fold $lab (scored)"; continue; }
        run runs/all_grf_no$lab 12 --task all --negatives all-labs --holdout-source $lab --balance class_source \
          --size 64 --lr 3e-4 --epochs 12 --samples-per-epoch 1600 --weights "$start" --seed 0 $ALL_GR
        [ -f weights/eval/all_flag_grf_no${lab}_val.json ] || python scripts/all_flag.py \
          --all-weights runs/all_grf_no$lab/best.pt --name grf_no$lab --splits val || echo "FAILED all_flag $lab"
      done ;;
    # the grf folds retrained (their checkpoints were lost with an earlier machine) and scored on val and test
    # once grf was picked on val: the val rows are written again under grft_ so the rerun's agreement with the
    # rows that picked grf can be read; the test rows are read here for the first time.
    allfolds_grt) start=$(v2_start) || exit 1
      for lab in ${GRT_LABS:-bccd lisc pbc tecom}; do
        run runs/all_grf_no$lab 12 --task all --negatives all-labs --holdout-source $lab --balance class_source \
          --size 64 --lr 3e-4 --epochs 12 --samples-per-epoch 1600 --weights "$start" --seed 0 $ALL_GR
        [ -f weights/eval/all_flag_grft_no${lab}_test.json ] || python scripts/all_flag.py \
          --all-weights runs/all_grf_no$lab/best.pt --name grft_no$lab --splits val test || echo "FAILED all_flag $lab"
      done ;;
    # grf with subtype v4's changes (a quarter of the crops grey instead of half, 2.5 red-cell diameters instead
    # of 3), everything else as grf; val rows at grf's k = 3 so that scripts/all_flag_lolo_summary.py compares
    # like with like (its rule, unchanged, was written before these folds ran; 2026-12-03)
    allfolds_gr25) all_val_folds gr25 "${GR25_LABS:-bccd lisc pbc tecom}" --size 64 $ALL_GR25 ;;
    # grf with ALL-IDB2's healthy cells drawn four times as often among the negatives (half of them instead of
    # a fifth; 2026-12-04): the flag's unmet goal is ALL-IDB2's own healthy cells (specificity 0.846), the one
    # contrast inside the blasts' lab, which grf draws for a tenth of all crops. Same rule as gr96
    allfolds_grb4) all_val_folds grb4 "${GRB4_LABS:-bccd lisc pbc tecom}" --size 64 $ALL_GR --boost-source allidb2=4 ;;
    # grf at 96 px instead of 64 (2026-12-04): ALL-IDB2's own healthy cells are the flag's weak side
    # (specificity 0.846 at p >= 0.5 on val and test) and at 64 px a 3-diameter crop of ALL-IDB2 (red cells
    # 84.9 px) is shrunk fourfold, which loses the chromatin and nucleoli that tell a blast from a lymphocyte.
    # Everything else as grf; val rows at grf's k = 3; picked against grf by all_flag_lolo_summary.py's rule,
    # unchanged (written before the grf folds ran)
    allfolds_gr96) all_val_folds gr96 "${GR96_LABS:-bccd lisc pbc tecom}" --size 96 $ALL_GR ;;
    # the candidate ALL model with that recipe: every healthy lab's train cells as negatives, as v3 was made
    all_gr) start=$(v2_start) || exit 1
      run runs/all_v4_gr 12 --task all --negatives all-labs --balance class_source --size 64 --lr 3e-4 \
        --epochs 12 --samples-per-epoch 1600 --weights "$start" --seed 0 $ALL_GR ;;
    # any other name is a subtype recipe of recipe_args (an unknown one stops the queue, never skipped)
    *) args=$(recipe_args $w) || exit 1; folds $w $args ;;
  esac
done; done
