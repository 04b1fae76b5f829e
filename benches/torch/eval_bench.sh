#!/usr/bin/env bash
# The `qie eval` benchmark (BENCHMARKS.md): N rows of 1024² pairs with masks, the five metric
# models at real size (random weights), every metric timed for qie and for the Python reference
# on the same card. The pixel metrics and the model metrics are timed in separate runs on both
# sides (so each run fits a time limit; both sides pay the image decoding twice alike).
#
#   QIE=target/release/qie benches/torch/eval_bench.sh OUT_DIR [ROWS] [STAGES]
#
# STAGES: any of data qie ref_model ref_pixel (default: all, in that order); each stage writes
# OUT_DIR/<stage>.json (wall seconds) and the data / models are made once.
set -euo pipefail
out=$1; rows=${2:-1000}; stages=${3:-"data qie ref_model ref_pixel"}
here=$(cd "$(dirname "$0")" && pwd)
qie=${QIE:-qie}
py=${PYTHON:-python3}
mkdir -p "$out"
models="--dino-model $out/models/dino --dinov2-model $out/models/dinov2 --clip-model $out/models/clip --siglip-model $out/models/siglip --dreamsim-model $out/models/dreamsim"
timed() {  # name command...: wall seconds into $out/name.json
    local name=$1; shift
    local t0; t0=$(date +%s.%N)
    "$@"
    python3 -c "import json,sys; json.dump({'seconds': $(date +%s.%N) - $t0}, open('$out/$name.json','w'))"
    echo "$name: $(cat "$out/$name.json")"
}
for stage in $stages; do
    case $stage in
    data)
        [ -f "$out/data/data.jsonl" ] || $py "$here/eval_data.py" --out "$out/data" --rows "$rows" --size 1024
        [ -d "$out/models/siglip" ] || $py "$here/eval_models.py" --out "$out/models"
        [ -d "$out/models/dreamsim" ] || $py "$here/eval_models.py" --out "$out/models" --only dreamsim ;;
    qie)
        timed qie_pixel "$qie" eval --pred-dir "$out/data/pred" --dataset "$out/data/data.jsonl" \
            --metrics l1,l2,psnr,ssim,bg_l1,bg_l2,bg_psnr,bg_ssim --out "$out/qie_pixel/eval.json"
        # shellcheck disable=SC2086
        timed qie_model "$qie" eval --pred-dir "$out/data/pred" --dataset "$out/data/data.jsonl" \
            --metrics dino,dinov2,clip_i,clip_t,siglip,dreamsim $models --device cuda --batch-size 32 \
            --out "$out/qie_model/eval.json" ;;
    ref_model)
        $py "$here/eval_reference.py" --data "$out/data" --models "$out/models" --group model \
            --json "$out/ref_model.json" ;;
    ref_pixel)
        $py "$here/eval_reference.py" --data "$out/data" --models "$out/models" --group pixel \
            --json "$out/ref_pixel.json" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
    esac
done
