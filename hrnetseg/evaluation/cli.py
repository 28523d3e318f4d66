"""Streaming evaluation: Cityscapes PNGs -> model -> mIoU in one process, nothing written in between.

    python -m hrnetseg.evaluate --datasets_path ./data --onnx hrnet.onnx --batchsize 4 --save_path result.json
    python -m hrnetseg.evaluate --datasets_path ./data --onnx hrnet_any_size.onnx \
        --scales 0.5,0.75,1.0,1.25,1.5,1.75 --flip      # upstream's multi-scale + flip testing

Three stages run at the same time, joined by bounded queues (streaming.py): decode (PNG image and label ->
the model input, with the transform of HRNet_preprocess.py, and trainIds), infer (batches of --batchsize in
id order, a short last batch zero-padded and the padding dropped, as python -m hrnetseg.infer does) and
evaluate (the upsample + argmax and the confusion matrix of HRNet_postprocess.py). Same model, backend,
precision and batch size: the same confusion matrix as the bin pipeline, without its 25 MB per image on disk.
Prints the mIoU table, each stage's busy time (time spent working on items; model loading excluded) and the
wall time; Ctrl-C stops and prints what was evaluated so far.

--scales / --flip / --base_size / --crop_size run upstream HRNet-OCR's multi-scale testing (multiscale.py):
the infer stage runs every scale's inputs (sliding windows above 1.0), the evaluate stage sums the scales'
maps; it needs a model that takes every size the scales make (HRNet_pth2onnx.py --dynamic_hw, or --pth).
The default (--scales 1.0, no --flip, an image whose long side is --base_size) is the single-scale path above.

--report FILE.html writes the page of hrnetseg.evaluation.report (IoU bars, heat map, the --report_worst N worst
images, which the evaluate stage keeps while it scores); --report_worst alone puts their ids and scores into
--save_path's JSON.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional, Sequence, Tuple

from hrnetseg.backends import backend_for_model, check_model_file, load_backend
from hrnetseg.backends.batching import batch_size_for, pad_batch
from hrnetseg.backends.flags import backend_flags
from hrnetseg.data import cityscapes, images
from hrnetseg.evaluation import report as html_report
from hrnetseg.evaluation import worst_images
from hrnetseg.evaluation.metrics import ConfusionMatrix, format_table, write_result
from hrnetseg.evaluation.multiscale import TestTimeAugmentation, check_memory
from hrnetseg.evaluation.streaming import (
    AugmentedStreamingEvaluation,
    StreamingEvaluation,
    check_backend,
    interrupt_after_count,
    stage_report,
)
from hrnetseg.evaluation.tta_flags import add_tta_flags, single_scale_from_args, tta_from_args
from hrnetseg.scaleout.flags import add_ray_flags, check_ray_flags, ray_options
from hrnetseg.util.cli import ArgumentParser, output_index, plain_name, positive_int, progress, run_cli
from hrnetseg.util.errors import EXIT_INTERRUPTED, UserError
from hrnetseg.util.files import check_output_file, check_outputs_apart
from hrnetseg.util.locks import output_locks
from hrnetseg.util.processes import cpu_cores

NOTICE_S = 1.0        # after Ctrl-C, how long to wait for the batch in flight before saying so


def build_parser() -> argparse.ArgumentParser:
    shared = backend_flags(
        backend_help="default from the model: --onnx -> onnxruntime, --pth -> torch",
        precision_help="fp32 (default); bf16 (openvino or torch) or fp16 (torch on a GPU); int8 for an int8-quantised "
                       ".onnx (python3 -m hrnetseg.quantize), as the bin runner",
        warmup_help="untimed runs before the stages start (default: 1 on a GPU, 0 on the CPU)")
    parser = ArgumentParser(description=__doc__.strip().splitlines()[0],
                            parents=[shared])
    parser.add_argument("--datasets_path", required=True,
                        help="the folder holding cityscapes/ (the ModelZoo scripts' ./data) or the cityscapes "
                             "folder itself")
    parser.add_argument("--split", type=plain_name, default="val", help="split to evaluate (default val)")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--onnx", help="ONNX model (default backend onnxruntime)")
    model.add_argument("--pth", help="checkpoint (default backend torch); --preset names its variant")
    parser.add_argument("--input_dtype", choices=("float32", "uint8"), default="float32",
                        help="with --pth: float32 (the upstream transform, default) or uint8 (raw pixels, "
                             "normalized inside the model); an ONNX file fixes its own")
    parser.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N images (by id)")
    parser.add_argument("--output_index", type=output_index, default=None,
                        help="0-based model output to evaluate: 0 = aux, 1 = main (default: main, or the only one)")
    parser.add_argument("--queue_size", type=positive_int, default=None,
                        help="images each queue between stages holds (default: 2 x batch size, at least 4)")
    parser.add_argument("--decode_workers", type=positive_int, default=None,
                        help="decode threads (default: 1 on the CPU, where inference needs the cores; on a GPU "
                             "a quarter of the cores, 1 to 4)")
    parser.add_argument("--eval_workers", type=positive_int, default=None,
                        help="evaluate threads (default: as --decode_workers)")
    parser.add_argument("--cpu_threads", type=positive_int, default=None,
                        help="the model's CPU threads (default: the backend's own choice; with --ray: "
                             "--ray_cpus_per_worker per worker)")
    parser.add_argument("--save_path", default=None, help="result.json to write (HRNet_postprocess.py's format)")
    parser.add_argument("--save_confusion", default=None, metavar="FILE.npz",
                        help="write the confusion matrix and image ids, for python -m hrnetseg.metrics merge")
    images.add_max_pixels_flag(parser)
    html_report.add_report_flags(parser)
    add_tta_flags(parser)
    add_ray_flags(parser, "; rounded up to whole --batchsize batches")
    return parser


# ------------------------------------------------------------------------------------------------- the CLI

def labelled_samples(datasets_path: str, split: str, limit: Optional[int]) -> List[cityscapes.Sample]:
    """The split's images (the first `limit` by id), each with its label; refused when a label is missing."""
    samples = cityscapes.find_images(datasets_path, split)
    if limit is not None:
        samples = samples[:limit]
    unlabelled = [s.id for s in samples if s.label is None]
    if unlabelled:
        raise UserError("{} of {} images have no gtFine label (e.g. {}): evaluation needs every label".format(
            len(unlabelled), len(samples), ", ".join(unlabelled[:5])))
    return samples


