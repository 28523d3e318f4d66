"""Test-time augmentation: upstream HRNet-OCR's multi-scale + flip inference, over any of our backends.

Upstream HRNet-OCR at 0bbb288 (lib/datasets/cityscapes.py `multi_scale_inference`, base_dataset.py
`multi_scale_aug` and `inference`), restated for one image that is already normalized (float32 H x W x 3,
the upstream transform):

- per scale s: long side int(base_size * s + 0.5), the other side int(side * long / long_side + 0.5) (the
  height is the long side only when it is strictly larger); the normalized float image is resized with
  OpenCV's bilinear (cv2.INTER_LINEAR);
- s <= 1.0: the whole resized image is one input; s > 1.0: windows of the crop size, stride one crop,
  rows = ceil((new_h - crop_h) / crop_h) + 1 (columns alike), each window's end clipped to the border and
  its start moved back to end - crop (not below 0), so the last window of a row or column ends at the border;
  the windows' maps are summed into a canvas and divided by how many windows cover each pixel;
- one input: the model's main output, upsampled (bilinear, align_corners=True) to the input's size; with
  flip, the same for the horizontally flipped input, flipped back, the two summed and halved; then exp();
- each scale's map is upsampled (bilinear, align_corners=True) to the image's size; the maps are summed
  (float32, from zeros, in the order of the scales) and the prediction is the argmax of the sum.

numpy and OpenCV only (no torch): the evaluator, predict and the Ray workers share it. The model is reached
through `run_main(batch) -> logits`, which `main_output_runner` makes from a backend. The merge (the last three
steps) is multiscale_merge.py on the CPU, multiscale_merge_torch.py where the backend runs on a CUDA device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.backends import Backend, InputSpec
from hrnetseg.backends.batching import output_rows, pad_batch, shape_fits_input_spec
from hrnetseg.data.cityscapes import NUM_CLASSES
from hrnetseg.evaluation import multiscale_merge, multiscale_merge_torch
from hrnetseg.util.errors import UserError
from hrnetseg.util.memory import available_memory, size_text

RunMain = Callable[[np.ndarray], np.ndarray]
DEFAULT_BASE_SIZE = 2048               # upstream's TEST.BASE_SIZE for Cityscapes
DEFAULT_CROP_SIZE = (1024, 2048)       # upstream's TEST.IMAGE_SIZE (W, H = 2048, 1024), here as (H, W)
UPSTREAM_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)   # upstream's TEST.SCALE_LIST for its published numbers
MAX_SCALE = 8.0                        # beyond this a Cityscapes image would need gigabytes per scale
# a side in pixels (--base_size, --crop_size) is at most this: the merge's 19-class map of a base size above it
# alone would take terabytes (check_memory says how much less fits; this keeps every size a float can hold)
MAX_SIDE = 1 << 20
FLOAT32 = 4                            # bytes
WINDOW_OVERHEAD = 512                  # bytes per model input besides its pixels: its window, tuple and array views
Window = Tuple[int, int, int, int]     # h0, h1, w0, w1


@dataclass(frozen=True)
class TestTimeAugmentation:
    """Scales, flip, base size and crop size (H, W) of upstream's multi-scale testing."""

    __test__ = False   # not a pytest test class, whatever its name says

    scales: Tuple[float, ...] = (1.0,)
    flip: bool = False
    base_size: int = DEFAULT_BASE_SIZE
    crop_size: Tuple[int, int] = DEFAULT_CROP_SIZE

    def __post_init__(self) -> None:
        if not self.scales:
            raise UserError("--scales needs at least one scale")
        for scale in self.scales:
            if not (isinstance(scale, (int, float)) and math.isfinite(scale) and 0 < scale <= MAX_SCALE):
                raise UserError("scale {!r} is not a number in (0, {:g}]".format(scale, MAX_SCALE))
        if len(set(self.scales)) != len(self.scales):
            raise UserError("--scales names a scale twice: {}".format(",".join("{:g}".format(s) for s in self.scales)))
        if not (isinstance(self.base_size, int) and 0 < self.base_size <= MAX_SIDE):
            raise UserError("--base_size must be a number of pixels from 1 to {}, not {!r}".format(
                MAX_SIDE, self.base_size))
        if len(self.crop_size) != 2 or not all(isinstance(v, int) and 0 < v <= MAX_SIDE for v in self.crop_size):
            raise UserError("--crop_size must be two sizes H,W from 1 to {}, not {!r}".format(MAX_SIDE, self.crop_size))

    def is_plain(self) -> bool:
        """One scale 1.0 and no flip: today's single-scale path (when the image's long side is the base size)."""
        return tuple(self.scales) == (1.0,) and not self.flip

    def runs_as_is(self, height: int, width: int) -> bool:
        """Whether this is today's single-scale path for an image of this size: plain, and the image already
        at the base size (nothing resized, the model run once on the image itself)."""
        return self.is_plain() and scaled_size(height, width, self.base_size, 1.0) == (height, width)

    def scaled_sizes(self, height: int, width: int) -> List[Tuple[int, int]]:
        """The resized image's (h, w) per scale, in the order of the scales."""
        return [scaled_size(height, width, self.base_size, scale) for scale in self.scales]

    def windows(self, scale: float, new_h: int, new_w: int) -> List[Window]:
        """The model inputs of one scale, as (h0, h1, w0, w1) in the resized image."""
        if scale <= 1.0:
            return [(0, new_h, 0, new_w)]
        return sliding_windows(new_h, new_w, self.crop_size)

    def input_sizes(self, height: int, width: int) -> List[Tuple[int, int]]:
        """Every (h, w) the model is run at for an image of this size, each once, in the order of the scales."""
        sizes: List[Tuple[int, int]] = []
        for scale, (new_h, new_w) in zip(self.scales, self.scaled_sizes(height, width)):
            for h0, h1, w0, w1 in self.windows(scale, new_h, new_w):
                if (h1 - h0, w1 - w0) not in sizes:
                    sizes.append((h1 - h0, w1 - w0))
        return sizes

    def forward_passes(self, height: int, width: int) -> int:
        """Model runs per image of this size (a flipped input is a run of its own)."""
        runs = sum(len(self.windows(scale, new_h, new_w))
                   for scale, (new_h, new_w) in zip(self.scales, self.scaled_sizes(height, width)))
        return runs * (2 if self.flip else 1)

    def describe(self) -> str:
        return "scales {}{}, base size {}, crop size {}x{}".format(
            ",".join("{:g}".format(s) for s in self.scales), " + flip" if self.flip else "", self.base_size,
            self.crop_size[0], self.crop_size[1])


