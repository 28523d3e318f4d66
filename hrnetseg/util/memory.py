"""Memory: how much this machine has available for a run, and byte counts in words.

Valid Python 3.7, standard library only.
"""
from __future__ import annotations

import os
from typing import Optional

MEMINFO = "/proc/meminfo"


def available_memory() -> Optional[int]:
    """Bytes of memory a new allocation can have without swapping: Linux's MemAvailable (free memory plus the
    caches the kernel would give up), else the free physical pages (os.sysconf); None where neither is known."""
    try:
        with open(MEMINFO, "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    fields = line.split()
                    return int(fields[1]) * (1024 if fields[2:] == [b"kB"] else 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):   # not offered by this system
        return None


def size_text(size: float) -> str:
    """A byte count in the largest decimal unit that keeps the figure at 1 or more: "3.1 MB", "512 bytes"."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return "{:.1f} {}".format(size / scale, unit)
    return "{} bytes".format(int(size))
