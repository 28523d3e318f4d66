"""The command line of python3 -m hrnetseg.infer: every option of ais_bench's frontend (the CANN 6 era one), with
its spelling, short form, type and value syntax, plus the runner's own.

ais_bench's boolean options take a value (`--debug true`, `--display_all_summary 0`: yes/true/t/y/1 and
no/false/f/n/0, any case). Options that only steer an Ascend NPU (dynamic-shape modes, profiling, dumps, how the
data reaches the device) are accepted and named once in a one-line note; the rest do here what they do there.
"""
from __future__ import annotations

import argparse
import sys

from hrnetseg.backends.flags import backend_flags
from hrnetseg.runner.layout import OUTFMTS
from hrnetseg.util.cli import ArgumentParser, nonnegative_int, plain_name, positive_int
from hrnetseg.util.errors import UserError

TRUE_WORDS = ("yes", "true", "t", "y", "1")
FALSE_WORDS = ("no", "false", "f", "n", "0")

# option -> the value that leaves it off (ais_bench's default); given otherwise, it is named in the note
NPU_ONLY_OPTIONS = (
    ("--acl_json_path", None), ("--profiler", False), ("--dump", False), ("--run_mode", "array"),
    ("--dymHW", None), ("--dymDims", None), ("--dymShape", None), ("--outputSize", None),
    ("--auto_set_dymshape_mode", False), ("--auto_set_dymdims_mode", False), ("--dymShape_range", None),
    ("--pure_data_type", "zero"),
)


def ais_bool(text: str) -> bool:
    """A boolean option's value, read as ais_bench reads it."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError("expected a boolean (true, 1, false, 0; any case), got {!r}".format(text))


def build_parser(description: str) -> argparse.ArgumentParser:
    shared = backend_flags(
        backend_help="default from the model file: .onnx -> onnxruntime, .pth -> torch",
        precision_help="fp32 (default); bf16 (openvino or torch) or fp16 (torch on a GPU); int8 for an int8-quantised "
                       ".onnx (python3 -m hrnetseg.quantize; openvino or onnxruntime); outputs are float32",
        warmup_help="untimed runs of the first batch before timing (default 1, as ais_bench)",
        device_names=("--device", "-d"),
        device_help="cpu, cuda, cuda:N, a GPU number N (a GPU that cannot be used: the CPU, said in the first "
                    "line), or a list 0,1: the input split between one process per device, as ais_bench "
                    "(default: the first GPU if usable, else cpu)")
    shared.set_defaults(warmup_count=1)
    parser = ArgumentParser(description=description, parents=[shared])
    parser.add_argument("--model", "-m", required=True, help=".onnx (onnxruntime backend) or .pth (torch backend)")
    parser.add_argument("--input", "-i", required=True,
                        help="preprocess folder (with manifest.json), or comma-separated .bin files from one")
    parser.add_argument("--output", "-o", help="folder for the results; without it nothing is written (a timing run)")
    parser.add_argument("--output_dirname", type=plain_name,
                        help="subfolder of --output, a plain name (default: a time stamp, as ais_bench)")
    parser.add_argument("--outfmt", type=str.upper, choices=OUTFMTS, default="BIN",
                        help="BIN (default: raw float32), NPY (with the batch axis: 1 x 19 x h x w) or TXT "
                             "(rows of the last axis, 6 decimals: lossy)")
    parser.add_argument("--loop", "-l", type=positive_int, default=1, help="runs per batch (timed; default 1)")
    parser.add_argument("--display_all_summary", type=ais_bool, default=False,
                        help="true: also print the host-to-device and device-to-host copy times (0 on the CPU)")
    parser.add_argument("--debug", type=ais_bool, default=False, help="true: print the model's inputs and outputs")
    parser.add_argument("--output_batchsize_axis", type=int, default=0,
                        help="the outputs' batch axis, split into one file per input: an int, as ais_bench; only 0, "
                             "the HRNet outputs' (N x 19 x h x w), is taken")
    parser.add_argument("--dymBatch", type=nonnegative_int, default=0,
                        help="batch size for a dynamic-batch model, as --batchsize (0: not given)")
    parser.add_argument("--compile", action="store_true",
                        help="torch backend: torch.compile the model (minutes of compile, then faster batches)")
    parser.add_argument("--output_indices", default=None,
                        help="comma-separated output indices to write (default: all; '1' writes only output2, "
                             "the main one, and halves the disk)")
    parser.add_argument("--cpu_threads", type=positive_int, default=None,
                        help="CPU threads of the backend (default: all cores; with --device 0,1 and no GPUs, "
                             "the cores split between the device processes)")
    npu = parser.add_argument_group("ais_bench options for an Ascend NPU (accepted; ignored here, with a note)")
    npu.add_argument("--acl_json_path", default=None, help="acl.json for profiling or dumps")
    npu.add_argument("--profiler", type=ais_bool, default=False, help="NPU profiling")
    npu.add_argument("--dump", type=ais_bool, default=False, help="NPU tensor dumps")
    npu.add_argument("--run_mode", choices=("array", "files", "tensor", "full"), default="array",
                     help="how ais_bench hands the data to the NPU")
    npu.add_argument("--dymHW", default=None, help="dynamic image size of an .om (the bins fix it here)")
    npu.add_argument("--dymDims", default=None, help="dynamic dims of an .om")
    npu.add_argument("--dymShape", default=None, help="dynamic shape of an .om")
    npu.add_argument("--outputSize", default=None, help="output buffer sizes for a dynamic-shape .om")
    npu.add_argument("--auto_set_dymshape_mode", type=ais_bool, default=False, help="dynamic-shape mode of an .om")
    npu.add_argument("--auto_set_dymdims_mode", type=ais_bool, default=False, help="dynamic-dims mode of an .om")
    npu.add_argument("--pure_data_type", choices=("zero", "random"), default="zero",
                     help="data of a run without --input (the runner always reads --input)")
    npu.add_argument("--dymShape_range", default=None, help="shape ranges to try on a dynamic-shape .om")
    parser.add_argument("--shard", default=None, help=argparse.SUPPRESS)   # one device of --device 0,1 (internal)
    return parser


def check_options(args: argparse.Namespace) -> None:
    """ais_bench's own refusals, the batch size from --dymBatch, and the one-line note naming the NPU-only
    options given (on stderr, so stdout keeps ais_bench's lines)."""
    if args.output_dirname is not None and args.output is None:
        raise UserError("--output_dirname needs --output (it names a subfolder of it), as in ais_bench")
    if args.output_batchsize_axis != 0:
        raise UserError("--output_batchsize_axis {}: the model's outputs (N x 19 x h x w) hold the batch on axis "
                        "0".format(args.output_batchsize_axis))
    if args.dymBatch:
        if args.batchsize is not None and args.batchsize != args.dymBatch:
            raise UserError("--dymBatch {} and --batchsize {} disagree".format(args.dymBatch, args.batchsize))
        args.batchsize = args.dymBatch
    if args.profiler and args.dump:
        raise UserError("--profiler and --dump cannot both be true (as in ais_bench)")
    given = [name for name, off in NPU_ONLY_OPTIONS if getattr(args, name[2:]) != off]
    if given and args.shard is None:   # the device processes of --device 0,1 leave the note to their parent
        print("note: ignored off an Ascend NPU: {}".format(", ".join(given)), file=sys.stderr)
