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
import json
import os
import sys
import time
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .backends import BACKENDS, PRECISIONS, Backend, backend_for_model, load_backend
from .cli import UserError, add_alias_flags, nonnegative_int, plain_name, positive_int, progress, run_cli
from .files import (atomic_path, check_output_file, make_output_folder, not_regular_reason, remove_quietly,
                    remove_stale_temporaries, require_file, write_target, write_text_atomic)
from .locks import output_lock
from .presets import DEFAULT_PRESET, PRESET_NAMES
from .postprocess import OUTPUT_NAME, summary_path_for
from .preprocess import read_manifest

OUTFMTS = ("BIN", "NPY")
BIN_SUFFIX = ".bin"   # the preprocess folder's input files: <id>.bin
OUTPUT_DTYPE = "float32"   # what the runner writes, whatever the backend computes in (recorded in the summary)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m hrnetseg.infer", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", required=True, help=".onnx (onnxruntime backend) or .pth (torch backend)")
    parser.add_argument("--input", required=True,
                        help="preprocess folder (with manifest.json), or comma-separated .bin files from one")
    parser.add_argument("--output", help="folder for the results; without it nothing is written (a timing run)")
    parser.add_argument("--output_dirname", type=plain_name,
                        help="subfolder of --output, a plain name (default: a time stamp, as ais_bench)")
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
    parser.add_argument("--preset", choices=PRESET_NAMES, default=DEFAULT_PRESET,
                        help="model variant of a .pth (default: {})".format(DEFAULT_PRESET))
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
    size = bin_bytes(dtype, shape)
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


def check_fit(manifest: dict, backend: Backend, folder: str, dtype: np.dtype, shape: Tuple[int, ...]) -> None:
    """A UserError naming the mismatch when the bins do not fit the model's input."""
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


def bin_bytes(dtype: np.dtype, shape: Sequence[int]) -> int:
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


def wrong_size(path: str, actual: int, dtype: np.dtype, shape: Sequence[int]) -> str:
    return "{} has {} bytes; {} {} needs {}: not a file of this preprocess run".format(
        path, actual, np.dtype(dtype).name, "x".join(map(str, shape)), bin_bytes(dtype, shape))


