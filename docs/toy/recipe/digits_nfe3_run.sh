#!/bin/bash
set -e
# The digits comparison of docs/toy_study.md ("The predictor recipe"): INDIS as the quickstart trains it
# versus INDIS started at a trained GOD (--init-from), NFE 3, 3 seeds. Run from an activated venv.
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
D=${1:-runs/digits_recipe}
T="--threads 1 --no-progress"
indis teacher --backbone bundled --out $D/teacher --count 300 --shard-size 150 $T
indis teacher --backbone bundled --out $D/teacher_eval --count 100 --first-seed 1000000 --shard-size 100 $T
COMMON="--backbone bundled --teacher $D/teacher --nfe 3 --steps 150 --batch-size 16 --lr 5e-3 --hidden 64 --conv-width 16 --val-fraction 0.2 --val-every 25 --ckpt-every 50 $T"
indis train $COMMON --method god --seed 0 --out $D/god
for s in 0 1 2; do
  indis train $COMMON --method indis --seed $s --out $D/indis_s$s
  indis train $COMMON --method indis --seed $s --init-from $D/god/predictor.safetensors --out $D/indis_god_s$s
done
P="--predictor god=$D/god/predictor.safetensors"
for s in 0 1 2; do P="$P --predictor indis_s$s=$D/indis_s$s/predictor.safetensors --predictor indisgod_s$s=$D/indis_god_s$s/predictor.safetensors"; done
indis eval --backbone bundled --teacher $D/teacher_eval $P --features none --out $D/eval $T
echo ALLDONE
