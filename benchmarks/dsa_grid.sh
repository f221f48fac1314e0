#!/usr/bin/env bash
# The DSA comparison at the fixed reduced budget (Fashion-MNIST, 10k train images, 3 epochs, 5k test images):
# SimCLR, SimCLR+DSA, BYOL, BYOL+DSA and the supervised reference, seeds 0-2, each followed by
# `diagnose discriminability` (t-SNE for seed 0 only). One JSON line per run in $ROOT/runs.jsonl.
#   bash benchmarks/dsa_grid.sh [ROOT=/tmp/dsa-runs]
set -u
ROOT=${1:-/tmp/dsa-runs}
SS=${SS:-.venv/bin/sharpshift}
mkdir -p "$ROOT"
BUDGET="data.subset=10000 data.test_subset=5000 trainer.max_epochs=3 eval.knn_every_n_epochs=0 trainer.num_threads=1 trainer.progress_bar=false"

newest() { ls -td "$1"/*/ 2>/dev/null | head -1; }

# The prior: a short SimCLR run on another 10k subset (seed 100), no evaluation.
PRIOR=$(ls -d "$ROOT"/prior/*/ 2>/dev/null | head -1)
if [ -z "$PRIOR" ]; then
  $SS pretrain simclr seed=100 $BUDGET eval.after_training=false --out-dir "$ROOT/prior" > "$ROOT/prior.log" 2>&1
  PRIOR=$(newest "$ROOT/prior")
fi
echo "prior: $PRIOR"

for seed in 0 1 2; do
  for cell in simclr simclr+dsa byol byol+dsa supervised; do
    log="$ROOT/logs/$cell-$seed.log"; mkdir -p "$ROOT/logs"
    grep -q "\"cell\": \"$cell\", \"seed\": $seed," "$ROOT/runs.jsonl" 2>/dev/null && continue  # resumable
    t0=$(date +%s)
    case $cell in
      simclr|byol) $SS pretrain $cell seed=$seed $BUDGET --out-dir "$ROOT/$cell" > "$log" 2>&1 ;;
      *+dsa) $SS pretrain ${cell%+dsa} seed=$seed $BUDGET dsa.enabled=true dsa.prior_path="$PRIOR" \
               --out-dir "$ROOT/$cell" > "$log" 2>&1 ;;
      supervised) $SS supervised simclr seed=$seed $BUDGET --out-dir "$ROOT/$cell" > "$log" 2>&1 ;;
    esac
    dir=$(newest "$ROOT/$cell")
    [ -f "$dir/eval.json" ] || $SS evaluate "$dir" >> "$log" 2>&1  # e.g. after an interrupted evaluation
    points=0; [ "$seed" = 0 ] && points=1500
    $SS diagnose discriminability "$dir" --num-threads 1 --tsne-points $points >> "$log" 2>&1
    echo "{\"cell\": \"$cell\", \"seed\": $seed, \"run\": \"$dir\", \"wall_s\": $(( $(date +%s) - t0 ))}" >> "$ROOT/runs.jsonl"
  done
done
