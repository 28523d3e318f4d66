"""Model outputs + Cityscapes labels -> mIoU (result.json), per-class table, optional pictures.

Outputs are paired with labels by image id, never by order. Reads ais_bench's naming (`<id>_0.bin` aux,
`<id>_1.bin` main; `.npy` with --outfmt NPY) and the older benchmark tool's (`_1` aux, `_2` main).
The outputs' dtype (float32, or float16 from an .om built with fp16 outputs) is taken from what knows it:
the NPY header, then --output_dtype, then the runner's summary beside the result folder; only when none of
them says, a file of exactly float16's size is read as float16 (and the run says so).
Atlas-side module: numpy, opencv, pillow and tqdm only, valid Python 3.7.
"""
from __future__ import annotations

import glob
import json
import os
import re
import sys
from collections import namedtuple
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import cityscapes
from .cityscapes import NUM_CLASSES
from .cli import UserError, default_workers
from .files import (check_output_file, make_output_folder, not_a_folder_above, not_regular_reason,
                    remove_stale_temporaries, require_file, require_folder, write_bytes_atomic)
from .locks import output_locks
from .metrics import ConfusionMatrix, confusion, format_table, write_result
from .manifest import MANIFEST
from .upsample_argmax import logits_to_labels
from .workers import parallel_results

OUTPUT_NAME = re.compile(r"^(?P<stem>.+)_(?P<index>\d+)\.(?P<ext>bin|npy)$")
FEW = 5  # ids quoted in an error message
AIS_BENCH, BENCHMARK = "ais_bench", "benchmark"
ROLE = {AIS_BENCH: {0: "aux", 1: "main"}, BENCHMARK: {1: "aux", 2: "main"}}
OUTPUT_DTYPES = ("float32", "float16")  # what the model's outputs may be stored as; float32 is the default
SUMMARY_SUFFIX = "_summary.json"  # the runner writes OUTPUT/<dirname>_summary.json beside OUTPUT/<dirname>/
DEFAULT, BY_SIZE = "the default", "its size"  # what decided a dtype when no source said it
# cityscapesScripts stops with "Unknown label with id N" for a labelIds value it does not know
LAST_LABEL_ID = max(label.id for label in cityscapes.LABELS)

Outputs = namedtuple("Outputs", ["folder", "naming", "ext", "files"])  # files: id -> {file index: path}
# size: (H, W) of the label; dtype_from: what decided the dtype (a source name of resolve_output_dtype)
Pair = namedtuple("Pair", ["id", "output", "label", "image", "dtype", "size", "dtype_from"])


