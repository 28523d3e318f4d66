#!/usr/bin/env bash
# Accuracy and throughput per batch size: preprocess, inference (ais_bench with hrnet_bs<N>.om, or the local
# runner with hrnet.onnx / a .pth), postprocess, then one table (batch, backend, device, fps, mIoU).
#   bash scripts/eval_acc_perf.sh --datasets_path ./data [--model_dir .] [--pth hrnet.pth] [--batch_sizes "1 4"]
#       [--backend auto|ais_bench|onnxruntime|openvino|torch] [--precision fp32|fp16|bf16] [--device D] [--limit N]
#       [--input_format float32|uint8]
#       [--preset w48_ocr] [--output_dir .]
# Writes OUTPUT_DIR/prep_dataset[_uint8][_limitN]/, OUTPUT_DIR/results/bs<N>/ (replaced each run), result_bs<N>.json.
# auto: ais_bench when MODEL_DIR holds hrnet_bs<N>.om files, else the local runner (hrnet.onnx, else --pth).
# Python is ${PYTHON:-python3}; ais_bench is ${AIS_BENCH:-python3 -m ais_bench}.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PYTHON="${PYTHON:-python3}"


datasets_path=""
model_dir="."
pth=""
batch_sizes="1 4"
backend="auto"
precision="fp32"
device=""
limit=""
input_format="float32"
preset="w48_ocr"
output_dir="."
parse_flags "datasets_path model_dir pth batch_sizes backend precision device limit input_format preset output_dir" "" "$@"

[ -n "${datasets_path}" ] || die "--datasets_path DATA is required (the folder holding cityscapes/)"
[ -d "${datasets_path}" ] || die "dataset folder not found: ${datasets_path}"
read -r -a sizes <<< "${batch_sizes}"
require_positive_ints --batch_sizes "${sizes[@]}"
[ -z "${limit}" ] || require_positive_ints --limit "${limit}"
case "${input_format}" in float32|uint8) ;; *) die "--input_format is float32 or uint8, not '${input_format}'" ;; esac
[ -z "${pth}" ] || [ -f "${pth}" ] || die "checkpoint not found: ${pth}"
if [ -d "${datasets_path}/cityscapes" ]; then gt_dir="${datasets_path}/cityscapes/gtFine/val"; else gt_dir="${datasets_path}/gtFine/val"; fi
[ -d "${gt_dir}" ] || die "no labels folder ${gt_dir} (expected DATA/cityscapes/gtFine/val/<city>/*_gtFine_labelIds.png)"
read -r -a ais_bench <<< "${AIS_BENCH:-python3 -m ais_bench}"

# --- which backend -----------------------------------------------------------------------------------
om_files=()
for bs in "${sizes[@]}"; do
  [ ! -f "${model_dir}/hrnet_bs${bs}.om" ] || om_files+=("${model_dir}/hrnet_bs${bs}.om")
done
ais_bench_starts() { "${ais_bench[@]}" --help >/dev/null 2>&1; }
case "${backend}" in
  auto)
    if [ "${#om_files[@]}" -gt 0 ]; then
      ais_bench_starts || die "found ${om_files[*]} but ais_bench does not start ('${ais_bench[*]} --help' fails): \
run this in the Python of CANN (source set_env.sh; set PYTHON or AIS_BENCH), or pass --backend onnxruntime to run \
${model_dir}/hrnet.onnx on this machine's CPU/GPU instead (hours for the full val set on a CPU)"
      backend="ais_bench"
    elif [ -f "${model_dir}/hrnet.onnx" ]; then
      backend="onnxruntime"
    elif [ -n "${pth}" ]; then
      backend="torch"
    else
      die "nothing to run: no hrnet_bs<N>.om or hrnet.onnx in ${model_dir} and no --pth (make them with scripts/pth2om.sh)"
    fi
    log "backend ${backend} (auto: $([ "${backend}" = ais_bench ] && echo ".om files found" || echo "no .om files in ${model_dir}"))"
    ;;
  ais_bench) ais_bench_starts || die "ais_bench does not start ('${ais_bench[*]} --help' fails): source CANN's set_env.sh" ;;
  onnxruntime|openvino) [ -f "${model_dir}/hrnet.onnx" ] || die "no ${model_dir}/hrnet.onnx (make it with scripts/pth2om.sh or HRNet_pth2onnx.py)" ;;
  torch) [ -n "${pth}" ] || die "--backend torch needs --pth FILE" ;;
  *) die "--backend is auto, ais_bench, onnxruntime, openvino or torch, not '${backend}'" ;;
