#!/usr/bin/env bash
# The main job on an embedded default: export HRNetV2-W48+OCR at 1024x2048 and verify it in ONNX Runtime.
# Without --pth it uses seeded random weights (a demo of the pipeline; accuracy is meaningless).
#   bash scripts/demo.sh [--pth hrnet.pth] [--output_dir demo_out]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

pth=""
output_dir="demo_out"
while [ $# -gt 0 ]; do
  case "$1" in
    --pth|--output_dir) [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; } ;;
  esac
  case "$1" in
    --pth) pth="$2"; shift 2 ;;
    --output_dir) output_dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "error: unknown argument: $1" >&2; exit 2 ;;
  esac
done

ensure_venv requirements.txt
mkdir -p "${output_dir}"
weights=(--random_weights 0)
[ -n "${pth}" ] && weights=(--pth "${pth}")
log "export + ONNX Runtime check at 1024x2048"
"${PYTHON}" "${REPO_ROOT}/HRNet_pth2onnx.py" "${weights[@]}" --save_path "${output_dir}/hrnet.onnx"
log "done: ${output_dir}/hrnet.onnx"
