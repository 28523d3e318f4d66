"""One command for the speed of every stage on this machine, with ratios against the baselines.

    python -m hrnetseg.bench [--stages pre,infer,post] [--height 1024 --width 2048] [--images 8]
                             [--cases onnxruntime:fp32:1,torch:fp32:1,torch:bf16:1] [--repeats 3] [--warmup 1]
                             [--calibration_images 16 | --int8_onnx MODEL] [--pth CKPT --miou_scenes 20]

- pre / post: our preprocess and postprocess against the reference methods (the ModelZoo scripts' steps
  restated, hrnetseg.bench.reference) on the same synthetic data, ms/image, ratio, peak memory.
- infer: images/s and latency per backend:precision:batch case against ONNX Runtime fp32 on the plain export
  (the baseline, run first and last to show drift), the relative error of both outputs against fp32
  PyTorch on the same input, load and first-call (compile) time, peak memory. An int8 case runs an int8 model
  the bench calibrates from its own synthetic scenes (or --int8_onnx); with --miou_scenes N and trained weights,
  each case's mIoU on N held-out synthetic scenes and its change against the baseline in points.

Every measurement runs in its own child process (`python -m hrnetseg.bench --_child JOB.json`): peak
memory (VmHWM) is per case and no case inherits another's caches, threads or allocator state. Prints the
tables and appends them, with the machine and the exact command, to BENCHMARKS.md (--no_record: don't).
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
from typing import List, Optional, Sequence

from hrnetseg.bench import DEFAULT_BENCHMARKS_MD
from hrnetseg.bench.accuracy import check_miou_request, miou_job
from hrnetseg.bench.calibration import calibrate_job, check_int8_onnx
from hrnetseg.bench.cases import BASELINE_SPEC, DEFAULT_CASES, INT8, parse_cases
from hrnetseg.bench.data_stages import data_stage, data_step_job
from hrnetseg.bench.infer_stage import infer_job, infer_stage, prepare_job
from hrnetseg.bench.jobs import CHILD_FLAG, Runner, child_main
from hrnetseg.bench.machine import load_average_text
from hrnetseg.bench.report import block_heading, format_data, format_infer, progress_note, record
from hrnetseg.model.presets import DEFAULT_PRESET, PRESET_NAMES
from hrnetseg.util.cli import ArgumentParser, image_size, nonnegative_int, positive_int, run_cli
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import check_output_file, make_output_folder, require_file

STAGES = ("pre", "infer", "post")
CHILD_JOBS = {"prepare": prepare_job, "infer": infer_job, "pre": data_step_job, "post": data_step_job,
              "calibrate": calibrate_job, "miou": miou_job}


def parse_stages(text: str) -> List[str]:
    stages = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise UserError("--stages takes a comma-separated subset of {}, not {!r}".format(",".join(STAGES), text))
    return [s for s in STAGES if s in stages]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="comma-separated subset of pre,infer,post (default all)")
    parser.add_argument("--height", type=positive_int, default=1024, help="image height (default 1024)")
    parser.add_argument("--width", type=positive_int, default=2048, help="image width (default 2048)")
    parser.add_argument("--images", type=positive_int, default=8, help="data images for pre/post (default 8)")
    parser.add_argument("--preset", choices=PRESET_NAMES, default=DEFAULT_PRESET,
                        help="model variant (default {}; tiny_ocr for tests)".format(DEFAULT_PRESET))
    parser.add_argument("--pth", default=None,
                        help="official checkpoint (default: random weights, seed 0: speeds hold, errors are on "
                             "random weights)")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help="comma-separated backend:precision:batch[:compile] inference cases (default {}); the "
                             "baseline {} always runs first and last".format(",".join(DEFAULT_CASES), BASELINE_SPEC))
    parser.add_argument("--calibration_images", type=positive_int, default=16,
                        help="synthetic scenes the int8 cases' model is calibrated on, once per workdir (default 16; "
                             "none of them a timed or held-out scene)")
    parser.add_argument("--calibration_size", type=image_size, metavar="HxW", default=None,
                        help="calibrate the int8 cases' model on scenes of this size, quantising a --dynamic_hw "
                             "export of the same weights (default: the plain export at the bench's size; NNCF holds "
                             "every activation of an image, so W48 at 1024x2048 needs 512x1024 on a 24 GB machine)")
    parser.add_argument("--int8_onnx", default=None,
                        help="an int8-quantised ONNX at the bench's size for the int8 cases, instead of calibrating "
                             "one")
    parser.add_argument("--miou_scenes", type=nonnegative_int, default=0,
                        help="score each case on this many held-out synthetic scenes (models/README.md's, at the "
                             "bench's size): mIoU and its change against the baseline; needs --pth (default 0: off)")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="timed runs per inference case, rounds per pre/post method (default 3; min and median "
                             "reported)")
    parser.add_argument("--warmup", type=nonnegative_int, default=1,
                        help="untimed runs before timing, in every child (default 1; the first call, a torch.compile "
                             "included, is reported on its own)")
    parser.add_argument("--device", default="cpu", help="inference device: cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--workers", type=positive_int, default=None, help="our pre/post workers (default: all cores)")
    parser.add_argument("--workdir", default=None,
                        help="keep data, checkpoint, export and outputs here and reuse them (default: a temporary "
                             "folder)")
    parser.add_argument("--no_record", action="store_true", help="print only; do not append to BENCHMARKS.md")
    parser.add_argument("--benchmarks_md", default=DEFAULT_BENCHMARKS_MD,
                        help="the file the tables are appended to (default: BENCHMARKS.md in the repository root; "
                             "for an installed copy, in the current folder)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [CHILD_FLAG]:
        if len(argv) != 2:
            raise UserError("{} takes one JOB.json (the benchmark starts its measurements with it)".format(CHILD_FLAG))
        return child_main(argv[1], CHILD_JOBS)
    args = build_parser().parse_args(argv)
    stages = parse_stages(args.stages)
    cases = parse_cases(args.cases)
    if args.pth is not None:
        require_file(args.pth, "checkpoint")
    check_miou_request(args.miou_scenes, args.pth, stages)
    if args.int8_onnx is not None:
        if "infer" not in stages or not any(c.precision == INT8 for c in cases):
            raise UserError("--int8_onnx is for int8 cases: add one (e.g. openvino:int8:1) to --cases and infer to "
                            "--stages")
        check_int8_onnx(args.int8_onnx, args.height, args.width)
    if args.calibration_size is not None and (args.int8_onnx is not None or "infer" not in stages or
                                              not any(c.precision == INT8 for c in cases)):
        raise UserError("--calibration_size is for the int8 cases' own calibration: add one (e.g. openvino:int8:1) "
                        "to --cases and infer to --stages, without --int8_onnx")
    from hrnetseg.backends import parse_device

    parse_device(args.device)   # a bad --device is one line now, not a failed row per case after the export
    if not args.no_record:   # before the benchmark: a folder, FIFO or device here would fail (or hang) at its end
        check_output_file(args.benchmarks_md, "--benchmarks_md")
    own = args.workdir is None
    if args.workdir == "":
        raise UserError("--workdir is an empty name: give a folder (or leave it out for a temporary one)")
    if not own and os.path.lexists(args.workdir) and not os.path.isdir(args.workdir):
        make_output_folder(args.workdir, "--workdir")   # its one-line "exists and is ..., not a folder"
    workdir = tempfile.mkdtemp(prefix="hrnetseg-bench-") if own else os.path.abspath(args.workdir)
    make_output_folder(workdir, "--workdir")
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = load_average_text()
    try:
        run = Runner(workdir)
        parts, ok = [], True
        data_steps = [s for s in stages if s != "infer"]
        data = data_stage(data_steps, run, workdir, args.images, args.height, args.width, args.repeats, args.warmup,
                          args.workers) if data_steps else {}
        if "infer" in stages:
            infer = infer_stage(cases, run, workdir, args.preset, args.pth, args.height, args.width, args.device,
                                args.repeats, args.warmup, args.calibration_images, args.int8_onnx,
                                args.miou_scenes, args.calibration_size)
            parts.append(format_infer(infer, args.preset, args.pth, args.height, args.width, args.repeats,
                                      args.warmup))
            ok = ok and all("error" not in r and "error" not in r.get("miou", {}) for r in infer["results"])
        if data:
            parts.append(format_data(data, args.images, args.height, args.width, args.repeats, args.warmup,
                                     args.workers))
            ok = ok and all(s.get("ok", False) for s in data.values())
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    block = "\n\n".join([block_heading(started, argv, load_start, load_average_text())] + parts)
    print(block)
    if not args.no_record:
        record(args.benchmarks_md, block)
        print(file=sys.stderr)
        progress_note("appended to {}".format(args.benchmarks_md))
    return 0 if ok else 1


def run() -> None:
    """The console script hrnetseg-bench: main() under run_cli (one-line errors, exit code 2)."""
    run_cli(main)


if __name__ == "__main__":
    run_cli(main)
