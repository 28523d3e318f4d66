"""Cityscapes images -> model input files: one `<id>.bin` (C-order 3 x H x W) per image plus manifest.json.

Parallel (one worker per core, through hrnetseg.util.workers), resumable (a rerun skips finished files made with
the same settings from an unchanged image, and refuses to mix settings in one folder; the manifest's rules
are hrnetseg.data.manifest), atomic (each file is written under a temporary name and renamed, so an interrupted
run leaves no partial `.bin`) and single-writer (the run holds `<save_path>.lock`; a second run into the same
folder stops at once).
Atlas-side module: numpy, opencv, pillow and tqdm only, valid Python 3.7.
"""
from __future__ import annotations

import collections
import glob
import os
import shutil
import signal
import stat
import sys
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from hrnetseg.data import cityscapes, images
from hrnetseg.data.manifest import (
    DTYPES,
    MANIFEST,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    check_folder_settings,
    recorded_sources,
    source_signature,
    write_manifest,
)
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import (
    atomic_path,
    check_outputs_apart,
    make_output_folder,
    os_error_reason,
    remove_stale_temporaries,
)
from hrnetseg.util.locks import output_lock
from hrnetseg.util.memory import size_text
from hrnetseg.util.processes import default_workers
from hrnetseg.util.workers import parallel_results

# Test hook: a process that has renamed this many files kills itself (SIGKILL) just before the next rename,
# leaving a temporary file behind, like a power cut would. Used by the resume tests with --workers 1.
KILL_AFTER_ENV = "HRNETSEG_TEST_KILL_AFTER"

_TRANSFORM_TABLES: Dict[str, np.ndarray] = {}  # dtype -> transform_lut(dtype), made once
_files_written_here = 0   # by this process, for the test hook


def settings_for(shape, dtype: str, split: str, source: str) -> dict:
    """The settings a run records in the manifest (manifest.SETTINGS): bins of one folder share them."""
    return {"shape": [int(v) for v in shape], "dtype": dtype, "layout": "NCHW",
            "normalization": None if dtype == "uint8" else dict(cityscapes.NORMALIZATION), "split": split,
            "source": source}


def dataset_root(image_path: str) -> str:
    """The cityscapes folder an image belongs to (<root>/leftImg8bit/<split>/<city>/<file>), resolved.

    Recorded in the manifest: the same ids from another data set (synthetic ones reuse real ids) must not
    be taken for finished files on a rerun."""
    root = image_path
    for _ in range(4):
        root = os.path.dirname(root)
    return os.path.realpath(root)


def convert(image: np.ndarray, dtype: str = "float32", channel_order: str = "BGR") -> np.ndarray:
    """An OpenCV uint8 image (BGR, or RGB with channel_order="RGB") -> the model input, C-order 3 x H x W RGB.

    float32 / float16: the upstream transform, bit for bit (a per-channel table made by the transform itself,
    applied with cv2.LUT). uint8: the raw RGB pixels, for models that normalize inside.
    """
    import cv2

    height, width = image.shape[:2]
    out = np.empty((3, height, width), dtype=dtype)
    planes = cv2.split(image)
    if channel_order == "BGR":
        planes = planes[::-1]
    if dtype == "uint8":
        for channel in range(3):
            out[channel] = planes[channel]
        return out
    lut = _TRANSFORM_TABLES.get(dtype)
    if lut is None:
        lut = _TRANSFORM_TABLES[dtype] = cityscapes.transform_lut(dtype)
    for channel in range(3):
        if dtype == "float32":
            cv2.LUT(planes[channel], lut[channel].reshape(1, 256), dst=out[channel])
        else:  # cv2.LUT has no float16 tables
            np.take(lut[channel], planes[channel], out=out[channel])
    return out


def read_rgb(path: str) -> Tuple[Optional[np.ndarray], str]:
    """(image, channel order) of a colour image: RGB straight from the decoder where OpenCV can (>= 4.10),
    which saves a pass; BGR otherwise. (None, ...) when the file cannot be decoded."""
    import cv2

    rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", None)
    if rgb_flag is not None:
        return images.read_image(path, rgb_flag), "RGB"
    return images.read_image(path, cv2.IMREAD_COLOR), "BGR"


def _write_bin(path: str, array: np.ndarray) -> None:
    global _files_written_here
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(array.data)
        kill_after = os.environ.get(KILL_AFTER_ENV, "")
        # anything but a count in ASCII digits: no test is running
        if kill_after.isdigit() and kill_after.isascii() and _files_written_here >= int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)
    _files_written_here += 1


def _size_mismatch(image: np.ndarray, reference: str) -> str:
    return "is {}x{} but {} (the model takes one size)".format(image.shape[0], image.shape[1], reference)


