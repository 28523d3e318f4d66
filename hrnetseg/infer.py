"""Local inference runner with ais_bench's flags, files and summary lines, on ONNX Runtime or PyTorch.

    python3 -m hrnetseg.infer --model hrnet.onnx --input prep_dataset --output results --output_dirname bs4 --batchsize 4

Reads a preprocess folder (its manifest.json says dtype and shape; bins that do not fit the model's
input are refused, never reinterpreted), runs it in batches (a short last batch is padded and the
padding dropped) and writes one float32 file per input file and model output, as ais_bench does:
OUTPUT/OUTPUT_DIRNAME/<id>_0.bin (output1) and <id>_1.bin (output2), plus OUTPUT/<dirname>_summary.json,
and prints ais_bench's "NPU_compute_time (ms)" and "throughput" lines, so one parser reads both tools.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .backends import BACKENDS, PRECISIONS, Backend, backend_for_model, load_backend
from .cli import UserError, add_alias_flags, positive_int, progress, run_cli
from .files import atomic_path, write_text_atomic
from .preprocess import read_manifest

OUTFMTS = ("BIN", "NPY")
SUMMARY_SUFFIX = "_summary.json"


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError("expected an integer >= 0, got {!r}".format(text))
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m hrnetseg.infer", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", required=True, help=".onnx (onnxruntime backend) or .pth (torch backend)")
    parser.add_argument("--input", required=True,
                        help="preprocess folder (with manifest.json), or comma-separated .bin files from one")
    parser.add_argument("--output", help="folder for the results; without it nothing is written (a timing run)")
    parser.add_argument("--output_dirname", help="subfolder of --output (default: a time stamp, as ais_bench)")
    parser.add_argument("--outfmt", type=str.upper, choices=OUTFMTS, default="BIN", help="BIN (default) or NPY")
    parser.add_argument("--loop", type=positive_int, default=1, help="runs per batch (timed; default 1)")
    parser.add_argument("--warmup_count", type=nonnegative_int, default=None,
                        help="untimed runs of the first batch before timing (default: 1 on a GPU, 0 on the CPU)")
    parser.add_argument("--batchsize", type=positive_int, default=None,
                        help="batch size for a model with a dynamic batch axis (default 1); must match a fixed one")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N or a GPU number N (default: the first GPU if usable, else cpu)")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="default from the model file: .onnx -> onnxruntime, .pth -> torch")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (default); bf16 (openvino or torch) or fp16 (torch on a GPU); outputs are float32")
    parser.add_argument("--compile", action="store_true",
                        help="torch backend: torch.compile the model (minutes of compile, then faster batches)")
    parser.add_argument("--preset", default="w48_ocr", help="model variant of a .pth (default: w48_ocr)")
    parser.add_argument("--output_indices", default=None,
                        help="comma-separated output indices to write (default: all; '1' writes only output2, "
                             "the main one, and halves the disk)")
    add_alias_flags(parser)
    return parser


# ------------------------------------------------------------------------------------------------ inputs

def list_inputs(spec: str) -> Tuple[str, List[str], dict]:
    """(folder, ids, manifest) for a preprocess folder or comma-separated .bin files from one folder."""
    if os.path.isdir(spec):
        folder = spec
        manifest = read_manifest(folder)
        ids = list(manifest["ids"])
    else:
        files = [f.strip() for f in spec.split(",") if f.strip()]
        missing = [f for f in files if not os.path.isfile(f)]
        if not files or missing:
            raise UserError("input not found: {}".format(", ".join(missing) or spec))
        folders = {os.path.dirname(os.path.abspath(f)) for f in files}
        if len(folders) != 1:
            raise UserError("--input files must come from one preprocess folder (its manifest describes them)")
        folder = folders.pop()
        manifest = read_manifest(folder)
        ids = [os.path.splitext(os.path.basename(f))[0] for f in files]
    if not ids:
        raise UserError("no input files in {} (its manifest lists none)".format(spec))
    return folder, ids, manifest


def check_fit(manifest: dict, backend: Backend, folder: str, ids: Sequence[str]) -> Tuple[np.dtype, Tuple[int, ...]]:
    """The bins' (dtype, C x H x W) when they fit the model's input; a UserError naming the mismatch otherwise."""
    dtype = np.dtype(manifest["dtype"])
    shape = tuple(int(v) for v in manifest["shape"])
    spec = backend.input
    if manifest.get("layout", "NCHW") not in ("NCHW", "CHW"):
        raise UserError("the bins in {} are laid out {}; the model takes NCHW".format(folder, manifest["layout"]))
    if dtype != spec.dtype:
        raise UserError("the bins in {} are {} but the model takes {} input ({}): preprocess with --dtype {}{}".format(
            folder, dtype.name, spec.dtype.name, spec.describe(), spec.dtype.name,
            " or export with --input_format uint8" if dtype == np.uint8 else ""))
    if not fits_input(spec, shape):
        raise UserError("the bins in {} are {} but the model takes {}".format(
            folder, "x".join(map(str, shape)), spec.describe()))
    size = int(np.prod(shape)) * dtype.itemsize
    for sample_id in ids:
        path = os.path.join(folder, sample_id + ".bin")
        if not os.path.isfile(path):
            raise UserError("input file missing: {}".format(path))
        actual = os.path.getsize(path)
        if actual != size:
            raise UserError("{} has {} bytes; {} {} needs {}: not a file of this preprocess run".format(
                path, actual, dtype.name, "x".join(map(str, shape)), size))
    return dtype, shape


def fits_input(spec, shape: Sequence[int]) -> bool:
    """Whether one C x H x W input fits the model's N x C x H x W input spec (None = any size on that axis)."""
    return len(spec.shape) == 4 and all(want is None or want == got for want, got in zip(spec.shape[1:], shape))


