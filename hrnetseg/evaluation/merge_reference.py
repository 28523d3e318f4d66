"""The multi-scale merge as it was first written, kept as the oracle of the fast one (multiscale_merge.py).

Straightforward numpy, one step after the other as upstream HRNet-OCR at 0bbb288 does them (lib/datasets/
cityscapes.py `multi_scale_inference`, base_dataset.py `inference`): every input's logits upsampled to the input
(bilinear, align_corners=True), the flipped input's upsampled and flipped back, the two averaged, exp(), the windows
summed into a canvas and divided by their count, each scale's map upsampled to the image and the maps summed.
The tests and the merge benchmark (scripts/bench_merge.py) compare the fast merge with it; nothing else uses it.
numpy only.
"""
from __future__ import annotations

from typing import Iterable, Tuple

import numpy as np

from hrnetseg.data.cityscapes import NUM_CLASSES
from hrnetseg.evaluation.upsample_argmax import upsample_bilinear


def reference_scale_scores(run, logits: np.ndarray, flip: bool) -> np.ndarray:
    """One scale's 19 x h x w map from the logits of run's inputs (the windows, then with flip the flipped ones)."""
    new_h, new_w = run.size
    whole = len(run.windows) == 1 and run.windows[0] == (0, new_h, 0, new_w)
    if not whole:
        canvas = np.zeros((NUM_CLASSES, new_h, new_w), dtype=np.float32)
        count = np.zeros((1, new_h, new_w), dtype=np.float32)
    for index, (h0, h1, w0, w1) in enumerate(run.windows):
        pred = upsample_bilinear(logits[index], h1 - h0, w1 - w0)
        if flip:
            pred += upsample_bilinear(logits[len(run.windows) + index], h1 - h0, w1 - w0)[:, :, ::-1]
            pred *= np.float32(0.5)
        score = np.exp(pred)
        if whole:
            return score
        canvas[:, h0:h1, w0:w1] += score
        count[:, h0:h1, w0:w1] += 1
    canvas /= count
    return canvas


def reference_summed_scores(height: int, width: int, runs: Iterable[Tuple[object, np.ndarray]],
                            flip: bool) -> np.ndarray:
    """The 19 x H x W float32 sum over scales of each scale's map upsampled to the image's size."""
    total = np.zeros((NUM_CLASSES, height, width), dtype=np.float32)
    for run, logits in runs:
        total += upsample_bilinear(reference_scale_scores(run, logits, flip), height, width)
    return total


def reference_labels(height: int, width: int, runs: Iterable[Tuple[object, np.ndarray]], flip: bool) -> np.ndarray:
    """The H x W uint8 argmax over classes of reference_summed_scores (ties to the lower class)."""
    return reference_summed_scores(height, width, runs, flip).argmax(axis=0).astype(np.uint8)
