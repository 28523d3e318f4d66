"""Model outputs + Cityscapes labels -> mIoU (result.json), per-class table, optional pictures.

Outputs are paired with labels by image id, never by order. Finding the outputs, ais_bench's naming and the
outputs' dtype are hrnetseg.evaluation.model_outputs; logits -> labels is hrnetseg.evaluation.upsample_argmax;
the pictures are hrnetseg.data.pictures; the confusion matrix and the scores are hrnetseg.evaluation.metrics.
This module pairs and checks every file before anything is computed, runs the images through the worker pool,
and writes the results (and, with --report, the HTML page of hrnetseg.evaluation.report).
Atlas-side module: numpy, opencv, pillow and tqdm only, valid Python 3.7.
"""
from __future__ import annotations

import os
import sys
from collections import namedtuple
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.data import cityscapes, images
from hrnetseg.data.cityscapes import check_label_header, read_train_ids
from hrnetseg.data.manifest import MANIFEST, read_manifest
from hrnetseg.data.pictures import picture_paths, remove_pictures, save_pictures
from hrnetseg.evaluation import report as html_report
from hrnetseg.evaluation import worst_images
from hrnetseg.evaluation.metrics import ConfusionMatrix, confusion, format_table, write_result
from hrnetseg.evaluation.model_outputs import (
    AIS_BENCH,
    BY_SIZE,
    DEFAULT,
    OUTPUT_DTYPES,
    Outputs,
    choose_file_index,
    find_outputs,
    find_summary,
    load_logits,
    logits_shape,
    output_file_dtype,
    summary_input_folder,
    summary_output_dtype,
)
from hrnetseg.evaluation.upsample_argmax import logits_to_labels
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import (
    check_output_file,
    check_outputs_apart,
    make_output_folder,
    not_a_folder_above,
    not_regular_reason,
    remove_stale_temporaries,
    require_folder,
)
from hrnetseg.util.locks import output_locks
from hrnetseg.util.processes import default_workers
from hrnetseg.util.workers import parallel_results

IDS_QUOTED = 5  # ids quoted in an error message, at most

# size: (H, W) of the label, which is the size of its image where that is known; size_from: that image, in words
# (for the message when the label has changed since); dtype_from: what decided the dtype (a source name of
# resolve_output_dtype)
Pair = namedtuple("Pair", ["id", "output", "label", "image", "dtype", "size", "size_from", "dtype_from"])
# The image a label must match: (H, W) and that image in words
MadeFrom = Tuple[Tuple[int, int], str]
# Pair.size_from where the image's size is not known (the label's own header gave Pair.size)
SIZE_FROM_LABEL = "the label when this run began"


def _quote_ids(ids: Sequence[str]) -> str:
    """The first IDS_QUOTED ids, and "..." when there are more."""
    ids = list(ids)
    return ", ".join(ids[:IDS_QUOTED]) + (", ..." if len(ids) > IDS_QUOTED else "")


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


# --- pairing outputs with labels, and checking them -----------------------------------------------

def regular_labels(labels: Dict[str, str], allow_missing: bool) -> Tuple[Dict[str, str], Dict[str, str]]:
    """(the labels that are regular files, id -> why each other one is left out); labels that are not
    regular files (a FIFO would block the reader) are never opened: an error, or left out with
    --allow_missing."""
    usable: Dict[str, str] = {}
    left_out: Dict[str, str] = {}
    for sample_id, path in labels.items():
        reason = not_regular_reason(path)
        if reason is None:
            usable[sample_id] = path
        elif allow_missing:
            left_out[sample_id] = "{} {}".format(path, reason)
        else:
            raise UserError("label {} {}; --allow_missing leaves it out".format(path, reason))
    return usable, left_out


def preprocess_image_size(prep_path: str) -> MadeFrom:
    """The size of the images a preprocess folder's bins were made from (its manifest's C x H x W: the
    preprocess keeps the images' size), and those images in words."""
    shape = read_manifest(prep_path)["shape"]
    return (shape[1], shape[2]), "the image its output was made from ({})".format(os.path.join(prep_path, MANIFEST))


def recorded_image_size(folder: str) -> Optional[MadeFrom]:
    """The size of the images an output folder's outputs were made from, from the preprocess manifest of the
    input folder its summary names (summary_input_folder); None where no summary names a preprocess folder that
    is still there and readable."""
    prep = summary_input_folder(folder)
    if prep is None or not os.path.isfile(os.path.join(prep, MANIFEST)):
        return None
    try:
        return preprocess_image_size(prep)
    except UserError:   # not the folder it was, or unfinished: the other sources decide
        return None


