"""Where python -m hrnetseg.predict writes each input's outputs, and which of them a rerun may keep.

    <output>/<folder>/<stem>_<kind>.png                      an image, per kind
    <output>/<folder>/<stem>_overlay.mp4                     a video (same frames and fps; `.avi` when a side is odd)
    <output>/<folder>/<stem>/<stem>_<frame:06d>_<kind>.png   a video's frames, per kind other than overlay
    <output>/predict_record.json                             what each output was made from

An output is kept by a rerun only when the record says it was made from this very source file (its real path,
size and modification time, read just before the source was) with these settings (the model file, backend,
precision, output, scales, flip and sizes), and the file itself decodes to the input's size (a video: every
frame). Anything else is made again: a changed photo, another model, a file the disk cut short.

One record per output folder, not a file beside each output: the folder holds only pictures (the Cityscapes
test server takes a zip of it), and the run holding the folder's lock is its only writer (the Ray workers'
results come back to it). Before a run rewrites anything, it removes the entries of what it will rewrite and
saves the record; entries are added as outputs are finished and saved every few seconds and at the end. A run
killed in between therefore leaves outputs the record does not vouch for, which the next run redoes: never an
entry for a file that was not finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from hrnetseg.data import images
from hrnetseg.data.videos import VideoInfo, check_video_file, video_suffix
from hrnetseg.prediction.inputs import Input
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import not_regular_reason, write_text_atomic
from hrnetseg.util.structured import read_json

VIDEO_KIND = "overlay"     # the kind a video gets as a video; the others as per-frame PNGs
RECORD = "predict_record.json"
RECORD_FORMAT, RECORD_VERSION = "hrnetseg-predict-record", 1
SAVE_EVERY_S = 2.0         # how often finished outputs are added to the record file during a run

Source = Tuple[str, int, int]   # real path, size in bytes, modification time in ns


# --- where the outputs go -----------------------------------------------------------------------------------

def image_outputs(output: str, item: Input, kinds: Sequence[str]) -> Dict[str, str]:
    """kind -> `<output>/<folder>/<stem>_<kind>.png`."""
    return {kind: os.path.join(output, item.folder, "{}_{}.png".format(item.stem, kind)) for kind in kinds}


def video_output(output: str, item: Input, info: VideoInfo) -> str:
    return os.path.join(output, item.folder, "{}_{}{}".format(item.stem, VIDEO_KIND,
                                                             video_suffix(info.height, info.width)))


def frame_outputs(output: str, item: Input, kinds: Sequence[str], frame: int) -> Dict[str, str]:
    """kind -> `<output>/<folder>/<stem>/<stem>_<frame:06d>_<kind>.png`, for the kinds other than overlay."""
    return {kind: os.path.join(output, item.folder, item.stem, "{}_{:06d}_{}.png".format(item.stem, frame, kind))
            for kind in kinds if kind != VIDEO_KIND}


def input_kinds(item: Input, kinds: Sequence[str]) -> Tuple[str, ...]:
    """The kinds an input gets: those asked for; a video always its overlay video, first."""
    return (VIDEO_KIND,) + tuple(k for k in kinds if k != VIDEO_KIND) if item.video else tuple(kinds)


def kind_files(output: str, item: Input, kind: str, info: Optional[VideoInfo]) -> List[str]:
    """The files of one kind of one input (a video's frames as many as `info` gives)."""
    if not item.video:
        return [image_outputs(output, item, [kind])[kind]]
    if kind == VIDEO_KIND:
        return [video_output(output, item, info)]
    return [frame_outputs(output, item, [kind], frame)[kind] for frame in range(info.frames)]


def planned_outputs(output: str, item: Input, kinds: Sequence[str], info: Optional[VideoInfo]) -> List[str]:
    """Every file predicting `item` writes."""
    return [path for kind in input_kinds(item, kinds) for path in kind_files(output, item, kind, info)]


# --- whether an output is sound -------------------------------------------------------------------------------

def _picture_sound(path: str, size: Tuple[int, int]) -> bool:
    import cv2

    if not_regular_reason(path) is not None:
        return False
    picture = images.read_image(path, cv2.IMREAD_UNCHANGED)
    return picture is not None and picture.shape[:2] == tuple(size)


def kind_sound(output: str, item: Input, kind: str, size: Tuple[int, int], info: Optional[VideoInfo]) -> bool:
    """Whether every file of this kind exists and decodes at the input's size (a video: every frame)."""
    if item.video and kind == VIDEO_KIND:
        path = video_output(output, item, info)
        return not_regular_reason(path) is None and \
            check_video_file(path, info.frames, info.height, info.width) is None
    return all(_picture_sound(path, size) for path in kind_files(output, item, kind, info))


# --- what the outputs were made from ----------------------------------------------------------------------------

def source_of(path: str) -> Optional[Source]:
    """(real path, size, mtime in ns) of an input file, read before the file is: a file changed afterwards
    does not match what its outputs are recorded with. None when it cannot be examined."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return os.path.realpath(path), int(info.st_size), int(info.st_mtime_ns)


def settings_digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def record_key(item: Input) -> str:
    """`<folder>/<stem>` with forward slashes: the name of an input's outputs in the record."""
    return "/".join(part for part in (item.folder.replace(os.sep, "/"), item.stem) if part)


def _made_from(entry: Optional[dict], source: Optional[Source]) -> bool:
    return source is not None and entry is not None and isinstance(entry.get("kinds"), dict) and \
        [entry.get("source"), entry.get("size"), entry.get("mtime_ns")] == list(source)


def _sound_entry(entry) -> bool:
    kinds = entry.get("kinds") if isinstance(entry, dict) else None
    return isinstance(kinds, dict) and all(isinstance(value, str) for value in kinds.values())


class OutputRecord(object):
    """`<output>/predict_record.json`: per input (record_key), the source its outputs were made from and, per
    kind, the digest of the settings; the settings themselves by digest, for a reader."""

    def __init__(self, output: str) -> None:
        self.path = os.path.join(output, RECORD)
        self.entries: Dict[str, dict] = {}
        self.settings: Dict[str, dict] = {}
        self._saved_at, self._changed = time.monotonic(), False
        if os.path.lexists(self.path):
            self._load()

    def _load(self) -> None:
        try:
            data = read_json(self.path, "record")
        except UserError as exc:
            reason = str(exc)
        else:
            if data.get("format") == RECORD_FORMAT and data.get("version") == RECORD_VERSION and \
                    isinstance(data.get("entries"), dict) and isinstance(data.get("settings"), dict):
                # an entry of another shape vouches for nothing (and would break the next save)
                self.entries = {key: entry for key, entry in data["entries"].items() if _sound_entry(entry)}
                self.settings = data["settings"]
                return
            reason = "record {} is not a predict record of version {}".format(self.path, RECORD_VERSION)
        print("predict: note: {}: every output in the folder is made again".format(reason), file=sys.stderr,
              flush=True)

    def current_kinds(self, key: str, source: Optional[Source]) -> Dict[str, str]:
        """kind -> settings digest of the outputs recorded for `key`, when they were made from `source`."""
        entry = self.entries.get(key)
        return dict(entry["kinds"]) if _made_from(entry, source) else {}

    def forget(self, key: str, kinds: Sequence[str]) -> None:
        """Before these outputs are written again: no entry may vouch for them meanwhile."""
        entry = self.entries.get(key)
        if entry is not None and isinstance(entry.get("kinds"), dict):
            for kind in kinds:
                if entry["kinds"].pop(kind, None) is not None:
                    self._changed = True

    def frames(self, key: str) -> Optional[int]:
        """How many frames a video's outputs were made of (its header's count may differ from what decodes)."""
        frames = self.entries.get(key, {}).get("frames")
        return frames if isinstance(frames, int) and not isinstance(frames, bool) and frames > 0 else None

    def add(self, key: str, source: Source, kinds: Sequence[str], settings: dict,
            frames: Optional[int] = None) -> None:
        """These kinds of `key` are finished, made from `source` with `settings` (a video: `frames` frames). An
        entry of another source is replaced: its other kinds were made from the file as it was."""
        digest = settings_digest(settings)
        self.settings[digest] = settings
        entry = self.entries.get(key)
        if not _made_from(entry, source):
            entry = self.entries[key] = {"source": source[0], "size": source[1], "mtime_ns": source[2], "kinds": {}}
        entry["kinds"].update({kind: digest for kind in kinds})
        if frames is not None:
            entry["frames"] = int(frames)
        self._changed = True

    def save(self, force: bool = False) -> None:
        """Write the record (atomically) when something changed, at most every SAVE_EVERY_S unless forced."""
        if not self._changed or not force and time.monotonic() - self._saved_at < SAVE_EVERY_S:
            return
        used = {digest for entry in self.entries.values() for digest in entry.get("kinds", {}).values()}
        data = {"format": RECORD_FORMAT, "version": RECORD_VERSION,
                "settings": {digest: value for digest, value in self.settings.items() if digest in used},
                "entries": self.entries}
        write_text_atomic(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")
        self._saved_at, self._changed = time.monotonic(), False


def kinds_to_write(record: OutputRecord, output: str, item: Input, kinds: Sequence[str], settings: dict,
                   size: Tuple[int, int], info: Optional[VideoInfo], overwrite: bool) -> Tuple[str, ...]:
    """The kinds of `item` this run writes: every kind with overwrite; else those the record does not vouch
    for (made from another source or with other settings, or not recorded) and those whose files do not
    decode at the input's size."""
    wanted = input_kinds(item, kinds)
    if overwrite:
        return wanted
    recorded = record.current_kinds(record_key(item), source_of(item.path))
    if item.video and recorded and record.frames(record_key(item)):
        info = info._replace(frames=record.frames(record_key(item)))
    digest = settings_digest(settings)
    return tuple(kind for kind in wanted
                 if recorded.get(kind) != digest or not kind_sound(output, item, kind, size, info))