esac
if [ "${backend}" = ais_bench ]; then
  for bs in "${sizes[@]}"; do
    [ -f "${model_dir}/hrnet_bs${bs}.om" ] || die "no ${model_dir}/hrnet_bs${bs}.om for batch size ${bs} (scripts/pth2om.sh makes it)"
  done
fi

# --- preprocess ---------------------------------------------------------------------------------------
mkdir -p "${output_dir}/results"
prep="${output_dir}/prep_dataset"
[ "${input_format}" = float32 ] || prep="${output_dir}/prep_dataset_${input_format}"
# ais_bench reads every .bin in its --input folder: a limited run gets a folder of its own
[ -z "${limit}" ] || prep="${prep}_limit${limit}"
prep_args=(--src_path "${datasets_path}" --save_path "${prep}" --dtype "${input_format}")
[ -z "${limit}" ] || prep_args+=(--limit "${limit}")
step "${PYTHON}" "${REPO_ROOT}/HRNet_preprocess.py" "${prep_args[@]}"

# --- inference and postprocess per batch size ------------------------------------------------------------
[ ! -t 2 ] || export HRNETSEG_PROGRESS="${HRNETSEG_PROGRESS:-1}"   # keep the bar through tee
json_field() {   # json_field FILE KEY...: the first value found under any of the keys, searched recursively
  "${PYTHON}" - "$@" <<'PY'
import json, sys
def find(obj, keys):
    if isinstance(obj, dict):
        for key in keys:
            if key in obj and not isinstance(obj[key], (dict, list)):
                return obj[key]
        for value in obj.values():
            found = find(value, keys)
            if found is not None:
                return found
    return None
with open(sys.argv[1]) as fh:
    value = find(json.load(fh), sys.argv[2:])
print("" if value is None else value)
PY
}
rows=()
for bs in "${sizes[@]}"; do
  res="${output_dir}/results/bs${bs}"
  rm -rf -- "${res}"   # outputs of an earlier run must not mix into this one's mIoU
  if [ "${backend}" = ais_bench ]; then
    cmd=("${ais_bench[@]}" --model "${model_dir}/hrnet_bs${bs}.om" --input "${prep}" --output "${output_dir}/results"
         --output_dirname "bs${bs}" --batchsize "${bs}")
    [ -z "${device}" ] || cmd+=(--device "${device}")
  else
    model="${model_dir}/hrnet.onnx"
    [ "${backend}" != torch ] || model="${pth}"
    cmd=("${PYTHON}" -m hrnetseg.infer --model "${model}" --backend "${backend}" --precision "${precision}" --input "${prep}"
         --output "${output_dir}/results" --output_dirname "bs${bs}" --batchsize "${bs}" --preset "${preset}")
    [ -z "${device}" ] || cmd+=(--device "${device}")
  fi
  log "${cmd[*]}"
  "${cmd[@]}" 2>&1 | tee "${output_dir}/results/bs${bs}.log" ||
    { rc=$?; echo "error: command failed (exit ${rc}): ${cmd[*]}" >&2; exit "${rc}"; }
  fps="$( { grep -E 'throughput 1000\*batchsize' "${output_dir}/results/bs${bs}.log" || true; } | tail -n 1 |
    sed -E 's/.*:[[:space:]]*([0-9.eE+-]+)[[:space:]]*$/\1/')"
  [ -n "${fps}" ] || die "no 'throughput 1000*batchsize...: X' line in the output of: ${cmd[*]}"
  used_device="npu:${device:-0}"
  if [ "${backend}" != ais_bench ]; then used_device="$(json_field "${output_dir}/results/bs${bs}_summary.json" device)"; fi

  post_args=(--res_path "${res}" --data_path "${gt_dir}" --save_path "${output_dir}/result_bs${bs}.json")
  [ -z "${limit}" ] || post_args+=(--allow_missing)   # --limit N: only the first N labels have outputs
  step "${PYTHON}" "${REPO_ROOT}/HRNet_postprocess.py" "${post_args[@]}"
  miou="$(json_field "${output_dir}/result_bs${bs}.json" mIoU mean_Iou)"   # fractions; mIoU as cityscapesScripts
  [ -n "${miou}" ] || die "no mIoU in ${output_dir}/result_bs${bs}.json"
  rows+=("$(awk -v b="${bs}" -v k="${backend}" -v d="${used_device}" -v f="${fps}" -v m="${miou}" \
    'BEGIN { printf "| %s | %s | %s | %.2f | %.2f%% |", b, k, d, f, 100 * m }')")
done

echo
echo "| batch | backend | device | throughput (fps) | mIoU |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo "(per batch size: ${output_dir}/result_bs<N>.json, ${output_dir}/results/bs<N>/, ${output_dir}/results/bs<N>.log)"