def label_image_size(label: str, made_from: Optional[MadeFrom]) -> Optional[MadeFrom]:
    """The size a label must have: that of the images the outputs were made from (made_from: --prep_path's
    manifest, or the one its output folder's summary leads to), else that of its own photo (the leftImg8bit
    image beside a gtFine label), else None (not known: then only the outputs' size, a quarter of the image's
    rounded up, is checked against the label's)."""
    if made_from is not None:
        return made_from
    photo = cityscapes.image_for_label(label)
    size = images.image_size(photo) if photo is not None else None
    return (size, "its image {}".format(photo)) if size is not None else None


def pair_outputs(outputs: Outputs, file_index: int, labels: Dict[str, str], allow_missing: bool = False,
                 want_images: bool = False, output_dtype_flag: Optional[str] = None,
                 made_from: Optional[MadeFrom] = None) -> Tuple[List[Pair], List[str], List[str]]:
    """Pairs (sorted by id), the label ids without output, the output ids without label; checks every file,
    each label against the size of its image (label_image_size)."""
    output_of = {sid: by_index[file_index] for sid, by_index in outputs.files.items() if file_index in by_index}
    missing = sorted(set(labels) - set(output_of))
    extra = sorted(set(output_of) - set(labels))
    if not set(output_of) & set(labels):
        raise UserError("no output in {} matches a label (outputs e.g. {}; labels e.g. {})".format(
            outputs.folder, _quote_ids(sorted(output_of)), _quote_ids(sorted(labels))))
    if missing and not allow_missing:
        raise UserError("{} of {} labels have no output in {}: {}; --allow_missing evaluates the rest".format(
            len(missing), len(labels), outputs.folder, _quote_ids(missing)))
    summaries: Dict[str, Tuple[Optional[str], str]] = {}  # per folder: each device shard has its own
    sources: Dict[str, Optional[MadeFrom]] = {}
    pairs = []
    for sid in sorted(set(output_of) & set(labels)):
        folder = os.path.dirname(output_of[sid])
        if folder not in summaries:
            summaries[folder] = summary_output_dtype(folder)
            sources[folder] = made_from if made_from is not None else recorded_image_size(folder)
        known = label_image_size(labels[sid], sources[folder])
        size = check_label_header(labels[sid], *known) if known else check_label_header(labels[sid])
        size_from = known[1] if known else SIZE_FROM_LABEL
        dtype, source = output_file_dtype(output_of[sid], outputs.ext, logits_shape(*size), labels[sid],
                                          output_dtype_flag, summaries[folder])
        image = cityscapes.image_for_label(labels[sid]) if want_images else None
        pairs.append(Pair(sid, output_of[sid], labels[sid], image, dtype, size, size_from, source))
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


def predicted_labels(pair: Pair) -> Tuple[np.ndarray, np.ndarray]:
    """(trainId prediction, trainId ground truth) of one output and its label."""
    gt = read_train_ids(pair.label, pair.size, pair.size_from)
    logits = load_logits(pair.output, pair.dtype, logits_shape(*pair.size))
    try:
        pred = logits_to_labels(logits, gt.shape[0], gt.shape[1])
    except ValueError as exc:
        check_finite(logits, pair)  # the likely cause, said in words
        raise UserError("output {}: {}".format(pair.output, exc))
    return pred, gt


def evaluate_pair(pair: Pair, vis_dir: Optional[str] = None, pred_dir: Optional[str] = None,
                  worst: Optional[worst_images.WorstImages] = None):
    """(confusion matrix, files written, why there is no overlay or None, the report's pictures or None) for one
    output and its label; the pictures only when `worst` says the image could be one of the worst."""
    pred, gt = predicted_labels(pair)
    written, no_overlay = save_pictures(pred, pair.id, vis_dir, pred_dir, pair.image) if (vis_dir or pred_dir) \
        else ([], None)
    counts = confusion(pred, gt)
    pictures = None
    if worst is not None and worst.wants(worst_images.image_scores(counts).miou):
        pictures = worst_images.image_pictures(worst_images.read_photo(pair.image), gt, pred)
    return counts, written, no_overlay, pictures


