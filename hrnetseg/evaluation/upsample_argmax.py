"""Logits -> labels: the bilinear (align_corners=True) upsample + argmax over classes, exact and fast.

`logits_to_labels` gives the labels torch's `F.interpolate(..., mode="bilinear", align_corners=True)` followed
by `argmax` gives on float32, bit for bit, without making the classes x height x width blend for most pixels.
`upsample_reference` is the slow, full upsample the tests compare against.
Atlas-side module: numpy only (no torch), valid Python 3.7.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Tuple

import numpy as np

# How it works.
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

_TIE_MARGIN = 1e-5  # relative; float32 blend error is below 1e-6 of the magnitudes involved
_DENSE_FRACTION = 0.3  # above this share of boundary cells, the dense blend is faster
_DENSE_CHUNK = 1 << 20  # output values (classes x pixels) per chunk of the dense blend
_LOSING_LOGIT = np.float32(-3e38)  # a logit that loses every comparison, yet blends without overflow or NaN


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


def _lowest_class_where(mask: np.ndarray) -> np.ndarray:
    """Per pixel, the lowest class index whose mask (C x h x w) is set (C - 1 when none is)."""
    last = mask.shape[0] - 1
    rank = np.arange(last, -1, -1, dtype=np.uint8)[:, None, None]  # C-1 ... 0
    return (last - (mask * rank).max(axis=0)).astype(np.uint8)


def _argmax_with_margin(logits: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First-max argmax over classes (uint8), the max, and whether no lower class comes within a margin
    well above float32 rounding of the max (so that no blend of such pixels can tie with a lower class)."""
    best = logits.max(axis=0)
    label = _lowest_class_where(logits == best)
    near = logits >= best - np.float32(_TIE_MARGIN) * (1 + 2 * np.abs(best))
    safe = _lowest_class_where(near) == label
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
        return _upsampled_labels(logits, out_h, out_w)


def _upsampled_labels(logits: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
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
    tolerance = _TIE_MARGIN * (1.0 + magnitude)
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
            picked[padding] = _LOSING_LOGIT
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
    tolerance = np.float32(2 * _TIE_MARGIN * (1.0 + float(np.abs(logits).max())))
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


def upsample_bilinear(maps: np.ndarray, out_h: int, out_w: int,
                      rows: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """The C x out_h x out_w bilinear (align_corners=True) upsample of C x h x w float32 maps, within float32
    rounding of torch's (a relative 1e-7: two roundings where torch fuses a multiply-add), at numpy speed.
    An axis whose size does not change is copied as it is, as torch does.

    rows: (start, stop), only those output rows (C x (stop - start) x out_w), from only the source rows they
    blend: the same values, bit for bit, as those rows of the whole upsample (every value is computed alone)."""
    maps = np.asarray(maps, dtype=np.float32)
    start, stop = (0, out_h) if rows is None else rows
    y0, y1, wy0, wy1 = axis_weights(maps.shape[1], out_h)
    x0, x1, wx0, wx1 = axis_weights(maps.shape[2], out_w)
    same_height = maps.shape[1] == out_h
    first = start if same_height else int(y0[start])   # y0 and y1 never decrease
    source = maps[:, start:stop] if same_height else maps[:, first:int(y1[stop - 1]) + 1]
    if maps.shape[2] == out_w:
        across = source
    else:
        across = source[:, :, x0] * wx0
        across += source[:, :, x1] * wx1
    if same_height:
        return np.array(across, dtype=np.float32)
    out = across[:, y0[start:stop] - first] * wy0[start:stop, None]
    out += across[:, y1[start:stop] - first] * wy1[start:stop, None]
    return out
