"""Export HRNetV2-W48 + OCR from the official checkpoint to ONNX, verified in ONNX Runtime.

python3 HRNet_pth2onnx.py --pth hrnet.pth --save_path hrnet.onnx
python3 HRNet_pth2onnx.py --pth hrnet.pth --save_path hrnet_any_size.onnx --dynamic_hw   # for --scales / predict
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from hrnetseg.model.presets import DEFAULT_PRESET, MODEL_INPUT_DTYPES, PRESET_NAMES
from hrnetseg.util.cli import ArgumentParser, positive_int, run_cli, whole_number
from hrnetseg.util.files import check_output_file, check_outputs_apart, remove_stale_temporaries_beside, require_file
from hrnetseg.util.locks import output_lock

MAX_SEED = 2 ** 64 - 1   # torch.Generator.manual_seed takes an unsigned 64-bit seed


def batch_size_or_dynamic(text: str) -> Optional[int]:
    """argparse type of --batch: None for 'dynamic' (any case), else a positive integer."""
    if text.strip().lower() == "dynamic":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError("expected 'dynamic' or a positive integer, got {!r}".format(text))


def random_seed(text: str) -> int:
    return whole_number(text, 0, MAX_SEED, "a seed from 0 to {}".format(MAX_SEED))


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.strip().splitlines()[0])
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--pth", help="official checkpoint (.pth), e.g. hrnet_ocr_cs_8162_torch11.pth")
    weights.add_argument("--random_weights", type=random_seed, metavar="SEED",
                         help="seeded random weights instead of --pth: for demos only, accuracy is meaningless")
    parser.add_argument("--save_path", default="hrnet.onnx", help="output ONNX file (default: hrnet.onnx)")
    parser.add_argument("--height", type=positive_int, default=1024,
                        help="input height (default: 1024); with --dynamic_hw only the height it is traced and "
                             "checked at")
    parser.add_argument("--width", type=positive_int, default=2048,
                        help="input width (default: 2048); with --dynamic_hw only the width it is traced and "
                             "checked at")
    parser.add_argument("--dynamic_hw", action="store_true",
                        help="height and width as dynamic axes: ONNX Runtime and OpenVINO then take any image size "
                             "(what multi-scale testing, --scales, needs); checked at --height x --width and at a "
                             "second size. For ONNX Runtime / OpenVINO, not atc: the .om needs a fixed size")
    parser.add_argument("--batch", type=batch_size_or_dynamic, default=None, metavar="dynamic|N",
                        help="batch size, or 'dynamic' (default) for a dynamic batch axis")
    parser.add_argument("--opset", type=positive_int, default=11,
                        help="ONNX opset (default: 11, what CANN 6 atc reads)")
    parser.add_argument("--preset", choices=PRESET_NAMES, default=DEFAULT_PRESET,
                        help="model variant (default: {})".format(DEFAULT_PRESET))
    parser.add_argument("--input_format", choices=MODEL_INPUT_DTYPES, default="float32",
                        help="float32: normalized input (as the ModelZoo scripts feed it); uint8: raw RGB, "
                             "normalized inside the model")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_output_file(args.save_path, "--save_path")
    if args.pth is not None:
        require_file(args.pth, "checkpoint")
    check_outputs_apart({"--save_path": args.save_path}, {"the checkpoint": args.pth})
    from hrnetseg.model.export import check_opset, export_onnx, load_model

    check_opset(args.opset)
    with output_lock(args.save_path):
        # A killed export leaves its temporary file (hundreds of MB for w48) beside the target.
        remove_stale_temporaries_beside(args.save_path)
        if args.random_weights is not None:
            print("warning: exporting random weights (seed {}): outputs and mIoU are meaningless; "
                  "use --pth with the official checkpoint for real use".format(args.random_weights), file=sys.stderr)
        model = load_model(args.preset, pth=args.pth, random_weights=args.random_weights)
        report = export_onnx(model, args.save_path, args.height, args.width, batch=args.batch, opset=args.opset,
                             input_format=args.input_format, dynamic_hw=args.dynamic_hw)
    print("wrote {}: input image {} {}, outputs output1 (aux), output2 (main), opset {}".format(
        report.path, "x".join(map(str, report.input_shape)), args.input_format, args.opset))
    checks = [("", report.errors)]
    if report.other_size is not None:
        checks = [(" at {}x{}".format(args.height, args.width), report.errors),
                  (" at {}x{}".format(*report.other_size), report.other_errors)]
    for where, errors in checks:
        for name, (max_abs, rel) in errors.items():
            print("ONNX Runtime vs PyTorch {}{}: max abs error {:.3g}, relative error {:.3g}".format(
                name, where, max_abs, rel))
    return 0


def run() -> None:
    """The console script hrnetseg-pth2onnx: main() under run_cli (one-line errors, exit code 2)."""
    run_cli(main)


if __name__ == "__main__":
    run_cli(main)