# The worst-images list of the run in progress, for _evaluate_task. A global, not a task field: its bound lives in
# shared memory, which forked workers reach only by inheriting it (it cannot be pickled into a task).
_worst_in_progress: Optional[worst_images.WorstImages] = None


def _evaluate_task(task):
    pair, vis_dir, pred_dir = task
    try:
        counts, written, no_overlay, pictures = evaluate_pair(pair, vis_dir, pred_dir, _worst_in_progress)
    except UserError as exc:
        return ("error", str(exc))
    return ("ok", pair.id, counts, written, no_overlay, pictures)


def pictures_again(res_path: str, data_path: str, worst: Sequence[dict], output_dtype: Optional[str] = None,
                   prep_path: Optional[str] = None, split: str = "val",
                   output_index: Optional[int] = None) -> List[worst_images.Worst]:
    """The report's worst images with their pictures, made again from their outputs, labels and photos: `worst`
    is the list an evaluation of res_path recorded (worst_images.WORST_KEY: ids and scores), as eval_acc_perf.sh's
    report takes it from a batch size's result. Each image's figures must be those recorded (else the result is
    not of these outputs)."""
    if not worst:
        return []
    made_from = preprocess_image_size(prep_path) if prep_path is not None else None
    outputs = find_outputs(res_path)
    file_index, _, _ = choose_file_index(outputs, output_index)
    labels = cityscapes.find_labels(data_path, split)
    ids = [entry["id"] for entry in worst]
    unlabelled = [sid for sid in ids if sid not in labels]
    if unlabelled:
        raise UserError("the result names {} among the worst images, with no label in {}".format(
            _quote_ids(unlabelled), data_path))
    pairs, missing, _ = pair_outputs(outputs, file_index, {sid: labels[sid] for sid in ids}, allow_missing=True,
                                     want_images=True, output_dtype_flag=output_dtype, made_from=made_from)
    if missing:
        raise UserError("the result names {} among the worst images, with no output in {}".format(
            _quote_ids(missing), outputs.folder))
    by_id = {pair.id: pair for pair in pairs}
    made = []
    for entry in worst:
        pred, gt = predicted_labels(by_id[entry["id"]])
        scores = worst_images.image_scores(confusion(pred, gt))
        if scores.miou is None or abs(scores.miou - entry["mIoU"]) > 1e-9:
            raise UserError("the result gives image {} an mIoU of {!r}, its output in {} {!r}: the result is not of "
                            "these outputs".format(entry["id"], entry["mIoU"], outputs.folder, scores.miou))
        made.append(worst_images.Worst(entry["id"], scores.miou, scores.pixel_accuracy, worst_images.image_pictures(
            worst_images.read_photo(by_id[entry["id"]].image), gt, pred)))
    return made


# --- the step -------------------------------------------------------------------------------------

def _check_picture_folder(path: Optional[str], flag: str) -> None:
    """Refuse, before any work, an empty picture folder name or one that exists and is not a folder (it is
    made later)."""
    if path == "":
        raise UserError("{} is empty: give a folder name".format(flag))
    if path is not None and os.path.lexists(path) and not os.path.isdir(path):
        make_output_folder(path, flag)  # raises, saying what it is
    blocked = not_a_folder_above(path) if path is not None else None
    if blocked is not None:
        raise UserError("cannot create output folder {} {}: {}".format(flag, path, blocked))


def _check_result_paths(save_path: Optional[str], save_confusion: Optional[str], save_vis: Optional[str],
                        save_pred: Optional[str], report: Optional[str] = None) -> None:
    check_output_file(save_path, "--save_path")
    check_output_file(save_confusion, "--save_confusion")
    check_output_file(report, "--report")
    check_outputs_apart({"--save_path": save_path, "--save_confusion": save_confusion, "--report": report})
    _check_picture_folder(save_vis, "--save_vis")
    _check_picture_folder(save_pred, "--save_pred")
    # a result file where a picture folder will be made (or the other way round) would fail after all the work
    for file_flag, file_path in (("--save_path", save_path), ("--save_confusion", save_confusion),
                                 ("--report", report)):
        for folder_flag, folder in (("--save_vis", save_vis), ("--save_pred", save_pred)):
            if file_path and folder and os.path.realpath(file_path) == os.path.realpath(folder):
                raise UserError("{} and {} are the same path {}: one is a file, the other a folder; give two "
                                "names".format(file_flag, folder_flag, file_path))


