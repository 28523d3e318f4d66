"""The multi-scale merge on the CPU: every input's logits -> each scale's map -> the summed maps' argmax, fast.

The same method as merge_reference.py (upstream HRNet-OCR at 0bbb288, `multi_scale_inference` and `inference`):
upsample each input's logits to the input (bilinear, align_corners=True), average with the flipped input's flipped
back, exp(), sum the windows into a canvas and divide by their count, upsample each scale's map to the image, sum
the scales, argmax. Within float32 rounding of it (a relative 1e-7), not bit for bit, because:

- the upsample is separable, done once per axis as a + (b - a) * w from precomputed indices and weights (torch's
  float32 weights, upsample_argmax.axis_weights), the second pass written group by group of output rows that
  share their source row: two passes over the output instead of gathering two copies of it;
- flip is averaged before the upsample, on the logits: upsample and flip are linear and the align_corners
  upsample is symmetric under flip, so (up(a) + flip(up(b))) / 2 = up((a + flip(b)) / 2) within rounding, and
  each input pair costs one upsample instead of two;
- the window stage works in bands of rows small enough for the cache (CACHE_BYTES): made, exponentiated and
  added to the canvas while they are there; no full-size temporaries.

The full-size sum is made in bands of rows (BAND_BYTES of 19 x band x W float32 at a time, and as much again for
the scale being added), never 19 x H x W at once unless asked for (summed_scores); each value is computed on its
own, so the bands give the same values, bit for bit, whatever their size. numpy only (no torch): the evaluator,
predict and the Ray workers share it; the GPU merge is multiscale_merge_torch.py.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.data.cityscapes import NUM_CLASSES
from hrnetseg.evaluation.merge_reference import reference_scale_scores
from hrnetseg.evaluation.upsample_argmax import axis_weights
from hrnetseg.util.errors import UserError

FLOAT32 = 4                 # bytes
# full-size float32 class scores made at once (the sum; as much again for the scale being added): small enough that
# a band is still in the cache when it is added to and its argmax taken (16 MB bands took 15% longer)
BAND_BYTES = 2 << 20
CACHE_BYTES = 1 << 20       # a window's upsampled rows made at once: exp() and the canvas read them from the cache
BLEND_LIMIT = np.float32(1e38)   # |values| below it: a + (b - a) * w cannot overflow (float32 max: 3.4e38)
NOT_FINITE = "the summed scores are not finite (NaN or overflowing logits from the model)"


@lru_cache(maxsize=64)
def axis_plan(n_in: int, n_out: int) -> Tuple[np.ndarray, np.ndarray]:
    """(source index i0 per output index, its float32 weight w1 of source i0 + 1): torch's align_corners=True
    weights, read-only."""
    i0, _, _, w1 = axis_weights(n_in, n_out)
    return i0, w1


def next_difference(values: np.ndarray, axis: int) -> np.ndarray:
    """values[i + 1] - values[i] along axis, 0 at the last index (whose weight is 0, or which is the only one)."""
    step = np.empty(values.shape, dtype=np.float32)
    last = values.shape[axis] - 1
    ahead = [slice(None)] * values.ndim
    here = list(ahead)
    ahead[axis], here[axis] = slice(1, None), slice(0, last)
    np.subtract(values[tuple(ahead)], values[tuple(here)], out=step[tuple(here)])
    here[axis] = slice(last, None)
    step[tuple(here)] = 0
    return step


def upsample_across(maps: np.ndarray, out_w: int) -> np.ndarray:
    """C x R x w -> C x R x out_w, bilinear align_corners=True along the last axis (the same array when w is
    out_w, as torch copies an axis whose size does not change)."""
    if maps.shape[2] == out_w:
        return maps
    i0, w1 = axis_plan(maps.shape[2], out_w)
    out = np.take(next_difference(maps, 2), i0, axis=2)
    out *= w1
    out += np.take(maps, i0, axis=2)
    return out


def rows_into(out: np.ndarray, across: np.ndarray, step: Optional[np.ndarray], first: int, n_in: int, n_out: int,
              start: int) -> None:
    """out (C x k x W) = output rows start .. start + k of the align_corners upsample of n_in source rows to n_out,
    from `across` (C x r x W: source rows first .. first + r, already upsampled along the last axis) and `step`,
    its next_difference along the rows (None when n_in is n_out).

    Output rows that share their source row are written together from it and its difference to the next: two
    passes over the output, broadcasting one source row each."""
    stop = start + out.shape[1]
    if n_in == n_out:
        np.copyto(out, across[:, start - first:stop - first])
        return
    i0, w1 = axis_plan(n_in, n_out)
    rows = i0[start:stop]
    cuts = np.flatnonzero(rows[1:] != rows[:-1]) + 1
    edges = [0] + cuts.tolist() + [len(rows)]
    for a, b in zip(edges[:-1], edges[1:]):
        source = int(rows[a]) - first
        target = out[:, a:b]
        np.multiply(step[:, source:source + 1], w1[start + a:start + b, None], out=target)
        target += across[:, source:source + 1]


def source_rows(n_in: int, n_out: int, start: int, stop: int) -> Tuple[int, int]:
    """(first, last + 1): the source rows output rows start .. stop blend."""
    if n_in == n_out:
        return start, stop
    i0, _ = axis_plan(n_in, n_out)
    return int(i0[start]), min(int(i0[stop - 1]) + 2, n_in)


def averaged_logits(logits: np.ndarray, index: int, inputs: int, flip: bool) -> np.ndarray:
    """One input's 19 x h x w logits, with flip averaged with its flipped input's flipped back (before the upsample,
    which is linear and symmetric under flip)."""
    if not flip:
        return logits[index]
    mean = np.add(logits[index], logits[inputs + index][:, :, ::-1])
    mean *= np.float32(0.5)
    return mean


def check_logits(run, logits: np.ndarray, flip: bool) -> None:
    """Refuse, in one line, logits that are not 19 x h x w (h, w > 0) per input of the run."""
    inputs = len(run.windows) * (2 if flip else 1)
    if logits.ndim != 4 or logits.shape[0] != inputs or logits.shape[1] != NUM_CLASSES or not min(logits.shape[2:]):
        raise UserError("the model's main output is {} for {} inputs; expected {} x {} x h x w".format(
            "x".join(map(str, logits.shape)), inputs, inputs, NUM_CLASSES))


def scale_scores(run, logits: np.ndarray, flip: bool) -> np.ndarray:
    """One scale's 19 x h x w float32 map from the main output's logits for run's inputs (the windows, then with
    flip the same windows flipped): per input exp() of the (flip-averaged) logits upsampled to the input, the
    windows summed into a canvas and divided by the windows covering each pixel."""
    check_logits(run, logits, flip)
    logits = np.asarray(logits, dtype=np.float32)
    if logits.size and not np.abs(logits).max() < BLEND_LIMIT:
        # logits so large that their differences could overflow float32: the plain method, which never subtracts
        with np.errstate(over="ignore", invalid="ignore"):
            return reference_scale_scores(run, logits, flip)
    return _scale_scores(run, logits, flip)


def _scale_scores(run, logits: np.ndarray, flip: bool) -> np.ndarray:
    new_h, new_w = run.size
    windows = run.windows
    whole = len(windows) == 1 and windows[0] == (0, new_h, 0, new_w)
    scores = (np.empty if whole else np.zeros)((NUM_CLASSES, new_h, new_w), dtype=np.float32)
    count = None if whole else np.zeros((new_h, new_w), dtype=np.float32)
    widest = max(w1 - w0 for _, _, w0, w1 in windows)
    band_rows = min(cache_rows(widest), max(h1 - h0 for h0, h1, _, _ in windows))
    scratch = None if whole else np.empty((NUM_CLASSES, band_rows, widest), dtype=np.float32)
    for index, (h0, h1, w0, w1) in enumerate(windows):
        source = averaged_logits(logits, index, len(windows), flip)
        for start in range(0, h1 - h0, band_rows):
            stop = min(start + band_rows, h1 - h0)
            band = scores[:, start:stop] if whole else scratch[:, :stop - start, :w1 - w0]
            upsampled_rows_into(band, source, h1 - h0, w1 - w0, start)
            np.exp(band, out=band)
            if not whole:
                scores[:, h0 + start:h0 + stop, w0:w1] += band
        if not whole:
            count[h0:h1, w0:w1] += 1
    if not whole:
        scores /= count
    return scores


def upsampled_rows_into(target: np.ndarray, maps: np.ndarray, height: int, width: int, start: int) -> None:
    """target (C x k x width) = output rows start .. start + k of maps (C x h x w) upsampled to height x width
    (bilinear, align_corners=True): along the rows of only the source rows they blend, then across."""
    first, last = source_rows(maps.shape[1], height, start, start + target.shape[1])
    across = upsample_across(maps[:, first:last], width)
    step = None if maps.shape[1] == height else next_difference(across, 1)
    rows_into(target, across, step, first, maps.shape[1], height, start)


def cache_rows(width: int) -> int:
    """Rows of a 19-class float32 map of this width that fit CACHE_BYTES (at least 1)."""
    return max(1, CACHE_BYTES // (NUM_CLASSES * width * FLOAT32))


def add_rows(total: np.ndarray, scores: np.ndarray, height: int, width: int, start: int,
             scratch: Optional[np.ndarray]) -> None:
    """total (19 x k x W) += output rows start .. start + k of scores upsampled to height x width; scratch None:
    total = those rows (the first scale: 0 + x is x)."""
    if scratch is None:
        upsampled_rows_into(total, scores, height, width, start)
        return
    target = scratch[:, :total.shape[1]]
    upsampled_rows_into(target, scores, height, width, start)
    total += target


def band_rows_for(width: int) -> int:
    return max(1, BAND_BYTES // (NUM_CLASSES * width * FLOAT32))


def scale_maps(runs: Iterable[Tuple[object, np.ndarray]], flip: bool, keep: bool = True) -> Iterable[np.ndarray]:
    """Each scale's map, checked finite (exp() >= 0: max() is inf or NaN where anything is): all of them in a list
    (keep), else one at a time."""
    maps = (_finite(scale_scores(run, logits, flip)) for run, logits in runs)
    return list(maps) if keep else maps


def _finite(scores: np.ndarray) -> np.ndarray:
    if not np.isfinite(scores.max()):
        raise UserError(NOT_FINITE)
    return scores


def merged_labels(height: int, width: int, runs: Iterable[Tuple[object, np.ndarray]], flip: bool,
                  band_rows: Optional[int] = None) -> np.ndarray:
    """The H x W uint8 argmax over classes (ties to the lower class) of the sum over scales of each scale's map
    upsampled to height x width, made in bands of rows (band_rows, default BAND_BYTES' worth)."""
    maps = scale_maps(runs, flip)
    band_rows = min(band_rows or band_rows_for(width), height)
    labels = np.empty((height, width), dtype=np.uint8)
    total = np.empty((NUM_CLASSES, band_rows, width), dtype=np.float32)
    scratch = np.empty_like(total) if len(maps) > 1 else None
    for start in range(0, height, band_rows):
        stop = min(start + band_rows, height)
        band = total[:, :stop - start]
        for number, scores in enumerate(maps):
            add_rows(band, scores, height, width, start, scratch if number else None)
        if not np.isfinite(band.max()):   # a sum of non-negative finite maps: only an overflow is left to catch
            raise UserError(NOT_FINITE)
        labels[start:stop] = band.argmax(axis=0)
    return labels


def merged_scores(height: int, width: int, runs: Iterable[Tuple[object, np.ndarray]], flip: bool) -> np.ndarray:
    """The 19 x H x W float32 sum over scales of each scale's map upsampled to height x width: the values
    merged_labels sums, bit for bit, made whole (one scale's map at a time)."""
    total = np.empty((NUM_CLASSES, height, width), dtype=np.float32)
    band_rows = min(band_rows_for(width), height)
    scratch = np.empty((NUM_CLASSES, band_rows, width), dtype=np.float32)
    for number, scores in enumerate(scale_maps(runs, flip, keep=False)):
        for start in range(0, height, band_rows):
            add_rows(total[:, start:start + band_rows], scores, height, width, start, scratch if number else None)
        del scores
    if not np.isfinite(total.max()):
        raise UserError(NOT_FINITE)
    return total


def _rows_blended(n_in: int, n_out: int, rows: int) -> int:
    """At most how many source rows `rows` consecutive output rows of an n_in -> n_out upsample blend."""
    return min(n_in, -(-rows * max(n_in - 1, 0) // max(n_out - 1, 1)) + 2)


def merge_bytes(height: int, width: int, scales: Sequence[Tuple[Tuple[int, int], Tuple[int, int], bool]],
                flip: bool) -> int:
    """Bytes merged_labels (and merged_scores, which holds one scale's map and the whole sum instead of every map and
    a band) allocates at its peak for a height x width image, besides the logits it is given: every scale's map
    (merged_labels keeps them to the last band), and the most of what making one map (its count, a band of window
    rows and the rows it is made from) and the full-size bands (the sum, the scale being added, the rows they are
    made from, the argmax) hold at once. scales: per scale ((h, w) of its map, (h, w) of its largest window, whether
    it has several windows); the model's logits taken as a quarter of the input's size, as HRNet's are."""
    maps = built = 0
    for (new_h, new_w), (win_h, win_w), windowed in scales:
        scale_map = NUM_CLASSES * new_h * new_w * FLOAT32
        in_h, in_w = -(-win_h // 4), -(-win_w // 4)
        rows = min(cache_rows(win_w), win_h)
        source = _rows_blended(in_h, win_h, rows)
        making = NUM_CLASSES * FLOAT32 * (source * (3 * win_w + in_w) + (in_h * in_w if flip else 0))
        if windowed:
            making += new_h * new_w * FLOAT32 + NUM_CLASSES * rows * win_w * FLOAT32
        built = max(built, maps + scale_map + making)
        maps += scale_map
    rows = min(band_rows_for(width), height)
    widest = max(new_w for (_, new_w), _, _ in scales)
    source = max(_rows_blended(new_h, height, rows) for (new_h, _), _, _ in scales)
    bands = NUM_CLASSES * FLOAT32 * (2 * rows * width + source * (3 * width + widest)) + rows * width * 8
    return max(built, maps + bands) + height * width
