"""What python -m hrnetseg.predict works on: the image and video files named on its command line or found in
folders (recursively), each with its stem and the sub-folder its outputs go to, and a cheap look at each
(size from the header, or why it cannot be read) before the model is loaded.
"""
from __future__ import annotations

import os
from collections import namedtuple
from typing import Dict, List, Optional, Sequence, Tuple, Union

from hrnetseg.data import cityscapes, images
from hrnetseg.data.videos import VIDEO_SUFFIXES, VideoInfo, probe
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import not_regular_reason

# what OpenCV's imread decodes; the extensions tell images from videos
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# dropped from stems, so that a Cityscapes image gives `<id>_labelIds.png`, as the benchmark server wants
CITYSCAPES_IMAGE_SUFFIX = os.path.splitext(cityscapes.IMAGE_SUFFIX)[0]

# path: the file; folder: the sub-folder of --output its outputs go to ("" for a file named directly);
# stem: the file name without extension (and without _leftImg8bit); video: whether it is a video
Input = namedtuple("Input", ["path", "folder", "stem", "video"])
# an input that cannot be used, and why (in words)
BadInput = namedtuple("BadInput", ["path", "reason"])
# a name that leads to a file or folder already taken (a link to it, or named twice): predicted once, as `first`
SameAs = namedtuple("SameAs", ["path", "first"])
# EXIF orientations that turn the picture by 90 degrees: OpenCV decodes it turned, height and width swapped
EXIF_ORIENTATION_TAG = 0x0112
TURNED_ORIENTATIONS = (5, 6, 7, 8)


def stem_of(path: str) -> str:
    """`frankfurt_000000_000294_leftImg8bit.png` -> `frankfurt_000000_000294`; `photo.jpg` -> `photo`."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem.endswith(CITYSCAPES_IMAGE_SUFFIX) and len(stem) > len(CITYSCAPES_IMAGE_SUFFIX):
        stem = stem[: -len(CITYSCAPES_IMAGE_SUFFIX)]
    return stem


def media_kind(path: str) -> Optional[str]:
    """"image" or "video" by the file's extension, else None."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def _not_media(path: str) -> str:
    return "is not an image ({}) or a video ({}) by its extension".format(
        ", ".join(s[1:] for s in IMAGE_SUFFIXES[:3]) + ", ...", ", ".join(s[1:] for s in VIDEO_SUFFIXES[:3]) + ", ...")


def _walk(root: str, skip: Optional[str], found: List[Union[Input, BadInput, SameAs]],
          folders: Dict[str, str]) -> Optional[int]:
    """Append every image or video under root to `found` (files sorted, then sub-folders), following symbolic
    links to files and folders; hidden names and the folder `skip` (the output folder, when it lies inside)
    are passed over. A link back to a folder above it (a loop) and a folder that cannot be listed are BadInputs;
    a folder reached a second time (two links to it) is a SameAs. folders: real path -> the name it was first
    reached by, over every --input. Returns how many images and videos were found (None: root was a SameAs)."""
    count = 0

    def visit(folder: str, relative: str, above: Tuple[str, ...]) -> None:
        nonlocal count
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            found.append(BadInput(folder, "cannot be listed: {}".format(exc.strerror or exc)))
            return
        subfolders = []
        for name in names:
            if name.startswith("."):
                continue
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                subfolders.append(name)
            elif media_kind(name):
                found.append(Input(path, relative, stem_of(path), media_kind(path) == "video"))
                count += 1
        for name in subfolders:
            path = os.path.join(folder, name)
            real = os.path.realpath(path)
            if real == skip:
                continue
            if real in above:
                found.append(BadInput(path, "is a symbolic link loop (back to {})".format(folders.get(real, real))))
            elif real in folders:
                found.append(SameAs(path, folders[real]))
            else:
                folders[real] = path
                visit(path, os.path.join(relative, name) if relative else name, above + (real,))

    real_root = os.path.realpath(root)
    if real_root in folders:
        found.append(SameAs(root, folders[real_root]))
        return None
    folders[real_root] = root
    visit(root, "", (real_root,))
    return count


