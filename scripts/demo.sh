#!/usr/bin/env bash
# The main job on an embedded default: the whole pipeline on this machine, then the table of scripts/eval_acc_perf.sh.
# No arguments: 4 held-out synthetic 1024x2048 Cityscapes-layout scenes (sample_data --seed 0), the reference model
# models/reference_tiny_ocr.pth (tiny_ocr trained on synthetic scenes, models/README.md: its mIoU means something),
# export, Resize rewrite, bs1 and bs4 through the local runner (ONNX Runtime fp32), mIoU, fps, the HTML report
# OUTPUT_DIR/report.html; then the throughput of the real network size: HRNetV2-W48+OCR with seeded random weights
# at the same size, bs1 and bs4 on the same bins (timing only: its mIoU would mean nothing, so none is computed).
#   bash scripts/demo.sh [--pth hrnet.pth] [--datasets_path ./data] [--output_dir demo_out] [--limit N]
#       [--preset tiny_ocr|w48_ocr] [--height 1024] [--width 2048] [--batch_sizes "1 4"] [--device D]
#       [--backend onnxruntime|openvino] [--precision fp32|bf16]     (openvino bf16: about 2x faster on a CPU)
#       [--timing_preset w48_ocr|none]
# With --pth and --datasets_path it evaluates the real model on the real val set (--limit N: the first N images);
# --preset w48_ocr without --pth: the whole chain with random weights (mIoU meaningless), as before the reference model.
# --timing_preset none leaves the random-weights timing rows out (the tests do, to stay small).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

pth=""
datasets_path=""
output_dir="demo_out"
limit=""
preset=""
height=1024
width=2048
batch_sizes="1 4"
device=""
backend="onnxruntime"
precision="fp32"
timing_preset="w48_ocr"
samples=4
reference_pth="${REPO_ROOT}/models/reference_tiny_ocr.pth"
parse_flags "pth datasets_path output_dir limit preset height width batch_sizes device backend precision timing_preset" \
  "" "$@"
# The reference model is the default: without it the demo's mIoU would be that of random weights. An explicit
# --datasets_path (real data) or another --preset keeps the old meaning: random weights unless --pth is given.
reference=0
if [ -z "${pth}" ] && [ -z "${datasets_path}" ] && [ "${preset:-tiny_ocr}" = tiny_ocr ]; then
  reference=1
  pth="${reference_pth}"
  preset="tiny_ocr"
fi
preset="${preset:-w48_ocr}"
require_choice --timing_preset "${timing_preset}" w48_ocr tiny_ocr none
[ -z "${pth}" ] || require_file checkpoint "${pth}"
[ -z "${datasets_path}" ] || require_folder "dataset folder" "${datasets_path}"
require_positive_ints "--height/--width" "${height}" "${width}"
require_output_folder --output_dir "${output_dir}"

ensure_venv requirements.txt
export PYTHON
mkdir -p "${output_dir}"
began="${SECONDS}"

# The preprocess folder eval_acc_perf.sh will use, held (its run shares the lock) and made afresh: bins of
# another data set with the same ids and settings would otherwise be reused.
prep="${output_dir}/prep_dataset"
[ -z "${limit}" ] || prep="${prep}_limit${limit}"
lock_output "${prep}"
rm -rf -- "${prep}"

if [ -z "${datasets_path}" ]; then
  datasets_path="${output_dir}/data"
  log "${samples} synthetic ${height}x${width} scenes -> ${datasets_path}"
  step "${PYTHON}" -m hrnetseg.sample_data "${datasets_path}" --n "${samples}" --height "${height}" --width "${width}" \
    --seed 0
fi

weights=(--random_weights 0)
[ -z "${pth}" ] || weights=(--pth "${pth}")
log "export ${preset} at ${height}x${width} (dynamic batch) + ONNX Runtime check"
step "${PYTHON}" "${REPO_ROOT}/HRNet_pth2onnx.py" "${weights[@]}" --preset "${preset}" --height "${height}" \
  --width "${width}" --batch dynamic --save_path "${output_dir}/hrnet.onnx"
