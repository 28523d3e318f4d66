"""Local inference runner with ais_bench's flags, files and summary lines, on ONNX Runtime or PyTorch.

    python3 -m hrnetseg.infer --model hrnet.onnx --input prep_dataset --output results --output_dirname bs4 --batchsize 4

Reads a preprocess folder (its manifest.json says dtype and shape; bins that do not fit the model's
input are refused, never reinterpreted), runs it in batches (a short last batch is padded; the padding
is neither written nor counted in the throughput) and writes one float32 file per input file and model
output, as ais_bench does: OUTPUT/OUTPUT_DIRNAME/<id>_0.bin (output1) and <id>_1.bin (output2), plus
OUTPUT/<dirname>_summary.json, and prints ais_bench's "NPU_compute_time (ms)" and "throughput" lines, so
one parser reads both tools. OUTPUT/OUTPUT_DIRNAME is locked for the run (a second run into it stops at
once), and a run that fails or is interrupted removes what it wrote.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .backends import Backend, backend_for_model, check_model_file, load_backend
from .backends.batching import array_bytes, batch_size_for, output_rows, pad_batch, shape_fits_input_spec
from .backends.flags import backend_flags
from .cli import ArgumentParser, UserError, output_index, plain_name, positive_int, progress, run_cli
from .files import not_regular_reason, require_file
from .manifest import read_manifest
from .run_outputs import OUTFMTS, OUTPUT_DTYPE, RunOutputs

BIN_SUFFIX = ".bin"   # the preprocess folder's input files: <id>.bin


def build_parser() -> argparse.ArgumentParser:
    shared = backend_flags(
        backend_help="default from the model file: .onnx -> onnxruntime, .pth -> torch",
        precision_help="fp32 (default); bf16 (openvino or torch) or fp16 (torch on a GPU); outputs are float32",
        warmup_help="untimed runs of the first batch before timing (default: 1 on a GPU, 0 on the CPU)")
    parser = ArgumentParser(prog="python3 -m hrnetseg.infer", description=__doc__.strip().splitlines()[0],
                            parents=[shared])
    parser.add_argument("--model", required=True, help=".onnx (onnxruntime backend) or .pth (torch backend)")
    parser.add_argument("--input", required=True,
                        help="preprocess folder (with manifest.json), or comma-separated .bin files from one")
    parser.add_argument("--output", help="folder for the results; without it nothing is written (a timing run)")
    parser.add_argument("--output_dirname", type=plain_name,
                        help="subfolder of --output, a plain name (default: a time stamp, as ais_bench)")
    parser.add_argument("--outfmt", type=str.upper, choices=OUTFMTS, default="BIN", help="BIN (default) or NPY")
    parser.add_argument("--loop", type=positive_int, default=1, help="runs per batch (timed; default 1)")
    parser.add_argument("--compile", action="store_true",
                        help="torch backend: torch.compile the model (minutes of compile, then faster batches)")
    parser.add_argument("--output_indices", default=None,
                        help="comma-separated output indices to write (default: all; '1' writes only output2, "
                             "the main one, and halves the disk)")
    return parser


# ------------------------------------------------------------------------------------------------ inputs

def list_inputs(spec: str) -> Tuple[str, List[str], dict]:
    """(folder, ids, manifest) for a preprocess folder or comma-separated .bin files from one folder."""
    if os.path.isdir(spec):
        folder = spec
        manifest = read_manifest(folder)
        ids = manifest["ids"]   # plain, distinct names: read_manifest checks them (they become file names)
    else:
        files = [f.strip() for f in spec.split(",") if f.strip()]
        if not files:
            raise UserError("input not found: {}".format(spec))
        for path in files:
            require_file(path, "input file")
        folders = {os.path.dirname(os.path.abspath(f)) for f in files}
        if len(folders) != 1:
            raise UserError("--input files must come from one preprocess folder (its manifest describes them)")
        not_bins = [f for f in files if not f.endswith(BIN_SUFFIX)]
        if not_bins:   # <id>.bin is what gets read: x.txt would run the x.bin beside it
            raise UserError("--input file {} is not a .bin file of a preprocess folder".format(not_bins[0]))
        folder = folders.pop()
        manifest = read_manifest(folder)
        ids = [os.path.basename(f)[:-len(BIN_SUFFIX)] for f in files]
        if len(set(ids)) != len(ids):
            raise UserError("--input names a file twice: each image would be run and counted twice")
        listed = set(manifest["ids"])
        unlisted = [f for f, sample_id in zip(files, ids) if sample_id not in listed]
        if unlisted:   # a bin left from an earlier run (stale) or copied in: not what the manifest describes
            raise UserError("--input file {} is not listed in {}'s manifest (a stale or foreign file): rerun "
                            "HRNet_preprocess.py for it".format(unlisted[0], folder))
    if not ids:
        raise UserError("no input files in {} (its manifest lists none)".format(spec))
    return folder, list(ids), manifest


def check_bins(manifest: dict, folder: str, ids: Sequence[str]) -> Tuple[np.dtype, Tuple[int, ...]]:
    """The bins' (dtype, C x H x W) when every bin is a regular file of that size (checked before the model
    loads); a UserError naming the first that is not."""
    dtype = np.dtype(manifest["dtype"])
    shape = tuple(int(v) for v in manifest["shape"])
    size = array_bytes(dtype, shape)
    for sample_id in ids:
        path = os.path.join(folder, sample_id + BIN_SUFFIX)
        reason = not_regular_reason(path)
        if reason == "not found":
            raise UserError("input file missing: {}".format(path))
        if reason is not None:
            raise UserError("input file {} {}".format(path, reason))
        actual = os.path.getsize(path)
        if actual != size:
            raise UserError(wrong_size(path, actual, dtype, shape))
    return dtype, shape


def check_bins_fit_model(manifest: dict, backend: Backend, folder: str, dtype: np.dtype,
                         shape: Tuple[int, ...]) -> None:
    """A UserError naming the mismatch when the bins do not fit the model's input."""
    spec = backend.input
    if manifest.get("layout", "NCHW") not in ("NCHW", "CHW"):
        raise UserError("the bins in {} are laid out {}; the model takes NCHW".format(folder, manifest["layout"]))
    if dtype != spec.dtype:
        raise UserError("the bins in {} are {} but the model takes {} input ({}): preprocess with --dtype {}{}".format(
            folder, dtype.name, spec.dtype.name, spec.describe(), spec.dtype.name,
            " or export with --input_format uint8" if dtype == np.uint8 else ""))
    if not shape_fits_input_spec(spec, shape):
        raise UserError("the bins in {} are {} but the model takes {}".format(
            folder, "x".join(map(str, shape)), spec.describe()))


