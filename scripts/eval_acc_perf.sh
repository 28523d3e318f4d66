#!/usr/bin/env bash
# Accuracy and throughput per batch size: preprocess, inference (ais_bench with hrnet_bs<N>.om, or the local
# runner with hrnet.onnx / a .pth), postprocess, then one table (batch, backend, device, fps, mIoU).
#   bash scripts/eval_acc_perf.sh --datasets_path ./data [--model_dir .] [--pth hrnet.pth] [--batch_sizes "1 4"]
#       [--backend auto|ais_bench|onnxruntime|openvino|torch] [--precision fp32|fp16|bf16] [--device D] [--limit N]
#       [--input_format float32|uint8] [--output_dtype float32|float16]
#       [--preset w48_ocr] [--output_dir .] [--min_miou PERCENT] [--min_fps "BATCH:FPS ..."] [--junit FILE]
#       [--report FILE.html] [--report_worst N]
# Writes OUTPUT_DIR/prep_dataset[_uint8][_limitN]/, OUTPUT_DIR/results/bs<N>/ (replaced each run), result_bs<N>.json;
# they are locked while it runs (a second run into the same OUTPUT_DIR stops at once, naming this one's PID).
# auto: ais_bench when MODEL_DIR holds hrnet_bs<N>.om files, else the local runner (hrnet.onnx, else --pth).
# --output_dtype float16: the .om files were made with atc --output_type=FP16 (ais_bench then writes float16);
# passed to HRNet_postprocess.py (without it: the runner summary says, else float32, else float16 by size).
# A batch size larger than the number of images is refused (its padding would be timed as images), and so is a
# result that does not count every preprocessed image. A label of another size than the preprocessed images is
# refused before inference (the postprocess, given --prep_path, holds every label to that size as well).
# --device 0,1 (ais_bench, or the local runner): the input split across the devices, results/bs<N>/device<id>/;
# the table's fps is the run's `summary throughput:` (the padding taken out device by device), its device
# column the device summaries', its mIoU that of every image.
# With ais_bench, each hrnet_bs<N>.om.json (written by scripts/pth2om.sh) is checked against the bins before the
# run: another dtype, size or batch size stops the script (exit 2); an .om without one gets a warning.
# CI gate: --min_miou 80.5 (percent) and --min_fps "1:9 4:7" (any of the batch sizes) exit 1 after the table,
# naming the batch sizes below a floor; --junit FILE writes a JUnit XML report (testsuite eval_acc_perf, testcases
# bs<N>.accuracy and bs<N>.throughput) when the table is done, pass or fail, and when the run stops before it
# (an error case for each batch size without figures).
# --report FILE.html: one self-contained HTML page for the run, written after the table: the table's figures, the
# per-class IoU bars, the confusion heat map and the --report_worst N (default 6) worst images of the last batch size
# (python3 -m hrnetseg.atlas.acc_perf report; each result_bs<N>.json lists its worst images' ids and scores).
# Python is ${PYTHON:-python3}, with this checkout installed into it (on the Atlas host: pip install -r
# requirements-atlas.txt, then pip install --no-deps REPO); ais_bench is ${AIS_BENCH:-python3 -m ais_bench}; its
# --help check gives up after HRNETSEG_PROBE_TIMEOUT seconds (30).
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
output_dtype=""
preset="w48_ocr"
output_dir="."
min_miou=""
min_fps=""
junit=""
report=""
report_worst=""
flags="datasets_path model_dir pth batch_sizes backend precision device limit input_format output_dtype preset output_dir"
flags+=" min_miou min_fps junit report report_worst"
parse_flags "${flags}" "" "$@"

require_given "--datasets_path DATA" "${datasets_path}" "the folder holding cityscapes/"
require_folder "dataset folder" "${datasets_path}"
require_output_folder --output_dir "${output_dir}"
read -r -a sizes <<< "${batch_sizes}"
require_positive_ints --batch_sizes "${sizes[@]}"
[ -z "${limit}" ] || require_positive_ints --limit "${limit}"
require_choice --input_format "${input_format}" float32 uint8
[ -z "${output_dtype}" ] || require_choice --output_dtype "${output_dtype}" float32 float16
[ -z "${pth}" ] || require_file checkpoint "${pth}"
if [ -d "${datasets_path}/cityscapes" ]; then gt_dir="${datasets_path}/cityscapes/gtFine/val"; else gt_dir="${datasets_path}/gtFine/val"; fi
[ -d "${gt_dir}" ] || die "no labels folder ${gt_dir} (expected DATA/cityscapes/gtFine/val/<city>/*_gtFine_labelIds.png)"
read -r -a ais_bench <<< "${AIS_BENCH:-python3 -m ais_bench}"
require_project_python
gate=()   # the CI gate's flags, checked now, judged after the table
[ -z "${min_miou}" ] || gate+=(--min_miou "${min_miou}")
[ -z "${min_fps}" ] || gate+=(--min_fps "${min_fps}")
[ -z "${junit}" ] || gate+=(--junit "${junit}")
[ "${#gate[@]}" = 0 ] || "${PYTHON}" -m hrnetseg.atlas.ci_gate check --batch_sizes "${batch_sizes}" "${gate[@]}" || exit $?
records=()         # the rows' figures, for the gate
report_pending=0   # 1 while --junit is owed: a run that stops before its table still leaves a report
# At exit: the report of a run that stopped (its error cases name the exit code), then the locks go.
report_if_stopped() {
  local rc=$? done_rows=() record
  if [ "${report_pending}" = 1 ] && [ "${rc}" != 0 ]; then
    for record in ${records[@]+"${records[@]}"}; do [ ! -f "${record}" ] || done_rows+=("${record}"); done
    "${PYTHON}" -m hrnetseg.atlas.ci_gate judge "${gate[@]}" --batch_sizes "${batch_sizes}" --stopped "${rc}" \
      ${done_rows[@]+"${done_rows[@]}"} >/dev/null 2>&1 || echo "warning: could not write the JUnit report ${junit}" >&2
  fi
  release_outputs
}
trap report_if_stopped EXIT