def logits_shape(height: int, width: int) -> Tuple[int, int, int]:
    """The model's output for a label of height x width: 19 x ceil(H/4) x ceil(W/4)."""
    return NUM_CLASSES, -(-height // 4), -(-width // 4)


def _few(ids: Sequence[str]) -> str:
    ids = list(ids)
    return ", ".join(ids[:FEW]) + (", ..." if len(ids) > FEW else "")


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


# --- finding and naming the outputs ---------------------------------------------------------------

def _scan(folder: str) -> Dict[Tuple[str, str], Dict[int, str]]:
    """(stem, ext) -> {file index: path} of the output names in folder (any kind of file: a FIFO or a link
    loop named like an output is refused when it is paired, never skipped unnoticed)."""
    found = {}  # type: Dict[Tuple[str, str], Dict[int, str]]
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


def _index_sets(files: Dict[str, Dict[int, str]], folder: str) -> None:
    """Every image must have the same output files: mixed namings (_0/_1 beside _1/_2) would pair an aux
    output of one run with the main output of another."""
    sets = {}  # type: Dict[Tuple[int, ...], str]
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


def find_outputs(res_path: str) -> Outputs:
    """The output files under res_path (or the one subfolder holding them, e.g. ais_bench's results/bs1)."""
    require_folder(res_path, "result folder")
    if _is_preprocess_folder(res_path):
        raise UserError("{} is a preprocess folder (it holds {}), not model outputs: pass the folder ais_bench or "
                        "the runner wrote (--output/--output_dirname, e.g. results/bs1) as --res_path".format(
                            res_path, MANIFEST))
    folder, found = res_path, _scan(res_path)
    if not found:
        holders = [d for d in sorted(glob.glob(os.path.join(glob.escape(res_path), "*")))
                   if os.path.isdir(d) and not _is_preprocess_folder(d) and _scan(d)]
        if len(holders) > 1:
            raise UserError("{} holds no outputs but several folders with outputs ({}): pass one of them as "
                            "--res_path".format(res_path, ", ".join(os.path.basename(d) for d in holders)))
        if not holders:
            raise UserError("no model outputs in {}: expected <id>_<n>.bin or <id>_<n>.npy files (ais_bench "
                            "naming)".format(res_path))
        folder, found = holders[0], _scan(holders[0])
    extensions = sorted({ext for _, ext in found})
    if len(extensions) > 1:
        raise UserError("{} mixes .bin and .npy outputs: keep one run per folder".format(folder))
    indices = set()
    files = {}  # type: Dict[str, Dict[int, str]]
    for (stem, _), by_index in found.items():
        sample_id = cityscapes.image_id(stem)
        if sample_id in files:
            raise UserError("two sets of outputs for image {} in {}".format(sample_id, folder))
        files[sample_id] = by_index
        indices.update(by_index)
    _index_sets(files, folder)
    naming = AIS_BENCH if 0 in indices or indices == {1} else BENCHMARK
    return Outputs(folder, naming, extensions[0], files)


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


def summary_path_for(folder: str) -> str:
    """The summary ais_bench and the runner write for an output folder OUT/DIRNAME: OUT/DIRNAME_summary.json,
    beside the folder's name as they were given it."""
    return os.path.normpath(folder) + SUMMARY_SUFFIX


def find_summary(folder: str) -> str:
    """The summary of an output folder: beside the name given, else beside the folder it links to (a
    `--res_path` that is a link to results/bs1); the first name when neither is there."""
    given = summary_path_for(folder)
    if os.path.lexists(given):
        return given
    resolved = summary_path_for(os.path.realpath(folder))
    return resolved if os.path.lexists(resolved) else given


def summary_output_dtype(folder: str) -> Tuple[Optional[str], str]:
    """(the "output_dtype" the runner's summary records, or None, the summary's path).

    `python3 -m hrnetseg.infer` records it; ais_bench's summary has no such key (None: not known). A summary
    that is there but cannot be read is an error: it may be the one place that knows the dtype.
    """
    path = find_summary(folder)
    if not os.path.lexists(path):
        return None, path
    reason = not_regular_reason(path)
    if reason is not None:
        raise UserError("runner summary {} {}".format(path, reason))
    try:
        with open(path, "rb") as fh:
            summary = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError) as exc:  # json's and utf-8's errors are ValueErrors
        raise UserError("cannot read the runner summary {}: {}; repair or remove it".format(path, exc))
    if not isinstance(summary, dict):
        raise UserError("runner summary {} is not a JSON object; repair or remove it".format(path))
    dtype = summary.get("output_dtype")
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise UserError("runner summary {} says output_dtype {!r}; this postprocess reads {}".format(
            path, dtype, " or ".join(OUTPUT_DTYPES)))
    return dtype, path


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
        raise UserError("cannot read output {}: not an .npy file ({})".format(path, " ".join(str(exc).split())))
    if dtype.hasobject or dtype.kind != "f" or dtype.itemsize not in (2, 4):
        raise UserError("output {} holds {} values, expected float32 or float16".format(path, dtype))
    if size < data_start + int(np.prod(shape)) * dtype.itemsize:
        raise UserError("output {} is truncated: {} bytes, its header promises {} {}".format(
            path, size, dtype, "x".join(str(v) for v in shape)))
    return tuple(shape), dtype


def file_dtype(path: str, ext: str, shape: Tuple[int, int, int], label: str, flag: Optional[str],
                 summary: Tuple[Optional[str], str]) -> Tuple[str, str]:
    """(dtype, what decided it) of one output file, checked against the shape its label needs."""
    require_file(path, "output")
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


# --- pairing and checking -------------------------------------------------------------------------

