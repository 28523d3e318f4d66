"""Segmentation metrics: the confusion-matrix accumulator, the scores (IoU, mIoU, accuracies) and the merge
of shards.

    python -m hrnetseg.metrics merge A.npz B.npz ... --save_path result.json

sums the confusion matrices that `HRNet_postprocess.py --save_confusion` wrote for shards of a data set
into the result.json one run over all images would give. (Logits -> labels, the exact upsample + argmax, is
hrnetseg.evaluation.upsample_argmax.)
Atlas-side module: numpy only (no torch), valid Python 3.7.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
import zlib
from typing import Iterable, List, Optional, Sequence

import numpy as np

from hrnetseg.data.cityscapes import CLASS_NAMES, IGNORE, NUM_CLASSES
from hrnetseg.util.cli import ArgumentParser, progress, run_cli
from hrnetseg.util.errors import UserError, exception_line
from hrnetseg.util.files import check_output_file, check_outputs_apart, write_bytes_atomic, write_text_atomic
from hrnetseg.util.locks import output_lock
from hrnetseg.util.structured import MAX_BYTES, read_bytes

TITLE = "overall statistical evaluation"
SHARD_KEYS = ("matrix", "images", "ids", "skipped", "class_names")  # the arrays of a --save_confusion file
# Optional array: the model output the shard evaluated (0-based, ais_bench's numbering: 0 aux, 1 main); shards
# of different outputs must not be summed into one mIoU. Files written before it was recorded lack it.
OUTPUT_INDEX_KEY = "output_index"
# more pixels than any data set has (Cityscapes val: 1e9); below it int64 sums cannot overflow and float64
# sums are exact
MAX_PIXELS = float(2 ** 53)

# --- the confusion matrix and the scores ----------------------------------------------------------

def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """num_classes x num_classes int64 counts (rows ground truth, columns prediction) over the pixels whose
    ground truth is a class; ground truth 255 (or any value >= num_classes) is ignored."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError("prediction {} and ground truth {} differ in shape".format(pred.shape, gt.shape))
    if pred.size and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError("predictions must be class indices 0..{}".format(num_classes - 1))
    if gt.dtype != np.uint8:
        gt = np.where((gt >= 0) & (gt < num_classes), gt, IGNORE).astype(np.uint8)
    code = gt.astype(np.uint16) * np.uint16(num_classes) + pred.astype(np.uint16)
    counts = np.bincount(code.ravel(), minlength=256 * num_classes)[:num_classes * num_classes]
    return counts.reshape(num_classes, num_classes).astype(np.int64)


