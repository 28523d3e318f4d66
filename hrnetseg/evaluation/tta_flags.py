"""The flags of test-time augmentation (python -m hrnetseg.evaluate, python -m hrnetseg.predict and
scripts/check_upstream_parity.py): --scales, --flip, --base_size and --crop_size, parsed (numbers in ASCII digits,
through hrnetseg.util.cli), and the multiscale.TestTimeAugmentation they ask for. The memory they need is checked
against what the machine has (multiscale.check_memory) once the tools know the images' sizes, before any work.
"""
from __future__ import annotations

import argparse
from typing import Tuple

from hrnetseg.evaluation.multiscale import (
    DEFAULT_BASE_SIZE,
    DEFAULT_CROP_SIZE,
    MAX_SCALE,
    MAX_SIDE,
    UPSTREAM_SCALES,
    TestTimeAugmentation,
)
from hrnetseg.util.cli import plain_decimal, whole_number


def scale_list(text: str) -> Tuple[float, ...]:
    """argparse type: comma-separated positive scales, e.g. 0.5,0.75,1.0,1.25,1.5,1.75."""
    scales = []
    for part in text.split(","):
        value = plain_decimal(part)   # ASCII digits only: float() also reads "1_0" and other scripts' digits
        if value is None or not 0 < value <= MAX_SCALE:
            raise argparse.ArgumentTypeError("expected comma-separated scales in (0, {:g}] such as 0.5,1.0,1.5, "
                                             "got {!r}".format(MAX_SCALE, text))
        scales.append(value)
    if len(set(scales)) != len(scales):
        raise argparse.ArgumentTypeError("a scale is given twice in {!r}".format(text))
    return tuple(scales)


def crop_size(text: str) -> Tuple[int, int]:
    """argparse type: H,W in pixels, e.g. 1024,2048."""
    parts = text.split(",")
    what = "the crop size as H,W (two integers from 1 to {} such as 1024,2048)".format(MAX_SIDE)
    if len(parts) != 2:
        raise argparse.ArgumentTypeError("expected {}, got {!r}".format(what, text))
    try:
        return whole_number(parts[0], 1, MAX_SIDE), whole_number(parts[1], 1, MAX_SIDE)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError("expected {}, got {!r}".format(what, text))


def base_size(text: str) -> int:
    return whole_number(text, 1, MAX_SIDE, "a number of pixels from 1 to {}".format(MAX_SIDE))


def add_tta_flags(parser) -> None:
    """--scales, --flip, --base_size, --crop_size: upstream's TEST.SCALE_LIST, FLIP_TEST, BASE_SIZE, IMAGE_SIZE."""
    group = parser.add_argument_group("test-time augmentation (upstream HRNet-OCR's multi-scale testing)")
    group.add_argument("--scales", type=scale_list, default=(1.0,), metavar="S[,S...]",
                       help="scales, each resizing the image's long side to base size x scale; above 1.0 the "
                            "model runs on sliding windows of the crop size (default 1.0; upstream's published "
                            "multi-scale numbers use {})".format(",".join("{:g}".format(s) for s in UPSTREAM_SCALES)))
    group.add_argument("--flip", action="store_true",
                       help="also run each input flipped left-right and average the two (upstream's FLIP_TEST)")
    group.add_argument("--base_size", type=base_size, default=None,
                       help="long side of the image at scale 1.0 (default {}; with --scales 1.0 and no --flip, "
                            "given: the image is resized to it, not given: it runs at its own size)"
                       .format(DEFAULT_BASE_SIZE))
    group.add_argument("--crop_size", type=crop_size, default=DEFAULT_CROP_SIZE, metavar="H,W",
                       help="sliding-window size for scales above 1.0 (default {},{})".format(*DEFAULT_CROP_SIZE))


def tta_from_args(args: argparse.Namespace) -> TestTimeAugmentation:
    return TestTimeAugmentation(scales=tuple(args.scales), flip=bool(args.flip),
                                base_size=DEFAULT_BASE_SIZE if args.base_size is None else args.base_size,
                                crop_size=tuple(args.crop_size))


def single_scale_from_args(args: argparse.Namespace, height: int, width: int) -> bool:
    """Whether the flags ask for today's single-scale path on images of this size: --scales 1.0 without
    --flip, and no --base_size other than the image's long side (so the default needs no --base_size)."""
    tta = tta_from_args(args)
    return tta.is_plain() and (args.base_size is None or tta.runs_as_is(height, width))