# --- which backend -----------------------------------------------------------------------------------
om_files=()
for bs in "${sizes[@]}"; do
  [ ! -f "${model_dir}/hrnet_bs${bs}.om" ] || om_files+=("${model_dir}/hrnet_bs${bs}.om")
done
ais_bench_starts() { probe "${ais_bench[@]}" --help; }   # a hung ais_bench stops the script (exit 2)
require_choice --backend "${backend}" auto ais_bench onnxruntime openvino torch
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
esac
if [ "${backend}" = ais_bench ]; then
  for bs in "${sizes[@]}"; do
    [ -f "${model_dir}/hrnet_bs${bs}.om" ] || die "no ${model_dir}/hrnet_bs${bs}.om for batch size ${bs} (scripts/pth2om.sh makes it)"
  done
elif [ "${output_dtype}" = float16 ]; then
  die "--output_dtype float16 is for ais_bench outputs of an .om made with --output_type=FP16; the ${backend} backend writes float32"
fi

# --- the outputs, locked until this script exits ----------------------------------------------------------
prep="${output_dir}/prep_dataset"
[ "${input_format}" = float32 ] || prep="${output_dir}/prep_dataset_${input_format}"
# ais_bench reads every .bin in its --input folder: a limited run gets a folder of its own
[ -z "${limit}" ] || prep="${prep}_limit${limit}"
written=("${prep}")   # what this script writes: the report must not replace or sit in any of it
for bs in "${sizes[@]}"; do
  written+=("${output_dir}/results/bs${bs}" "${output_dir}/results/bs${bs}.log"
            "${output_dir}/results/bs${bs}_summary.json" "${output_dir}/results/bs${bs}_row.json"
            "${output_dir}/result_bs${bs}.json")
done
[ -n "${report}" ] || [ -z "${report_worst}" ] || die "--report_worst needs --report FILE.html"
if [ -n "${report}" ]; then   # before any work: not a file the run reads or writes, nor the --junit report
  models=("${om_files[@]+"${om_files[@]}"}")
  [ ! -f "${model_dir}/hrnet.onnx" ] || models+=("${model_dir}/hrnet.onnx")
  [ -z "${pth}" ] || models+=("${pth}")
  "${PYTHON}" -m hrnetseg.atlas.acc_perf check_report "${report}" --output_dir "${output_dir}" \
    --written "${written[@]}" ${junit:+"${junit}"} --data_path "${gt_dir}" --inputs "${models[@]+"${models[@]}"}" \
    ${report_worst:+--report_worst "${report_worst}"} || exit $?
  written+=("${report}")   # so --junit may not be it either
fi
[ -z "${junit}" ] || "${PYTHON}" -m hrnetseg.atlas.ci_gate check --batch_sizes "${batch_sizes}" --junit "${junit}" \
  --written "${written[@]}" || exit $?
lock_output "${prep}"
for bs in "${sizes[@]}"; do
  lock_output "${output_dir}/results/bs${bs}"
  lock_output "${output_dir}/result_bs${bs}.json"
  [ "${#gate[@]}" = 0 ] && [ -z "${report}" ] || lock_output "${output_dir}/results/bs${bs}_row.json"
done
[ -z "${report}" ] || lock_output "${report}"
if [ -n "${junit}" ]; then
  lock_output "${junit}"
  [ -L "${junit}" ] || rm -f -- "${junit}"   # an earlier run's report must not stand for this one
  report_pending=1   # ours to write from here on
fi

# --- preprocess ---------------------------------------------------------------------------------------
prep_args=(--src_path "${datasets_path}" --save_path "${prep}" --dtype "${input_format}")
[ -z "${limit}" ] || prep_args+=(--limit "${limit}")
step "${PYTHON}" "${REPO_ROOT}/HRNet_preprocess.py" "${prep_args[@]}"
"${PYTHON}" -m hrnetseg.atlas.acc_perf check_batch_sizes "${prep}" "${sizes[@]}" --backend "${backend}" \
  --device "${device:-0}" || exit $?   # --device 0,1: the input is split across the devices
