"""ais_bench --device 0,1 (and the runner's): the device list, how the input is split across the devices, and
the folder each device writes, OUT/DIRNAME/device<id>/ (its summary beside it: see model_outputs).

The input files, in natural-sort order, are cut into contiguous parts of ceil(n / devices), the first part to
the first device listed. Atlas-side module: standard library only, valid Python 3.7.
"""
from __future__ import annotations

import re
from typing import List, Optional

from hrnetseg.util.errors import UserError

DEVICE_FOLDER = re.compile(r"^device(?P<id>[0-9]+)$")   # OUT/DIRNAME/device<id>/
MAX_DEVICE_ID = 255   # ais_bench's range of NPU ids


def device_list(text: Optional[str]) -> Optional[List[int]]:
    """The NPU/GPU ids of `--device 0,1` (None for one device); each an integer 0..255, none twice."""
    if text is None or "," not in text:
        return None
    parts = [part.strip() for part in text.split(",")]
    if not all(re.fullmatch(r"[0-9]+", part) and int(part) <= MAX_DEVICE_ID for part in parts):
        raise UserError("--device {}: a list of devices holds ids 0..{} separated by commas".format(
            text, MAX_DEVICE_ID))
    ids = [int(part) for part in parts]
    if len(set(ids)) != len(ids):
        raise UserError("--device {} names a device twice: both would write device{}/".format(
            text, [i for i in ids if ids.count(i) > 1][0]))
    return ids


def device_parts(count: int, devices: int) -> List[int]:
    """How many of `count` inputs each device runs when ais_bench --device splits them: contiguous parts of
    ceil(count / devices), the first to the first device (0 for a device the inputs do not reach)."""
    size = -(-count // devices)
    return [max(0, min(size, count - i * size)) for i in range(devices)]


def device_folder_name(device: int) -> str:
    """The folder of OUT/DIRNAME that device N of a multi-device run writes (its summary: the name + SUMMARY_SUFFIX)."""
    return "device{}".format(device)
