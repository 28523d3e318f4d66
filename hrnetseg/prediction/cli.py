"""Segment your own pictures and videos: image files, folders (searched recursively) and videos -> the Cityscapes
classes as labelIds / trainIds PNGs, the colour picture or the colours over the photo.

    python -m hrnetseg.predict --onnx hrnet.onnx --input photos/ dashcam.mp4 --output predictions

Every image, whatever its size, goes through upstream HRNet-OCR's multi-scale inference
(hrnetseg.evaluation.multiscale): its long side resized to --base_size x scale, sliding windows of --crop_size
above scale 1.0, optionally flipped. A model with a fixed input size must take every size that needs (export
with --dynamic_hw for any). Outputs keep the inputs' sub-folders; a rerun keeps the outputs that are up to date
(hrnetseg.prediction.outputs) unless --overwrite.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.backends import backend_for_model, check_model_file, load_backend
from hrnetseg.backends.flags import backend_flags
from hrnetseg.data import images
from hrnetseg.data.videos import VideoInfo, remove_stale_video_temporaries
from hrnetseg.evaluation.multiscale import check_memory, check_model_takes, main_output_runner
from hrnetseg.evaluation.tta_flags import add_tta_flags, tta_from_args
from hrnetseg.prediction.inputs import BadInput, Input, SameAs, find_inputs, look_at
from hrnetseg.prediction.outputs import RECORD, OutputRecord, kinds_to_write, planned_outputs, record_key
from hrnetseg.prediction.per_input import (
    DEFAULT_SAVE,
    SAVE_KINDS,
    UnreadableInput,
    predict_image_file,
    predict_video_file,
    save_kinds,
)
from hrnetseg.scaleout.flags import add_ray_flags, check_ray_flags, ray_options
from hrnetseg.util.cli import ArgumentParser, output_index, progress, run_cli
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import check_outputs_apart, make_output_folder, not_regular_reason, remove_stale_temporaries
from hrnetseg.util.locks import output_lock

MAX_SIZES_SHOWN = 3   # image sizes whose forward passes the first lines name


def build_parser() -> argparse.ArgumentParser:
    shared = backend_flags(
        backend_help="default from the model file: .onnx -> onnxruntime, .pth -> torch",
        precision_help="fp32 (default); bf16 (openvino or torch) or fp16 (torch on a GPU); int8 for an int8-quantised "
                       ".onnx (python3 -m hrnetseg.quantize; openvino or onnxruntime)",
        warmup_help="untimed model runs before the first input (default: 1 on a GPU, 0 on the CPU)")
    parser = ArgumentParser(description=__doc__.strip().splitlines()[0],
                            parents=[shared])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--onnx", help="ONNX model (default backend onnxruntime); export it with --dynamic_hw to "
                                      "take any image size")
    model.add_argument("--pth", help="checkpoint (default backend torch, any image size); --preset names its variant")
    model.add_argument("--model", help="a model file, .onnx or .pth (backend by the extension)")
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="image files (PNG, JPEG, ...), folders (searched recursively) or videos (mp4, avi, "
                             "mov, ...)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="folder for the results; inputs found in a folder keep their sub-folders here")
    parser.add_argument("--save", type=save_kinds, default=DEFAULT_SAVE, metavar="KIND[,KIND...]",
                        help="what to write per image, of {}: labelIds (`<stem>_labelIds.png`, Cityscapes ids, "
                             "the benchmark server's format), trainIds, color (the Cityscapes palette), overlay "
                             "(the colours over the photo; default). A video always gives `<stem>_overlay.mp4`, "
                             "the other kinds as PNGs per frame".format(",".join(SAVE_KINDS)))
    parser.add_argument("--output_index", type=output_index, default=None,
                        help="0-based model output to predict with: 0 = aux, 1 = main (default: main, or the "
                             "only one)")
    parser.add_argument("--skip_bad", action="store_true",
                        help="leave out inputs that cannot be read (missing, empty, truncated, not an image or "
                             "video, not a regular file) and list them at the end (default: stop at the first)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write every output again (default: a rerun keeps the outputs made from the same input "
                             "with the same settings that decode whole; see predict_record.json)")
    images.add_max_pixels_flag(parser)
    add_tta_flags(parser)
    add_ray_flags(parser, "; images go to Ray, videos run in this process")
    return parser


# ------------------------------------------------------------------------------------------------- checks

def model_path(args: argparse.Namespace) -> Tuple[str, str]:
    """(model file, backend) from --onnx / --pth / --model and --backend."""
    flag, model = next((flag, value) for flag, value in (("--onnx", args.onnx), ("--pth", args.pth),
                                                         ("--model", args.model)) if value is not None)
    if not model:
        raise UserError("{} is an empty name: give the model file".format(flag))
    kind = args.backend or backend_for_model(model)
    check_model_file(model)
    return model, kind


def check_output(output: str, model: str) -> None:
    """--output must be a folder (or not exist yet), and not the model file."""
    if not output:
        raise UserError("--output is an empty name: give a folder")
    if os.path.lexists(output) and not os.path.isdir(output):
        reason = not_regular_reason(output) or "is a file"
        raise UserError("--output {} {}, not a folder".format(output, reason.split(", not")[0]))
    if os.path.realpath(output) == os.path.realpath(model):
        raise UserError("--output {} is the model file".format(output))


def usable_inputs(args: argparse.Namespace) -> Tuple[List[Input], Dict[str, VideoInfo], Dict[str, Tuple[int, int]],
                                                     List[BadInput]]:
    """The inputs that can be read (from their headers), each video's info, each input's image or frame size,
    and the bad ones; without --skip_bad the first bad one stops the run here, before the model is loaded. A
    name that leads to a file or folder already taken is said on stderr (predicted once)."""
    usable, videos, size_of, bad = [], {}, {}, []
    for item in find_inputs(args.input, args.output):
        if isinstance(item, SameAs):
            print("predict: {} is {} again: predicted once, as {}".format(item.path, item.first, item.first),
                  file=sys.stderr, flush=True)
            continue
        if isinstance(item, Input):
            size, info, reason = look_at(item)
            if size is None:
                item = BadInput(item.path, reason)
        if isinstance(item, BadInput):
            if not args.skip_bad:
                refuse(item)
            bad.append(item)
            continue
        if info is not None:
            videos[item.path] = info
        size_of[item.path] = size
        usable.append(item)
    for item in bad:
        print("predict: skipping {}: {}".format(item.path, item.reason), file=sys.stderr, flush=True)
    if not usable:
        raise UserError("nothing to predict: none of the {} input{} can be read{}".format(
            len(bad), "" if len(bad) == 1 else "s", " (e.g. {}: {})".format(bad[0].path, bad[0].reason) if bad
            else ""))
    return usable, videos, size_of, bad


def refuse(item: BadInput) -> None:
    raise UserError("cannot use {}: {}; --skip_bad skips such inputs".format(item.path, item.reason))


def refuse_blocked_outputs(output: str, inputs: Sequence[Input], kinds: Sequence[str],
                           videos: Dict[str, VideoInfo], model: str) -> None:
    """Before the model loads: an existing output that is a folder, FIFO or device, or an input of the run (the
    model, an image or video, also through a symbolic link: --overwrite writes through it), is never replaced;
    two inputs whose outputs would have one name (a video's frame folder and a sub-folder of the inputs) are
    refused, naming both."""
    owner: Dict[str, str] = {}
    record = os.path.join(output, RECORD)
    if os.path.lexists(record) and not_regular_reason(record) is not None:
        raise UserError("cannot write {}: it {}".format(record, not_regular_reason(record)))
    planned = [record]
    for item in inputs:
        for path in planned_outputs(output, item, kinds, videos.get(item.path)):
            if path in owner:
                raise UserError("{} and {} would both be written as {}: rename one, or predict them into separate "
                                "--output folders".format(owner[path], item.path, path))
            owner[path] = item.path
            if os.path.lexists(path) and not_regular_reason(path) is not None:
                raise UserError("cannot write {}: it {}".format(path, not_regular_reason(path)))
            planned.append(path)
    check_outputs_apart({"the output": planned}, {"the model": model, "the input": [item.path for item in inputs]},
                        locked={"--output": output})


def remove_leftovers(output: str) -> None:
    """The temporaries of killed runs anywhere under the output folder (this run holds its lock)."""
    for folder, subfolders, _ in os.walk(output):
        remove_stale_temporaries(folder, "*.png")
        remove_stale_temporaries(folder, RECORD)
        remove_stale_video_temporaries(folder)
        subfolders[:] = [name for name in subfolders if not name.endswith(".tmp")]


def run_settings(args: argparse.Namespace, kind: str, model: str, tta) -> dict:
    """What decides an output's pixels besides its source: the model file as it is now, how it is run, the
    test-time augmentation. An output made otherwise is made again."""
    info = os.stat(model)
    return {"model": os.path.realpath(model), "model_size": int(info.st_size),
            "model_mtime_ns": int(info.st_mtime_ns), "backend": kind, "precision": args.precision,
            "preset": args.preset, "output_index": args.output_index, "scales": list(tta.scales), "flip": tta.flip,
            "base_size": tta.base_size, "crop_size": list(tta.crop_size)}


def plan_outputs(args: argparse.Namespace, record: OutputRecord, settings: dict, inputs: Sequence[Input],
                 videos: Dict[str, VideoInfo], size_of: Dict[str, Tuple[int, int]]) -> Dict[str, Tuple[str, ...]]:
    """input path -> the kinds this run writes (none: left alone). The record stops vouching for them, on disk,
    before any of them is rewritten."""
    plan = {item.path: kinds_to_write(record, args.output, item, args.save, settings, size_of[item.path],
                                      videos.get(item.path), args.overwrite) for item in inputs}
    for item in inputs:
        record.forget(record_key(item), plan[item.path])
    record.save(force=True)
    return plan


# ------------------------------------------------------------------------------------------------- the CLI

def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    images.set_max_pixels(args.max_pixels)
    tta = tta_from_args(args)
    check_ray_flags(args)
    model, kind = model_path(args)
    check_output(args.output, model)
    inputs, videos, size_of, bad = usable_inputs(args)
    sizes: List[Tuple[int, int]] = []
    for size in size_of.values():
        if size not in sizes:
            sizes.append(size)
    check_memory(tta, sizes)   # before the sizes' windows are listed, and before any work
    needed: List[Tuple[int, int]] = []
    for height, width in sizes:
        needed.extend(size for size in tta.input_sizes(height, width) if size not in needed)
    created = make_output_folder(args.output, "--output")
    try:
        with output_lock(args.output):
            remove_leftovers(args.output)
            refuse_blocked_outputs(args.output, inputs, args.save, videos, model)
            record = OutputRecord(args.output)
            settings = run_settings(args, kind, model, tta)
            plan = plan_outputs(args, record, settings, inputs, videos, size_of)
            try:
                code = (run_on_ray if args.ray is not None else run)(args, kind, model, tta, inputs, videos, sizes,
                                                                     needed, bad, plan, record, settings)
            except BaseException:
                with contextlib.suppress(UserError):   # the error in flight is the one to report
                    record.save(force=True)
                raise
            record.save(force=True)
            return code
    except BaseException:
        if created:   # a run that failed before writing any output leaves no folder behind
            with contextlib.suppress(OSError):
                if set(os.listdir(args.output)) <= {RECORD}:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(args.output, RECORD))
                    os.rmdir(args.output)
        raise


def run(args: argparse.Namespace, kind: str, model: str, tta, inputs: List[Input], videos: Dict[str, VideoInfo],
        sizes: List[Tuple[int, int]], needed: List[Tuple[int, int]], bad: List[BadInput],
        plan: Dict[str, Tuple[str, ...]], record: OutputRecord, settings: dict) -> int:
    """Load the model, check it takes every size needed, predict each input in turn (the kinds `plan` gives it),
    add what is finished to the record, print the summary."""
    began = time.perf_counter()
    backend = load_backend(kind, model, device=args.device, precision=args.precision, preset=args.preset)
    check_model_takes(backend.input, needed)   # before the slow part: every size the scales need
    # one input at a time unless asked: a scale's windows (and their flips) at once could exceed the memory
    run_main = main_output_runner(backend, args.output_index, args.batchsize or 1)
    warmup = args.warmup_count if args.warmup_count is not None else (0 if backend.device == "cpu" else 1)
    for _ in range(warmup):
        run_main(np.zeros((1, 3) + needed[0], np.float32))
    images = sum(1 for item in inputs if not item.video)
    print("predict: {} image{} and {} video{} ({} frames by their headers); {} on {} ({}); {}; model loaded in "
          "{:.2f} s".format(images, "" if images == 1 else "s", len(videos), "" if len(videos) == 1 else "s",
                            sum(info.frames for info in videos.values()), backend.name, backend.device,
                            backend.precision, tta.describe(), time.perf_counter() - began), flush=True)
    print("forward passes per image: {}{}".format(", ".join(
        "{} at {}x{}".format(tta.forward_passes(h, w), h, w) for h, w in sizes[:MAX_SIZES_SHOWN]),
        ", ..." if len(sizes) > MAX_SIZES_SHOWN else ""), flush=True)

    started = time.perf_counter()
    written, skipped, predicted_images, predicted_frames = 0, [], 0, 0
    total = images + sum(info.frames for info in videos.values())
    with progress(total=total, desc="predict") as bar:
        for item in inputs:
            kinds = plan[item.path]
            if not kinds:
                skipped.append(item.path)
                bar.update(videos[item.path].frames if item.video else 1)
                continue
            try:
                if item.video:
                    outcome = predict_video_file(item, args.output, kinds, run_main, tta, videos[item.path],
                                                 on_frame=lambda: bar.update(1))
                    predicted_frames += outcome.predicted
                else:
                    outcome = predict_image_file(item, args.output, kinds, run_main, tta)
                    predicted_images += outcome.predicted
                    bar.update(1)
            except UnreadableInput as exc:
                if not args.skip_bad:
                    raise
                print("predict: skipping {}: {}".format(exc.path, exc.reason), file=sys.stderr, flush=True)
                bad.append(BadInput(exc.path, exc.reason))
                continue
            record.add(record_key(item), outcome.source, kinds, settings, outcome.predicted if item.video else None)
            record.save()
            written += len(outcome.written)
    wall = time.perf_counter() - started
    print(summary(predicted_images, predicted_frames, wall, written, args.output, skipped, bad))
    return 0


def run_on_ray(args: argparse.Namespace, kind: str, model: str, tta, inputs: List[Input],
               videos: Dict[str, VideoInfo], sizes: List[Tuple[int, int]], needed: List[Tuple[int, int]],
               bad: List[BadInput], plan: Dict[str, Tuple[str, ...]], record: OutputRecord, settings: dict) -> int:
    """The image files on a Ray cluster (hrnetseg.scaleout), then the videos here, as run() does them."""
    from hrnetseg.scaleout.driver import worker_report
    from hrnetseg.scaleout.prediction import predict_on_ray

    images = [item for item in inputs if not item.video]
    if images:
        ledger, ray_run, left_alone = predict_on_ray(
            ray_options(args), kind, model, tta, images, needed, output=args.output, plan=plan, record=record,
            settings=settings, skip_bad=args.skip_bad, device=args.device, precision=args.precision,
            preset=args.preset, output_index=args.output_index, batchsize=args.batchsize,
            warmup=args.warmup_count)
        if ray_run is not None:
            print("\n".join(worker_report(ray_run)))
        bad = bad + [BadInput(path, reason) for path, reason in (ledger.bad if ledger else [])]
        print(summary(ledger.predicted if ledger else 0, 0, ray_run.wall_s if ray_run else 0.0,
                      ledger.written if ledger else 0, args.output, left_alone, bad))
    clips = [item for item in inputs if item.video]
    if not clips:
        return 0
    print("predict: {} video{} in this process (videos are not split over Ray)".format(
        len(clips), "" if len(clips) == 1 else "s"), flush=True)
    return run(args, kind, model, tta, clips, videos, sizes, needed, [], plan, record, settings)


def summary(images: int, frames: int, wall: float, written: int, output: str, skipped: Sequence[str],
            bad: Sequence[BadInput]) -> str:
    """The closing lines: what was predicted how fast, where the files went, what was left out."""
    done = images + frames
    lines = ["predicted {} image{} and {} video frame{} in {:.2f} s ({:.2f} fps, {:.3f} s each); wrote {} "
             "file{} under {}".format(images, "" if images == 1 else "s", frames, "" if frames == 1 else "s", wall,
                                      done / wall if wall > 0 else 0.0, wall / done if done else 0.0, written,
                                      "" if written == 1 else "s", output)]
    if skipped:
        lines.append("left alone {} input{} whose outputs are up to date (--overwrite writes them again)".format(
            len(skipped), "" if len(skipped) == 1 else "s"))
    if bad:
        lines.append("skipped {} unreadable input{}: {}".format(len(bad), "" if len(bad) == 1 else "s", "; ".join(
            "{} ({})".format(item.path, item.reason) for item in bad)))
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