def regular_labels(labels: Dict[str, str], allow_missing: bool) -> Tuple[Dict[str, str], Dict[str, str]]:
    """(the labels that are regular files, id -> why each other one is left out); labels that are not
    regular files (a FIFO would block the reader) are never opened: an error, or left out with
    --allow_missing."""
    usable, left_out = {}, {}  # type: Dict[str, str], Dict[str, str]
    for sample_id, path in labels.items():
        reason = not_regular_reason(path)
        if reason is None:
            usable[sample_id] = path
        elif allow_missing:
            left_out[sample_id] = "{} {}".format(path, reason)
        else:
            raise UserError("label {} {}; --allow_missing leaves it out".format(path, reason))
    return usable, left_out


def pair_outputs(outputs: Outputs, file_index: int, labels: Dict[str, str], allow_missing: bool = False,
                 want_images: bool = False, output_dtype_flag: Optional[str] = None
                 ) -> Tuple[List[Pair], List[str], List[str]]:
    """Pairs (sorted by id), the label ids without output, the output ids without label; checks every file."""
    have = {sid: by_index[file_index] for sid, by_index in outputs.files.items() if file_index in by_index}
    missing = sorted(set(labels) - set(have))
    extra = sorted(set(have) - set(labels))
    if not set(have) & set(labels):
        raise UserError("no output in {} matches a label (outputs e.g. {}; labels e.g. {})".format(
            outputs.folder, _few(sorted(have)), _few(sorted(labels))))
    if missing and not allow_missing:
        raise UserError("{} of {} labels have no output in {}: {}; --allow_missing evaluates the rest".format(
            len(missing), len(labels), outputs.folder, _few(missing)))
    summary = summary_output_dtype(outputs.folder)
    pairs = []
    for sid in sorted(set(have) & set(labels)):
        size = cityscapes.image_size(labels[sid])
        if size is None:
            raise UserError("label {} {}".format(labels[sid], cityscapes.unreadable_reason(labels[sid])))
        dtype, source = file_dtype(have[sid], outputs.ext, logits_shape(*size), labels[sid], output_dtype_flag,
                                   summary)
        image = cityscapes.image_for_label(labels[sid]) if want_images else None
        pairs.append(Pair(sid, have[sid], labels[sid], image, dtype, size, source))
    _one_dtype_by_size(pairs)
    return pairs, missing, extra


def _one_dtype_by_size(pairs: Sequence[Pair]) -> None:
    """Outputs whose dtype only their sizes tell must agree: a folder of one run has one dtype (a float32
    file cut to exactly half its size would otherwise pass as float16)."""
    guessed = [pair for pair in pairs if pair.dtype_from in (BY_SIZE, DEFAULT)]
    kinds = {pair.dtype: pair for pair in guessed}
    if len(kinds) > 1:
        raise UserError("outputs differ in size: {} has float32's size, {} float16's; keep one run per folder, "
                        "or pass --output_dtype".format(kinds["float32"].output, kinds["float16"].output))


# --- one image ------------------------------------------------------------------------------------

def load_logits(path: str, dtype: str, shape: Tuple[int, int, int]) -> np.ndarray:
    """The output as float32 C x h x w (checked before: dtype and size fit)."""
    try:
        if path.endswith(".npy"):
            array = np.load(path, allow_pickle=False)
        else:
            array = np.fromfile(path, dtype=dtype)
        return np.ascontiguousarray(array.reshape(shape), dtype=np.float32)
    except (OSError, ValueError, EOFError) as exc:  # changed since it was checked
        raise UserError("cannot read output {}: {}".format(path, " ".join(str(exc).split())))


def check_finite(logits: np.ndarray, pair: Pair) -> None:
    """NaN or inf in an output: say what it means (a wrong dtype guess, or a broken model), not 'NaN mIoU'."""
    if np.isfinite(logits.min()) and np.isfinite(logits.max()):  # both propagate NaN
        return
    if pair.dtype_from == BY_SIZE:
        raise UserError("output {}: its size matched float16 {} but the values are not float16 logits (NaN/inf "
                        "values): pass --output_dtype to say what it holds".format(
                            pair.output, "x".join(str(v) for v in logits.shape)))
    raise UserError("output {} holds NaN/inf values (read as {}, {}): the model or the conversion is "
                    "broken".format(pair.output, pair.dtype, pair.dtype_from))


