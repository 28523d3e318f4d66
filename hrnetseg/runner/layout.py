"""Where ais_bench (and the runner, which writes the same layout) reads and puts things.

- Inputs: every .bin, .BIN, .npy and .NPY file of its --input folder (AIS_BENCH_INPUT_SUFFIXES).
- Outputs: OUT/DIRNAME/<stem>_<k>.<ext>, one file per input and model output k, the stem the input's name up to
  its first dot and the extension --outfmt's (OUTFMTS: BIN, NPY, TXT); read back with OUTPUT_NAME. DIRNAME is
  --output_dirname, by default the time the run began (default_dirname).
- The summary: OUT/DIRNAME_summary.json beside the folder (SUMMARY_SUFFIX, summary_path_for).
- --device N and --device 0,1: ids 0..255, read by one rule for one id and a list (device_ids). With a list, the
  input files, in natural-sort order, cut into contiguous parts of ceil(n / devices), the first part to the first
  device listed; each device writing OUT/DIRNAME/device<id>/ and OUT/DIRNAME/device<id>_summary.json.

Atlas-side module: standard library only, valid Python 3.7.
"""
from __future__ import annotations

import os
import re
import time
from typing import List, Optional

from hrnetseg.util.errors import UserError

AIS_BENCH_INPUT_SUFFIXES = (".bin", ".BIN", ".npy", ".NPY")   # the files ais_bench runs from an --input folder
OUTFMTS = ("BIN", "NPY", "TXT")   # --outfmt; the output files' extension is the name in lower case
OUTPUT_NAME = re.compile(r"^(?P<stem>.+)_(?P<index>[0-9]+)\.(?P<ext>{})$".format(
    "|".join(outfmt.lower() for outfmt in OUTFMTS)))
DIRNAME_TIME_FORMAT = "%Y_%m_%d-%H_%M_%S"   # OUT/DIRNAME without --output_dirname
SUMMARY_SUFFIX = "_summary.json"   # OUT/DIRNAME_summary.json beside OUT/DIRNAME/
DEVICE_FOLDER = re.compile(r"^device(?P<id>[0-9]+)$")   # OUT/DIRNAME/device<id>/
MAX_DEVICE_ID = 255   # ais_bench's range of NPU ids


# --- output files and the summary ------------------------------------------------------------------------

def default_dirname() -> str:
    """The folder of OUT that a run without --output_dirname writes: the time now."""
    return time.strftime(DIRNAME_TIME_FORMAT)


def output_stem(sample_id: str) -> str:
    """The stem of an input's output files: its name up to the first dot, as ais_bench cuts `<id>.bin`."""
    return sample_id.split(".")[0]


def output_name(sample_id: str, k: int, outfmt: str) -> str:
    """The file of an input's output k: `<stem>_<k>.<ext>`, as OUTPUT_NAME reads it."""
    return "{}_{}.{}".format(output_stem(sample_id), k, outfmt.lower())


def summary_path_for(folder: str) -> str:
    """The summary ais_bench and the runner write for an output folder OUT/DIRNAME: OUT/DIRNAME_summary.json,
    beside the folder's name as they were given it."""
    return os.path.normpath(folder) + SUMMARY_SUFFIX


# --- --device 0,1 ----------------------------------------------------------------------------------------

def device_ids(text: Optional[str]) -> Optional[List[int]]:
    """The NPU/GPU ids of ais_bench's `--device N` or `--device 0,1`, each an integer 0..MAX_DEVICE_ID, none
    twice; None for a device named otherwise (cpu, cuda, cuda:N) or not given. One id and a list are read by
    this one rule, so an id refused in a list is refused alone."""
    if text is not None and any(char.isdigit() and not char.isascii() for char in text):
        raise UserError("--device {!r}: device numbers are written in ASCII digits 0-9".format(text))
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",")]
    if len(parts) == 1 and not re.fullmatch(r"[0-9]+", parts[0]):
        return None
    if not all(re.fullmatch(r"[0-9]+", part) and int(part) <= MAX_DEVICE_ID for part in parts):
        raise UserError("--device {}: a device id is an integer 0..{} (several: ids separated by commas)".format(
            text, MAX_DEVICE_ID))
    ids = [int(part) for part in parts]
    if len(set(ids)) != len(ids):
        raise UserError("--device {} names a device twice: both would write device{}/".format(
            text, [i for i in ids if ids.count(i) > 1][0]))
    return ids


def device_list(text: Optional[str]) -> Optional[List[int]]:
    """The ids of `--device 0,1` (device_ids); None for one device."""
    ids = device_ids(text)
    return ids if ids is not None and len(ids) > 1 else None


def device_parts(count: int, devices: int) -> List[int]:
    """How many of `count` inputs each device runs when ais_bench --device splits them: contiguous parts of
    ceil(count / devices), the first to the first device (0 for a device the inputs do not reach)."""
    size = -(-count // devices)
    return [max(0, min(size, count - i * size)) for i in range(devices)]


def device_folder_name(device: int) -> str:
    """The folder of OUT/DIRNAME that device N of a multi-device run writes (its summary: the name + SUMMARY_SUFFIX)."""
    return "device{}".format(device)


def device_entry(name: str) -> Optional[str]:
    """The device folder that a name in OUT/DIRNAME belongs to (device<id> itself, or its summary
    device<id>_summary.json); None for other names."""
    folder = name[:-len(SUMMARY_SUFFIX)] if name.endswith(SUMMARY_SUFFIX) else name
    return folder if DEVICE_FOLDER.match(folder) else None


def device_folders(folder: str) -> List[str]:
    """The device<id> sub-folders of a multi-device run in folder, by device id."""
    names = [name for name in os.listdir(folder)
             if DEVICE_FOLDER.match(name) and os.path.isdir(os.path.join(folder, name))]
    return sorted(names, key=lambda name: int(DEVICE_FOLDER.match(name).group("id")))