def batch_size_for(backend: Backend, requested: Optional[int]) -> int:
    fixed = backend.input.shape[0]
    if fixed is None:
        return requested or 1
    if requested is not None and requested != fixed:
        raise UserError("the model has a fixed batch size of {}; --batchsize {} does not fit".format(fixed, requested))
    return fixed


def parse_indices(text: Optional[str], count: int) -> List[int]:
    if text is None or text.strip().lower() == "all":
        return list(range(count))
    try:
        indices = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UserError("--output_indices takes comma-separated integers, not {!r}".format(text))
    bad = [i for i in indices if not 0 <= i < count]
    if not indices or bad:
        raise UserError("--output_indices {} does not fit a model with {} outputs (0..{})".format(text, count, count - 1))
    return indices


# ----------------------------------------------------------------------------------------------- outputs

def write_output(path: str, array: np.ndarray, outfmt: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            if outfmt == "NPY":
                np.save(fh, array)
            else:
                fh.write(np.ascontiguousarray(array).data)


def timing_stats(times_ms: Sequence[float]) -> Dict[str, float]:
    times = np.asarray(times_ms, dtype=np.float64)
    return {"min": float(times.min()), "max": float(times.max()), "mean": float(times.mean()),
            "median": float(np.median(times)), "p99": float(np.percentile(times, 99))}


def summary_lines(stats: Dict[str, float], batch: int) -> List[str]:
    """ais_bench's two summary lines, same wording, so the same parsing reads both tools."""
    throughput = 1000.0 * batch / stats["mean"] if stats["mean"] > 0 else float("inf")
    return ["[INFO] NPU_compute_time (ms): min = {:.3f}, max = {:.3f}, mean = {:.3f}, median = {:.3f}, "
            "percentile(99%) = {:.3f}".format(stats["min"], stats["max"], stats["mean"], stats["median"], stats["p99"]),
            "[INFO] throughput 1000*batchsize.mean({})/NPU_compute_time.mean({:.3f}): {:.3f}".format(
                batch, stats["mean"], throughput)]


# ------------------------------------------------------------------------------------------------ runner

def pad_batch(rows: Iterable[np.ndarray], batch: int, shape: Sequence[int], dtype) -> np.ndarray:
    """The rows (each C x H x W) as one batch of `batch`; a short last batch stays zero-padded, as ais_bench pads."""
    data = np.zeros((batch,) + tuple(shape), dtype=dtype)
    for row, array in enumerate(rows):
        data[row] = array
    return data


def output_rows(outputs: Sequence[np.ndarray], k: int, batch: int) -> np.ndarray:
    """Output k of one batch run (rows in input order, padding rows included); refuses a changed batch size."""
    if outputs[k].shape[0] != batch:
        raise UserError("model output {} has batch {} for an input batch of {}".format(k, outputs[k].shape[0], batch))
    return outputs[k]


def run_inference(backend: Backend, folder: str, ids: Sequence[str], dtype: np.dtype, shape: Tuple[int, ...],
                  batch: int, out_dir: Optional[str], indices: Sequence[int], outfmt: str = "BIN",
                  loop: int = 1, warmup: int = 0) -> List[float]:
    """Run every input in batches; write <id>_<k>.bin per output index k when out_dir is set; return ms per run."""
    suffix = ".npy" if outfmt == "NPY" else ".bin"
    times = []
    with progress(total=len(ids), desc="infer bs{}".format(batch)) as bar:
        for start in range(0, len(ids), batch):
            chunk = ids[start:start + batch]
            data = pad_batch((np.fromfile(os.path.join(folder, sample_id + ".bin"), dtype=dtype).reshape(shape)
                              for sample_id in chunk), batch, shape, dtype)
            if start == 0:
                for _ in range(warmup):
                    backend.run(data)
            for _ in range(loop):
                began = time.perf_counter()
                outputs = backend.run(data)
                times.append((time.perf_counter() - began) * 1000.0)
            if out_dir is not None:
                for k in indices:
                    for sample_id, array in zip(chunk, output_rows(outputs, k, batch)):
                        write_output(os.path.join(out_dir, "{}_{}{}".format(sample_id, k, suffix)), array, outfmt)
            bar.update(len(chunk))
    return times


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    kind = args.backend or backend_for_model(args.model)
    folder, ids, manifest = list_inputs(args.input)
    backend = load_backend(kind, args.model, device=args.device, precision=args.precision, preset=args.preset,
                           input_dtype=manifest["dtype"], compile=args.compile)
    dtype, shape = check_fit(manifest, backend, folder, ids)
    batch = batch_size_for(backend, args.batchsize)
    warmup = args.warmup_count if args.warmup_count is not None else (0 if backend.device == "cpu" else 1)
    indices = parse_indices(args.output_indices, len(backend.output_names))

    out_dir = None
    dirname = args.output_dirname or time.strftime("%Y_%m_%d-%H_%M_%S")
    if args.output is not None:
        out_dir = os.path.join(args.output, dirname)
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as exc:
            raise UserError("cannot create output folder {}: {}".format(out_dir, exc.strerror or exc))
    print("[INFO] {} on {} ({}), batch size {}, {} images, {} {}, warm-up {}, loop {}".format(
        backend.name, backend.device, backend.precision, batch, len(ids), dtype.name, "x".join(map(str, shape)),
        warmup, args.loop), flush=True)
    began = time.perf_counter()
    times = run_inference(backend, folder, ids, dtype, shape, batch, out_dir, indices, args.outfmt, args.loop, warmup)
    wall = time.perf_counter() - began
    stats = timing_stats(times)
    lines = summary_lines(stats, batch)
    print("\n".join(lines))
    if out_dir is not None:
        summary = {
            "backend": backend.name, "device": backend.device, "precision": backend.precision,
            "batchsize": batch, "images": len(ids), "throughput": 1000.0 * batch / stats["mean"],
            "compute_time_ms": stats, "wall_time_s": wall, "loop": args.loop, "warmup_count": warmup,
            "model": os.path.abspath(args.model), "input": os.path.abspath(folder), "output": os.path.abspath(out_dir),
            "outfmt": args.outfmt, "output_indices": indices,
            "NPU_compute_time": {"min": stats["min"], "max": stats["max"], "mean": stats["mean"],
                                 "median": stats["median"], "percentile(99%)": stats["p99"]},
        }
        path = os.path.join(args.output, dirname + SUMMARY_SUFFIX)
        write_text_atomic(path, json.dumps(summary, indent=1) + "\n")
        print("[INFO] wrote {} files to {}; summary {}".format(
            len(ids) * len(indices), out_dir, path), file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
