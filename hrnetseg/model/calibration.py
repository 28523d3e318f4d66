"""The images int8 quantisation calibrates and validates on (python3 -m hrnetseg.quantize --calibration FOLDER).

A folder is either a preprocess folder (HRNet_preprocess.py's bins and manifest.json, read by the runner's readers)
or a Cityscapes-layout root (leftImg8bit/<split>/<city>/..., transformed in memory as the preprocess step does).
COUNT images are taken evenly spread over the sorted set (a folder sorted by city would otherwise give one city),
at most MAX_IMAGES, and only when they fit in the memory available. Every image is checked as it is read:
a bin of another size, an unreadable picture, NaN or inf is a one-line error naming the file.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.data import cityscapes
from hrnetseg.data.manifest import MANIFEST
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import require_folder
from hrnetseg.util.memory import available_memory, size_text

MAX_IMAGES = 300            # NNCF's default calibration subset; more changes the ranges little
MEMORY_SHARE = 0.5          # the images may take at most this share of the memory available


def spread_indices(total: int, count: int) -> List[int]:
    """`count` indices evenly spread over range(total) (all of them when count >= total), first and last
    included."""
    if count >= total:
        return list(range(total))
    if count == 1:
        return [0]
    return sorted({int(round(i * (total - 1) / (count - 1))) for i in range(count)})


def check_count(count: int, flag: str = "--count") -> int:
    if not 1 <= count <= MAX_IMAGES:
        raise UserError("{} must be 1 to {}, not {}".format(flag, MAX_IMAGES, count))
    return count


def _check_memory(count: int, dtype: np.dtype, shape: Sequence[int], folder: str) -> None:
    needed = count * int(np.prod(shape)) * np.dtype(dtype).itemsize
    available = available_memory()
    if available is not None and needed > MEMORY_SHARE * available:
        raise UserError("{} images of {} {} from {} need {}, more than half the memory available ({}): take fewer"
                        .format(count, np.dtype(dtype).name, "x".join(map(str, shape)), folder, size_text(needed),
                                size_text(available)))


def _finite(image: np.ndarray, path: str) -> np.ndarray:
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise UserError("{} holds NaN or inf: not a model input".format(path))
    return image


def is_preprocess_folder(folder: str) -> bool:
    return os.path.lexists(os.path.join(folder, MANIFEST))


def read_bin_images(folder: str, count: int, dtype: Optional[np.dtype] = None,
                    resize_to: Optional[Tuple[int, int]] = None) -> List[np.ndarray]:
    """`count` bins of a preprocess folder (C x H x W each), evenly spread in the runner's order; every bin
    checked against the manifest before any is read. dtype: the model's input type, refused when the bins hold
    another. resize_to: H x W each bin is resized to (bilinear, on the transformed values)."""
    from hrnetseg.runner.inputs import check_bins, list_inputs, read_bin

    inputs = list_inputs(folder)
    paths = [inputs.paths[i] for i in spread_indices(len(inputs.paths), check_count(count))]
    bin_dtype, shape = check_bins(inputs.manifest, paths)
    if dtype is not None and bin_dtype != np.dtype(dtype):
        raise UserError("the bins in {} are {} but the model takes {}: preprocess with --dtype {}".format(
            folder, bin_dtype.name, np.dtype(dtype).name, np.dtype(dtype).name))
    _check_memory(len(paths), bin_dtype, (shape[0],) + tuple(resize_to) if resize_to else shape, folder)
    return [_resized_chw(_finite(read_bin(path, bin_dtype, shape), path), resize_to) for path in paths]


def _resized(image: np.ndarray, size: Optional[Tuple[int, int]]) -> np.ndarray:
    """An H x W (x C) picture at `size` (H, W): area averaging to shrink, bilinear to enlarge; as it is without."""
    import cv2

    if size is None or image.shape[:2] == tuple(size):
        return image
    shrink = size[0] * size[1] < image.shape[0] * image.shape[1]
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _resized_chw(image: np.ndarray, size: Optional[Tuple[int, int]]) -> np.ndarray:
    if size is None:
        return image
    return np.ascontiguousarray(_resized(np.ascontiguousarray(image.transpose(1, 2, 0)), size).transpose(2, 0, 1))


def _samples(root: str, split: str, count: int, need_labels: bool) -> List[cityscapes.Sample]:
    samples = cityscapes.find_images(root, split)
    chosen = [samples[i] for i in spread_indices(len(samples), count)]
    if need_labels:
        missing = [sample for sample in chosen if sample.label is None]
        if missing:
            raise UserError("image {} has no gtFine labelIds label: validation needs labelled images".format(
                missing[0].image))
    return chosen


def _decoded(sample: cityscapes.Sample, dtype: str, size: Optional[Tuple[int, int]],
             resize_to: Optional[Tuple[int, int]] = None) -> np.ndarray:
    from hrnetseg.data import images
    from hrnetseg.data.preprocess import convert, read_rgb

    image, order = read_rgb(sample.image)
    if image is None:
        raise UserError("image {} {}".format(sample.image, images.unreadable_reason(sample.image)))
    if size is not None and image.shape[:2] != tuple(size):
        raise UserError("image {} is {}x{} but the model takes {}x{}".format(
            sample.image, image.shape[0], image.shape[1], size[0], size[1]))
    return convert(_resized(image, resize_to), dtype, order)


def _image_size(sample: cityscapes.Sample) -> Tuple[int, int]:
    from hrnetseg.data.images import image_size, unreadable_reason

    size = image_size(sample.image)
    if size is None:
        raise UserError("image {} {}".format(sample.image, unreadable_reason(sample.image)))
    return size


def read_cityscapes_images(root: str, count: int, dtype: str = "float32", split: str = "train",
                           size: Optional[Tuple[int, int]] = None,
                           resize_to: Optional[Tuple[int, int]] = None) -> List[np.ndarray]:
    """`count` photos of a Cityscapes-layout root's split, evenly spread, as model inputs (C x H x W of
    `dtype`, the preprocess transform). size: the model's H x W when fixed (else the first image's); resize_to:
    H x W each photo is resized to before the transform (a model with open height and width only)."""
    chosen = _samples(root, split, check_count(count), need_labels=False)
    size = size or _image_size(chosen[0])
    _check_memory(len(chosen), np.dtype(dtype), (3,) + tuple(resize_to or size), root)
    return [_decoded(sample, dtype, None if resize_to else size, resize_to) for sample in chosen]


def read_validation_pairs(root: str, count: int, dtype: str = "float32", split: str = "val",
                          size: Optional[Tuple[int, int]] = None) -> List[Tuple[np.ndarray, np.ndarray]]:
    """`count` (model input C x H x W, trainIds H x W uint8) pairs of a Cityscapes-layout root, evenly spread;
    the labels read and checked as evaluate reads them."""
    chosen = _samples(root, split, check_count(count, "--validation_count"), need_labels=True)
    size = size or _image_size(chosen[0])
    _check_memory(len(chosen), np.dtype(dtype), (3,) + tuple(size), root)
    return [(_decoded(sample, dtype, size), cityscapes.read_train_ids(sample.label, size)) for sample in chosen]


def read_calibration(folder: str, count: int, dtype: str = "float32", split: str = "train",
                     size: Optional[Tuple[int, int]] = None,
                     resize_to: Optional[Tuple[int, int]] = None) -> List[np.ndarray]:
    """The calibration images of a preprocess folder (by its manifest.json) or a Cityscapes-layout root.
    size: the model's fixed H x W (checked); resize_to: H x W to resize to, for a model with open height and
    width (a smaller size keeps NNCF's statistics pass, which holds every activation of an image, in memory)."""
    if size is not None and resize_to is not None:
        raise ValueError("size (a fixed-size model) and resize_to (an open-size one) exclude each other")
    require_folder(folder, "calibration folder")
    if is_preprocess_folder(folder):
        images = read_bin_images(folder, count, np.dtype(dtype), resize_to)
        if size is not None and images[0].shape[1:] != tuple(size):
            raise UserError("the bins in {} are {} but the model takes {}x{}".format(
                folder, "x".join(map(str, images[0].shape)), size[0], size[1]))
        return images
    return read_cityscapes_images(folder, count, dtype, split, size, resize_to)
