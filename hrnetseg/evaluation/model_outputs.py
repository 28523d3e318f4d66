"""The model's output files: where they are, how ais_bench and the older benchmark tool name them, which
file is which output, their dtype, and reading one as logits.

ais_bench names the outputs of image `<id>` `<id>_0.bin` (aux) and `<id>_1.bin` (main), `.npy` with --outfmt
NPY (with the batch axis: 1 x 19 x h x w), `.txt` with --outfmt TXT (decimal text, lossy); the older benchmark
tool `_1` (aux) and `_2` (main). With `--device 0,1` ais_bench splits the input across the devices and writes
OUT/DIRNAME/device0/, OUT/DIRNAME/device1/, ...: disjoint shards of one run, read here as one set (the runner's
device summaries must record one run and model; ais_bench's record neither); the names of those files and folders
are hrnetseg.runner.layout's.
The dtype (float32, or float16 from an .om built with fp16 outputs) is taken from what knows it: the NPY
header, then --output_dtype, then the runner's summary beside the output folder (OUT/DIRNAME_summary.json, or
OUT/DIRNAME/device<id>_summary.json for a shard, as ais_bench and python3 -m hrnetseg.infer write it); only
when none of them says, a file of exactly float16's size is read as float16.
Atlas-side module: numpy only, valid Python 3.7.
"""
from __future__ import annotations

import glob
import os
from collections import namedtuple
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.data.cityscapes import NUM_CLASSES, image_id
from hrnetseg.data.manifest import MANIFEST
from hrnetseg.runner.layout import OUTPUT_NAME, device_folders, summary_path_for
from hrnetseg.runner.summary import FILESINFO_KEY, INPUT_KEY, OUTPUT_DTYPE_KEY, check_one_run
from hrnetseg.util.errors import UserError, exception_line
from hrnetseg.util.files import require_file, require_folder
from hrnetseg.util.structured import read_json

AIS_BENCH, BENCHMARK = "ais_bench", "benchmark"
ROLE = {AIS_BENCH: {0: "aux", 1: "main"}, BENCHMARK: {1: "aux", 2: "main"}}
OUTPUT_DTYPES = ("float32", "float16")  # what the model's outputs may be stored as; float32 is the default
DEFAULT, BY_SIZE = "the default", "its size"  # what decided a dtype when no source said it
TEXT = "its text"  # --outfmt TXT: decimal values, read as float32 whatever the model wrote

# files: id -> {file index: path}; shards: the device<id> folder names of a multi-device run (() for one folder)
Outputs = namedtuple("Outputs", ["folder", "naming", "ext", "files", "shards"])