def report_interrupted(pipeline: StreamingEvaluation, total: int) -> None:
    """Print what was evaluated before Ctrl-C, then let the batch in flight finish (a second Ctrl-C quits at
    once): leaving while a stage is inside the model's native code would abort the process."""
    partial = pipeline.snapshot()
    print("interrupted: {} of {} images evaluated".format(partial.images, total))
    if partial.images:
        print(format_table(partial.compute()))
    print("\n".join(stage_report(pipeline.stages, pipeline.wall_s, partial.images)))
    print("nothing written (the result would cover only part of the data)", flush=True)
    try:
        if not pipeline.wait_stopped(NOTICE_S):
            print("waiting for the batch in flight to finish (Ctrl-C again quits at once)", file=sys.stderr,
                  flush=True)
            pipeline.wait_stopped()
    except KeyboardInterrupt:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)


def check_outputs(save_path: Optional[str], save_confusion: Optional[str], model: Optional[str] = None,
                  samples: Sequence[cityscapes.Sample] = (), report: Optional[str] = None) -> None:
    """Refuse, before any work, output files that cannot be written, one file asked for twice, and an output
    that is an input of the run (the model, an image, a label) or a lock it holds: it would be replaced."""
    check_output_file(save_path, "--save_path")
    check_output_file(save_confusion, "--save_confusion")
    check_output_file(report, "--report")
    check_outputs_apart({"--save_path": save_path, "--save_confusion": save_confusion, "--report": report},
                        {"the model": model, "an image": [sample.image for sample in samples],
                         "a label": [sample.label for sample in samples]})