def read_train_ids(label_path: str) -> np.ndarray:
    """A gtFine labelIds PNG as trainIds (uint8, 255 ignored); UserError when it is not one."""
    import cv2

    label = cityscapes.read_image(label_path, cv2.IMREAD_UNCHANGED)
    if label is None:
        raise UserError("label {} {}".format(label_path, cityscapes.unreadable_reason(label_path)))
    if label.ndim != 2 or label.dtype != np.uint8:
        raise UserError("label {} is not a labelIds image (8-bit, one channel)".format(label_path))
    top = int(label.max())
    if top > LAST_LABEL_ID:  # a trainIds PNG holds 255; cityscapesScripts stops on such ids too
        raise UserError("label {} holds the value {}, which is not a Cityscapes label id (0-{}; "
                        "cityscapesScripts: 'Unknown label with id {}'): pass *_gtFine_labelIds.png files, not "
                        "trainIds or colour PNGs".format(label_path, top, LAST_LABEL_ID, top))
    return cv2.LUT(label, cityscapes.ID_TO_TRAIN)


_PALETTE_BGR = np.ascontiguousarray(cityscapes.TRAIN_PALETTE[:, ::-1])


def save_pictures(pred: np.ndarray, sample_id: str, vis_dir: Optional[str], pred_dir: Optional[str],
                  image_path: Optional[str] = None) -> Tuple[List[str], Optional[str]]:
    """`<id>_color.png` (+ `<id>_overlay.png` over the photo) in vis_dir, `<id>_labelIds.png` in pred_dir.

    Returns the files written, and why there is no overlay (None when there is one or none was asked for).
    """
    import cv2

    written = []

    def write_png(path: str, image: np.ndarray) -> None:
        ok, data = cv2.imencode(".png", image)
        if not ok:  # pragma: no cover
            raise UserError("cannot encode {}".format(path))
        write_bytes_atomic(path, data.tobytes())
        written.append(path)

    if pred_dir:
        write_png(os.path.join(pred_dir, sample_id + "_labelIds.png"), cv2.LUT(pred, cityscapes.TRAIN_TO_ID))
    no_overlay = None
    if vis_dir:
        color = _PALETTE_BGR[pred]
        write_png(os.path.join(vis_dir, sample_id + "_color.png"), color)
        photo = cityscapes.read_image(image_path, cv2.IMREAD_COLOR) if image_path else None
        if image_path is None:
            no_overlay = "no leftImg8bit photo beside the label"
        elif photo is None:
            no_overlay = "photo {} {}".format(image_path, cityscapes.unreadable_reason(image_path))
        elif photo.shape != color.shape:
            no_overlay = "photo {} is {}x{}, the label {}x{}".format(image_path, photo.shape[0], photo.shape[1],
                                                                    color.shape[0], color.shape[1])
        else:
            write_png(os.path.join(vis_dir, sample_id + "_overlay.png"), cv2.addWeighted(photo, 0.5, color, 0.5, 0))
    return written, no_overlay


def evaluate_pair(pair: Pair, vis_dir: Optional[str] = None, pred_dir: Optional[str] = None):
    """(confusion matrix, files written, why there is no overlay or None) for one output and its label."""
    gt = read_train_ids(pair.label)
    if gt.shape != tuple(pair.size):
        raise UserError("label {} changed size while being evaluated".format(pair.label))
    logits = load_logits(pair.output, pair.dtype, logits_shape(*pair.size))
    try:
        pred = logits_to_labels(logits, gt.shape[0], gt.shape[1])
    except ValueError as exc:
        check_finite(logits, pair)  # the likely cause, said in words
        raise UserError("output {}: {}".format(pair.output, exc))
    written, no_overlay = save_pictures(pred, pair.id, vis_dir, pred_dir, pair.image) if (vis_dir or pred_dir) \
        else ([], None)
    return confusion(pred, gt), written, no_overlay


def _evaluate_task(task):
    pair, vis_dir, pred_dir = task
    try:
        counts, written, no_overlay = evaluate_pair(pair, vis_dir, pred_dir)
    except UserError as exc:
        return ("error", str(exc))
    return ("ok", pair.id, counts, written, no_overlay)


# --- the step -------------------------------------------------------------------------------------