log "rewrite the head's Resize nodes to nearest, in place (the ModelZoo scripts' performance_optimize_resize.py step)"
step "${PYTHON}" "${REPO_ROOT}/performance_optimize_resize.py" "${output_dir}/hrnet.onnx" "${output_dir}/hrnet.onnx"

eval_args=(--datasets_path "${datasets_path}" --model_dir "${output_dir}" --output_dir "${output_dir}"
           --batch_sizes "${batch_sizes}" --backend "${backend}" --precision "${precision}" --preset "${preset}")
[ -z "${limit}" ] || eval_args+=(--limit "${limit}")
[ -z "${device}" ] || eval_args+=(--device "${device}")
[ -z "${pth}" ] || eval_args+=(--pth "${pth}")
report="${output_dir}/report.html"
eval_args+=(--report "${report}")
step bash "${REPO_ROOT}/scripts/eval_acc_perf.sh" "${eval_args[@]}"

# The auto path beside the runner's default: what --backend auto (predict's and evaluate's default) picks on this
# machine for the same model, checked against ONNX Runtime fp32 the first time (hrnetseg.backends.auto), through the
# same runner and postprocess at the first batch size, so both rows carry their fps and their mIoU on the same scenes. The
# runner and eval_acc_perf.sh keep ONNX Runtime fp32 as their default.
if [ "${backend}" = onnxruntime ] && [ "${precision}" = fp32 ]; then
  read -r -a sizes <<< "${batch_sizes}"
  bs="${sizes[0]}"
  auto_flags=(--preset "${preset}")
  [ -z "${device}" ] || auto_flags+=(--device "${device}")
  log "${PYTHON} -m hrnetseg.backends.auto ${output_dir}/hrnet.onnx ${auto_flags[*]}"
  choice="$("${PYTHON}" -m hrnetseg.backends.auto "${output_dir}/hrnet.onnx" "${auto_flags[@]}")" || exit $?
  read -r auto_backend auto_precision <<< "${choice}"
  auto_record="${output_dir}/results/bs${bs}_row.json"   # auto picked the reference path: the same run
  if [ "${choice}" != "onnxruntime fp32" ]; then
    auto_dir="${output_dir}/auto"
    auto_record="${auto_dir}/results/bs${bs}_row.json"
    auto_args=(--datasets_path "${datasets_path}" --model_dir "${output_dir}" --output_dir "${auto_dir}"
               --batch_sizes "${bs}" --backend "${auto_backend}" --precision "${auto_precision}" --preset "${preset}"
               --report "${auto_dir}/report.html")
    [ -z "${limit}" ] || auto_args+=(--limit "${limit}")
    [ -z "${device}" ] || auto_args+=(--device "${device}")
    mkdir -p "${auto_dir}"
    step bash "${REPO_ROOT}/scripts/eval_acc_perf.sh" "${auto_args[@]}"
  fi
  # one row per path from the rows eval_acc_perf.sh recorded (its --report keeps them)
  auto_table="$("${PYTHON}" -c 'import sys
from hrnetseg.atlas.acc_perf import format_fps
from hrnetseg.util.structured import read_json
for label, path, precision in zip(sys.argv[1::3], sys.argv[2::3], sys.argv[3::3]):
    row = read_json(path, "table row")
    print("| {} | {} {} | {} | {} | {:.2f}% |".format(label, row["backend"], precision, row["device"],
                                                      format_fps(row["fps"]), 100.0 * row["miou"]))' \
    "runner default" "${output_dir}/results/bs${bs}_row.json" fp32 \
    "--backend auto" "${auto_record}" "${auto_precision}")" || exit $?
  echo
  echo "The runner's default (python3 -m hrnetseg.infer, eval_acc_perf.sh) and --backend auto (predict's and evaluate's"
  echo "default, checked against ONNX Runtime fp32 on this machine), batch ${bs}, the same model and scenes:"
  echo "| path | backend | device | throughput (fps) | mIoU |"
  echo "|---|---|---|---|---|"
  echo "${auto_table}"
