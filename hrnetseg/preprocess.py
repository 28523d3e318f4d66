"""Cityscapes images -> model input files: one `<id>.bin` (C-order 3 x H x W) per image plus manifest.json.

Parallel (one worker per core), resumable (a rerun skips finished files made with the same settings and
refuses to mix settings in one folder) and atomic (each file is written under a temporary name and
renamed, so an interrupted run leaves no partial `.bin`).
Atlas-side module: numpy, opencv, pillow and tqdm only, valid Python 3.7.
"""
from __future__ import annotations

import contextlib
import glob
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import sys
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import cityscapes
from .cli import UserError, progress
from .files import atomic_path, write_text_atomic

DTYPES = ("float32", "float16", "uint8")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "hrnetseg-preprocess"
# What makes two runs compatible: files of one folder must agree on all of these.
SETTINGS = ("shape", "dtype", "layout", "normalization", "split", "source")
REQUIRED_KEYS = ("ids", "shape", "dtype", "layout", "normalization", "split")
# Test hook: a process that has renamed this many files kills itself (SIGKILL) just before the next rename,
# leaving a temporary file behind, like a power cut would. Used by the resume tests with --workers 1.
KILL_AFTER_ENV = "HRNETSEG_TEST_KILL_AFTER"

_LUTS = {}  # type: Dict[str, np.ndarray]
_written_here = 0


def settings_for(shape, dtype: str, split: str, source: str) -> dict:
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
    lut = _LUTS.get(dtype)
    if lut is None:
        lut = _LUTS[dtype] = cityscapes.transform_lut(dtype)
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
        return cityscapes.read_image(path, rgb_flag), "RGB"
    return cityscapes.read_image(path, cv2.IMREAD_COLOR), "BGR"


def _write_array(path: str, array: np.ndarray) -> None:
    global _written_here
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(array.data)
        kill_after = os.environ.get(KILL_AFTER_ENV)
        if kill_after is not None and _written_here >= int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)
    _written_here += 1


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business