class ConfusionMatrix(object):
    """Accumulates a confusion matrix over images (update), combines shards (merge), scores it (compute).

    Rows are ground truth, columns prediction, over pixels whose ground truth is one of the classes.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, class_names: Sequence[str] = CLASS_NAMES) -> None:
        self.num_classes = num_classes
        self.class_names = tuple(class_names)
        self.reset()

    def reset(self) -> None:
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.images = 0
        self.ids: List[str] = []
        self.skipped: List[str] = []
        self.output_index: Optional[int] = None  # the model output evaluated, when known

    def update(self, pred: np.ndarray, gt: np.ndarray, image_id: Optional[str] = None) -> np.ndarray:
        """Add one image: trainId prediction and ground truth maps of one size. Returns its own matrix."""
        counts = confusion(pred, gt, self.num_classes)
        self.add(counts, image_id)
        return counts

    def add(self, counts: np.ndarray, image_id: Optional[str] = None) -> None:
        """Add one image's confusion matrix (as `confusion` makes it)."""
        self.matrix += counts
        self.images += 1
        if image_id is not None:
            self.ids.append(image_id)

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another shard in place; an image in both is an error (it would count twice)."""
        if other.num_classes != self.num_classes:
            raise UserError("cannot merge a {}-class matrix into a {}-class one".format(other.num_classes,
                                                                                     self.num_classes))
        if other.class_names != self.class_names:
            raise UserError("cannot merge matrices of different classes ({} ... against {} ...)".format(
                ", ".join(other.class_names[:3]), ", ".join(self.class_names[:3])))
        if None not in (self.output_index, other.output_index) and self.output_index != other.output_index:
            raise UserError("the shards evaluate different model outputs ({} and {}; 0 = aux, 1 = main): their sum "
                            "would be no model's mIoU".format(self.output_index, other.output_index))
        twice = sorted(set(self.ids) & set(other.ids))
        if twice:
            raise UserError("{} image(s) appear in two shards, e.g. {}: they would count twice".format(
                len(twice), ", ".join(twice[:3])))
        if _total(self.matrix) + _total(other.matrix) > MAX_PIXELS:
            raise UserError("the shards hold more than {:.3g} pixels together: not pixel counts".format(MAX_PIXELS))
        self.matrix += other.matrix
        self.images += other.images
        self.ids = sorted(self.ids + other.ids)
        # an image one shard skipped may be in another (shards made with --allow_missing over parts)
        self.skipped = sorted((set(self.skipped) | set(other.skipped)) - set(self.ids))
        if self.output_index is None:
            self.output_index = other.output_index
        return self

    def compute(self) -> dict:
        """The result dict of result.json (fractions 0-1; null for a class that never occurs)."""
        return scores(self.matrix, self.images, self.skipped, self.class_names)

    def save(self, path: str) -> None:
        """Write matrix, image count, ids and skipped ids as .npz (atomically), for `merge`."""
        buffer = io.BytesIO()
        extra = {} if self.output_index is None else {OUTPUT_INDEX_KEY: np.int64(self.output_index)}
        np.savez(buffer, matrix=self.matrix, images=np.int64(self.images),
                 ids=np.array(sorted(self.ids), dtype=np.str_), skipped=np.array(self.skipped, dtype=np.str_),
                 class_names=np.array(self.class_names, dtype=np.str_), **extra)
        write_bytes_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str) -> "ConfusionMatrix":
        """A shard written by `save`; any other file (not a zip, keys missing, wrong dtypes or shapes, negative
        counts, ids that do not match the image count, pickled objects) is a one-line UserError."""
        archive = io.BytesIO(read_bytes(path, "confusion file"))
        try:
            _check_unpacked_size(archive)
            data = np.load(archive, allow_pickle=False)
            if not hasattr(data, "files"):  # an .npy: np.load gave the array itself
                raise ValueError("an .npy array, not an .npz archive")
            absent = [key for key in SHARD_KEYS if key not in data.files]
            if absent:
                raise ValueError("no {}".format(", ".join(absent)))
            fields = {key: np.asarray(data[key]) for key in SHARD_KEYS + (OUTPUT_INDEX_KEY,) if key in data.files}
        except (OSError, ValueError, TypeError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise UserError("{} is not a confusion file written by --save_confusion ({})".format(
                path, exception_line(exc)))
        return cls._from_fields(path, fields)

    @classmethod
    def _from_fields(cls, path: str, fields: dict) -> "ConfusionMatrix":
        matrix, images = fields["matrix"], fields["images"]
        texts = {}
        for key in ("ids", "skipped", "class_names"):
            if fields[key].ndim != 1 or (fields[key].size and fields[key].dtype.kind != "U"):
                raise UserError("{} holds a damaged confusion file: {} is {} {}, expected a list of names".format(
                    path, key, fields[key].dtype, fields[key].shape))
            texts[key] = [str(v) for v in fields[key]]
        if matrix.dtype.kind not in "iu" or matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] \
                or matrix.shape[0] != len(texts["class_names"]) or not matrix.size:
            raise UserError("{} holds a damaged confusion matrix: {} {} for {} class names".format(
                path, matrix.dtype, matrix.shape, len(texts["class_names"])))
        if int(matrix.min()) < 0 or _total(matrix) > MAX_PIXELS:
            raise UserError("{} holds a damaged confusion matrix: counts from {} to {}, {:.3g} in all".format(
                path, matrix.min(), matrix.max(), _total(matrix)))
        if images.dtype.kind not in "iu" or images.shape != () or int(images) != len(texts["ids"]):
            raise UserError("{} holds a damaged confusion file: images {} but {} image ids".format(
                path, images.tolist(), len(texts["ids"])))
        if len(set(texts["ids"])) != len(texts["ids"]):
            raise UserError("{} lists an image twice".format(path))
        shard = cls(matrix.shape[0], texts["class_names"])
        shard.matrix = matrix.astype(np.int64)
        shard.images, shard.ids, shard.skipped = int(images), texts["ids"], texts["skipped"]
        if OUTPUT_INDEX_KEY in fields:
            index = fields[OUTPUT_INDEX_KEY]
            if index.dtype.kind not in "iu" or index.shape != () or int(index) < 0:
                raise UserError("{} holds a damaged confusion file: output_index {}".format(path, index.tolist()))
            shard.output_index = int(index)
        return shard


def _check_unpacked_size(archive: io.BytesIO) -> None:
    """A zip archive whose members unpack to more than a shard can hold (a few ids per image, a 19 x 19 matrix)
    is refused before np.load unpacks them: a small compressed file could otherwise fill the memory. Not a zip:
    left to np.load, which names what it is."""
    if not zipfile.is_zipfile(archive):
        archive.seek(0)
        return
    with zipfile.ZipFile(archive) as members:
        unpacked = sum(member.file_size for member in members.infolist())
    archive.seek(0)
    if unpacked > MAX_BYTES:
        raise ValueError("its arrays unpack to {} bytes, more than {} MiB".format(unpacked, MAX_BYTES // 2 ** 20))


def _total(matrix: np.ndarray) -> float:
    return float(matrix.sum(dtype=np.float64))


def _fraction(numerator: float, denominator: float) -> Optional[float]:
    return float(numerator) / float(denominator) if denominator > 0 else None


def _mean(values: Sequence[float]) -> Optional[float]:
    """Summed in order, as cityscapesScripts does (so mIoU == mean_Iou exactly when every class occurs)."""
    return sum(values) / len(values) if values else None


def scores(matrix: np.ndarray, images: int, skipped: Iterable[str] = (),
           class_names: Sequence[str] = CLASS_NAMES) -> dict:
    """IoU per class = TP / (TP + FP + FN); mIoU = mean over the classes whose union is not empty
    (cityscapesScripts); the ModelZoo scripts' block ("value") counts an empty class as 0 in its mean."""
    matrix = np.asarray(matrix, dtype=np.int64)
    tp = np.diag(matrix).astype(np.float64)
    gt_total = matrix.sum(axis=1).astype(np.float64)
    union = gt_total + matrix.sum(axis=0) - tp
    iou = [_fraction(t, u) for t, u in zip(tp, union)]
    accuracy = [_fraction(t, g) for t, g in zip(tp, gt_total)]
    zero_filled_iou = [v if v is not None else 0.0 for v in iou]
    return {
        "title": TITLE,
        "value": {"Iou_array": zero_filled_iou, "mean_Iou": _mean(zero_filled_iou) or 0.0},
        "mIoU": _mean([v for v in iou if v is not None]),
        "per_class": dict(zip(class_names, iou)),
        "pixel_accuracy": _fraction(tp.sum(), matrix.sum()),
        "mean_accuracy": _mean([v for v in accuracy if v is not None]),
        "images": int(images),
        "skipped": sorted(skipped),
        "confusion_matrix": matrix.tolist(),
    }


