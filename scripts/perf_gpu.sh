#!/usr/bin/env bash
# The ModelZoo scripts' GPU figure: TensorRT fp16 throughput of hrnet.onnx, measured by trtexec per batch size.
#   bash scripts/perf_gpu.sh [--onnx hrnet.onnx] [--batch_sizes "1 4"] [--height 1024] [--width 2048]
#       [--output_dir .]
# Reads "GPU Compute Time: ... mean = X ms" by field name and reports fps = N * 1000 / X; trtexec's logs go to
# OUTPUT_DIR/trtexec_bs<N>.log. Without trtexec on PATH it says so and exits 2.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

onnx="hrnet.onnx"
batch_sizes="1 4"
height=1024
width=2048
output_dir="."
parse_flags "onnx batch_sizes height width output_dir" "" "$@"

read -r -a sizes <<< "${batch_sizes}"
require_positive_ints --batch_sizes "${sizes[@]}"
require_positive_ints "--height/--width" "${height}" "${width}"
require_output_folder --output_dir "${output_dir}"
require_file "ONNX model" "${onnx}"   # HRNet_pth2onnx.py or scripts/pth2om.sh makes it
require_command trtexec "install TensorRT and put its bin folder on PATH; nothing was measured"
mkdir -p "${output_dir}"

# The mean of the "GPU Compute Time" statistics, found by name in either of trtexec's layouts:
#   [I] GPU Compute Time: min = 160.1 ms, max = 171.2 ms, mean = 165.3 ms, median = ...      (TensorRT 7.1+)
#   [I] GPU Compute  /  [I] min: 160.1 ms  /  [I] max: ...  /  [I] mean: 165.3 ms            (older)
mean_gpu_compute_ms() {
  awk '
    /GPU Compute Time:/ { if (match($0, /mean = [0-9.eE+-]+/)) { v = substr($0, RSTART + 7, RLENGTH - 7) } next }
    /GPU Compute[[:space:]]*$/ { block = 1; next }
    block && /mean:/ { if (match($0, /mean: [0-9.eE+-]+/)) { v = substr($0, RSTART + 6, RLENGTH - 6) } block = 0; next }
    block && !/(min|max|median|percentile)/ { block = 0 }
    END { if (v != "") print v }
  ' "$1"
}

# table_row BATCH MEAN_MS: "| batch | mean | fps |", fps = BATCH * 1000 / MEAN_MS; fails (prints nothing) unless
# MEAN_MS is a positive decimal number that gives a finite fps. Figures below 1 keep three significant digits
# (a slow run must not show as 0.00).
table_row() {
  awk -v b="$1" -v m="$2" '
    function shown(x) { return x >= 1 ? sprintf("%.2f", x) : sprintf("%.3g", x) }
    BEGIN {
      if (m !~ /^([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$/ || m + 0 <= 0) exit 1
      fps = b * 1000 / m
      if (shown(fps) ~ /inf|nan/) exit 1
      printf "| %s | %s | %s |", b, shown(m + 0), shown(fps)
    }'
}

rows=()
for bs in "${sizes[@]}"; do
  log_file="${output_dir}/trtexec_bs${bs}.log"
  cmd=(trtexec "--onnx=${onnx}" --fp16 "--shapes=image:${bs}x3x${height}x${width}")
  log "${cmd[*]}"
  began="${SECONDS}"
  "${cmd[@]}" > "${log_file}" 2>&1 || { rc=$?; tail -n 20 "${log_file}" >&2; failed "${rc}" "${began}" "${cmd[*]}"; }
  mean="$(mean_gpu_compute_ms "${log_file}")"
  [ -n "${mean}" ] || die "no GPU Compute Time mean in ${log_file}"
  row="$(table_row "${bs}" "${mean}")" ||
    die "the GPU Compute Time mean '${mean}' ms in ${log_file} is not a usable time (a positive number of ms): trtexec measured nothing usable"
  rows+=("${row}")
done

echo
echo "| batch | GPU compute mean (ms) | throughput (fps) |"
echo "|---|---|---|"
printf '%s\n' "${rows[@]}"