def scaled_size(height: int, width: int, base_size: int, scale: float) -> Tuple[int, int]:
    """(h, w) of an image resized for one scale: long side int(base_size * scale + 0.5), the other side
    rounded the same way, as upstream's multi_scale_aug (int() truncates, as its np.int did)."""
    long_side = int(base_size * scale + 0.5)
    if height > width:
        size = (long_side, int(width * long_side / height + 0.5))
    else:
        size = (int(height * long_side / width + 0.5), long_side)
    if min(size) < 1:
        raise UserError("scale {:g} with base size {} makes the {}x{} image {}x{}: no pixels left; use a larger "
                        "scale or --base_size".format(scale, base_size, height, width, size[0], size[1]))
    return size


def window_grid(new_h: int, new_w: int, crop_size: Tuple[int, int]) -> Tuple[int, int]:
    """(rows, columns) of upstream's windows over a resized image (its ceil formula, in float as upstream
    computes it); each window is min(crop, image) in size."""
    crop_h, crop_w = crop_size
    return (int(math.ceil(1.0 * (new_h - crop_h) / crop_h)) + 1, int(math.ceil(1.0 * (new_w - crop_w) / crop_w)) + 1)


def sliding_windows(new_h: int, new_w: int, crop_size: Tuple[int, int]) -> List[Window]:
    """Upstream's windows over a resized image: stride one crop, the last of a row / column shifted back to
    end at the border."""
    crop_h, crop_w = crop_size
    rows, cols = window_grid(new_h, new_w, crop_size)
    windows = []
    for r in range(rows):
        for c in range(cols):
            h1 = min(r * crop_h + crop_h, new_h)
            w1 = min(c * crop_w + crop_w, new_w)
            windows.append((max(h1 - crop_h, 0), h1, max(w1 - crop_w, 0), w1))
    return windows