def first_image_size(samples: Sequence[cityscapes.Sample]) -> Tuple[int, int]:
    """The size every image must have (the model takes one), from the first image's header."""
    size = images.image_size(samples[0].image)
    if size is None:
        raise UserError("image {} {}".format(samples[0].image, images.unreadable_reason(samples[0].image)))
    return size


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    images.set_max_pixels(args.max_pixels)
    tta = tta_from_args(args)
    model = args.onnx if args.onnx is not None else args.pth   # "" is a (bad) name, not "no model"
    if not model:
        raise UserError("{} is an empty name: give the model file".format("--onnx" if args.onnx is not None
                                                                          else "--pth"))
    check_ray_flags(args)
    if args.ray is not None and args.report_worst:
        raise UserError("--report_worst {}: not with --ray (its workers return one confusion matrix per batch, no "
                        "per-image figures); --report alone draws the bars and the heat map".format(args.report_worst))
    check_outputs(args.save_path, args.save_confusion, model, report=args.report)
    interrupt_after_count()
    kind = args.backend or backend_for_model(model)
    samples = labelled_samples(args.datasets_path, args.split, args.limit)
    check_outputs(args.save_path, args.save_confusion, model, samples, args.report)
    size = first_image_size(samples)
    if not single_scale_from_args(args, *size):
        check_memory(tta, [size])   # also a scale that leaves no pixels: refused before anything is read
    for sample in samples:   # from the headers, before the model loads; decoding checks each label again
        image = images.image_size(sample.image)
        if image is not None:   # an image that cannot be read is refused where it is decoded
            cityscapes.check_label_header(sample.label, image, "its image {}".format(sample.image))
    check_model_file(model)
    with output_locks(args.save_path, args.save_confusion, args.report):
        tta = None if single_scale_from_args(args, *size) else tta
        if args.ray is not None:
            return run_on_ray(args, kind, model, samples, size, tta)
        return run(args, kind, model, samples, size, tta)


