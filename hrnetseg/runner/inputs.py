"""The runner's inputs: a preprocess folder (its manifest says dtype and shape) or comma-separated .bin files from
one, in the order ais_bench reads them (a folder's files in natural-sort order), each checked before the model
loads and again as it is read; and --output_indices.
"""
from __future__ import annotations

import argparse
import os
import re
from collections import namedtuple
from typing import List, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.backends import Backend
from hrnetseg.backends.batching import array_bytes, shape_fits_input_spec
from hrnetseg.data.manifest import read_manifest
from hrnetseg.util.cli import output_index
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import not_regular_reason, require_file

BIN_SUFFIX = ".bin"   # the preprocess folder's input files: <id>.bin


def natural_key(text: str) -> list:
    """ais_bench's natural sort: digit runs compare as numbers, the rest case-insensitively (x2 before x10).

    The runs are the ASCII digits the split found (every second part): str.isdigit() also takes characters
    int() refuses (a superscript two), which made a name like x1\u00b22 a traceback."""
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(re.split(r"([0-9]+)", text))]


def input_path(folder: str, sample_id: str) -> str:
    """An input's bin, as ais_bench names it from the folder given (`./prep/x.bin` for `--input ./prep`)."""
    return os.path.join(folder, sample_id + BIN_SUFFIX)


# folder: the preprocess folder (its manifest); ids in run order; paths: each id's input file as ais_bench names it
# (filesinfo's infiles): the folder given joined with the file's name, or the file as the command line gave it
Inputs = namedtuple("Inputs", ["folder", "ids", "manifest", "paths"])


def list_inputs(spec: str) -> Inputs:
    """The inputs of a preprocess folder or of comma-separated .bin files from one folder."""
    if os.path.isdir(spec):
        folder = spec
        manifest = read_manifest(folder)
        ids = manifest["ids"]   # plain, distinct names: read_manifest checks them (they become file names)
        ids = sorted(ids, key=lambda sample_id: natural_key(input_path(folder, sample_id)))
        paths = [input_path(folder, sample_id) for sample_id in ids]
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
        paths = files   # as given: ais_bench neither makes them absolute nor resolves links
    if not ids:
        raise UserError("no input files in {} (its manifest lists none)".format(spec))
    return Inputs(folder, list(ids), manifest, list(paths))


def check_bins(manifest: dict, paths: Sequence[str]) -> Tuple[np.dtype, Tuple[int, ...]]:
    """The bins' (dtype, C x H x W) when every bin is a regular file of that size (checked before the model
    loads); a UserError naming the first that is not."""
    dtype = np.dtype(manifest["dtype"])
    shape = tuple(int(v) for v in manifest["shape"])
    size = array_bytes(dtype, shape)
    for path in paths:
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
        raise UserError("--output_indices {} does not fit a model with {} outputs (0..{})".format(
            text, count, count - 1))
    return indices
