"""The command of int8 quantisation: `python3 -m hrnetseg.quantize` (hrnetseg-quantize).

    python3 -m hrnetseg.quantize --onnx hrnet.onnx --output hrnet_int8.onnx --calibration prep_dataset --count 64
    python3 -m hrnetseg.quantize --onnx hrnet.onnx --output hrnet_int8.onnx --calibration ./data/cityscapes \
        --accuracy_control --validation ./data/cityscapes --validation_count 100 --max_drop 0.5

Everything is checked before the slow part: the model is a float ONNX export (not .om, .pth or an int8 model),
the output can be written and is none of the inputs, the images can be read. The work is model/quantize.py;
the images, model/calibration.py. The output is a QDQ ONNX file for --precision int8 (docs/int8.md).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from hrnetseg.model.calibration import MAX_IMAGES, read_calibration, read_validation_pairs
from hrnetseg.model.quantize import (
    DEFAULT_KEEP_FLOAT,
    KEEP_FLOAT,
    load_float_model,
    model_input,
    quantize_onnx,
    quantize_onnx_with_accuracy_control,
)
from hrnetseg.util.cli import ArgumentParser, decimal_number, image_size, plain_name, positive_int
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import check_output_file, check_outputs_apart

DEFAULT_COUNT = 64
DEFAULT_VALIDATION_COUNT = 100


def max_drop(text: str) -> float:
    return decimal_number(text, 0.0, what="mIoU points (0.5 = half a point)")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description="Post-training int8 quantisation of the ONNX export with NNCF "
                                        "(pip install nncf==3.4.0): writes a QDQ ONNX model that the onnxruntime "
                                        "and openvino backends run with --precision int8.")
    parser.add_argument("--onnx", required=True, help="the float ONNX export (HRNet_pth2onnx.py)")
    parser.add_argument("--output", required=True, help="the int8 ONNX file to write")
    parser.add_argument("--calibration", required=True, metavar="FOLDER",
                        help="calibration images: a preprocess folder (bins + manifest.json) or a Cityscapes root")
    parser.add_argument("--count", type=positive_int, default=DEFAULT_COUNT,
                        help="calibration images, evenly spread over the set (default {}, at most {})".format(
                            DEFAULT_COUNT, MAX_IMAGES))
    parser.add_argument("--calibration_size", type=image_size, metavar="HxW",
                        help="resize the calibration images to this size, for a model with open height and width "
                             "(HRNet_pth2onnx.py --dynamic_hw): NNCF holds every activation of an image in memory, "
                             "9 GiB for W48 at 512x1024, about four times that at 1024x2048")
    parser.add_argument("--split", type=plain_name, default="train",
                        help="split of a Cityscapes --calibration root (default train: calibrate on images you "
                             "do not score)")
    parser.add_argument("--keep_float", choices=tuple(KEEP_FLOAT), default=DEFAULT_KEEP_FLOAT,
                        help="what stays float: attention (default: the OCR head's object attention; every "
                             "convolution is int8), head (the OCR and aux heads: slower, a little more exact), none "
                             "(the whole network int8: about ten times the error)")
    parser.add_argument("--quantize_head", dest="keep_float", action="store_const", const="none",
                        help="the same as --keep_float none (kept for old command lines)")
    control = parser.add_argument_group("accuracy control")
    control.add_argument("--accuracy_control", action="store_true",
                         help="put operations back to float until the int8 mIoU is within --max_drop of fp32's")
    control.add_argument("--validation", metavar="CITYSCAPES_ROOT",
                         help="labelled images (leftImg8bit + gtFine) the mIoU is measured on")
    control.add_argument("--validation_split", type=plain_name, default="val", help="its split (default val)")
    control.add_argument("--validation_count", type=positive_int, default=DEFAULT_VALIDATION_COUNT,
                         help="validation images, evenly spread (default {}, at most {})".format(
                             DEFAULT_VALIDATION_COUNT, MAX_IMAGES))
    control.add_argument("--max_drop", type=max_drop, default=0.5,
                         help="the mIoU drop allowed, in points, absolute (default 0.5)")
    return parser


def check_model_path(path: str) -> None:
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".om":
        raise UserError("{} is an Ascend offline model: quantise the ONNX export it was made from".format(path))
    if suffix in (".pth", ".pt"):
        raise UserError("{} is a checkpoint: export it first (HRNet_pth2onnx.py), then quantise the .onnx".format(path))


def describe_ops(counts: dict) -> str:
    return ", ".join("{} {}".format(n, op) for op, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.accuracy_control and not args.validation:
        raise UserError("--accuracy_control needs --validation CITYSCAPES_ROOT (labelled images)")
    if args.validation and not args.accuracy_control:
        raise UserError("--validation is read only with --accuracy_control")
    check_model_path(args.onnx)
    check_output_file(args.output, "--output")
    check_outputs_apart({"--output": args.output}, {"--onnx": args.onnx})
    model = load_float_model(args.onnx)
    _, dtype, shape = model_input(model)
    del model
    size = tuple(shape[2:]) if None not in shape[2:] else None
    if size is not None and args.calibration_size not in (None, size):
        raise UserError("--calibration_size {}x{}: {} takes {}x{} only; export it with --dynamic_hw "
                        "(HRNet_pth2onnx.py) to calibrate at another size".format(
                            args.calibration_size[0], args.calibration_size[1], args.onnx, size[0], size[1]))
    print("reading {} calibration image(s) from {}{}".format(
        args.count, args.calibration,
        " at {}x{}".format(*args.calibration_size) if args.calibration_size else ""), flush=True)
    calibration = read_calibration(args.calibration, args.count, dtype.name, args.split,
                                   None if args.calibration_size else size, args.calibration_size)
    if args.accuracy_control:
        print("reading {} validation image(s) from {}".format(args.validation_count, args.validation), flush=True)
        validation = read_validation_pairs(args.validation, args.validation_count, dtype.name,
                                           args.validation_split, size)
        print("quantising {} with accuracy control (max drop {:g} mIoU points)".format(args.onnx, args.max_drop),
              flush=True)
        report = quantize_onnx_with_accuracy_control(args.onnx, args.output, calibration, validation,
                                                     max_drop_points=args.max_drop, keep_float=args.keep_float)
    else:
        print("quantising {}".format(args.onnx), flush=True)
        report = quantize_onnx(args.onnx, args.output, calibration, keep_float=args.keep_float)
    print_summary(args, report)
    return 0


def print_summary(args: argparse.Namespace, report: dict) -> None:
    lines = ["wrote {} (int8 QDQ ONNX, opset {}) in {:.1f} s".format(args.output, report["opset"], report["seconds"]),
             "calibration: {} image(s) of {} from {}".format(report["calibration_images"],
                                                             "x".join(map(str, report["calibration_size"])),
                                                             args.calibration),
             "quantised operations: {}".format(describe_ops(report["quantized_ops"])),
             "kept float: {} ({} nodes)".format(KEEP_FLOAT[report["kept_float"]], report["ignored_nodes"])]
    if "fp32_miou" in report:
        lines += ["accuracy control: {} reverted to float; mIoU on {} validation image(s): fp32 {:.2f}, int8 {:.2f} "
                  "(drop {:.2f} points, allowed {:g})".format(report["reverted_ops"], report["validation_images"],
                                                              report["fp32_miou"], report["int8_miou"],
                                                              report["drop_points"], report["max_drop_points"])]
        if report["drop_points"] > report["max_drop_points"]:
            lines.append("warning: NNCF could not bring the drop within --max_drop; the model is written anyway")
    lines.append("run it with --precision int8 (--backend openvino is the fast one)")
    print("\n".join(lines), file=sys.stdout, flush=True)