fi

if [ "${reference}" = 1 ]; then
  echo "mIoU above: held-out synthetic scenes through the reference model trained on synthetic scenes (models/README.md); the official checkpoint gives 81.6% on Cityscapes val"
  echo "(models/README.md records 92.89% for these 4 scenes at 1024x2048, the default size)"
elif [ -z "${pth}" ]; then
  echo "note: random weights (no --pth): the mIoU above is meaningless; the pipeline and the timings are real"
fi

# The throughput of the real network size: the reference model is small, so its fps says little about W48.
# Timing only, on the bins the table's run made: random weights have no mIoU worth a column.
if [ "${reference}" = 1 ] && [ "${timing_preset}" != none ]; then
  timing="${output_dir}/timing"
  mkdir -p "${timing}"
  lock_output "${timing}/results"
  log "timing: export ${timing_preset} with random weights at ${height}x${width}, Resize rewrite"
  step "${PYTHON}" "${REPO_ROOT}/HRNet_pth2onnx.py" --random_weights 0 --preset "${timing_preset}" --height "${height}" \
    --width "${width}" --batch dynamic --save_path "${timing}/hrnet.onnx"
  # --no_verify: what the rewrite does to random weights' outputs says nothing (the reference model's rewrite above
  # was verified), and comparing the two W48 graphs at 1024x2048 would cost two more forward passes
  step "${PYTHON}" "${REPO_ROOT}/performance_optimize_resize.py" "${timing}/hrnet.onnx" "${timing}/hrnet.onnx" --no_verify
  timing_rows=()
  read -r -a sizes <<< "${batch_sizes}"
  for bs in "${sizes[@]}"; do
    rm -rf -- "${timing}/results/bs${bs}" "${timing}/results/bs${bs}_summary.json"
    # output2 only: the outputs are written (the summary names the device) but never scored
    cmd=("${PYTHON}" -m hrnetseg.infer --model "${timing}/hrnet.onnx" --backend "${backend}" --precision "${precision}"
         --input "${prep}" --output "${timing}/results" --output_dirname "bs${bs}" --batchsize "${bs}"
         --preset "${timing_preset}" --output_indices 1)
    [ -z "${device}" ] || cmd+=(--device "${device}")
    log "${cmd[*]}"
    run_began="${SECONDS}"   # not began: the last line's total counts from that
    guard "${cmd[@]}"
    "${GUARDED[@]}" 2>&1 | tee "${timing}/bs${bs}.log" || failed "$?" "${run_began}" "${cmd[*]}"
    fps="$("${PYTHON}" -m hrnetseg.atlas.acc_perf throughput --log "${timing}/bs${bs}.log" --command "${cmd[*]}")" \
      || exit $?
    # the row as eval_acc_perf.sh's table writes one (the device the runner resolved, fps rounded alike)
    row="$("${PYTHON}" -c 'import sys
from hrnetseg.atlas.acc_perf import format_fps, summary_device
print("| {} | {} | {} | {} | n/a (random weights) |".format(sys.argv[1], sys.argv[2], summary_device(sys.argv[3]),
                                                             format_fps(float(sys.argv[4]))))' \
      "${bs}" "${backend}" "${timing}/results/bs${bs}_summary.json" "${fps}")" || exit $?
    timing_rows+=("${row}")
  done
  echo
  echo "Throughput of the real network size: ${timing_preset} at ${height}x${width}, random weights (timing only)"
  echo "| batch | backend | device | throughput (fps) | mIoU |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${timing_rows[@]}"
fi
echo "HTML report of the mIoU run: ${report}"
log "done in $((SECONDS - began)) s; everything is under ${output_dir}/"
