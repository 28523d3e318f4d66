"""Segmentation metrics: the confusion-matrix accumulator and the exact, fast upsample + argmax.

    python -m hrnetseg.metrics merge A.npz B.npz ... --save_path result.json

sums the confusion matrices that `HRNet_postprocess.py --save_confusion` wrote for shards of a data set
into the result.json one run over all images would give.
Atlas-side module: numpy only (no torch), valid Python 3.7.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
import zlib
from functools import lru_cache
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .cityscapes import CLASS_NAMES, IGNORE, NUM_CLASSES
from .cli import UserError, add_alias_flags, progress, run_cli
from .files import check_output_file, require_file, write_bytes_atomic, write_text_atomic
from .locks import output_lock

TITLE = "overall statistical evaluation"
SHARD_KEYS = ("matrix", "images", "ids", "skipped", "class_names")  # the arrays of a --save_confusion file
# Optional array: the model output the shard evaluated (0-based, ais_bench's numbering: 0 aux, 1 main); shards
# of different outputs must not be summed into one mIoU. Files written before it was recorded lack it.
OUTPUT_INDEX_KEY = "output_index"
# more pixels than any data set has (Cityscapes val: 1e9); below it int64 sums cannot overflow and float64
# sums are exact
MAX_PIXELS = float(2 ** 53)

# --- upsample + argmax, exactly as torch computes it -----------------------------------------------
#
# torch's bilinear, align_corners=True upsample (CPU, float32, NCHW) computes, for output pixel (Y, X),
#   t_r = fma(L[c, r, x0], wx0, L[c, r, x1] * wx1)  for the two source rows r = y0, y1
#   out = fma(t_y0, wy0, t_y1 * wy1)
# with float32 weights: scale = float32(in - 1) / float32(out - 1), src = scale * float32(dst),
# i0 = floor(src), i1 = i0 + (i0 < in - 1), w1 = src - i0, w0 = 1 - w1.
# The argmax of that blend is the argmax shared by the four corners whenever they agree (the blend is
# monotonic in every corner value, with non-negative weights), provided no corner has a near tie with a
# lower class index. Only the other cells (class boundaries, a few percent) need the 19-channel blend,
# and there a cheap bound leaves 2-4 candidate classes; pixels whose best two candidates are within
# rounding of each other are decided by the blend recomputed with torch's exact float32 operations.

_MARGIN = 1e-5  # relative; float32 blend error is below 1e-6 of the magnitudes involved
_DENSE_FRACTION = 0.3  # above this share of boundary cells, the dense blend is faster
_DENSE_CHUNK = 1 << 20  # output values (classes x pixels) per chunk of the dense blend
_NEVER = np.float32(-3e38)  # a logit that loses every comparison, yet blends without overflow or NaN


@lru_cache(maxsize=16)
def axis_weights(n_in: int, n_out: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, w0, w1) per output index, in torch's float32 arithmetic (align_corners=True)."""
    if n_in == n_out:
        index = np.arange(n_out, dtype=np.int64)
        return index, index, np.ones(n_out, np.float32), np.zeros(n_out, np.float32)
    scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
    src = np.float32(scale) * np.arange(n_out, dtype=np.float32)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    i1 = i0 + (i0 < n_in - 1)
    w0 = (np.float32(1) - w1).astype(np.float32)
    for array in (i0, i1, w0, w1):
        array.setflags(write=False)
    return i0, i1, w0, w1


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 a * b + c with one rounding (a fused multiply-add), exactly.

    a * b is exact in float64; the float64 sum is rounded to odd (TwoSum gives its error), and rounding
    a round-to-odd float64 to float32 is the correctly rounded result.
    """
    product = np.asarray(a, np.float64) * np.asarray(b, np.float64)
    addend = np.asarray(c, np.float64)
    total = product + addend
    virtual = total - product
    error = (product - (total - virtual)) + (addend - virtual)
    bits = np.array(total, dtype=np.float64).view(np.int64)
    fix = (error != 0) & ((bits & 1) == 0)
    step = np.where((error > 0) == (total > 0), 1, -1).astype(np.int64)
    bits = np.where(fix, bits + step, bits)
    return bits.view(np.float64).astype(np.float32)


def blend_exact(c00, c01, c10, c11, wx0, wx1, wy0, wy1) -> np.ndarray:
    """torch's float32 bilinear value from four corner values and the weights (all broadcastable)."""
    f32 = np.float32
    top = fma32(c00, wx0, (np.asarray(c01, f32) * np.asarray(wx1, f32)).astype(f32))
    bottom = fma32(c10, wx0, (np.asarray(c11, f32) * np.asarray(wx1, f32)).astype(f32))
    return fma32(top, wy0, (bottom * np.asarray(wy1, f32)).astype(f32))