def evaluate_folder(res_path: str, data_path: str, output_index: Optional[int] = None, split: str = "val",
                    workers: Optional[int] = None, save_path: Optional[str] = None,
                    save_vis: Optional[str] = None, save_pred: Optional[str] = None,
                    save_confusion: Optional[str] = None, allow_missing: bool = False,
                    log: Callable[[str], None] = print, output_dtype: Optional[str] = None,
                    warn: Callable[[str], None] = _to_stderr, prep_path: Optional[str] = None,
                    report: Optional[str] = None, report_worst: Optional[int] = None) -> dict:
    """Evaluate every output in res_path against its label under data_path; returns the result dict.

    data_path: the gtFine/<split> folder (as the ModelZoo scripts take it), a cityscapes root, or the folder
    holding cityscapes/.
    output_index: ais_bench's 0-based output number (0 = aux, 1 = main); None = main (or the only one).
    output_dtype: float32 or float16 (see resolve_output_dtype); None = not known.
    prep_path: the preprocess folder the outputs were made from: every label must have its images' size (its
    manifest's); None: each label is held to its own photo's size where that is beside it (label_image_size).
    report: the HTML report to write (hrnetseg.evaluation.report); report_worst: how many of the worst images it
    shows (default worst_images.DEFAULT_WORST), their ids and scores also in the result (worst_images.WORST_KEY),
    with or without a report.
    Everything is checked before anything is computed; on an error nothing is written. The outputs are
    locked (`<output>.lock`) for the run: a second run writing one of them stops at once.
    """
    if output_dtype is not None and output_dtype not in OUTPUT_DTYPES:
        raise UserError("--output_dtype {!r}: expected {}".format(output_dtype, " or ".join(OUTPUT_DTYPES)))
    made_from = preprocess_image_size(prep_path) if prep_path is not None else None
    outputs = find_outputs(res_path)
    file_index, described, aux_only = choose_file_index(outputs, output_index)
    require_folder(data_path, "label folder")
    labels, left_out = regular_labels(cityscapes.find_labels(data_path, split), allow_missing)
    _check_result_paths(save_path, save_confusion, save_vis, save_pred, report)
    # shared: the workers may be forked processes (util/workers.py), which read the list's bound
    worst = html_report.worst_collector(report, report_worst, shared=True)
    with output_locks(save_path, save_confusion, save_vis, save_pred, report):
        pairs, missing, extra = pair_outputs(outputs, file_index, labels, allow_missing,
                                             want_images=bool(save_vis) or bool(worst and worst.limit),
                                             output_dtype_flag=output_dtype, made_from=made_from)
        _check_outputs_apart_from_inputs(outputs, labels, pairs, save_path, save_confusion, save_vis, save_pred,
                                         report)
        extra = [sid for sid in extra if sid not in left_out]
        missing = [sid for sid in missing if sid not in left_out]
        log("found {} for {} images in {}{}{}".format(
            described, len(pairs), outputs.folder,
            " (the device folders {} of one multi-device run)".format(", ".join(outputs.shards))
            if outputs.shards else "", ": " + aux_only if aux_only else ""))
        if aux_only:
            warn("warning: {} holds only the auxiliary head's outputs: their mIoU is not the model's (give "
                 "--output_index to evaluate them on purpose)".format(outputs.folder))
        if outputs.ext == "txt":
            warn("note: {} holds ais_bench --outfmt TXT outputs: 6 decimals per value, lossy (an argmax between "
                 "values closer than that may differ from the BIN or NPY outputs)".format(outputs.folder))
        _report_left_out(pairs, missing, extra, left_out, log, warn)
        created = [path for path, flag in ((save_vis, "--save_vis"), (save_pred, "--save_pred"))
                   if make_output_folder(path, flag)]
        matrix = _evaluate_pairs(pairs, workers, save_vis, save_pred, created, warn, worst)
        matrix.skipped = sorted(missing + list(left_out))
        matrix.output_index = file_index - (0 if outputs.naming == AIS_BENCH else 1)   # ais_bench's numbering
        result = worst_images.add_to_result(matrix.compute(), worst)
        log(format_table(result))
        page = html_report.run_page(   # made before any file is written: a failure leaves none of them
            result, "Segmentation report: HRNet_postprocess.py",
            [("model outputs", "{} ({})".format(outputs.folder, described)), ("labels", data_path)],
            worst) if report else None
        if save_confusion:
            matrix.save(save_confusion)
        if save_path:
            write_result(save_path, result)
            log("result: {}".format(save_path))
        if page is not None:
            html_report.write_report(report, page)
            log("report: {}".format(report))
    return result


