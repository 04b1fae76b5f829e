#!/bin/bash
# Builds attn_harness.cu for each variant (name=flags) in parallel, then checks + times each.
# Usage: bash runtime/kernels/dev/run_harness.sh "default=" "st3=-DFA3_STAGES=3" ...
set -u
cd "$(dirname "$0")"
OUTDIR=${OUT:-/tmp}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw --format=csv,noheader
for spec in "$@"; do
  name=${spec%%=*}; flags=${spec#*=}
  ( nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -std=c++17 -Xptxas -v $flags \
      -o /tmp/h_$name attn_harness.cu > /tmp/build_$name.log 2>&1 || echo "BUILD FAILED $name" ) &
done
wait
for spec in "$@"; do
  name=${spec%%=*}
  grep -A2 "flash_attn_wgmma" /tmp/build_$name.log | grep -i "registers\|spill" | sed "s/^/[$name] /"
  grep -i "warning\|error" /tmp/build_$name.log | sed "s/^/[$name] /" | head -5
  [ -x /tmp/h_$name ] || continue
  cuobjdump --dump-sass /tmp/h_$name > /tmp/sass_$name.txt 2>/dev/null
  echo "[$name] HGMMA $(grep -c HGMMA /tmp/sass_$name.txt)"
  echo "=== $name"
  timeout 120 /tmp/h_$name ${MODE:-} 2>&1
done
cp /tmp/build_*.log "$OUTDIR"/ 2>/dev/null
true