def logits_shape(height: int, width: int) -> Tuple[int, int, int]:
    """The model's output for a label of height x width: 19 x ceil(H/4) x ceil(W/4)."""
    return NUM_CLASSES, -(-height // 4), -(-width // 4)


# --- finding and naming the outputs ---------------------------------------------------------------

def _output_files_in(folder: str) -> Dict[Tuple[str, str], Dict[int, str]]:
    """(stem, ext) -> {file index: path} of the output names in folder (any kind of file: a FIFO or a link
    loop named like an output is refused when it is paired, never skipped unnoticed)."""
    found: Dict[Tuple[str, str], Dict[int, str]] = {}
    for name in sorted(os.listdir(folder)):
        match = OUTPUT_NAME.match(name)
        path = os.path.join(folder, name)
        if not match or os.path.isdir(path):
            continue
        by_index = found.setdefault((match.group("stem"), match.group("ext")), {})
        index = int(match.group("index"))
        if index in by_index:  # x_1.bin and x_01.bin
            raise UserError("two files for output {} of {} in {}: {} and {}".format(
                index, match.group("stem"), folder, os.path.basename(by_index[index]), name))
        by_index[index] = path
    return found


def _check_one_output_set(files: Dict[str, Dict[int, str]], folder: str) -> None:
    """Every image must have the same output files: mixed namings (_0/_1 beside _1/_2) would pair an aux
    output of one run with the main output of another."""
    sets: Dict[Tuple[int, ...], str] = {}
    for sample_id in sorted(files):
        sets.setdefault(tuple(sorted(files[sample_id])), sample_id)
    if len(sets) > 1:
        examples = ["{} has {}".format(sample_id, ", ".join("_{}".format(i) for i in indices))
                    for indices, sample_id in sorted(sets.items())][:3]
        raise UserError("{} mixes output sets: {}; keep one complete run (one naming) per folder".format(
            folder, "; ".join(examples)))


def _is_preprocess_folder(folder: str) -> bool:
    """A folder of model inputs: its `<id>.bin` names read as outputs (`frankfurt_000000_000294.bin`: output 294 of
    `frankfurt_000000`), so it is recognised by its manifest instead."""
    return os.path.lexists(os.path.join(folder, MANIFEST))


def shard_image_counts(folder: str) -> Dict[str, int]:
    """device<id> folder name -> how many images have outputs in it, for the shards of a multi-device run."""
    return {shard: len({image_id(stem) for stem, _ in _output_files_in(os.path.join(folder, shard))})
            for shard in device_folders(folder)}


def _holds_outputs(folder: str) -> bool:
    return not _is_preprocess_folder(folder) and bool(_output_files_in(folder) or device_folders(folder))


def _one_folder_or_shards(folder: str) -> Tuple[Dict[Tuple[str, str], Dict[int, str]], List[str]]:
    """(stem, ext) -> {file index: path} of folder, or of all its device<id> shards together (and their names).

    The shards of ais_bench --device 0,1 are disjoint parts of one input: an image in two of them, loose
    outputs beside them, a shard without outputs, or device summaries of different runs or models
    (hrnetseg.runner.summary.check_one_run) mean the folder does not hold one run."""
    shards = device_folders(folder)
    found = _output_files_in(folder)
    if not shards:
        return found, []
    if found:
        (stem, ext), by_index = sorted(found.items())[0]
        raise UserError("{} mixes device folders of a multi-device run ({}) with loose outputs ({}): keep one run "
                        "per folder".format(folder, ", ".join(shards), os.path.basename(sorted(by_index.values())[0])))
    check_one_run([(os.path.join(folder, shard), read_summary(summary_path_for(os.path.join(folder, shard))))
                   for shard in shards])
    merged: Dict[Tuple[str, str], Dict[int, str]] = {}
    shard_of: Dict[str, str] = {}
    for shard in shards:
        in_shard = _output_files_in(os.path.join(folder, shard))
        if not in_shard:
            raise UserError("{} holds no outputs: a device of that run failed or its outputs were removed; "
                            "evaluating the other device folders would score a part of the data".format(
                                os.path.join(folder, shard)))
        for key, by_index in in_shard.items():
            sample_id = image_id(key[0])
            if sample_id in shard_of and shard_of[sample_id] != shard:
                raise UserError("image {} has outputs in both {} and {} of {}: the device folders of one run hold "
                                "disjoint parts of the input; keep one run per folder".format(
                                    sample_id, shard_of[sample_id], shard, folder))
            shard_of[sample_id] = shard
            merged[key] = by_index
    return merged, shards


def find_outputs(res_path: str) -> Outputs:
    """The output files under res_path (or the one subfolder holding them, e.g. ais_bench's results/bs1); the
    device<id> folders of a multi-device run there are read together as one set."""
    require_folder(res_path, "result folder")
    if _is_preprocess_folder(res_path):
        raise UserError("{} is a preprocess folder (it holds {}), not model outputs: pass the folder ais_bench or "
                        "the runner wrote (--output/--output_dirname, e.g. results/bs1) as --res_path".format(
                            res_path, MANIFEST))
    folder = res_path
    if not _holds_outputs(res_path):
        holders = [d for d in sorted(glob.glob(os.path.join(glob.escape(res_path), "*")))
                   if os.path.isdir(d) and _holds_outputs(d)]
        if len(holders) > 1:
            raise UserError("{} holds no outputs but several folders with outputs ({}): pass one of them as "
                            "--res_path".format(res_path, ", ".join(os.path.basename(d) for d in holders)))
        if not holders:
            raise UserError("no model outputs in {}: expected <id>_<n>.bin, .npy or .txt files (ais_bench "
                            "naming), or its device<id> folders".format(res_path))
        folder = holders[0]
    found, shards = _one_folder_or_shards(folder)
    extensions = sorted({ext for _, ext in found})
    if len(extensions) > 1:
        raise UserError("{} mixes {} outputs: keep one run per folder".format(
            folder, " and ".join("." + ext for ext in extensions)))
    indices = set()
    files: Dict[str, Dict[int, str]] = {}
    for (stem, _), by_index in sorted(found.items()):
        sample_id = image_id(stem)
        if sample_id in files:
            raise UserError("two sets of outputs for image {} in {}".format(sample_id, folder))
        files[sample_id] = by_index
        indices.update(by_index)
    _check_one_output_set(files, folder)
    naming = AIS_BENCH if 0 in indices or indices == {1} else BENCHMARK
    return Outputs(folder, naming, extensions[0], files, tuple(shards))


def choose_file_index(outputs: Outputs, output_index: Optional[int]) -> Tuple[int, str, Optional[str]]:
    """The file suffix to read for a model output number (ais_bench's, 0-based), a description, and a note
    when the default landed on the aux head because only its files are there (None otherwise).

    None means the main output: 1, or the only output there is (named as what it is).
    """
    present = sorted({index for by_index in outputs.files.values() for index in by_index})
    offset = 0 if outputs.naming == AIS_BENCH else 1
    if output_index is None:
        file_index = present[0] if len(present) == 1 else 1 + offset
    else:
        file_index = output_index + offset
    if file_index not in present:
        raise UserError("no output {} in {}: found {} files with suffixes {} ({} naming)".format(
            output_index if output_index is not None else 1, outputs.folder, outputs.ext,
            ", ".join("_{}".format(i) for i in present), outputs.naming))
    role = ROLE[outputs.naming].get(file_index, "output {}".format(file_index - offset))
    aux_only = None
    if output_index is None and role == "aux":
        aux_only = "evaluating output {}, the AUX head (no main output _{} files found)".format(
            file_index - offset, file_index + 1)
    return file_index, "{} naming (<id>_{}.{}: {})".format(outputs.naming, file_index, outputs.ext, role), aux_only


# --- the outputs' dtype -----------------------------------------------------------------------------

def resolve_output_dtype(path: str, data_bytes: int, shape: Tuple[int, int, int],
                         sources: Sequence[Tuple[str, Optional[str]]]) -> Tuple[str, str]:
    """(dtype, what decided it) for one output file holding data_bytes of data, expected to be `shape`.

    sources: (name, dtype or None) in precedence order: the NPY header, --output_dtype, the runner's
    summary. Known dtypes must agree, and the first one wins; the size must then fit it. When none is
    known, float32 is the default and a file of exactly float16's size is read as float16 (BY_SIZE).
    """
    count = int(np.prod(shape))
    sizes = {dtype: count * np.dtype(dtype).itemsize for dtype in OUTPUT_DTYPES}
    expected = "{} x {} x {} is {} bytes as float32, {} as float16".format(
        shape[0], shape[1], shape[2], sizes["float32"], sizes["float16"])
    known = [(name, dtype) for name, dtype in sources if dtype is not None]
    for name, dtype in known[1:]:
        if dtype != known[0][1]:
            raise UserError("output {} ({} bytes of data): {} says {} but {} says {} ({})".format(
                path, data_bytes, known[0][0], known[0][1], name, dtype, expected))
    if known:
        name, dtype = known[0]
        if data_bytes != sizes[dtype]:
            fits = [other for other in OUTPUT_DTYPES if sizes[other] == data_bytes]
            raise UserError("output {} has {} bytes of data, not {} as {} ({} says so): {}{}".format(
                path, data_bytes, sizes[dtype], dtype, name, expected,
                "; it fits {}".format(fits[0]) if fits else ""))
        return dtype, name
    if data_bytes == sizes["float32"]:
        return "float32", DEFAULT
    if data_bytes == sizes["float16"]:
        return "float16", BY_SIZE
    raise UserError("output {} has {} bytes of data, expected {} (float32) or {} (float16): {}".format(
        path, data_bytes, sizes["float32"], sizes["float16"], expected))


def find_summary(folder: str) -> str:
    """The summary of an output folder: beside the name given, else beside the folder it links to (a
    `--res_path` that is a link to results/bs1); the first name when neither is there."""
    given = summary_path_for(folder)
    if os.path.lexists(given):
        return given
    resolved = summary_path_for(os.path.realpath(folder))
    return resolved if os.path.lexists(resolved) else given


def read_summary(path: str) -> Optional[dict]:
    """The summary (ais_bench's or the runner's) at path, None when there is none; a UserError when it is there
    but cannot be read: it may be the one place that knows the dtype, or the run."""
    if not os.path.lexists(path):
        return None
    try:
        return read_json(path, "runner summary")
    except UserError as exc:
        raise UserError("{}; repair or remove it".format(exc))


def summary_output_dtype(folder: str) -> Tuple[Optional[str], str]:
    """(the "output_dtype" the runner's summary records, or None, the summary's path).

    `python3 -m hrnetseg.infer` records it; ais_bench's summary has no such key (None: not known). A summary
    that is there but cannot be read is an error: it may be the one place that knows the dtype.
    """
    path = find_summary(folder)
    summary = read_summary(path)
    if summary is None:
        return None, path
    dtype = summary.get(OUTPUT_DTYPE_KEY)
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise UserError("runner summary {} says output_dtype {!r}; this postprocess reads {}".format(
            path, dtype, " or ".join(OUTPUT_DTYPES)))
    return dtype, path


def summary_input_folder(folder: str) -> Optional[str]:
    """The folder the outputs' inputs were read from, as the summary beside the output folder records it: the
    runner's "input", else the folder of ais_bench's first filesinfo input file (a path as ais_bench was given it);
    None where no summary says. Read after summary_output_dtype, which refuses a summary that cannot be read."""
    summary = read_summary(find_summary(folder))
    if summary is None:
        return None
    if isinstance(summary.get(INPUT_KEY), str):
        return summary[INPUT_KEY]
    try:
        infile = next(iter(summary[FILESINFO_KEY].values()))["infiles"][0]
    except (KeyError, TypeError, AttributeError, IndexError, StopIteration):
        return None
    return os.path.dirname(infile) if isinstance(infile, str) else None


def _npy_header(path: str) -> Tuple[Tuple[int, ...], np.dtype]:
    """(shape, dtype) from an .npy header, without loading the data or unpickling anything."""
    from numpy.lib import format as npy_format

    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    try:
        with open(path, "rb") as fh:
            version = npy_format.read_magic(fh)
            if version not in readers:
                raise ValueError("unsupported .npy version {}.{}".format(*version))
            shape, _, dtype = readers[version](fh)
            data_start = fh.tell()
        size = os.path.getsize(path)
    except (OSError, ValueError, SyntaxError, TypeError, EOFError) as exc:
        raise UserError("cannot read output {}: not an .npy file ({})".format(path, exception_line(exc)))
    if dtype.hasobject or dtype.kind != "f" or dtype.itemsize not in (2, 4):
        raise UserError("output {} holds {} values, expected float32 or float16".format(path, dtype))
    if size < data_start + int(np.prod(shape)) * dtype.itemsize:
        raise UserError("output {} is truncated: {} bytes, its header promises {} {}".format(
            path, size, dtype, "x".join(str(v) for v in shape)))
    return tuple(shape), dtype


def output_file_dtype(path: str, ext: str, shape: Tuple[int, int, int], label: str, flag: Optional[str],
                      summary: Tuple[Optional[str], str]) -> Tuple[str, str]:
    """(dtype, what decided it) of one output file, checked against the shape its label needs."""
    require_file(path, "output")
    if ext == "txt":   # decimal text: no dtype to tell, its values are checked as they are read
        return "float32", TEXT
    header = None
    if ext == "npy":
        stored, dtype = _npy_header(path)
        if stored not in (shape, (1,) + shape):
            raise UserError("output {} is {} {}, expected {} (or 1 x {}) for label {}".format(
                path, dtype, "x".join(str(v) for v in stored), "x".join(str(v) for v in shape),
                "x".join(str(v) for v in shape), label))
        header, data_bytes = "float{}".format(8 * dtype.itemsize), int(np.prod(stored)) * dtype.itemsize
    else:
        data_bytes = os.path.getsize(path)
    summary_dtype, summary_path = summary
    return resolve_output_dtype(path, data_bytes, shape, [("its NPY header", header), ("--output_dtype", flag),
                                                          ("the runner summary " + summary_path, summary_dtype)])

# --- reading one ----------------------------------------------------------------------------------

def load_logits(path: str, dtype: str, shape: Tuple[int, int, int]) -> np.ndarray:
    """The output as float32 C x h x w (checked before: dtype and size fit; a .txt output is checked here)."""
    if path.endswith(".txt"):
        return load_text_logits(path, shape)
    try:
        if path.endswith(".npy"):
            array = np.load(path, allow_pickle=False)
        else:
            array = np.fromfile(path, dtype=dtype)
        return np.ascontiguousarray(array.reshape(shape), dtype=np.float32)
    except (OSError, ValueError, EOFError) as exc:  # changed since it was checked
        raise UserError("cannot read output {}: {}".format(path, exception_line(exc)))


_TEXT_NUMBER_BYTES = b"0123456789.-+eE \t\r\n"


def load_text_logits(path: str, shape: Tuple[int, int, int]) -> np.ndarray:
    """An ais_bench --outfmt TXT output as float32 C x h x w: the array reshaped to (-1, last axis), one row
    per line, each value written with `%f` and a space (6 decimals: lossy). Its shape is not in the file: the
    rows and values per row must be those of `shape`."""
    rows, per_row = int(np.prod(shape[:-1])), int(shape[-1])
    what = "{} rows of {} values ({} written by ais_bench --outfmt TXT)".format(
        rows, per_row, "x".join(str(v) for v in shape))
    try:
        with open(path, "rb") as fh:
            text = fh.read()
    except OSError as exc:
        raise UserError("cannot read output {}: {}".format(path, exception_line(exc)))
    lines = text.split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()   # after the newline that ends the last row
    if len(lines) != rows:
        raise UserError("output {} holds {} lines, expected {}".format(path, len(lines), what))
    for number, line in enumerate(lines):
        count = len(line.split())
        if count != per_row:
            raise UserError("output {}: line {} holds {} values, expected {}".format(path, number + 1, count, what))
    odd = text.translate(None, _TEXT_NUMBER_BYTES)
    if odd:
        if not odd.lower().replace(b"nan", b"").replace(b"inf", b""):
            raise UserError("output {} holds NaN/inf values: the model or the conversion is broken".format(path))
        word = next(token for token in text.split() if token.translate(None, _TEXT_NUMBER_BYTES))
        raise UserError("output {} holds {!r}, not a number: expected {}".format(
            path, word[:40].decode("utf-8", "replace"), what))
    try:
        values = np.array(text.split(), dtype=np.float64)
    except ValueError as exc:
        raise UserError("output {}: {}".format(path, exception_line(exc)))
    logits = values.astype(np.float32).reshape(shape)
    if not np.isfinite(logits).all():   # 1e999: a number, but none that float32 logits can hold
        raise UserError("output {} holds values too large for float32 logits".format(path))
    return logits