def read_bin(path: str, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
    """One input bin, checked again as it is read (it may have changed since check_fit looked at it)."""
    reason = not_regular_reason(path)
    if reason is not None:
        raise UserError("input file {} {}".format(path, reason))
    try:
        data = np.fromfile(path, dtype=dtype)
    except OSError as exc:
        raise UserError("cannot read input file {}: {}".format(path, exc.strerror or exc))
    if data.size * data.itemsize != bin_bytes(dtype, shape):
        raise UserError(wrong_size(path, data.size * data.itemsize, dtype, shape))
    return data.reshape(shape)


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


def parse_index_list(text: Optional[str]) -> Optional[List[int]]:
    """--output_indices as sorted integers (None: all outputs); the count is checked once the model is loaded."""
    if text is None or text.strip().lower() == "all":
        return None
    try:
        indices = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UserError("--output_indices takes comma-separated integers, not {!r}".format(text))
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


def check_model_file(model: str) -> None:
    """The model is a regular file, and not an Ascend .om (whatever --backend says: no local backend runs it)."""
    if not model:
        raise UserError("--model is an empty name: give the model file")
    if os.path.splitext(model)[1].lower() == ".om":
        backend_for_model(model)   # its one-line "run it with ais_bench" refusal
    require_file(model, "model")


# ----------------------------------------------------------------------------------------------- outputs

class RunOutputs(object):
    """OUTPUT/DIRNAME and OUTPUT/DIRNAME_summary.json for one run, under the folder's lock.

    What a failed or interrupted run wrote is removed on the way out: the files it wrote, the summary, and
    the folders it created; files that were there before stay. A summary of an earlier run is removed just
    before the first write, since this run's files replace the ones it described; output files this run would
    not replace are refused then (see refuse_leftovers).
    """

    def __init__(self, output: str, dirname: str, outfmt: str) -> None:
        self.output, self.folder = output, os.path.join(output, dirname)
        self.summary = summary_path_for(self.folder)
        self.suffix = ".npy" if outfmt == "NPY" else ".bin"
        self.outfmt = outfmt
        self.written = []  # type: List[str]
        self._created_folder = False
        self._begun = False   # the earlier summary was removed: this run now replaces what it described

    def check(self, input_folder: str) -> None:
        """Refusals before the lock and the model load: outputs that cannot be written."""
        if not self.output:
            raise UserError("--output is an empty name: give a folder")
        for path, flag in ((self.output, "--output"), (self.folder, "--output_dirname")):
            if os.path.lexists(path) and not os.path.isdir(path):
                make_output_folder(path, flag)   # its one-line "exists and is ..., not a folder"
        if os.path.isdir(self.folder) and os.path.samefile(self.folder, input_folder):
            raise UserError("the output folder {} is the input folder: choose another --output or --output_dirname"
                            .format(self.folder))
        if os.path.isdir(self.output):   # else it is made, empty, after the lock
            check_output_file(self.summary, "summary")

    @contextlib.contextmanager
    def open(self) -> Iterator["RunOutputs"]:
        output_existed = os.path.isdir(self.output)   # the lock file, beside the folder, may create --output
        try:
            with output_lock(self.folder):
                try:
                    self._prepare()
                    yield self
                except BaseException:
                    self._remove_partial()
                    raise
        except BaseException:
            if not output_existed:
                _remove_empty_folder(self.output)
            raise

    def _prepare(self) -> None:
        make_output_folder(self.output, "--output")
        self._created_folder = make_output_folder(self.folder, "--output_dirname")
        remove_stale_temporaries(self.folder)

    def begin(self, ids: Sequence[str], indices: Sequence[int]) -> None:
        """Just before the first write: refuse leftovers (see refuse_leftovers), then remove the summary of an
        earlier run, since this run's files replace the ones it described. A run refused before this point
        leaves the earlier run's files and summary as they were."""
        self.refuse_leftovers(ids, indices)
        self._begun = True
        remove_quietly(write_target(self.summary))

    def refuse_leftovers(self, ids: Sequence[str], indices: Sequence[int]) -> None:
        """Refuse, before anything is written, output files in the folder that this run would not replace.

        They would sit under this run's summary, and the postprocess, which pairs every <id>_<n> file in the
        folder with its label, would evaluate them as this run's: an earlier run on more images or another
        model would silently mix into the mIoU.
        """
        mine = {os.path.basename(self.path_for(sample_id, k)) for sample_id in ids for k in indices}
        others = sorted(name for name in os.listdir(self.folder) if OUTPUT_NAME.match(name) and name not in mine)
        if others:
            raise UserError("{} holds {} output file{} that this run would not replace (e.g. {}), from an earlier "
                            "run: the postprocess would evaluate them as this run's; remove them or choose another "
                            "--output_dirname".format(self.folder, len(others), "" if len(others) == 1 else "s",
                                                      others[0]))

    def path_for(self, sample_id: str, k: int) -> str:
        return os.path.join(self.folder, "{}_{}{}".format(sample_id, k, self.suffix))

    def write(self, sample_id: str, k: int, array: np.ndarray) -> None:
        path = self.path_for(sample_id, k)
        write_output(path, array, self.outfmt)
        self.written.append(path)

    def write_summary(self, summary: dict) -> None:
        write_text_atomic(self.summary, json.dumps(summary, indent=1) + "\n")

    def _remove_partial(self) -> None:
        for path in self.written:
            remove_quietly(path)
        if self._begun:
            remove_quietly(write_target(self.summary))
        if self._created_folder:
            _remove_empty_folder(self.folder)


def _remove_empty_folder(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass   # not empty (files that were there before stay) or already gone


def write_output(path: str, array: np.ndarray, outfmt: str) -> None:
    array = np.ascontiguousarray(array, dtype=OUTPUT_DTYPE)   # the summary says float32: make it so
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            if outfmt == "NPY":
                np.save(fh, array)
            else:
                _write_array(fh, array)


def _write_array(fh, array: np.ndarray) -> None:
    fh.write(array.data)


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

def pad_batch(rows: Iterable[np.ndarray], batch: int, shape: Sequence[int], dtype) -> np.ndarray:
    """The rows (each C x H x W) as one batch of `batch`; a short last batch stays zero-padded, as ais_bench pads."""
    try:
        data = np.zeros((batch,) + tuple(shape), dtype=dtype)
    except MemoryError:
        raise UserError("not enough memory for a batch of {} x {} {} ({:.3g} GB): choose a smaller --batchsize"
                        .format(batch, "x".join(map(str, shape)), np.dtype(dtype).name,
                                batch * bin_bytes(dtype, shape) / 1e9)) from None
    for row, array in enumerate(rows):
        data[row] = array
    return data


def output_rows(outputs: Sequence[np.ndarray], k: int, batch: int) -> np.ndarray:
    """Output k of one batch run (rows in input order, padding rows included); refuses a changed batch size."""
    if outputs[k].shape[0] != batch:
        raise UserError("model output {} has batch {} for an input batch of {}".format(k, outputs[k].shape[0], batch))
    return outputs[k]


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
    check_fit(manifest, backend, folder, dtype, shape)
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
