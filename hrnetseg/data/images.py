"""Decoding pictures safely: every image, label and photo the tools read is decoded through here.

A file is only decoded when it is a regular file (a FIFO would block), a PNG's chunks are intact (libpng, which
prints its own complaints on stderr, only sees sound files) and its header, read without decoding, declares no
more pixels than the pixel budget (--max_pixels): a PNG of a few hundred kB can declare a picture that would
take gigabytes. The bytes are decoded from memory (cv2.imdecode), so any file name works, whatever its
encoding. unreadable_reason says in words why a picture was refused.

Atlas-side module: numpy, opencv and pillow only. Valid Python 3.7, no torch.
"""
from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from typing import List, Optional, Tuple

import numpy as np

from hrnetseg.util.cli import positive_int
from hrnetseg.util.files import not_regular_reason

# --- decoding a picture ---------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_intact(data: bytes) -> bool:
    """False for a PNG with a damaged chunk (CRC) or cut short (no IEND); True for anything else.

    Checked before decoding so that libpng, which prints its own complaints on stderr, only sees sound files.
    """
    if not data.startswith(PNG_SIGNATURE):
        return True  # not a PNG: OpenCV decides
    view, size, pos = memoryview(data), len(data), len(PNG_SIGNATURE)
    while pos + 12 <= size:
        length = struct.unpack_from(">I", data, pos)[0]
        end = pos + 12 + length
        if end > size or zlib.crc32(view[pos + 4:end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            return False
        if data[pos + 4:pos + 8] == b"IEND":
            return True
        pos = end
    return False


def read_image(path: str, flags: int) -> Optional[np.ndarray]:
    """cv2.imread, but None (and nothing on stderr) for a missing, empty, damaged or truncated file, for
    anything that is not a regular file (never opened: a FIFO would block), and for a picture whose header
    cannot be read or declares more pixels than the budget (set_max_pixels): nothing is decoded then.

    The bytes are decoded from memory (cv2.imdecode), so any file name works, whatever its encoding."""
    import cv2

    if not_regular_reason(path) is not None:
        return None
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    if not data or not png_intact(data):
        return None
    size, too_large = _declared_size(io.BytesIO(data))
    if size is None or too_large or over_pixel_budget(size) is not None:
        return None
    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error:   # some OpenCV builds raise instead of returning None for undecodable bytes
        return None


def unreadable_reason(path: str) -> str:
    """Why read_image (or image_size) gave None, in words, for error messages."""
    reason = not_regular_reason(path)
    if reason is not None:
        return reason
    if not os.access(path, os.R_OK):
        return "cannot be read: permission denied"
    size, too_large = _declared_size(path)
    if too_large:
        return "declares more than {}, above the limit of {} (--max_pixels raises it)".format(
            too_large, megapixels(_max_pixels))
    if size is not None and over_pixel_budget(size) is not None:
        return over_pixel_budget(size)
    return "cannot be decoded (empty, corrupt, truncated or not an image)"


def image_size(path: str) -> Optional[Tuple[int, int]]:
    """(height, width) from the file header only (nothing decoded), or None when the header cannot be read, the
    path is not a regular file or the picture is above the pixel budget (unreadable_reason says which)."""
    if not_regular_reason(path) is not None:
        return None
    size, too_large = _declared_size(path)
    if size is None or too_large or over_pixel_budget(size) is not None:
        return None
    return size


def _declared_size(source) -> Tuple[Optional[Tuple[int, int]], str]:
    """((height, width), "") as the header of a file (a path or a file object) declares it, read by PIL without
    decoding; (None, "") when it cannot be read; (None, "N Mpx") when PIL refuses it as a decompression bomb."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # a header claiming a huge size is answered by the pixel budget, in one line, not by a warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
    except Image.DecompressionBombError:   # above twice PIL's own limit, which set_max_pixels keeps above ours
        return None, megapixels(2 * (Image.MAX_IMAGE_PIXELS or 0))
    except Exception:  # PIL raises many types for broken files
        return None, ""
    return (height, width), ""


# --- the pixel budget -----------------------------------------------------------------------------

# What a decoder may be asked to make: a PNG of a few hundred kB can declare 12000 x 8000 pixels, which predict
# would turn into gigabytes of class scores. The header tells before anything is decoded. The tools set the
# budget from --max_pixels for the whole process (as PIL's Image.MAX_IMAGE_PIXELS works); forked workers
# inherit it, Ray workers are given it.
DEFAULT_MAX_PIXELS = 50000000
_max_pixels = DEFAULT_MAX_PIXELS
_pil_limit: List[Optional[int]] = []   # PIL's own limit as it was before set_max_pixels raised it


def set_max_pixels(limit: int) -> None:
    """The pixel budget of every image and label read from now on in this process."""
    global _max_pixels
    from PIL import Image

    _max_pixels = int(limit)
    if not _pil_limit:
        _pil_limit.append(Image.MAX_IMAGE_PIXELS)
    if _pil_limit[0] is not None:   # PIL refuses headers above twice its limit: keep that above ours
        Image.MAX_IMAGE_PIXELS = max(_pil_limit[0], _max_pixels)


def max_pixels() -> int:
    return _max_pixels


def megapixels(pixels: int) -> str:
    return "{:.1f} Mpx".format(pixels / 1e6)


def over_pixel_budget(size: Tuple[int, int]) -> Optional[str]:
    """Why a picture of (height, width) is not decoded, or None when it is within the budget."""
    if size[0] * size[1] <= _max_pixels:
        return None
    return "declares {}x{} pixels ({}), above the limit of {} (--max_pixels raises it)".format(
        size[0], size[1], megapixels(size[0] * size[1]), megapixels(_max_pixels))


def add_max_pixels_flag(parser) -> None:
    """--max_pixels N, for every tool that decodes images or labels; main() passes it to set_max_pixels."""
    parser.add_argument("--max_pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help="refuse images and labels whose header declares more than N pixels, before decoding "
                             "them (default {}: {})".format(DEFAULT_MAX_PIXELS, megapixels(DEFAULT_MAX_PIXELS)))
