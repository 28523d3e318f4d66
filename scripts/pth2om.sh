#!/usr/bin/env bash
# Official checkpoint -> OUTPUT_DIR/hrnet.onnx (dynamic batch, head Resize nodes rewritten in place) ->
# OUTPUT_DIR/hrnet_bs<N>.om, one atc run per batch size. Runs on the Atlas host (CANN's atc on PATH).
#   bash scripts/pth2om.sh --pth hrnet.pth [--soc_version Ascend310P3] [--height 1024] [--width 2048]
#       [--batch_sizes "1 4"] [--output_dir .] [--preset w48_ocr] [--input_format float32|uint8]
#       [--no_rewrite] [--precision_mode MODE] [--out_nodes none|producers|LIST]
# Beside each .om: hrnet_bs<N>.om.json {"batch", "height", "width", "input_format", "input_dtype"}, which
# scripts/eval_acc_perf.sh checks the preprocessed bins against before running ais_bench.
# --out_nodes none (the default): no --out_nodes for atc, the graph's outputs (output1, output2, in that order)
# define the .om's outputs, as mmdeploy's Ascend backend converts; producers: atc --out_nodes with the nodes that
# produce output1 and output2 (name:0;name:0, the older behaviour); anything else is passed to atc as given.
# --soc_version defaults to the chip that `npu-smi info` reports (given up after HRNETSEG_PROBE_TIMEOUT seconds,
# 30 by default); Python is ${PYTHON:-python3}, with this checkout installed into it (pip install -e REPO).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PYTHON="${PYTHON:-python3}"

pth=""
soc_version=""
height=1024
width=2048
batch_sizes="1 4"
output_dir="."
preset="w48_ocr"
input_format="float32"
no_rewrite=0
precision_mode=""
out_nodes="none"
parse_flags "pth soc_version height width batch_sizes output_dir preset input_format precision_mode out_nodes" \
  "no_rewrite" "$@"

require_given "--pth FILE" "${pth}" "the official checkpoint"
require_file checkpoint "${pth}"
require_positive_ints "--height/--width" "${height}" "${width}"
read -r -a sizes <<< "${batch_sizes}"
require_positive_ints --batch_sizes "${sizes[@]}"
require_choice --input_format "${input_format}" float32 uint8
require_output_folder --output_dir "${output_dir}"

# Fail before the slow export when the Ascend tools are missing.
require_command atc "source the CANN toolkit first (e.g. source /usr/local/Ascend/ascend-toolkit/set_env.sh)"
if [ -z "${soc_version}" ]; then
  require_command npu-smi "pass --soc_version (e.g. Ascend310P3)"
  probe npu-smi info || die "npu-smi info failed: pass --soc_version (e.g. Ascend310P3)"   # hung: exit 2
  smi="${PROBE_OUTPUT}"
  # The first chip row of the table: "| 0       310P3     | OK  | ...": NPU id, then the chip name.
  chip="$(printf '%s\n' "${smi}" | awk -F'|' '$2 ~ /^ *[0-9]+ +[A-Za-z0-9]+ *$/ { split($2, f, " "); print f[2]; exit }')"
  [ -n "${chip}" ] || die "cannot read the chip name from npu-smi info: pass --soc_version (e.g. Ascend310P3)"
  case "${chip}" in Ascend*) soc_version="${chip}" ;; *) soc_version="Ascend${chip}" ;; esac
  log "soc_version ${soc_version} (from npu-smi info)"
fi

require_project_python
mkdir -p "${output_dir}"
onnx="${output_dir}/hrnet.onnx"
step "${PYTHON}" "${REPO_ROOT}/HRNet_pth2onnx.py" --pth "${pth}" --save_path "${onnx}" --height "${height}" \
  --width "${width}" --batch dynamic --preset "${preset}" --input_format "${input_format}"
if [ "${no_rewrite}" != 1 ]; then
  step "${PYTHON}" "${REPO_ROOT}/performance_optimize_resize.py" "${onnx}" "${onnx}"
fi
out_nodes_arg=()
case "${out_nodes}" in
  none) log "out_nodes: none given to atc (the graph's outputs output1, output2 define the .om's outputs)" ;;
  producers)
    nodes="$("${PYTHON}" -m hrnetseg.graph.structure out_nodes "${onnx}")" || die "cannot read the output nodes of ${onnx}"
    log "out_nodes ${nodes} (the producers of output1 and output2)"
    out_nodes_arg=("--out_nodes=${nodes}") ;;
  *) log "out_nodes ${out_nodes} (as given)"
    out_nodes_arg=("--out_nodes=${out_nodes}") ;;
esac

for bs in "${sizes[@]}"; do
  args=(--framework=5 "--model=${onnx}" "--output=${output_dir}/hrnet_bs${bs}" --input_format=NCHW
        "--input_shape=image:${bs},3,${height},${width}" --log=error "--soc_version=${soc_version}"
        ${out_nodes_arg[@]+"${out_nodes_arg[@]}"})
  [ -z "${precision_mode}" ] || args+=("--precision_mode=${precision_mode}")
  om="${output_dir}/hrnet_bs${bs}.om"
  rm -f -- "${om}" "${om}.json"   # an earlier run's files must not pass for this run's
  step atc "${args[@]}"
  [ -f "${om}" ] || { echo "error: atc wrote no ${om}" >&2; exit 1; }
  "${PYTHON}" -m hrnetseg.atlas.om_sidecar write "${om}" --batch "${bs}" --height "${height}" --width "${width}" \
    --input_dtype "${input_format}" > /dev/null || exit $?
done
log "done: ${onnx} and $(for bs in "${sizes[@]}"; do printf '%s ' "${output_dir}/hrnet_bs${bs}.om"; done)"