def upsample_reference(logits: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """The full C x out_h x out_w upsample, bit-identical to torch's (slow; for tests and fallbacks)."""
    logits = np.asarray(logits, dtype=np.float32)
    y0, y1, wy0, wy1 = axis_weights(logits.shape[1], out_h)
    x0, x1, wx0, wx1 = axis_weights(logits.shape[2], out_w)
    rows0, rows1 = logits[:, y0], logits[:, y1]
    return blend_exact(rows0[:, :, x0], rows0[:, :, x1], rows1[:, :, x0], rows1[:, :, x1],
                       wx0[None, None, :], wx1[None, None, :], wy0[None, :, None], wy1[None, :, None])


def _lowest(mask: np.ndarray) -> np.ndarray:
    """Per pixel, the lowest class index whose mask (C x h x w) is set (C - 1 when none is)."""
    last = mask.shape[0] - 1
    rank = np.arange(last, -1, -1, dtype=np.uint8)[:, None, None]  # C-1 ... 0
    return (last - (mask * rank).max(axis=0)).astype(np.uint8)


def _argmax_with_margin(logits: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First-max argmax over classes (uint8), the max, and whether no lower class comes within a margin
    well above float32 rounding of the max (so that no blend of such pixels can tie with a lower class)."""
    best = logits.max(axis=0)
    label = _lowest(logits == best)
    near = logits >= best - np.float32(_MARGIN) * (1 + 2 * np.abs(best))
    safe = _lowest(near) == label
    return label, best, safe


def logits_to_labels(logits: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """argmax over classes of the bilinear (align_corners=True) upsample of C x h x w logits to out_h x out_w.

    Identical to `F.interpolate(t[None], (out_h, out_w), mode="bilinear", align_corners=True)[0].argmax(0)`
    on float32 (ties go to the lower class, as argmax does), without making the C x out_h x out_w blend.
    Returns uint8 trainIds.
    """
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    if logits.ndim != 3 or logits.shape[0] > 255:
        raise ValueError("expected C x h x w logits with C < 256, got shape {}".format(logits.shape))
    if logits.size and not (np.isfinite(logits.min()) and np.isfinite(logits.max())):  # both propagate NaN
        raise ValueError("logits contain NaN or infinite values")
    # finite logits near float32's limits may overflow to inf in a blend or a difference (inf - inf: NaN),
    # which only decides between classes that are all far above the rest; numpy's warnings would be noise
    with np.errstate(over="ignore", invalid="ignore"):
        return _labels(logits, out_h, out_w)


def _labels(logits: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    _, h, w = logits.shape
    y0, y1, wy0, wy1 = axis_weights(h, out_h)
    x0, x1, wx0, wx1 = axis_weights(w, out_w)
    # the partner row / column of each source row / column, as the output pixels use them
    row_next = np.minimum(np.arange(h) + 1, h - 1) if out_h != h else np.arange(h)
    col_next = np.minimum(np.arange(w) + 1, w - 1) if out_w != w else np.arange(w)

    label, best, safe = _argmax_with_margin(logits)
    below, right, diag = label[row_next], label[:, col_next], label[row_next][:, col_next]
    agree = (label == below) & (label == right) & (label == diag)
    agree &= safe & safe[row_next] & safe[:, col_next] & safe[row_next][:, col_next]

    rows_per = np.bincount(y0, minlength=h)
    cols_per = np.bincount(x0, minlength=w)
    cell_label = np.where(agree, label, np.uint8(255)).astype(np.uint8)
    out = np.take(np.repeat(cell_label, rows_per, axis=0), x0, axis=1)  # each pixel gets its cell's label

    cell_rows, cell_cols = np.nonzero(~agree & (rows_per[:, None] > 0) & (cols_per[None, :] > 0))
    if cell_rows.size > _DENSE_FRACTION * h * w:  # noise-like logits: blend everything, in row chunks
        return _dense_labels(logits, (y0, y1, wy0, wy1), (x0, x1, wx0, wx1))
    if cell_rows.size:
        _decide_boundary_cells(out, logits, cell_rows, cell_cols, row_next, col_next, (y0, wy0, wy1),
                               (x0, wx0, wx1), rows_per, cols_per)
    return out


def _decide_boundary_cells(out, logits, cell_rows, cell_cols, row_next, col_next, ys, xs, rows_per, cols_per):
    """Fill the pixels of the cells whose corners disagree, with the exact blend's argmax."""
    y0, wy0, wy1 = ys
    x0, wx0, wx1 = xs
    num_classes = logits.shape[0]
    r1, c1 = row_next[cell_rows], col_next[cell_cols]
    corners = (logits[:, cell_rows, cell_cols], logits[:, cell_rows, c1],
               logits[:, r1, cell_cols], logits[:, r1, c1])  # each C x K
    low = np.minimum(np.minimum(corners[0], corners[1]), np.minimum(corners[2], corners[3]))
    high = np.maximum(np.maximum(corners[0], corners[1]), np.maximum(corners[2], corners[3]))
    magnitude = np.maximum(np.abs(low).max(axis=0), np.abs(high).max(axis=0))  # K
    tolerance = _MARGIN * (1.0 + magnitude)
    # a class whose largest corner is below the smallest corner of some class cannot win anywhere in the cell
    floor = low.max(axis=0)
    candidate = high >= (floor - tolerance)[None, :]
    count = candidate.sum(axis=0)

    # cells grouped by how many candidates they have; the pixels of each cell, cell by cell
    groups = ((1, 2), (3, 4), (5, num_classes))
    group_of = np.searchsorted(np.array([g[1] for g in groups]), count)
    order = np.argsort(group_of, kind="stable")
    cell_rows, cell_cols, count, tolerance = cell_rows[order], cell_cols[order], count[order], tolerance[order]
    candidate = candidate[:, order]
    corners = [corner[:, order] for corner in corners]
    group_first = np.searchsorted(group_of[order], np.arange(len(groups) + 1))

    row_start = np.cumsum(rows_per) - rows_per
    col_start = np.cumsum(cols_per) - cols_per
    height, width = rows_per[cell_rows], cols_per[cell_cols]
    sizes = height * width
    pixel_first = np.concatenate(([0], np.cumsum(sizes)))
    offset = np.arange(pixel_first[-1]) - np.repeat(pixel_first[:-1], sizes)
    cell_width = np.repeat(width, sizes)
    pix_y = np.repeat(row_start[cell_rows], sizes) + offset // cell_width
    pix_x = np.repeat(col_start[cell_cols], sizes) + offset % cell_width

    for index, (_, size) in enumerate(groups):
        first, last = group_first[index], group_first[index + 1]
        if first == last:
            continue
        # the candidate classes of each cell in increasing order (size x cells); rows past count are padding,
        # given a value so low that they never win
        size = min(size, num_classes)
        classes = np.argsort(~candidate[:, first:last], axis=0, kind="stable")[:size]
        padding = np.arange(size)[:, None] >= count[first:last][None, :]
        repeats = sizes[first:last]
        values = []
        for corner in corners:
            picked = np.take_along_axis(corner[:, first:last], classes, axis=0)
            picked[padding] = _NEVER
            values.append(np.repeat(picked, repeats, axis=1))  # size x pixels
        pixels = slice(pixel_first[first], pixel_first[last])
        py, px = pix_y[pixels], pix_x[pixels]
        winner = _blend_argmax(values, (wx0[px], wx1[px], wy0[py], wy1[py]),
                               np.repeat(tolerance[first:last], repeats))
        cell = np.repeat(np.arange(last - first), repeats)
        out[py, px] = classes.T.ravel()[cell * size + winner]


def _dense_labels(logits, ys, xs) -> np.ndarray:
    """Every pixel's blend in float32 (within rounding of torch's), chunk by chunk of rows; pixels whose
    best classes are within rounding of each other are settled with torch's exact arithmetic."""
    y0, y1, wy0, wy1 = ys
    x0, x1, wx0, wx1 = xs
    num_classes = logits.shape[0]
    out = np.empty((y0.size, x0.size), dtype=np.uint8)
    tolerance = np.float32(2 * _MARGIN * (1.0 + float(np.abs(logits).max())))
    across = logits[:, :, x0] * wx0 + logits[:, :, x1] * wx1  # C x h x out_w, each source row once
    rank = np.arange(num_classes - 1, -1, -1, dtype=np.uint8)[:, None, None]
    step = max(1, _DENSE_CHUNK // (num_classes * x0.size))
    for start in range(0, y0.size, step):
        rows = np.arange(start, min(start + step, y0.size))
        blend = across[:, y0[rows]] * wy0[rows][:, None] + across[:, y1[rows]] * wy1[rows][:, None]
        near = blend >= blend.max(axis=0) - tolerance
        out[rows] = (num_classes - 1) - (near * rank).max(axis=0)
        tie_y, tie_x = np.nonzero(near.sum(axis=0, dtype=np.uint8) > 1)
        if tie_y.size:
            py, px = rows[tie_y], tie_x
            r0, r1, c0, c1 = y0[py], y1[py], x0[px], x1[px]
            exact = blend_exact(logits[:, r0, c0], logits[:, r0, c1], logits[:, r1, c0], logits[:, r1, c1],
                                wx0[px], wx1[px], wy0[py], wy1[py])
            out[py, px] = exact.argmax(axis=0)
    return out


def _blend_argmax(values, weights, tolerance) -> np.ndarray:
    """Per pixel (column), the first row with the largest blend of its four corner values; rows within
    rounding of each other are settled with torch's exact float32 arithmetic."""
    c00, c01, c10, c11 = values
    wx0, wx1, wy0, wy1 = weights
    top = c00 * wx0  # within rounding of torch's blend (no fused multiply-add here)
    top += c01 * wx1
    bottom = c10 * wx0
    bottom += c11 * wx1
    top *= wy0
    bottom *= wy1
    blend = top
    blend += bottom
    best = blend[0].copy()
    second = np.full(best.shape, -np.inf, dtype=np.float32)
    winner = np.zeros(best.shape, dtype=np.uint8)
    for row in range(1, blend.shape[0]):
        value = blend[row]
        np.maximum(second, np.minimum(value, best), out=second)
        np.copyto(winner, row, where=value > best)
        np.maximum(best, value, out=best)
    close = np.nonzero(best - second <= 2 * tolerance)[0]
    if close.size:
        exact = blend_exact(c00[:, close], c01[:, close], c10[:, close], c11[:, close], wx0[close], wx1[close],
                            wy0[close], wy1[close])
        winner[close] = exact.argmax(axis=0)
    return winner


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
        self.ids = []  # type: List[str]
        self.skipped = []  # type: List[str]
        self.output_index = None  # type: Optional[int]   # the model output evaluated, when known

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
        import io

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
        require_file(path, "confusion file")
        try:
            with open(path, "rb") as fh:
                data = np.load(fh, allow_pickle=False)
                if not hasattr(data, "files"):  # an .npy: np.load gave the array itself
                    raise ValueError("an .npy array, not an .npz archive")
                absent = [key for key in SHARD_KEYS if key not in data.files]
                if absent:
                    raise ValueError("no {}".format(", ".join(absent)))
                fields = {key: np.asarray(data[key]) for key in SHARD_KEYS + (OUTPUT_INDEX_KEY,)
                          if key in data.files}
        except (OSError, ValueError, TypeError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise UserError("{} is not a confusion file written by --save_confusion ({})".format(
                path, " ".join(str(exc).split()) or type(exc).__name__))
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
    (cityscapesScripts); the seed's block counts an empty class as 0 in its mean."""
    matrix = np.asarray(matrix, dtype=np.int64)
    tp = np.diag(matrix).astype(np.float64)
    gt_total = matrix.sum(axis=1).astype(np.float64)
    union = gt_total + matrix.sum(axis=0) - tp
    iou = [_fraction(t, u) for t, u in zip(tp, union)]
    accuracy = [_fraction(t, g) for t, g in zip(tp, gt_total)]
    seed_array = [v if v is not None else 0.0 for v in iou]
    return {
        "title": TITLE,
        "value": {"Iou_array": seed_array, "mean_Iou": _mean(seed_array) or 0.0},
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
    parser = argparse.ArgumentParser(prog="python -m hrnetseg.metrics",
                                     description="Work with the confusion files of HRNet_postprocess.py.")
    commands = parser.add_subparsers(dest="command")
    merge = commands.add_parser("merge", help="sum shards (--save_confusion files) into one result.json")
    merge.add_argument("files", nargs="+", help="the .npz files of the shards")
    merge.add_argument("--save_path", required=True, help="result.json to write")
    add_alias_flags(merge)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "merge":
        parser.error("choose a command: merge")
    check_output_file(args.save_path, "--save_path")
    if any(os.path.realpath(path) == os.path.realpath(args.save_path) for path in args.files):
        raise UserError("--save_path {} is one of the shards: give another name".format(args.save_path))
    with output_lock(args.save_path):
        result = merge_files(args.files).compute()
        print(format_table(result))
        write_result(args.save_path, result)
    print("merged {} files ({} images) into {}".format(len(args.files), result["images"], args.save_path))
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
