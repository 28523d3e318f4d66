"""hrnetseg.util.memory: the memory available (MemAvailable, else the free pages), byte counts in words."""
from __future__ import annotations

import os

from hrnetseg.util import memory


def test_available_memory_is_memavailable_else_the_free_pages(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:          500000 kB\nMemAvailable:    2500000 kB\n")
    monkeypatch.setattr(memory, "MEMINFO", str(meminfo))
    assert memory.available_memory() == 2500000 * 1024
    meminfo.write_text("MemTotal:       16000000 kB\n")   # a kernel older than 3.14 has no MemAvailable line
    free_pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert abs(memory.available_memory() - free_pages) < 1 << 30
    monkeypatch.setattr(memory, "MEMINFO", str(tmp_path / "none"))   # no /proc
    assert memory.available_memory() > 0


def test_size_text():
    assert [memory.size_text(n) for n in (0, 999, 3.1e6, 2.5e9, 1.3e12)] == [
        "0 bytes", "999 bytes", "3.1 MB", "2.5 GB", "1.3 TB"]