# a label of another size than its image would stop the postprocess after the whole inference
"${PYTHON}" -m hrnetseg.atlas.acc_perf check_labels "${prep}" --data_path "${gt_dir}" || exit $?
if [ "${backend}" = ais_bench ]; then   # the bins must be what each .om takes: ais_bench would crash or misread them
  for bs in "${sizes[@]}"; do
    "${PYTHON}" -m hrnetseg.atlas.om_sidecar check "${model_dir}/hrnet_bs${bs}.om" --prep "${prep}" --batch "${bs}" || exit $?
  done
fi

# --- inference and postprocess per batch size ------------------------------------------------------------
[ ! -t 2 ] || export HRNETSEG_PROGRESS="${HRNETSEG_PROGRESS:-1}"   # keep the bar through tee
rows=()
for bs in "${sizes[@]}"; do
  res="${output_dir}/results/bs${bs}"
  run_log="${res}.log"
  result="${output_dir}/result_bs${bs}.json"
  record="${res}_row.json"
  # an earlier run's outputs, summaries, log, result and row must not mix into this run's figures
  rm -rf -- "${res}" "${res}_summary.json" "${run_log}" "${result}" "${record}"
  if [ "${backend}" = ais_bench ]; then
    cmd=("${ais_bench[@]}" --model "${model_dir}/hrnet_bs${bs}.om" --input "${prep}" --output "${output_dir}/results"
         --output_dirname "bs${bs}" --batchsize "${bs}")
    [ -z "${device}" ] || cmd+=(--device "${device}")
    where=(--device "npu:${device:-0}")
  else
    model="${model_dir}/hrnet.onnx"
    [ "${backend}" != torch ] || model="${pth}"
    cmd=("${PYTHON}" -m hrnetseg.infer --model "${model}" --backend "${backend}" --precision "${precision}" --input "${prep}"
         --output "${output_dir}/results" --output_dirname "bs${bs}" --batchsize "${bs}" --preset "${preset}")
    [ -z "${device}" ] || cmd+=(--device "${device}")
    where=(--summary "${res}_summary.json")   # the device the runner resolved (auto -> cpu or cuda:N)
  fi
  log "${cmd[*]}"
  began="${SECONDS}"
  guard "${cmd[@]}"
  "${GUARDED[@]}" 2>&1 | tee "${run_log}" || failed "$?" "${began}" "${cmd[*]}"
  fps="$("${PYTHON}" -m hrnetseg.atlas.acc_perf throughput --log "${run_log}" --command "${cmd[*]}")" || exit $?

  post_args=(--res_path "${res}" --data_path "${gt_dir}" --save_path "${result}" --prep_path "${prep}")
  [ -z "${output_dtype}" ] || post_args+=(--output_dtype "${output_dtype}")   # else: the runner summary, then float32
  [ -z "${limit}" ] || post_args+=(--allow_missing)   # --limit N: only the first N labels have outputs
  # the worst images' ids and scores, for the report (6: hrnetseg/evaluation/report.py's DEFAULT_WORST)
  [ -z "${report}" ] || post_args+=(--report_worst "${report_worst:-6}")
  step "${PYTHON}" "${REPO_ROOT}/HRNet_postprocess.py" "${post_args[@]}"
  # --device 0,1: one device<id>/ folder and device<id>_summary.json per device, no combined summary
  [[ "${device}" != *,* ]] || where=(--shards "${res}")
  row_args=(--batch "${bs}" --backend "${backend}" "${where[@]}" --fps "${fps}" --result "${result}" --prep "${prep}")
  # the row's figures: for the gate and the report
  [ "${#gate[@]}" = 0 ] && [ -z "${report}" ] || { row_args+=(--record "${record}"); records+=("${record}"); }
  row="$("${PYTHON}" -m hrnetseg.atlas.acc_perf row "${row_args[@]}")" || exit $?
  rows+=("${row}")
done

echo
echo "| batch | backend | device | throughput (fps) | mIoU |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo "(per batch size: ${output_dir}/result_bs<N>.json, ${output_dir}/results/bs<N>/, ${output_dir}/results/bs<N>.log)"
if [ -n "${report}" ]; then   # the last batch size's figures and worst images, the table's rows
  report_args=(--rows "${records[@]}" --result "${result}" --res_path "${res}" --data_path "${gt_dir}" --prep "${prep}")
  [ -z "${output_dtype}" ] || report_args+=(--output_dtype "${output_dtype}")
  "${PYTHON}" -m hrnetseg.atlas.acc_perf report "${report}" "${report_args[@]}" || exit $?
  echo "report: ${report}"
fi
report_pending=0   # the judge writes it, pass or fail
[ "${#gate[@]}" = 0 ] || "${PYTHON}" -m hrnetseg.atlas.ci_gate judge "${gate[@]}" "${records[@]}" || exit $?