def memory_needed(tta: TestTimeAugmentation, height: int, width: int) -> int:
    """Bytes the multi-scale merge allocates for one height x width image, at its peak (float32 throughout).

    Counted for the whole image: the decoded image and its H x W x 3 copy, the 19 x H x W sum of the scales'
    maps (combine_scales makes it whole; the labels' bands are far less) and every scale's logits (19 x h/4 x w/4
    per model input: the infer stage hands them on together). Added to that, for the largest scale, what the infer
    stage holds (the resized h x w image and the batch of windows, x 2 with flip, each window as the model takes it
    plus WINDOW_OVERHEAD), and what the merge holds (the pipeline runs both at once, on two images):
    multiscale_merge.merge_bytes, every scale's 19 x h x w map and the merge's bands.
    Not counted: the model's own working memory (it depends on the backend and the device) and the images the
    stages' queues hold besides.
    """
    full_map = NUM_CLASSES * height * width * FLOAT32
    whole_image = 2 * 3 * height * width * FLOAT32 + full_map
    logits = infer = 0
    scales = []
    for scale, (new_h, new_w) in zip(tta.scales, tta.scaled_sizes(height, width)):
        if scale <= 1.0:
            windows, (win_h, win_w) = 1, (new_h, new_w)
        else:
            rows, cols = window_grid(new_h, new_w, tta.crop_size)
            windows, (win_h, win_w) = rows * cols, (min(tta.crop_size[0], new_h), min(tta.crop_size[1], new_w))
        inputs = windows * (2 if tta.flip else 1)
        logits += inputs * NUM_CLASSES * -(-win_h // 4) * -(-win_w // 4) * FLOAT32
        infer = max(infer, 3 * new_h * new_w * FLOAT32 + inputs * (3 * win_h * win_w * FLOAT32 + WINDOW_OVERHEAD))
        scales.append(((new_h, new_w), (win_h, win_w), windows > 1))
    return whole_image + logits + infer + multiscale_merge.merge_bytes(height, width, scales, tta.flip)


def check_memory(tta: TestTimeAugmentation, sizes: Sequence[Tuple[int, int]]) -> None:
    """Refuse, before any work, scales and sizes whose merge needs more memory (memory_needed, for the largest of
    the image sizes) than this machine has available; nothing is refused where that is not known."""
    if not sizes:
        return
    needed, (height, width) = max((memory_needed(tta, h, w), (h, w)) for h, w in sizes)
    available = available_memory()
    if available is not None and needed > available:
        raise UserError("{} need about {} of memory for a {}x{} image (the multi-scale merge's 19-class maps and "
                        "model inputs; the model's own memory not counted), but {} is available: lower --base_size "
                        "or the largest of --scales".format(tta.describe(), size_text(needed), height, width,
                                                            size_text(available)))


def check_model_takes(input_spec: InputSpec, sizes: Sequence[Tuple[int, int]]) -> None:
    """Refuse, in one line, a model that cannot take every input size test-time augmentation needs."""
    if np.dtype(input_spec.dtype) != np.float32:
        raise UserError("the model takes {} input; test-time augmentation feeds the normalized float32 image "
                        "(use a float32 export)".format(input_spec.describe()))
    for height, width in sizes:
        if not shape_fits_input_spec(input_spec, (3, height, width)):
            raise UserError("the model takes {} but these scales need a {}x{} input (sizes needed: {}): export it "
                            "with HRNet_pth2onnx.py --dynamic_hw, or choose scales and sizes it takes".format(
                                input_spec.describe(), height, width,
                                ", ".join("{}x{}".format(h, w) for h, w in sizes)))


# ------------------------------------------------------------------------------------------------ the method

def _check_image(image_hwc: np.ndarray) -> None:
    if not (isinstance(image_hwc, np.ndarray) and image_hwc.dtype == np.float32 and image_hwc.ndim == 3
            and image_hwc.shape[2] == 3 and image_hwc.shape[0] > 0 and image_hwc.shape[1] > 0):
        raise ValueError("expected a normalized float32 H x W x 3 image, got {} {}".format(
            getattr(image_hwc, "dtype", type(image_hwc).__name__), getattr(image_hwc, "shape", "")))


@dataclass(frozen=True)
class ScaleRun:
    """One scale's model inputs for one image: the resized image's size, its windows (h0, h1, w0, w1) and the
    batch that runs them (the windows, then, with flip, the same windows flipped left-right)."""

    scale: float
    size: Tuple[int, int]
    windows: Tuple[Window, ...]
    batch: Optional[np.ndarray]   # N x 3 x h x w float32, C-contiguous; None once run (without_batch)

    def without_batch(self) -> "ScaleRun":
        """This run without its inputs: what combine_scales needs, once the model has run them."""
        return ScaleRun(self.scale, self.size, self.windows, None)


def scale_runs(image_hwc: np.ndarray, tta: TestTimeAugmentation) -> Iterator[ScaleRun]:
    """The model inputs of every scale, one scale at a time (made when asked for: a scale's batch can be
    hundreds of MB at Cityscapes size)."""
    import cv2

    _check_image(image_hwc)
    height, width = image_hwc.shape[:2]
    for scale, (new_h, new_w) in zip(tta.scales, tta.scaled_sizes(height, width)):
        resized = cv2.resize(image_hwc, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        windows = tuple(tta.windows(scale, new_h, new_w))
        crops = [resized[h0:h1, w0:w1].transpose(2, 0, 1) for h0, h1, w0, w1 in windows]
        if tta.flip:
            crops += [crop[:, :, ::-1] for crop in crops]
        yield ScaleRun(scale, (new_h, new_w), windows, np.ascontiguousarray(np.stack(crops), dtype=np.float32))


def scale_scores(run: ScaleRun, logits: np.ndarray, flip: bool) -> np.ndarray:
    """One scale's 19 x h x w map from the main output's logits for run.batch: per input, the logits
    upsampled to the input (flip-averaged, then exp: upstream's `inference`), the windows summed into a canvas
    and divided by the windows covering each pixel (multiscale_merge.scale_scores)."""
    return multiscale_merge.scale_scores(run, logits, flip)


def combine_scales(height: int, width: int, runs: Iterable[Tuple[ScaleRun, np.ndarray]],
                   flip: bool) -> np.ndarray:
    """The 19 x H x W float32 sum over scales of each scale's map upsampled to the image's size, from
    (ScaleRun, its logits) pairs in the order of the scales (the runs' batches are not needed)."""
    return multiscale_merge.merged_scores(height, width, runs, flip)


def labels_from_scales(height: int, width: int, runs: Iterable[Tuple[ScaleRun, np.ndarray]], flip: bool,
                       band_rows: Optional[int] = None, device: str = "cpu") -> np.ndarray:
    """The H x W uint8 argmax of combine_scales, made in bands of rows: the full-size class scores exist
    BAND_BYTES at a time (19 x band x W float32), never 19 x H x W. Each scale's own map (its size set by
    --base_size and the scale, not by the photo's) is kept until the last band.

    device: where the backend ran (backend.device). On a CUDA device the merge runs there with torch
    (multiscale_merge_torch, only the labels come back), where torch can use it; elsewhere with numpy."""
    merge_device = multiscale_merge_torch.merge_device(device)
    if merge_device is not None:
        return multiscale_merge_torch.merged_labels(height, width, runs, flip, merge_device)
    return multiscale_merge.merged_labels(height, width, runs, flip, band_rows)


def summed_scores(image_hwc: np.ndarray, run_main: RunMain, tta: TestTimeAugmentation) -> np.ndarray:
    """Upstream's multi_scale_inference for one normalized float32 H x W x 3 image: the 19 x H x W float32 sum
    over scales of exp(logits), each scale's map upsampled to the image's size."""
    _check_image(image_hwc)
    height, width = image_hwc.shape[:2]
    return combine_scales(height, width, ((run, run_main(run.batch)) for run in scale_runs(image_hwc, tta)),
                          tta.flip)


def predict_train_ids(image_hwc: np.ndarray, run_main: RunMain, tta: TestTimeAugmentation) -> np.ndarray:
    """The H x W uint8 trainIds: argmax over classes of summed_scores (ties to the lower class, as torch), made
    in bands of rows (labels_from_scales), so a large photo never needs its 19 x H x W scores at once."""
    _check_image(image_hwc)
    height, width = image_hwc.shape[:2]
    return labels_from_scales(height, width, ((run.without_batch(), run_main(run.batch))
                                              for run in scale_runs(image_hwc, tta)), tta.flip,
                              device=getattr(run_main, "device", "cpu"))


def main_output_index(requested: Optional[int], outputs: int) -> int:
    """--output_index, or by default the main output (1 of 2) or the only one; refused when the model lacks it."""
    index = (1 if outputs > 1 else 0) if requested is None else requested
    if not 0 <= index < outputs:
        raise UserError("--output_index {} does not fit a model with {} output{} (0..{})".format(
            requested, outputs, "" if outputs == 1 else "s", outputs - 1))
    return index


def main_output_runner(backend: Backend, output_index: Optional[int] = None,
                       batch_size: Optional[int] = None) -> RunMain:
    """run_main(N x 3 x h x w float32) -> the chosen output's N x 19 x h' x w' float32 logits, from `backend`.

    The batch goes to the model in runs of its fixed batch size (a short last run zero-padded, the padding
    dropped), else of `batch_size` (default: all at once). Non-finite logits are refused in one line.
    run_main.device is the backend's device: predict_train_ids merges on it (a GPU's, with torch)."""
    index = main_output_index(output_index, len(backend.output_names))
    fixed = backend.input.shape[0]

    def run_main(batch: np.ndarray) -> np.ndarray:
        check_model_takes(backend.input, [tuple(batch.shape[2:])])
        step = fixed or batch_size or len(batch)
        parts = []
        for start in range(0, len(batch), step):
            rows = batch[start:start + step]
            data = pad_batch(rows, step, rows.shape[1:], np.float32) if len(rows) < step and fixed else rows
            logits = np.asarray(output_rows(backend.run(data), index, len(data))[:len(rows)], dtype=np.float32)
            if logits.size and not (np.isfinite(logits.min()) and np.isfinite(logits.max())):
                raise UserError("model output {} ({}) has NaN or infinite values".format(
                    index, backend.output_names[index]))
            parts.append(logits)
        return np.concatenate(parts)

    run_main.device = backend.device
    return run_main