def _convert_one(task):
    """Convert and write one image; returns ("ok", id) or ("bad", id, path, why) or ("fatal", message).

    `reference` says which size all images must have, and why (see common_shape)."""
    sample_id, image_path, out_path, dtype, shape, reference = task
    image, order = read_rgb(image_path)
    if image is None:
        return ("bad", sample_id, image_path, images.unreadable_reason(image_path))
    if image.shape[:2] != tuple(shape):
        return ("bad", sample_id, image_path, _size_mismatch(image, reference))
    try:
        _write_bin(out_path, convert(image, dtype, order))
    except UserError as exc:
        return ("fatal", str(exc))
    return ("ok", sample_id)


# --- the bins already in the folder --------------------------------------------------------------

def _finished_ids(out: str, file_bytes: int) -> set:
    """Ids of the bins in `out` that are regular files of the right size (not symbolic links: see _linked_ids)."""
    done = set()
    for path in glob.glob(os.path.join(glob.escape(out), "*.bin")):
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode) and info.st_size == file_bytes:
            done.add(os.path.basename(path)[:-4])
    return done


def _linked_ids(out: str, ids) -> set:
    """Ids whose bin is a symbolic link. This tool writes regular files, so a link is not its work (it may
    point at another image's bin), and writing a bin through it would change a file outside the folder:
    such bins are removed and made afresh."""
    return {sample_id for sample_id in ids if os.path.islink(os.path.join(out, sample_id + ".bin"))}


def _remove_bins(out: str, ids) -> None:
    for sample_id in sorted(ids):
        path = os.path.join(out, sample_id + ".bin")
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise UserError("cannot remove the outdated {}: {}".format(path, os_error_reason(exc)))


# --- checks before the work -----------------------------------------------------------------------

def common_shape(samples, skip_bad: bool) -> Tuple[Tuple[int, int], str]:
    """((height, width), description) of the size the images have, from their headers (cheap), before any work.

    The model takes one size: the most common one is the reference (one odd or undecodable file among the
    first must not set it for all). Without skip_bad, an image whose header cannot be read or whose size
    differs stops the run here; with skip_bad those are left out by the conversion, which names them.
    """
    sizes = [(sample, images.image_size(sample.image)) for sample in samples]
    if not skip_bad:
        for sample, size in sizes:
            if size is None:
                raise UserError("cannot use image {}: {}; --skip_bad skips such files".format(
                    sample.image, images.unreadable_reason(sample.image)))
    counts = collections.Counter(size for _, size in sizes if size is not None)
    if not counts:
        raise UserError("none of the {} images can be read (e.g. {}: {})".format(
            len(samples), samples[0].image, images.unreadable_reason(samples[0].image)))
    shape, count = counts.most_common(1)[0]   # ties: the size seen first
    reference = "{} of the {} images are {}x{}".format(count, len(samples), shape[0], shape[1])
    if not skip_bad:
        for sample, size in sizes:
            if size != shape:
                raise UserError("cannot use image {}: is {}x{} but {} (the model takes one size); --skip_bad "
                                "skips such files".format(sample.image, size[0], size[1], reference))
    return shape, reference


def _check_free_space(out: str, needed: int) -> None:
    free = shutil.disk_usage(out).free
    if needed > free:
        raise UserError("not enough disk space in {}: {} needed, {} free ({} short)".format(
            out, size_text(needed), size_text(free), size_text(needed - free)))


def _check_outputs_apart(samples, save_path: str) -> None:
    """The manifest and the bins may not be a source image or a lock (a bin that is a symbolic link is replaced,
    never written through: see _linked_ids)."""
    bins = [os.path.join(save_path, sample.id + ".bin") for sample in samples]
    check_outputs_apart({"the manifest": os.path.join(save_path, MANIFEST),
                         "the bin": [path for path in bins if not os.path.islink(path)]},
                        {"a source image": [sample.image for sample in samples]}, locked={"--save_path": save_path})


# --- the step -------------------------------------------------------------------------------------

def preprocess(src_path: str, save_path: str, split: str = "val", dtype: str = "float32",
               workers: Optional[int] = None, limit: Optional[int] = None, skip_bad: bool = False,
               log: Callable[[str], None] = print) -> dict:
    """Write `<id>.bin` for every image of the split (the first `limit`), then the manifest; returns it.

    Files already in save_path with the right size, the same settings and made from the image as it is now
    are kept; a bin whose image changed is redone; a different setting is an error. Unreadable images are
    an error, or with skip_bad are left out and listed. The run holds `<save_path>.lock` throughout.
    """
    if dtype not in DTYPES:
        raise UserError("--dtype must be one of {}, got {}".format(", ".join(DTYPES), dtype))
    if not save_path:
        raise UserError("--save_path is empty")
    samples = cityscapes.find_images(src_path, split)
    if limit is not None:
        samples = samples[:limit]
    (height, width), reference = common_shape(samples, skip_bad)
    settings = settings_for((3, height, width), dtype, split, dataset_root(samples[0].image))
    _check_outputs_apart(samples, save_path)
    make_output_folder(save_path, "--save_path")   # before the lock: its messages name a bad --save_path
    with output_lock(save_path):
        old = check_folder_settings(save_path, settings)
        remove_stale_temporaries(save_path)
        return _convert_all(samples, save_path, settings, old, reference, workers, skip_bad, log)


