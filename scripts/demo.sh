#!/usr/bin/env bash
# The main job on an embedded default: the whole pipeline on this machine, then the table of scripts/eval_acc_perf.sh.
# No arguments: 4 synthetic 1024x2048 Cityscapes-layout scenes, HRNetV2-W48+OCR with seeded random weights
# (mIoU meaningless), export, Resize rewrite, bs1 and bs4 through the local runner (ONNX Runtime fp32), mIoU, fps.
#   bash scripts/demo.sh [--pth hrnet.pth] [--datasets_path ./data] [--output_dir demo_out] [--limit N]
#       [--preset w48_ocr] [--height 1024] [--width 2048] [--batch_sizes "1 4"] [--device D]
#       [--backend onnxruntime|openvino] [--precision fp32|bf16]     (openvino bf16: about 2x faster on a CPU)
# With --pth and --datasets_path it evaluates the real model on the real val set (--limit N: the first N images).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

pth=""
datasets_path=""
output_dir="demo_out"
limit=""
preset="w48_ocr"
height=1024
width=2048
batch_sizes="1 4"
device=""
backend="onnxruntime"
precision="fp32"
samples=4
parse_flags "pth datasets_path output_dir limit preset height width batch_sizes device backend precision" "" "$@"
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
step bash "${REPO_ROOT}/scripts/eval_acc_perf.sh" "${eval_args[@]}"

[ -n "${pth}" ] || echo "note: random weights (no --pth): the mIoU above is meaningless; the pipeline and the timings are real"
log "done in $((SECONDS - began)) s; everything is under ${output_dir}/"
