"""The multi-scale merge on the backend's GPU, with torch: only the H x W uint8 labels come back to the host.

Where the model runs on a CUDA device (the torch backend, or ONNX Runtime's CUDA provider), the merge's billion
values per Cityscapes image (multiscale_merge.py does them on the CPU) are upstream HRNet-OCR's own operations at
0bbb288, run where they are cheap: F.interpolate (bilinear, align_corners=True), flip, exp, the windows' canvas,
the sum over scales and the argmax, float32 on the device. torch is imported here only, and only once a GPU merge
is asked for: multiscale.py, the numpy path and the Ray workers import this module without it.
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import numpy as np

from hrnetseg.data.cityscapes import NUM_CLASSES
from hrnetseg.evaluation.multiscale_merge import NOT_FINITE, check_logits
from hrnetseg.util.errors import UserError


def merge_device(backend_device: str) -> Optional[str]:
    """The torch device the merge runs on for a backend on `backend_device` ("cuda:0" -> "cuda:0"), or None for the
    CPU merge (numpy): a CPU backend, or no torch with CUDA in this environment (an ONNX Runtime GPU install
    without torch)."""
    if not str(backend_device).startswith("cuda"):
        return None
    try:
        import torch
    except ImportError:
        return None
    return str(backend_device) if torch.cuda.is_available() else None


def merged_labels(height: int, width: int, runs: Iterable[Tuple[object, np.ndarray]], flip: bool,
                  device: str) -> np.ndarray:
    """The H x W uint8 argmax over classes (ties to the lower class) of the sum over scales of each scale's map
    upsampled to height x width, computed on the torch `device` ("cpu" too: the tests' stand-in for a GPU)."""
    import torch

    with torch.no_grad():
        total = torch.zeros((1, NUM_CLASSES, height, width), dtype=torch.float32, device=device)
        for run, logits in runs:
            check_logits(run, logits, flip)
            scores = _scale_scores(run, torch.from_numpy(np.array(logits, dtype=np.float32)).to(device), flip)
            total += _upsample(scores, (height, width))
            del scores
        if not bool(torch.isfinite(total).all()):
            raise UserError(NOT_FINITE)
        return total[0].argmax(0).to(torch.uint8).cpu().numpy()


def _upsample(maps, size):
    import torch.nn.functional as F

    return F.interpolate(maps, size, mode="bilinear", align_corners=True)


def _scale_scores(run, logits, flip: bool):
    """One scale's 1 x 19 x h x w map on the device (upstream's `inference` per window, the canvas and count)."""
    import torch

    new_h, new_w = run.size
    windows = run.windows
    canvas = torch.zeros((1, NUM_CLASSES, new_h, new_w), dtype=torch.float32, device=logits.device)
    count = torch.zeros((1, 1, new_h, new_w), dtype=torch.float32, device=logits.device)
    for index, (h0, h1, w0, w1) in enumerate(windows):
        pred = _upsample(logits[index:index + 1], (h1 - h0, w1 - w0))
        if flip:
            flipped = _upsample(logits[len(windows) + index:len(windows) + index + 1], (h1 - h0, w1 - w0))
            pred = (pred + torch.flip(flipped, [3])) * 0.5
            del flipped
        canvas[:, :, h0:h1, w0:w1] += pred.exp_()
        count[:, :, h0:h1, w0:w1] += 1
        del pred
    return canvas / count
