"""Model outputs + Cityscapes labels -> mIoU (result.json), per-class table, optional pictures.

Outputs are paired with labels by image id, never by order. Reads ais_bench's naming (`<id>_0.bin` aux,
`<id>_1.bin` main; `.npy` with --outfmt NPY) and the older benchmark tool's (`_1` aux, `_2` main).
Atlas-side module: numpy, opencv, pillow and tqdm only, valid Python 3.7.
"""
from __future__ import annotations

import glob
import os
import re
from collections import namedtuple
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import cityscapes
from .cityscapes import NUM_CLASSES
from .cli import UserError
from .files import check_output_file, write_bytes_atomic
from .metrics import ConfusionMatrix, confusion, format_table, logits_to_labels, write_result
from .preprocess import parallel_results

OUTPUT_NAME = re.compile(r"^(?P<stem>.+)_(?P<index>\d+)\.(?P<ext>bin|npy)$")
FEW = 5  # ids quoted in an error message
AIS_BENCH, BENCHMARK = "ais_bench", "benchmark"
ROLE = {AIS_BENCH: {0: "aux", 1: "main"}, BENCHMARK: {1: "aux", 2: "main"}}

Outputs = namedtuple("Outputs", ["folder", "naming", "ext", "files"])  # files: id -> {file index: path}
Pair = namedtuple("Pair", ["id", "output", "label", "image", "dtype", "size"])  # size: (H, W) of the label