@contextlib.contextmanager
def _opencv_single_threaded() -> Iterator[None]:
    """OpenCV on one thread for a while. Before forking this also matters for correctness: OpenCV's thread
    pool is joined first, so the children inherit a consistent one-thread state (a child that reconfigures
    a pool whose threads it did not inherit hangs forever)."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def _pool_context():
    # fork: workers start in milliseconds and share the parent's imports; elsewhere the platform's default
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _process(task):
    """Convert and write one image; returns ("ok", id) or ("bad", id, path, why) or ("fatal", message)."""
    sample_id, image_path, out_path, dtype, shape = task
    image, order = read_rgb(image_path)
    if image is None:
        return ("bad", sample_id, image_path, "cannot be decoded (corrupt, truncated or not an image)")
    if image.shape[:2] != tuple(shape):
        return ("bad", sample_id, image_path, "is {}x{} but the first image is {}x{} (the model takes one size)".format(
            image.shape[0], image.shape[1], shape[0], shape[1]))
    try:
        _write_array(out_path, convert(image, dtype, order))
    except UserError as exc:
        return ("fatal", str(exc))
    return ("ok", sample_id)


# --- the manifest ---------------------------------------------------------------------------------

def read_manifest(folder: str, require_complete: bool = True) -> dict:
    """The manifest of a preprocessed folder; UserError when it is absent, unreadable or (by default) unfinished."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise UserError("no {} in {}: make the folder with HRNet_preprocess.py".format(MANIFEST, folder))
    try:
        with open(path, "r", encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UserError("cannot read {}: {}".format(path, exc))
    if not isinstance(manifest, dict) or any(key not in manifest for key in REQUIRED_KEYS):
        raise UserError("{} is not a preprocess manifest (needs keys {})".format(path, ", ".join(REQUIRED_KEYS)))
    if manifest["dtype"] not in DTYPES or not isinstance(manifest["ids"], list) or len(manifest["shape"]) != 3:
        raise UserError("{} is damaged: bad dtype, ids or shape".format(path))
    if require_complete and not manifest.get("complete", True):
        raise UserError("the preprocess of {} did not finish: rerun HRNet_preprocess.py with the same flags".format(
            folder))
    return manifest


def _describe(settings: dict) -> str:
    norm = "normalized" if settings.get("normalization") else "raw pixels"
    shape = "x".join(str(v) for v in settings.get("shape", []))
    return "{} {} {} ({}, split {}, from {})".format(settings.get("layout"), shape, settings.get("dtype"), norm,
                                                     settings.get("split"), settings.get("source"))


def _check_folder(out: str, settings: dict) -> Optional[dict]:
    """Refuse a folder holding bins made with other settings (or by another tool); return its manifest."""
    path = os.path.join(out, MANIFEST)
    bins = glob.glob(os.path.join(out, "*.bin"))
    if not os.path.exists(path):
        if bins:
            raise UserError("{} already holds {} .bin files but no {} (made by another tool?): use an empty "
                            "--save_path".format(out, len(bins), MANIFEST))
        return None
    old = read_manifest(out, require_complete=False)
    if any(old.get(key) != settings[key] for key in SETTINGS):
        raise UserError("{} holds files made as {}; this run makes {}: use another --save_path or empty it".format(
            out, _describe(old), _describe(settings)))
    return old


def _remove_stale_temporaries(out: str) -> int:
    """Temporary files of an interrupted run (the names atomic_path makes); returns how many were removed."""
    removed = 0
    for pattern in (".*.bin.*.tmp", "." + MANIFEST + ".*.tmp"):
        for path in glob.glob(os.path.join(out, pattern)):
            try:
                os.remove(path)
                removed += 1
            except OSError:
                pass
    return removed


def _make_output_folder(out: str) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError("--save_path {} exists and is not a folder".format(out))
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise UserError("cannot create output folder {}: {}".format(out, exc.strerror or exc))
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError("cannot write to output folder {}: permission denied".format(out))


def _first_shape(samples, skip_bad: bool):
    for sample in samples:
        size = cityscapes.image_size(sample.image)
        if size is not None:
            return size
        if not skip_bad:
            raise UserError("cannot read image {} (corrupt, truncated or not an image); --skip_bad skips such "
                            "files".format(sample.image))
    raise UserError("none of the {} images can be read".format(len(samples)))


# --- the step -------------------------------------------------------------------------------------

def preprocess(src_path: str, save_path: str, split: str = "val", dtype: str = "float32",
               workers: Optional[int] = None, limit: Optional[int] = None, skip_bad: bool = False,
               log: Callable[[str], None] = print) -> dict:
    """Write `<id>.bin` for every image of the split (the first `limit`), then the manifest; returns it.

    Files already in save_path with the right size and the same settings are kept; a different setting
    is an error. Unreadable images are an error, or with skip_bad are left out and listed.
    """
    if dtype not in DTYPES:
        raise UserError("--dtype must be one of {}, got {}".format(", ".join(DTYPES), dtype))
    samples = cityscapes.find_images(src_path, split)
    if limit is not None:
        samples = samples[:limit]
    height, width = _first_shape(samples, skip_bad)
    settings = settings_for((3, height, width), dtype, split, dataset_root(samples[0].image))
    file_bytes = 3 * height * width * np.dtype(dtype).itemsize

    _make_output_folder(save_path)
    old = _check_folder(save_path, settings)
    _remove_stale_temporaries(save_path)
    wanted = {s.id for s in samples}   # the manifest lists this run's images, not every bin in the folder
    done = _finished_ids(save_path, file_bytes) & wanted
    todo = [s for s in samples if s.id not in done]
    _check_free_space(save_path, len(todo) * file_bytes)

    manifest = dict(format=MANIFEST_FORMAT, version=1, complete=False, ids=sorted(done), **settings)
    manifest.update(file_name="{id}.bin", bytes_per_file=file_bytes, skipped=[])
    write_text_atomic(os.path.join(save_path, MANIFEST), json.dumps(manifest, indent=1) + "\n")

    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    log("preprocess: {} images ({} {}x{}, {:.1f} MB each) -> {}; {} already there, {} worker{}".format(
        len(samples), dtype, height, width, file_bytes / 1e6, save_path, len(samples) - len(todo), workers,
        "" if workers == 1 else "s"))
    bad = _run(todo, save_path, dtype, (height, width), workers, skip_bad)

    skipped = sorted((set(old.get("skipped", []) if old else []) & wanted) - {s.id for s in todo}
                     | {b[0] for b in bad})
    manifest.update(complete=True, ids=sorted(_finished_ids(save_path, file_bytes) & wanted), skipped=skipped)
    write_text_atomic(os.path.join(save_path, MANIFEST), json.dumps(manifest, indent=1) + "\n")
    log("wrote {} files to {} ({} already there); manifest {}".format(
        len(todo) - len(bad), save_path, len(samples) - len(todo), os.path.join(save_path, MANIFEST)))
    if bad:
        print("skipped {} unreadable image{}: {}".format(len(bad), "" if len(bad) == 1 else "s", "; ".join(
            "{} {}".format(path, why) for _, path, why in bad)), file=sys.stderr)
    return manifest


def _finished_ids(out: str, file_bytes: int) -> set:
    done = set()
    for path in glob.glob(os.path.join(out, "*.bin")):
        try:
            if os.path.getsize(path) == file_bytes:
                done.add(os.path.basename(path)[:-4])
        except OSError:
            pass
    return done


def _check_free_space(out: str, needed: int) -> None:
    free = shutil.disk_usage(out).free
    if needed > free:
        raise UserError("not enough disk space in {}: {:.2f} GB needed, {:.2f} GB free".format(
            out, needed / 1e9, free / 1e9))


def _run(todo, out: str, dtype: str, shape, workers: int, skip_bad: bool) -> List[tuple]:
    """Process `todo`; returns the bad images (id, path, why) when skip_bad, raises on the first otherwise."""
    tasks = [(s.id, s.image, os.path.join(out, s.id + ".bin"), dtype, shape) for s in todo]
    bad = []
    try:
        with parallel_results(_process, tasks, workers, "preprocess") as results:
            for result in results:
                if result[0] == "fatal":
                    raise UserError(result[1])
                if result[0] == "bad":
                    if not skip_bad:
                        raise UserError("cannot use image {}: {}; --skip_bad skips such files".format(
                            result[2], result[3]))
                    bad.append(result[1:])
    finally:
        _remove_stale_temporaries(out)
    return sorted(bad)


THREADS_UP_TO = 4  # workers; beyond this, processes (the GIL would start to limit numpy-heavy work)


@contextlib.contextmanager
def parallel_results(func, tasks: Sequence, workers: int, desc: str,
                     processes: Optional[bool] = None) -> Iterator[Iterator]:
    """func(task) for every task, results in completion order behind a progress bar.

    workers == 1: in this thread. Up to THREADS_UP_TO: threads (no start-up cost; decoding, table look-ups,
    file writes and numpy's large loops release the GIL). More: forked processes (func and tasks must
    pickle). Leaving the block early (an error, Ctrl-C) cancels what has not started and waits for what has.
    """
    workers = max(1, min(workers, len(tasks)))
    if processes is None:
        processes = workers > THREADS_UP_TO
    if workers == 1:
        results = map(func, tasks)
    elif processes:
        results = _process_results(func, tasks, workers)
    else:
        results = _thread_results(func, tasks, workers)
    try:
        with _opencv_single_threaded():  # the parallelism is ours; OpenCV's own pool would oversubscribe
            yield progress(results, total=len(tasks), desc=desc)
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()


def _thread_results(func, tasks: Sequence, workers: int) -> Iterator:
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    executor = ThreadPoolExecutor(workers)
    waiting = iter(tasks)
    running = set()
    try:
        for task in itertools.islice(waiting, 2 * workers):
            running.add(executor.submit(func, task))
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                for task in itertools.islice(waiting, 1):
                    running.add(executor.submit(func, task))
                yield future.result()
    finally:
        for future in running:
            future.cancel()
        executor.shutdown(wait=True)


def _process_results(func, tasks: Sequence, workers: int) -> Iterator:
    with _opencv_single_threaded():  # forked children must inherit a pool without threads
        pool = _pool_context().Pool(workers, initializer=_init_worker)
    try:
        for result in pool.imap_unordered(func, tasks):
            yield result
        pool.close()
    finally:
        pool.terminate()
        pool.join()