def _percent(value: Optional[float]) -> str:
    return "   n/a" if value is None else "{:6.2f}".format(100.0 * value)


def format_table(result: dict) -> str:
    """Per-class IoU table, then the summary line, as text."""
    width = max(len(name) for name in result["per_class"])
    lines = ["{:<{w}}  IoU (%)".format("class", w=width)]
    for name, value in result["per_class"].items():
        lines.append("{:<{w}}  {}".format(name, _percent(value), w=width))
    absent = sum(1 for v in result["per_class"].values() if v is None)
    lines.append("{:<{w}}  {}{}".format("mIoU", _percent(result["mIoU"]), "  ({} classes absent, left out)".format(
        absent) if absent else "", w=width))
    lines.append("images {}, pixel accuracy {}%, mean accuracy {}%{}".format(
        result["images"], _percent(result["pixel_accuracy"]).strip(), _percent(result["mean_accuracy"]).strip(),
        ", skipped {}".format(len(result["skipped"])) if result["skipped"] else ""))
    return "\n".join(lines)


def write_result(path: str, result: dict) -> None:
    write_text_atomic(path, json.dumps(result, indent=1) + "\n")


# --- python -m hrnetseg.metrics merge A.npz B.npz ... --save_path result.json ------------------------

def merge_files(paths: Sequence[str]) -> ConfusionMatrix:
    total = None
    for path in progress(paths, desc="merge", unit="file"):
        shard = ConfusionMatrix.load(path)
        if total is None:
            total = shard
            continue
        try:
            total.merge(shard)
        except UserError as exc:
            raise UserError("{}: {}".format(path, exc))
    return total


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description="Work with the confusion files of HRNet_postprocess.py.")
    commands = parser.add_subparsers(dest="command")
    merge = commands.add_parser("merge", help="sum shards (--save_confusion files) into one result.json")
    merge.add_argument("files", nargs="+", help="the .npz files of the shards")
    merge.add_argument("--save_path", required=True, help="result.json to write")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "merge":
        parser.error("choose a command: merge")
    check_output_file(args.save_path, "--save_path")
    check_outputs_apart({"--save_path": args.save_path}, {"a shard": args.files})
    with output_lock(args.save_path):
        result = merge_files(args.files).compute()
        print(format_table(result))
        write_result(args.save_path, result)
    print("merged {} files ({} images) into {}".format(len(args.files), result["images"], args.save_path))
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