def _folder_output(path: Optional[str], flag: str) -> None:
    """Refuse, before any work, an empty picture folder name or one that exists and is not a folder (it is
    made later)."""
    if path == "":
        raise UserError("{} is empty: give a folder name".format(flag))
    if path is not None and os.path.lexists(path) and not os.path.isdir(path):
        make_output_folder(path, flag)  # raises, saying what it is
    blocked = not_a_folder_above(path) if path is not None else None
    if blocked is not None:
        raise UserError("cannot create output folder {} {}: {}".format(flag, path, blocked))


def _check_outputs(save_path: Optional[str], save_confusion: Optional[str], save_vis: Optional[str],
                   save_pred: Optional[str]) -> None:
    check_output_file(save_path, "--save_path")
    check_output_file(save_confusion, "--save_confusion")
    if save_path and save_confusion and os.path.realpath(save_path) == os.path.realpath(save_confusion):
        raise UserError("--save_path and --save_confusion are the same file {}: give two names".format(save_path))
    _folder_output(save_vis, "--save_vis")
    _folder_output(save_pred, "--save_pred")
    # a result file where a picture folder will be made (or the other way round) would fail after all the work
    for file_flag, file_path in (("--save_path", save_path), ("--save_confusion", save_confusion)):
        for folder_flag, folder in (("--save_vis", save_vis), ("--save_pred", save_pred)):
            if file_path and folder and os.path.realpath(file_path) == os.path.realpath(folder):
                raise UserError("{} and {} are the same path {}: one is a file, the other a folder; give two "
                                "names".format(file_flag, folder_flag, file_path))


def evaluate_folder(res_path: str, data_path: str, output_index: Optional[int] = None, split: str = "val",
                    workers: Optional[int] = None, save_path: Optional[str] = None,
                    save_vis: Optional[str] = None, save_pred: Optional[str] = None,
                    save_confusion: Optional[str] = None, allow_missing: bool = False,
                    log: Callable[[str], None] = print, output_dtype: Optional[str] = None,
                    warn: Callable[[str], None] = _to_stderr) -> dict:
    """Evaluate every output in res_path against its label under data_path; returns the result dict.

    data_path: the gtFine/<split> folder (as the ModelZoo scripts take it), a cityscapes root, or the folder
    holding cityscapes/.
    output_index: ais_bench's 0-based output number (0 = aux, 1 = main); None = main (or the only one).
    output_dtype: float32 or float16 (see resolve_output_dtype); None = not known.
    Everything is checked before anything is computed; on an error nothing is written. The outputs are
    locked (`<output>.lock`) for the run: a second run writing one of them stops at once.
    """
    if output_dtype is not None and output_dtype not in OUTPUT_DTYPES:
        raise UserError("--output_dtype {!r}: expected {}".format(output_dtype, " or ".join(OUTPUT_DTYPES)))
    outputs = find_outputs(res_path)
    file_index, described, aux_only = choose_file_index(outputs, output_index)
    require_folder(data_path, "label folder")
    labels, left_out = regular_labels(cityscapes.find_labels(data_path, split), allow_missing)
    _check_outputs(save_path, save_confusion, save_vis, save_pred)
    with output_locks(save_path, save_confusion, save_vis, save_pred):
        pairs, missing, extra = pair_outputs(outputs, file_index, labels, allow_missing, want_images=bool(save_vis),
                                             output_dtype_flag=output_dtype)
        _not_an_input(pairs, (("--save_path", save_path), ("--save_confusion", save_confusion)))
        extra = [sid for sid in extra if sid not in left_out]
        missing = [sid for sid in missing if sid not in left_out]
        log("found {} for {} images in {}{}".format(described, len(pairs), outputs.folder,
                                                    ": " + aux_only if aux_only else ""))
        if aux_only:
            warn("warning: {} holds only the auxiliary head's outputs: their mIoU is not the model's (give "
                 "--output_index to evaluate them on purpose)".format(outputs.folder))
        _report(pairs, missing, extra, left_out, log, warn)
        created = [path for path, flag in ((save_vis, "--save_vis"), (save_pred, "--save_pred"))
                   if make_output_folder(path, flag)]
        matrix = _evaluate(pairs, workers, save_vis, save_pred, created, warn)
        matrix.skipped = sorted(missing + list(left_out))
        matrix.output_index = file_index - (0 if outputs.naming == AIS_BENCH else 1)   # ais_bench's numbering
        result = matrix.compute()
        log(format_table(result))
        if save_confusion:
            matrix.save(save_confusion)
        if save_path:
            write_result(save_path, result)
            log("result: {}".format(save_path))
    return result