def find_inputs(paths: Sequence[str], output: Optional[str] = None) -> List[Union[Input, BadInput, SameAs]]:
    """The inputs named by --input (files, or folders searched recursively), in the order given, with a BadInput
    in its place for a name that is no input (missing, not an image or video by extension, a folder without
    any, a symbolic link loop) and a SameAs for a file or folder reached a second time (taken once). The output
    folder is not searched.

    Two inputs whose outputs would have the same names are refused.
    """
    skip = os.path.realpath(output) if output else None
    found: List[Union[Input, BadInput, SameAs]] = []
    folders: Dict[str, str] = {}
    for path in paths:
        if not path:
            raise UserError("--input has an empty name: give a file or folder")
        if os.path.isdir(path):
            if os.path.realpath(path) == skip:
                raise UserError("--output {} is the input folder {}: the next run would take its pictures as "
                                "inputs; give another folder (one inside it is fine)".format(output, path))
            if _walk(path, skip, found, folders) == 0:
                found.append(BadInput(path, "holds no images ({}) or videos ({})".format(
                    ", ".join(s[1:] for s in IMAGE_SUFFIXES), ", ".join(s[1:] for s in VIDEO_SUFFIXES))))
        else:
            reason = not_regular_reason(path) or (None if media_kind(path) else _not_media(path))
            if reason is not None:   # missing, a FIFO or device (never opened), or no image or video by name
                found.append(BadInput(path, reason))
                continue
            found.append(Input(path, "", stem_of(path), media_kind(path) == "video"))
    found = _taken_once(found)
    refuse_shared_outputs([item for item in found if isinstance(item, Input)])
    return found


def _taken_once(found: List[Union[Input, BadInput, SameAs]]) -> List[Union[Input, BadInput, SameAs]]:
    """Each file once: a later name of a file already found (a link to it, or named twice) becomes a SameAs."""
    first: Dict[str, str] = {}
    kept: List[Union[Input, BadInput, SameAs]] = []
    for item in found:
        if isinstance(item, Input):
            real = os.path.realpath(item.path)
            if real in first:
                item = SameAs(item.path, first[real])
            else:
                first[real] = item.path
        kept.append(item)
    return kept


def refuse_shared_outputs(inputs: Sequence[Input]) -> None:
    """Two inputs whose outputs would have one name (`a.png` and `a.jpg`, or two folders' `x.png`)."""
    owner = {}   # (folder, stem) -> the first input written as it
    for item in inputs:
        key = (item.folder, item.stem)
        if key in owner:
            raise UserError("{} and {} would both be written as {}_*: rename one, or predict them into separate "
                            "--output folders".format(owner[key], item.path, os.path.join(item.folder, item.stem)))
        owner[key] = item.path


def look_at(item: Input) -> Tuple[Optional[Tuple[int, int]], Optional[VideoInfo], str]:
    """(image size, video info, why not) from the header: cheap, before the model is loaded. A file that passes
    may still fail to decode (a truncated image): the prediction then says so."""
    if item.video:
        info, reason = probe(item.path)
        return (None if info is None else (info.height, info.width)), info, reason
    size = images.image_size(item.path)
    if size is None:
        reason = images.unreadable_reason(item.path)
        return None, None, "is empty" if not_regular_reason(item.path) is None and \
            os.path.getsize(item.path) == 0 else reason
    if _turned_by_exif(item.path):
        size = decoded_size(item.path)
        if size is None:
            return None, None, images.unreadable_reason(item.path)
    return size, None, ""


def _turned_by_exif(path: str) -> bool:
    """Whether the picture's EXIF orientation turns it by 90 degrees (a phone photo taken upright)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.getexif().get(EXIF_ORIENTATION_TAG) in TURNED_ORIENTATIONS
    except Exception:  # PIL raises many types for broken EXIF; the decoder has the last word
        return False


def read_photo(path: str):
    """The picture as predicted: BGR uint8 H x W x 3 (alpha dropped, grey or 16-bit converted, the EXIF
    orientation applied where OpenCV applies it), or None when it cannot be decoded."""
    import cv2

    return images.read_image(path, cv2.IMREAD_COLOR)


def decoded_size(path: str) -> Optional[Tuple[int, int]]:
    """(height, width) of the picture as read_photo decodes it (whether OpenCV applies the EXIF orientation
    depends on the format and its version, so the header cannot tell): the size the model sees."""
    photo = read_photo(path)
    return None if photo is None else photo.shape[:2]
