"""The manifest of a preprocess folder (manifest.json beside the `<id>.bin` files): what it holds, how it is
read and checked, and which bins are current.

A manifest records the settings the bins were made with (shape, dtype, layout, normalization, split, source
data set), the ids of the finished bins and the images left out, and each image's signature (size and
modification time) when its bin was made: a rerun redoes the bins whose image changed and refuses to mix
settings in one folder. The runner (python3 -m hrnetseg.infer) and hrnetseg.atlas.acc_perf read it too.
Atlas-side module: standard library only, valid Python 3.7.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Dict, List, Optional

from hrnetseg.util.errors import UserError
from hrnetseg.util.files import not_regular_reason, write_text_atomic
from hrnetseg.util.structured import read_json

DTYPES = ("float32", "float16", "uint8")  # what the bins may hold
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "hrnetseg-preprocess"
# 2: "sources" records each image's signature (see source_signature); bins of a version 1 manifest are redone
MANIFEST_VERSION = 2
# What makes two runs compatible: files of one folder must agree on all of these.
SETTINGS = ("shape", "dtype", "layout", "normalization", "split", "source")
REQUIRED_KEYS = ("ids", "shape", "dtype", "layout", "normalization", "split")


# --- reading and checking ------------------------------------------------------------------------

def read_manifest(folder: str, require_complete: bool = True) -> dict:
    """The manifest of a preprocessed folder; UserError when it is absent, unreadable, damaged or (by default)
    unfinished."""
    path = os.path.join(folder, MANIFEST)
    reason = not_regular_reason(path)
    if reason == "not found":
        raise UserError("no {} in {}: make the folder with HRNet_preprocess.py".format(MANIFEST, folder))
    if reason is not None:
        raise UserError("{} {}".format(path, reason))
    manifest = read_json(path, "preprocess manifest", expect=None)   # manifest_problem names a wrong type
    problem = manifest_problem(manifest)
    if problem is not None:
        raise UserError("{} is not a usable preprocess manifest: {}; remake the folder with HRNet_preprocess.py "
                        "(into an empty --save_path)".format(path, problem))
    if require_complete and not manifest.get("complete", True):
        raise UserError("the preprocess of {} did not finish: rerun HRNet_preprocess.py with the same flags".format(
            folder))
    return manifest


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_plain_id(value) -> bool:
    """An image id is a file name stem: a bin path is made from it, so no folder parts."""
    return (isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\0" not in value
            and os.sep not in value and not (os.altsep and os.altsep in value))


def _id_list_problem(key: str, value) -> Optional[str]:
    if not isinstance(value, list):
        return "{} is not a list".format(key)
    odd = [v for v in value if not _is_plain_id(v)]
    if odd:
        return "{} holds {!r}, not an image id".format(key, odd[0])
    if len(set(value)) != len(value):
        return "{} lists an image twice".format(key)
    return None


def _sources_problem(sources) -> Optional[str]:
    if not isinstance(sources, dict):
        return "sources is not an object"
    for key, value in sources.items():
        if not _is_plain_id(key):
            return "sources holds {!r}, not an image id".format(key)
        # a modification time may be negative: files dated before 1970 (archives keep odd dates)
        if not (isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value) and value[0] >= 0):
            return "sources[{!r}] is not [size, modification time in ns]".format(key)
    return None


def manifest_problem(manifest) -> Optional[str]:
    """What is wrong with a parsed manifest, in words; None when the tools can rely on it."""
    if not isinstance(manifest, dict):
        return "it holds a JSON {} instead of an object".format(type(manifest).__name__)
    if manifest.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
        return "format is {!r}, not {!r}".format(manifest["format"], MANIFEST_FORMAT)
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        return "key{} {} missing".format("s" if len(missing) > 1 else "", ", ".join(missing) + (
            " are" if len(missing) > 1 else " is"))
    shape = manifest["shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(v) and v > 0 for v in shape)):
        return "shape must be 3 positive integers (C, H, W), got {}".format(json.dumps(shape))
    if not isinstance(manifest["dtype"], str) or manifest["dtype"] not in DTYPES:
        return "dtype must be one of {}, got {}".format(", ".join(DTYPES), json.dumps(manifest["dtype"]))
    for key in ("layout", "split"):
        if not isinstance(manifest[key], str):
            return "{} is not a string".format(key)
    if manifest["normalization"] is not None and not isinstance(manifest["normalization"], dict):
        return "normalization is neither null nor an object"
    if not isinstance(manifest.get("complete", True), bool):
        return "complete is not true or false"
    if not _is_int(manifest.get("version", 1)):
        return "version is not an integer"
    for key in ("ids", "skipped"):
        problem = _id_list_problem(key, manifest.get(key, []))
        if problem is not None:
            return problem
    return _sources_problem(manifest.get("sources", {}))


# --- writing, and the settings of a folder --------------------------------------------------------

def write_manifest(out: str, manifest: dict) -> None:
    """Replace the manifest of folder `out` atomically: a reader sees the old one or the new one, whole."""
    write_text_atomic(os.path.join(out, MANIFEST), json.dumps(manifest, indent=1) + "\n")


def _describe_settings(settings: dict) -> str:
    """The settings of a folder in words, for the message that refuses to mix them."""
    norm = "normalized" if settings.get("normalization") else "raw pixels"
    shape = "x".join(str(v) for v in settings.get("shape", []))
    return "{} {} {} ({}, split {}, from {})".format(settings.get("layout"), shape, settings.get("dtype"), norm,
                                                     settings.get("split"), settings.get("source"))


def check_folder_settings(out: str, settings: dict) -> Optional[dict]:
    """Refuse a folder holding bins made with other settings (or by another tool); return its manifest."""
    path = os.path.join(out, MANIFEST)
    bins = glob.glob(os.path.join(glob.escape(out), "*.bin"))
    if not os.path.lexists(path):
        if bins:
            raise UserError("{} already holds {} .bin files but no {} (made by another tool?): use an empty "
                            "--save_path".format(out, len(bins), MANIFEST))
        return None
    old = read_manifest(out, require_complete=False)
    if any(old.get(key) != settings[key] for key in SETTINGS):
        raise UserError("{} holds files made as {}; this run makes {}: use another --save_path or empty it".format(
            out, _describe_settings(old), _describe_settings(settings)))
    return old


# --- which bins are current -----------------------------------------------------------------------

def source_signature(path: str) -> Optional[List[int]]:
    """[size in bytes, modification time in ns] of a source image; None when it cannot be examined.

    A bin is current while its image keeps the signature recorded when the bin was made: rewriting or
    touching the image changes it, and the next run redoes the bin."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [int(info.st_size), int(info.st_mtime_ns)]


def recorded_sources(manifest: Optional[dict]) -> Dict[str, List[int]]:
    """id -> signature the bin was made from; empty for a manifest from before signatures (version 1), whose
    bins therefore all count as stale."""
    if not manifest or manifest.get("version", 1) < 2:
        return {}
    return dict(manifest.get("sources", {}))