def _not_an_input(pairs: Sequence[Pair], files: Sequence[Tuple[str, Optional[str]]]) -> None:
    """A result file must not replace one of the files it is computed from."""
    inputs = {os.path.realpath(path) for pair in pairs for path in (pair.output, pair.label)}
    for flag, path in files:
        if path is not None and os.path.realpath(path) in inputs:
            raise UserError("{} {} is one of the inputs: give another name".format(flag, path))


def _report(pairs: Sequence[Pair], missing: Sequence[str], extra: Sequence[str], left_out: Dict[str, str],
            log: Callable[[str], None], warn: Callable[[str], None]) -> None:
    if missing:
        log("skipping {} labels without output (--allow_missing): {}".format(len(missing), _few(missing)))
    if left_out:
        log("skipping {} labels that are not regular files (--allow_missing): {}".format(
            len(left_out), _few([left_out[sid] for sid in sorted(left_out)])))
    if extra:
        log("ignoring {} outputs without label: {}".format(len(extra), _few(extra)))
    by_size = [pair for pair in pairs if pair.dtype_from == BY_SIZE]
    if by_size:
        warn("note: reading {} outputs as float16 by their size (pass --output_dtype to be explicit)".format(
            len(by_size)))


def _evaluate(pairs: Sequence[Pair], workers: Optional[int], save_vis: Optional[str], save_pred: Optional[str],
              created: Sequence[str], warn: Callable[[str], None]) -> ConfusionMatrix:
    """The confusion matrix over all pairs, pictures written; on any failure the pictures this run made
    (and the folders it created, when empty) are removed."""
    for folder in (save_vis, save_pred):
        if folder:
            remove_stale_temporaries(folder)  # of a killed run into this folder
    matrix = ConfusionMatrix()
    workers = default_workers(workers, len(pairs))
    written = []  # type: List[str]
    no_overlay = []  # type: List[str]
    existed = {path for path in _pictures(pairs, save_vis, save_pred) if os.path.exists(path)}
    tasks = [(pair, save_vis, save_pred) for pair in pairs]
    try:
        with parallel_results(_evaluate_task, tasks, workers, "postprocess") as results:
            for result in results:
                if result[0] == "error":
                    raise UserError(result[1])
                matrix.add(result[2], result[1])
                written.extend(result[3])
                if result[4]:
                    no_overlay.append(result[4])
    except BaseException:
        _remove_pictures(set(_pictures(pairs, save_vis, save_pred)) - existed, written, (save_vis, save_pred))
        for folder in created:
            try:
                os.rmdir(folder)
            except OSError:
                pass
        raise
    if no_overlay:
        warn("note: --save_vis wrote no overlay for {} of {} images ({}{})".format(
            len(no_overlay), len(pairs), sorted(no_overlay)[0], ", ..." if len(no_overlay) > 1 else ""))
    matrix.ids.sort()
    return matrix


def _pictures(pairs: Sequence[Pair], vis_dir: Optional[str], pred_dir: Optional[str]) -> List[str]:
    paths = []
    for pair in pairs:
        if pred_dir:
            paths.append(os.path.join(pred_dir, pair.id + "_labelIds.png"))
        if vis_dir:
            paths.extend(os.path.join(vis_dir, pair.id + suffix) for suffix in ("_color.png", "_overlay.png"))
    return paths


def _remove_pictures(new: set, written: Sequence[str], folders: Sequence[Optional[str]]) -> None:
    """After a failed run: the pictures it made (reported or still in flight), and temporaries of interrupted
    writes; pictures that were there before the run stay."""
    doomed = set(new) | set(written)
    for folder in folders:
        if folder:
            doomed.update(glob.glob(os.path.join(glob.escape(folder), ".*.png.*.tmp")))
    for path in doomed:
        try:
            os.remove(path)
        except OSError:
            pass