def _convert_all(samples, out: str, settings: dict, old: Optional[dict], reference: str,
                 workers: Optional[int], skip_bad: bool, log: Callable[[str], None]) -> dict:
    _, height, width = settings["shape"]
    dtype = settings["dtype"]
    file_bytes = 3 * height * width * np.dtype(dtype).itemsize
    wanted = {s.id for s in samples}   # the manifest lists this run's images, not every bin in the folder
    signatures = {s.id: source_signature(s.image) for s in samples}
    recorded = recorded_sources(old)
    present = _finished_ids(out, file_bytes) & wanted
    done = {i for i in present if signatures[i] is not None and recorded.get(i) == signatures[i]}
    stale = present - done
    linked = _linked_ids(out, wanted)
    todo = [s for s in samples if s.id not in done]
    _check_free_space(out, (len(todo) - len(stale)) * file_bytes)

    # Bins of images this run does not cover keep their record; those it keeps are known current.
    sources = {i: sig for i, sig in recorded.items() if i not in wanted}
    sources.update((i, signatures[i]) for i in done)
    manifest = dict(format=MANIFEST_FORMAT, version=MANIFEST_VERSION, complete=False, ids=sorted(done), **settings)
    manifest.update(file_name="{id}.bin", bytes_per_file=file_bytes, skipped=[], sources=sources)
    # Order matters for a run killed at any point: first a manifest that lists only current bins and records
    # nothing for the stale ones, then the stale bins go, and only then the signatures this run converts from
    # (a bin written from here on is made from the image as it is now, or later: never older).
    write_manifest(out, manifest)
    _remove_bins(out, stale | linked)
    sources.update((s.id, signatures[s.id]) for s in todo if signatures[s.id] is not None)
    write_manifest(out, manifest)

    workers = default_workers(workers, len(todo))
    if stale and not recorded:
        log("note: {} predates source tracking: its {} bin{} are redone".format(
            os.path.join(out, MANIFEST), len(stale), "" if len(stale) == 1 else "s"))
    log("preprocess: {} images ({} {}x{}, {} each) -> {}; {} already there, {} redone as their image changed, "
        "{} worker{}".format(len(samples), dtype, height, width, size_text(file_bytes), out, len(done), len(stale),
                             workers, "" if workers == 1 else "s"))
    bad = _convert_in_parallel(todo, out, dtype, (height, width), reference, workers, skip_bad)

    ids = sorted(_finished_ids(out, file_bytes) & wanted)
    kept = {i: sig for i, sig in recorded.items() if i not in wanted}
    kept.update((i, signatures[i]) for i in ids)
    manifest.update(complete=True, ids=ids, skipped=sorted(b[0] for b in bad), sources=kept)
    write_manifest(out, manifest)
    written = len(todo) - len(bad)
    log("wrote {} file{} to {} ({} already there, {} redone as their image changed); manifest {}".format(
        written, "" if written == 1 else "s", out, len(done), len(stale), os.path.join(out, MANIFEST)))
    if bad:
        print("skipped {} unreadable image{}: {}".format(len(bad), "" if len(bad) == 1 else "s", "; ".join(
            "{} {}".format(path, why) for _, path, why in bad)), file=sys.stderr)
    return manifest


def _convert_in_parallel(todo, out: str, dtype: str, shape, reference: str, workers: int,
                         skip_bad: bool) -> List[tuple]:
    """Process `todo`; returns the bad images (id, path, why) when skip_bad, raises on the first otherwise."""
    tasks = [(s.id, s.image, os.path.join(out, s.id + ".bin"), dtype, shape, reference) for s in todo]
    bad = []
    try:
        with parallel_results(_convert_one, tasks, workers, "preprocess") as results:
            for result in results:
                if result[0] == "fatal":
                    raise UserError(result[1])
                if result[0] == "bad":
                    if not skip_bad:
                        raise UserError("cannot use image {}: {}; --skip_bad skips such files".format(
                            result[2], result[3]))
                    bad.append(result[1:])
    finally:
        remove_stale_temporaries(out)   # a worker killed mid-write; the pool's workers have all exited here
    return sorted(bad)