def logits_shape(height: int, width: int) -> Tuple[int, int, int]:
    """The model's output for a label of height x width: 19 x ceil(H/4) x ceil(W/4)."""
    return NUM_CLASSES, -(-height // 4), -(-width // 4)


def _few(ids: Sequence[str]) -> str:
    ids = list(ids)
    return ", ".join(ids[:FEW]) + (", ..." if len(ids) > FEW else "")


# --- finding and naming the outputs ---------------------------------------------------------------

def _scan(folder: str) -> Dict[Tuple[str, str], Dict[int, str]]:
    found = {}  # type: Dict[Tuple[str, str], Dict[int, str]]
    for name in sorted(os.listdir(folder)):
        match = OUTPUT_NAME.match(name)
        if match and os.path.isfile(os.path.join(folder, name)):
            key = (match.group("stem"), match.group("ext"))
            found.setdefault(key, {})[int(match.group("index"))] = os.path.join(folder, name)
    return found


def find_outputs(res_path: str) -> Outputs:
    """The output files under res_path (or the one subfolder holding them, e.g. ais_bench's results/bs1)."""
    if not os.path.isdir(res_path):
        raise UserError("result folder not found: {}".format(res_path))
    folder, found = res_path, _scan(res_path)
    if not found:
        holders = [d for d in sorted(glob.glob(os.path.join(res_path, "*"))) if os.path.isdir(d) and _scan(d)]
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
    naming = AIS_BENCH if 0 in indices or indices == {1} else BENCHMARK
    return Outputs(folder, naming, extensions[0], files)


def choose_file_index(outputs: Outputs, output_index: Optional[int]) -> Tuple[int, str]:
    """The file suffix to read for a model output number (ais_bench's, 0-based), and a description.

    None means the main output: 1, or the only output of a one-output model.
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
    if len(present) == 1:
        role = "the only output"
    return file_index, "{} naming (<id>_{}.{}: {})".format(outputs.naming, file_index, outputs.ext, role)


# --- pairing and checking -------------------------------------------------------------------------

def _output_dtype(path: str, ext: str, shape: Tuple[int, int, int], label: str) -> str:
    """float32 or float16, from the file size (.bin) or header (.npy); UserError naming a wrong file."""
    expected = "{}x{}x{}".format(*shape)
    if ext == "npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError("cannot read output {}: {}".format(path, exc))
        if tuple(array.shape[-3:]) != shape or array.ndim not in (3, 4) or array.size != int(np.prod(shape)) \
                or array.dtype not in (np.float32, np.float16):
            raise UserError("output {} is {} {}, expected float32 {} for label {}".format(
                path, array.dtype, "x".join(str(v) for v in array.shape), expected, label))
        return str(array.dtype)
    size = os.path.getsize(path)
    for dtype in ("float32", "float16"):
        if size == int(np.prod(shape)) * np.dtype(dtype).itemsize:
            return dtype
    raise UserError("output {} has {} bytes, expected {} (float32 {}) for label {}".format(
        path, size, int(np.prod(shape)) * 4, expected, label))


def pair_outputs(outputs: Outputs, file_index: int, labels: Dict[str, str], allow_missing: bool = False,
                 want_images: bool = False) -> Tuple[List[Pair], List[str], List[str]]:
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
    pairs = []
    for sid in sorted(set(have) & set(labels)):
        size = cityscapes.image_size(labels[sid])
        if size is None:
            raise UserError("cannot read label {}".format(labels[sid]))
        dtype = _output_dtype(have[sid], outputs.ext, logits_shape(*size), labels[sid])
        image = cityscapes.image_for_label(labels[sid]) if want_images else None
        pairs.append(Pair(sid, have[sid], labels[sid], image, dtype, size))
    return pairs, missing, extra


# --- one image ------------------------------------------------------------------------------------

def load_logits(path: str, dtype: str, shape: Tuple[int, int, int]) -> np.ndarray:
    if path.endswith(".npy"):
        array = np.load(path, allow_pickle=False)
    else:
        array = np.fromfile(path, dtype=dtype)
    return np.ascontiguousarray(array.reshape(shape), dtype=np.float32)


def read_train_ids(label_path: str) -> np.ndarray:
    """A gtFine labelIds PNG as trainIds (uint8, 255 ignored); UserError when it is not one."""
    import cv2

    label = cityscapes.read_image(label_path, cv2.IMREAD_UNCHANGED)
    if label is None:
        raise UserError("cannot read label {}".format(label_path))
    if label.ndim != 2 or label.dtype != np.uint8:
        raise UserError("label {} is not a labelIds image (8-bit, one channel)".format(label_path))
    return cv2.LUT(label, cityscapes.ID_TO_TRAIN)


_PALETTE_BGR = np.ascontiguousarray(cityscapes.TRAIN_PALETTE[:, ::-1])


def save_pictures(pred: np.ndarray, sample_id: str, vis_dir: Optional[str], pred_dir: Optional[str],
                  image_path: Optional[str] = None) -> List[str]:
    """`<id>_color.png` (+ `<id>_overlay.png` over the photo) in vis_dir, `<id>_labelIds.png` in pred_dir."""
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
    if vis_dir:
        color = _PALETTE_BGR[pred]
        write_png(os.path.join(vis_dir, sample_id + "_color.png"), color)
        photo = cityscapes.read_image(image_path, cv2.IMREAD_COLOR) if image_path else None
        if photo is not None and photo.shape == color.shape:
            write_png(os.path.join(vis_dir, sample_id + "_overlay.png"), cv2.addWeighted(photo, 0.5, color, 0.5, 0))
    return written


def evaluate_pair(pair: Pair, vis_dir: Optional[str] = None, pred_dir: Optional[str] = None):
    """(confusion matrix, files written) for one output and its label."""
    gt = read_train_ids(pair.label)
    if gt.shape != tuple(pair.size):
        raise UserError("label {} changed size while being evaluated".format(pair.label))
    logits = load_logits(pair.output, pair.dtype, logits_shape(*pair.size))
    try:
        pred = logits_to_labels(logits, gt.shape[0], gt.shape[1])
    except ValueError as exc:
        raise UserError("output {}: {}".format(pair.output, exc))
    written = save_pictures(pred, pair.id, vis_dir, pred_dir, pair.image) if (vis_dir or pred_dir) else []
    return confusion(pred, gt), written


def _evaluate_task(task):
    pair, vis_dir, pred_dir = task
    try:
        counts, written = evaluate_pair(pair, vis_dir, pred_dir)
    except UserError as exc:
        return ("error", str(exc))
    return ("ok", pair.id, counts, written)


# --- the step -------------------------------------------------------------------------------------

def _writable_folder(path: Optional[str], flag: str) -> None:
    if path is None:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError("{} {} exists and is not a folder".format(flag, path))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UserError("{}: cannot create {}: {}".format(flag, path, exc.strerror or exc))


def evaluate_folder(res_path: str, data_path: str, output_index: Optional[int] = None, split: str = "val",
                    workers: Optional[int] = None, save_path: Optional[str] = None,
                    save_vis: Optional[str] = None, save_pred: Optional[str] = None,
                    save_confusion: Optional[str] = None, allow_missing: bool = False,
                    log: Callable[[str], None] = print) -> dict:
    """Evaluate every output in res_path against its label under data_path; returns the result dict.

    data_path: the gtFine/<split> folder (the seed's), a cityscapes root, or the folder holding cityscapes/.
    output_index: ais_bench's 0-based output number (0 = aux, 1 = main); None = main (or the only one).
    Everything is checked before anything is computed; on an error nothing is written.
    """
    outputs = find_outputs(res_path)
    file_index, described = choose_file_index(outputs, output_index)
    labels = cityscapes.find_labels(data_path, split)
    check_output_file(save_path, "--save_path")
    check_output_file(save_confusion, "--save_confusion")
    pairs, missing, extra = pair_outputs(outputs, file_index, labels, allow_missing, want_images=bool(save_vis))
    log("found {} for {} images in {}".format(described, len(pairs), outputs.folder))
    if missing:
        log("skipping {} labels without output (--allow_missing): {}".format(len(missing), _few(missing)))
    if extra:
        log("ignoring {} outputs without label: {}".format(len(extra), _few(extra)))
    _writable_folder(save_vis, "--save_vis")
    _writable_folder(save_pred, "--save_pred")

    matrix = ConfusionMatrix()
    workers = max(1, min(workers or os.cpu_count() or 1, len(pairs)))
    written = []  # type: List[str]
    existed = set(_pictures(pairs, save_vis, save_pred))
    existed = {path for path in existed if os.path.exists(path)}
    tasks = [(pair, save_vis, save_pred) for pair in pairs]
    try:
        with parallel_results(_evaluate_task, tasks, workers, "postprocess") as results:
            for result in results:
                if result[0] == "error":
                    raise UserError(result[1])
                matrix.add(result[2], result[1])
                written.extend(result[3])
    except BaseException:
        _remove_pictures(set(_pictures(pairs, save_vis, save_pred)) - existed, written, (save_vis, save_pred))
        raise
    matrix.ids.sort()
    matrix.skipped = missing
    result = matrix.compute()
    log(format_table(result))
    if save_confusion:
        matrix.save(save_confusion)
    if save_path:
        write_result(save_path, result)
        log("result: {}".format(save_path))
    return result


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
            doomed.update(glob.glob(os.path.join(folder, ".*.png.*.tmp")))
    for path in doomed:
        try:
            os.remove(path)
        except OSError:
            pass