def wrong_size(path: str, actual: int, dtype: np.dtype, shape: Sequence[int]) -> str:
    return "{} has {} bytes; {} {} needs {}: not a file of this preprocess run".format(
        path, actual, np.dtype(dtype).name, "x".join(map(str, shape)), array_bytes(dtype, shape))


def read_bin(path: str, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
    """One input bin, checked again as it is read (it may have changed since check_bins looked at it)."""
    reason = not_regular_reason(path)
    if reason is not None:
        raise UserError("input file {} {}".format(path, reason))
    try:
        data = np.fromfile(path, dtype=dtype)
    except OSError as exc:
        raise UserError("cannot read input file {}: {}".format(path, exc.strerror or exc))
    if data.size * data.itemsize != array_bytes(dtype, shape):
        raise UserError(wrong_size(path, data.size * data.itemsize, dtype, shape))
    return data.reshape(shape)


def parse_index_list(text: Optional[str]) -> Optional[List[int]]:
    """--output_indices as sorted integers (None: all outputs), each read as --output_index reads one; the count
    is checked once the model is loaded."""
    if text is None or text.strip().lower() == "all":
        return None
    try:
        indices = sorted({output_index(part.strip()) for part in text.split(",") if part.strip()})
    except argparse.ArgumentTypeError as exc:
        raise UserError("--output_indices takes comma-separated integers, not {!r} ({})".format(text, exc))
    if not indices:
        raise UserError("--output_indices takes comma-separated integers, not {!r}".format(text))
    return indices


def parse_indices(text: Optional[str], count: int) -> List[int]:
    indices = parse_index_list(text)
    if indices is None:
        return list(range(count))
    if any(not 0 <= i < count for i in indices):
        raise UserError("--output_indices {} does not fit a model with {} outputs (0..{})".format(text, count, count - 1))
    return indices


# ----------------------------------------------------------------------------------------------- summary

def timing_stats(times_ms: Sequence[float]) -> Dict[str, float]:
    times = np.asarray(times_ms, dtype=np.float64)
    return {"min": float(times.min()), "max": float(times.max()), "mean": float(times.mean()),
            "median": float(np.median(times)), "p99": float(np.percentile(times, 99))}


def format_count(value: float) -> str:
    """A mean count as ais_bench prints a batch size: 4, or 2.5 when the runs differ."""
    return "{:.3f}".format(value).rstrip("0").rstrip(".")


def throughput(images_per_run: float, mean_ms: float) -> float:
    """Images per second: 1000 * (real images per timed run) / (mean ms per run); padding rows do not count."""
    return 1000.0 * images_per_run / mean_ms if mean_ms > 0 else float("inf")


def summary_lines(stats: Dict[str, float], images_per_run: float) -> List[str]:
    """ais_bench's two summary lines, same wording, so the same parsing reads both tools."""
    return ["[INFO] NPU_compute_time (ms): min = {:.3f}, max = {:.3f}, mean = {:.3f}, median = {:.3f}, "
            "percentile(99%) = {:.3f}".format(stats["min"], stats["max"], stats["mean"], stats["median"], stats["p99"]),
            "[INFO] throughput 1000*batchsize.mean({})/NPU_compute_time.mean({:.3f}): {:.3f}".format(
                format_count(images_per_run), stats["mean"], throughput(images_per_run, stats["mean"]))]


# ------------------------------------------------------------------------------------------------ runner

class Timings(object):
    """Per timed run: its time (ms) and how many real images it carried (a padded last batch carries fewer)."""

    def __init__(self) -> None:
        self.times_ms = []  # type: List[float]
        self.images = []  # type: List[int]

    def add(self, ms: float, images: int) -> None:
        self.times_ms.append(ms)
        self.images.append(images)

    @property
    def images_per_run(self) -> float:
        return float(np.mean(self.images))


def run_inference(backend: Backend, folder: str, ids: Sequence[str], dtype: np.dtype, shape: Tuple[int, ...],
                  batch: int, outputs: Optional[RunOutputs], indices: Sequence[int], loop: int = 1,
                  warmup: int = 0) -> Timings:
    """Run every input in batches; write <id>_<k>.bin per output index k when outputs is set."""
    timings = Timings()
    with progress(total=len(ids), desc="infer bs{}".format(batch)) as bar:
        for start in range(0, len(ids), batch):
            chunk = ids[start:start + batch]
            rows = (read_bin(os.path.join(folder, sample_id + BIN_SUFFIX), dtype, shape) for sample_id in chunk)
            data = pad_batch(rows, batch, shape, dtype)
            if start == 0:
                for _ in range(warmup):
                    backend.run(data)
            for _ in range(loop):
                began = time.perf_counter()
                results = backend.run(data)
                timings.add((time.perf_counter() - began) * 1000.0, len(chunk))
            if outputs is not None:
                for k in indices:
                    for sample_id, array in zip(chunk, output_rows(results, k, batch)):
                        outputs.write(sample_id, k, array)
            bar.update(len(chunk))
    return timings


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_model_file(args.model)
    kind = args.backend or backend_for_model(args.model)
    parse_index_list(args.output_indices)
    folder, ids, manifest = list_inputs(args.input)
    bins = check_bins(manifest, folder, ids)
    outputs = None
    if args.output is not None:
        outputs = RunOutputs(args.output, args.output_dirname or time.strftime("%Y_%m_%d-%H_%M_%S"), args.outfmt)
        outputs.check(folder)
    with outputs.open() if outputs is not None else contextlib.nullcontext():
        run_model(args, kind, folder, ids, manifest, bins, outputs)
    return 0


def run_model(args: argparse.Namespace, kind: str, folder: str, ids: List[str], manifest: dict,
              bins: Tuple[np.dtype, Tuple[int, ...]], outputs: Optional[RunOutputs]) -> None:
    dtype, shape = bins
    backend = load_backend(kind, args.model, device=args.device, precision=args.precision, preset=args.preset,
                           input_dtype=manifest["dtype"], compile=args.compile)
    check_bins_fit_model(manifest, backend, folder, dtype, shape)
    batch = batch_size_for(backend, args.batchsize)
    warmup = args.warmup_count if args.warmup_count is not None else (0 if backend.device == "cpu" else 1)
    indices = parse_indices(args.output_indices, len(backend.output_names))
    if outputs is not None:
        outputs.begin(ids, indices)
    print("[INFO] {} on {} ({}), batch size {}, {} images, {} {}, warm-up {}, loop {}".format(
        backend.name, backend.device, backend.precision, batch, len(ids), dtype.name, "x".join(map(str, shape)),
        warmup, args.loop), flush=True)
    began = time.perf_counter()
    timings = run_inference(backend, folder, ids, dtype, shape, batch, outputs, indices, args.loop, warmup)
    wall = time.perf_counter() - began
    stats = timing_stats(timings.times_ms)
    print("\n".join(summary_lines(stats, timings.images_per_run)))
    if outputs is None:
        return
    outputs.write_summary({
        "backend": backend.name, "device": backend.device, "precision": backend.precision,
        "batchsize": batch, "batchsize_mean": timings.images_per_run, "images": len(ids),
        "throughput": throughput(timings.images_per_run, stats["mean"]),
        "compute_time_ms": stats, "wall_time_s": wall, "loop": args.loop, "warmup_count": warmup,
        "model": os.path.abspath(args.model), "input": os.path.abspath(folder),
        "output": os.path.abspath(outputs.folder), "outfmt": args.outfmt, "output_indices": indices,
        "output_dtype": OUTPUT_DTYPE,
        "NPU_compute_time": {"min": stats["min"], "max": stats["max"], "mean": stats["mean"],
                             "median": stats["median"], "percentile(99%)": stats["p99"]},
    })
    print("[INFO] wrote {} files to {}; summary {}".format(len(outputs.written), outputs.folder, outputs.summary),
          file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