def run(args: argparse.Namespace, kind: str, model: str, samples: List[cityscapes.Sample],
        size: Tuple[int, int], tta: Optional[TestTimeAugmentation] = None) -> int:
    """Evaluate `samples`: the single-scale path, or with tta (None: single scale) upstream's multi-scale one."""
    import cv2

    cv2.setNumThreads(1)   # the stages are the parallelism; OpenCV's own threads would only compete
    began = time.perf_counter()
    backend = load_backend(kind, model, device=args.device, precision=args.precision, preset=args.preset,
                           input_dtype=args.input_dtype, threads=args.cpu_threads)
    dtype, index = check_backend(backend, size, args.output_index, tta)
    augmented = tta is not None
    batch = batch_size_for(backend, args.batchsize)
    warmup = args.warmup_count if args.warmup_count is not None else (0 if backend.device == "cpu" else 1)
    warm_size = tta.input_sizes(*size)[0] if augmented else size
    for _ in range(warmup):
        backend.run(pad_batch((), batch, (3,) + warm_size, dtype))
    load_s = time.perf_counter() - began
    queue_size = args.queue_size or max(4, 2 * batch)
    workers = 1 if backend.device == "cpu" else max(1, min(4, cpu_cores() // 4))
    print("evaluate: {} images ({} {}x{}) from {}; {} on {} ({}), batch size {}, output {} ({}); model loaded in "
          "{:.2f} s{}".format(len(samples), dtype, size[0], size[1], args.datasets_path, backend.name, backend.device,
                              backend.precision, batch, index, backend.output_names[index], load_s,
                              " (with {} warm-up run{})".format(warmup, "" if warmup == 1 else "s") if warmup else ""),
          flush=True)
    passes = tta.forward_passes(*size) if augmented else 1
    if augmented:
        queue_size = args.queue_size or 2   # an item holds every scale's logits (275 MB at 1024x2048, 6 scales + flip)
        print("test-time augmentation: {}; {} forward passes per image (model inputs {})".format(
            tta.describe(), passes, ", ".join("{}x{}".format(h, w) for h, w in tta.input_sizes(*size))), flush=True)

    worst = html_report.worst_collector(args.report, args.report_worst)
    with progress(total=len(samples), desc="evaluate") as bar:
        stage_workers = (args.decode_workers or workers, args.eval_workers or workers)
        if augmented:
            pipeline = AugmentedStreamingEvaluation(backend, samples, size, batch, index, queue_size, tta,
                                                    *stage_workers, on_evaluated=bar.update, worst=worst)
        else:
            pipeline = StreamingEvaluation(backend, samples, dtype, size, batch, index, queue_size, *stage_workers,
                                           on_evaluated=bar.update, worst=worst)
        try:
            pipeline.run()
        except KeyboardInterrupt:
            bar.close()
            report_interrupted(pipeline, len(samples))
            raise
    report_and_save(args, pipeline.matrix, index, stage_report(pipeline.stages, pipeline.wall_s,
                                                               pipeline.matrix.images), passes if augmented else 0,
                    worst=worst, details=_report_details(args, model, backend.name, backend.device, backend.precision,
                                                         tta))
    return 0


def _report_details(args: argparse.Namespace, model: str, backend: str, device: str, precision: str,
                    tta: Optional[TestTimeAugmentation]) -> List[Tuple[str, str]]:
    """The report's lines under its title: what was evaluated, on what."""
    return [("model", model), ("backend", "{} on {} ({})".format(backend, device, precision)),
            ("data", "{} ({} split)".format(args.datasets_path, args.split)),
            ("testing", tta.describe() if tta is not None else "single scale")]


def run_on_ray(args: argparse.Namespace, kind: str, model: str, samples: List[cityscapes.Sample],
               size: Tuple[int, int], tta: Optional[TestTimeAugmentation] = None) -> int:
    """The same evaluation on a Ray cluster (hrnetseg.scaleout): the same table and result.json, plus the
    result's "engine" entry (workers, nodes, retried batches, per-worker images and busy time)."""
    from hrnetseg.scaleout.driver import worker_report
    from hrnetseg.scaleout.evaluation import evaluate_on_ray

    ledger, engine, evaluation = evaluate_on_ray(
        ray_options(args), kind, model, samples, size, tta, device=args.device, precision=args.precision,
        preset=args.preset, input_dtype=args.input_dtype, batchsize=args.batchsize, output_index=args.output_index,
        warmup=args.warmup_count, cpu_threads=args.cpu_threads, datasets_path=args.datasets_path)
    passes = tta.forward_passes(*size) if tta is not None else 0
    report_and_save(args, ledger.matrix, evaluation.loaded["output_index"], worker_report(evaluation), passes,
                    engine=engine, details=_report_details(args, model, kind, args.device or "default device",
                                                           args.precision, tta) + [("engine", "Ray")],
                    worst_note="No worst images: the Ray workers return one confusion matrix per batch, not per "
                               "image (run without --ray for them).")
    return 0


def report_and_save(args: argparse.Namespace, matrix: ConfusionMatrix, index: int, timing: List[str],
                    passes: int = 0, engine: Optional[dict] = None, worst: Optional[worst_images.WorstImages] = None,
                    details: Sequence[Tuple[str, str]] = (), worst_note: Optional[str] = None) -> None:
    """Print the mIoU table, the timing lines and (test-time augmentation) the forward passes; write
    --save_confusion, --save_path and --report."""
    matrix.ids.sort()
    matrix.output_index = index
    result = worst_images.add_to_result(matrix.compute(), worst)
    print(format_table(result))
    print("\n".join(timing))
    if passes:
        print("forward passes: {} per image, {} in all".format(passes, passes * matrix.images))
    if engine is not None:
        result["engine"] = engine
    page = html_report.run_page(   # made before any file is written: a failure leaves none of them
        result, "Segmentation report: python -m hrnetseg.evaluate", details, worst, worst_note) if args.report else None
    if args.save_confusion:
        matrix.save(args.save_confusion)
    if args.save_path:
        write_result(args.save_path, result)
        print("result: {}".format(args.save_path))
    if page is not None:
        html_report.write_report(args.report, page)
        print("report: {}".format(args.report))

if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