def _check_outputs_apart_from_inputs(outputs: Outputs, labels: Dict[str, str], pairs: Sequence[Pair],
                                     save_path: Optional[str], save_confusion: Optional[str], save_vis: Optional[str],
                                     save_pred: Optional[str], report: Optional[str] = None) -> None:
    """No result file, report or picture may replace a file the run reads (a model output, a label, a photo, a
    runner summary) or a lock it holds."""
    ids = [pair.id for pair in pairs]
    check_outputs_apart(
        {"--save_path": save_path, "--save_confusion": save_confusion, "--report": report,
         "a --save_vis picture": picture_paths(ids, save_vis, None),
         "a --save_pred picture": picture_paths(ids, None, save_pred)},
        {"a model output": [path for by_index in outputs.files.values() for path in by_index.values()],
         "a label": labels.values(), "a photo": [pair.image for pair in pairs],
         "a runner summary": sorted({find_summary(os.path.dirname(pair.output)) for pair in pairs})},
        locked={"--save_vis": save_vis, "--save_pred": save_pred})


def _report_left_out(pairs: Sequence[Pair], missing: Sequence[str], extra: Sequence[str], left_out: Dict[str, str],
            log: Callable[[str], None], warn: Callable[[str], None]) -> None:
    if missing:
        log("skipping {} labels without output (--allow_missing): {}".format(len(missing), _quote_ids(missing)))
    if left_out:
        log("skipping {} labels that are not regular files (--allow_missing): {}".format(
            len(left_out), _quote_ids([left_out[sid] for sid in sorted(left_out)])))
    if extra:
        log("ignoring {} outputs without label: {}".format(len(extra), _quote_ids(extra)))
    unknown = [pair for pair in pairs if pair.size_from == SIZE_FROM_LABEL]
    if unknown:
        warn("note: the size of the images behind {} of {} outputs is not known (no --prep_path, no runner summary "
             "naming the preprocess folder, no leftImg8bit photo beside the labels, e.g. {}): their labels are held "
             "to the outputs' size only, which a label up to 3 pixels off passes".format(
                 len(unknown), len(pairs), unknown[0].label))
    by_size = [pair for pair in pairs if pair.dtype_from == BY_SIZE]
    if by_size:
        warn("note: reading {} outputs as float16 by their size (pass --output_dtype to be explicit)".format(
            len(by_size)))


def _evaluate_pairs(pairs: Sequence[Pair], workers: Optional[int], save_vis: Optional[str],
                    save_pred: Optional[str], created: Sequence[str], warn: Callable[[str], None],
                    worst: Optional[worst_images.WorstImages] = None) -> ConfusionMatrix:
    """The confusion matrix over all pairs, pictures written, every image offered to `worst`; on any failure the
    pictures this run made (and the folders it created, when empty) are removed."""
    global _worst_in_progress
    for folder in (save_vis, save_pred):
        if folder:
            remove_stale_temporaries(folder)  # of a killed run into this folder
    matrix = ConfusionMatrix()
    workers = default_workers(workers, len(pairs))
    written: List[str] = []
    no_overlay: List[str] = []
    pictures = picture_paths([pair.id for pair in pairs], save_vis, save_pred)
    existed = {path for path in pictures if os.path.exists(path)}
    tasks = [(pair, save_vis, save_pred) for pair in pairs]
    _worst_in_progress = worst   # before the pool forks its workers
    try:
        with parallel_results(_evaluate_task, tasks, workers, "postprocess") as results:
            for result in results:
                if result[0] == "error":
                    raise UserError(result[1])
                matrix.add(result[2], result[1])
                written.extend(result[3])
                if result[4]:
                    no_overlay.append(result[4])
                if worst is not None:
                    worst.offer(result[1], worst_images.image_scores(result[2]), result[5])
    except BaseException:
        remove_pictures(set(pictures) - existed, written, (save_vis, save_pred))
        for folder in created:
            try:
                os.rmdir(folder)
            except OSError:
                pass
        raise
    finally:
        _worst_in_progress = None
    if no_overlay:
        warn("note: --save_vis wrote no overlay for {} of {} images ({}{})".format(
            len(no_overlay), len(pairs), sorted(no_overlay)[0], ", ..." if len(no_overlay) > 1 else ""))
    matrix.ids.sort()
    return matrix


