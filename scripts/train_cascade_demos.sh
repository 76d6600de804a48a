#!/usr/bin/env bash
# Demo weights of the second-stage kinds, trained and evaluated on SYNTHETIC radiographs only:
#   prosthesis_failure (seed 000, Hip-Net): a dual-view model (AP + lateral), one member
#   fixation_device (seed 004): one single-view classifier of the 6 generic designs (AP views)
# Held-out figures: a separately generated primary-renderer test set, and the independent
# (alt) renderer for cross-renderer transfer; both recorded in the model cards.
#
# Usage: scripts/train_cascade_demos.sh   (DATA, OUT, THREADS, HIPROUTER may be set)
# The results go to $OUT/prosthesis_failure-demo/member-{1..4} and $OUT/fixation_device-demo;
# copy them to models/ to make them the kinds' defaults. Both start from the hardware demo's
# backbone (resnet10t at 160 px; from scratch, short CPU runs learned little); float16
# weights, 9.8 MB each. Run from the repository root (models/hardware-demo).
set -euo pipefail

DATA=${DATA:-/work/scratch/fd/data}
OUT=${OUT:-/work/scratch/final}
THREADS=${THREADS:-1}
HIPROUTER=${HIPROUTER:-hiprouter}
H="nice -n 10 $HIPROUTER"
mkdir -p "$DATA" "$OUT"

synth() {  # folder, then synth arguments; skipped when the folder has its labels
  local dir=$1; shift
  [ -f "$DATA/$dir/labels.csv" ] || $H synth "$DATA/$dir" "$@" --size 500 700 --quiet
}
synth failure_train --task failure --studies 1400 --seed 7001
synth device_train --task device --studies 900 --seed 7002
synth failure_test --task failure --studies 250 --seed 7101
synth device_test --task device --studies 250 --seed 7102
synth failure_alt --renderer alt --task failure --studies 200 --seed 7201
synth device_alt --renderer alt --task device --studies 200 --seed 7202

# seed 004 identifies devices on AP radiographs: keep the AP rows of the device sets
for d in device_train device_test device_alt; do
  python3 - "$DATA/$d/labels.csv" "$DATA/$d/labels_ap.csv" <<'EOF'
import csv, sys
with open(sys.argv[1], newline="") as fh:
    rows = list(csv.DictReader(fh))
with open(sys.argv[2], "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(r for r in rows if r["view"] in ("ap_pelvis", "ap_hip"))
EOF
done

PF=$OUT/prosthesis_failure-demo
# one member (float16, 9.8 MB); --members 4 trains the seed's ensemble of 4 (member-1..4)
$H train-dual-view "$DATA/failure_train" --out "$PF" --arch resnet10t --input-size 160 \
  --crop implant_window --init-from models/hardware-demo --epochs 20 --batch-size 16 \
  --lr 1e-3 --lateral-dropout 0.3 --members 1 --seed 0 --threads "$THREADS" --synthetic-demo \
  --name prosthesis_failure-demo --version 0.1.0-synthetic --cache "$DATA/cache-pfwin" \
  --training-data "synthetic studies only: 'hiprouter synth --task failure --studies 1400 --seed 7001 --size 500 700' (primary renderer); no real radiographs"
$H evaluate-dual-view "$PF" --data "$DATA/failure_test" --out "$PF/evaluation/held-out-primary" \
  --device cpu --record held_out_primary \
  --dataset-name "synthetic held-out set: 'hiprouter synth --task failure --studies 250 --seed 7101 --size 500 700' (primary renderer)"
$H evaluate-dual-view "$PF" --data "$DATA/failure_alt" --out "$PF/evaluation/cross-renderer-alt" \
  --device cpu --record cross_renderer_alt \
  --dataset-name "synthetic, independent renderer: 'hiprouter synth --renderer alt --task failure --studies 200 --seed 7201 --size 500 700'"

FD=$OUT/fixation_device-demo
$H train "$DATA/device_train" --labels "$DATA/device_train/labels_ap.csv" --out "$FD" \
  --label-set fixation_device --arch resnet10t --input-size 160 --init-from models/hardware-demo \
  --epochs-head 1 --epochs 6 --batch-size 16 --lr-head 2e-3 --lr 1e-3 --workers 0 --seed 0 \
  --synthetic-demo --name fixation_device-demo --version 0.1.0-synthetic --cache "$DATA/cache-fd160" \
  --training-data "synthetic studies only: 'hiprouter synth --task device --studies 900 --seed 7002 --size 500 700' (primary renderer), AP views; no real radiographs"
$H models half "$FD"
$H evaluate "$FD" "$DATA/device_test" --labels "$DATA/device_test/labels_ap.csv" \
  --out "$FD/evaluation/held-out-primary" --device cpu --record held_out_primary \
  --dataset-name "synthetic held-out set: 'hiprouter synth --task device --studies 250 --seed 7102 --size 500 700' (primary renderer), AP views"
$H evaluate "$FD" "$DATA/device_alt" --labels "$DATA/device_alt/labels_ap.csv" \
  --out "$FD/evaluation/cross-renderer-alt" --device cpu --record cross_renderer_alt \
  --dataset-name "synthetic, independent renderer: 'hiprouter synth --renderer alt --task device --studies 200 --seed 7202 --size 500 700', AP views"
du -sh "$PF"/model.safetensors "$FD/model.safetensors"
