"""The runner's summary as ais_bench (the CANN 6 era frontend) writes and prints it, plus our own keys.

ais_bench's summary file OUTPUT/<dirname>_summary.json holds `filesinfo` ({sample index: {"infiles": [...],
"outfiles": [...]}}, the index a JSON string), `args` (the command line, sys.argv), `NPU_compute_time`,
`H2D_latency` and `D2H_latency` (each {"min", "max", "mean", "median", "percentile(99%)", "count"}, in ms),
`throughput`, `npu_compute_time_list` (ms per run) and `pid`. Its printed block, through its logger:

    [INFO] -----------------Performance Summary------------------
    [INFO] H2D_latency (ms): min = ..., ...                        (with --display_all_summary true)
    [INFO] NPU_compute_time (ms): min = 1.5, max = ..., mean = ..., median = ..., percentile(99%) = ...
    [INFO] D2H_latency (ms): min = ..., ...                        (with --display_all_summary true)
    [INFO] throughput 1000*batchsize.mean(4)/NPU_compute_time.mean(1.5): 2666.6666666666665
    [INFO] ------------------------------------------------------

Numbers are Python's full float repr (str.format of floats). Our `B` in batchsize.mean(B) is the mean number
of real images per run: a padded last batch counts its real images only, and so does the throughput.
"""
from __future__ import annotations

import sys
from typing import Dict, List, Sequence

import numpy as np

PERCENTILE = 99
PERCENTILE_KEY = "percentile({}%)".format(PERCENTILE)
RULE_TITLE = "-----------------Performance Summary------------------"
RULE_END = "------------------------------------------------------"


def print_lines(*lines: str) -> None:
    """Lines on stdout in one write, flushed, as ais_bench's logger writes each record: the device processes of
    --device 0,1 share stdout, and print()'s separate write of the newline (unbuffered Python) would let their
    lines run into each other."""
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


def time_stats(times_ms: Sequence[float]) -> Dict[str, float]:
    """ais_bench's statistics of one list of times: min, max, mean, median, percentile(99%) (all 0.0 for an
    empty list, as it reports them) and count."""
    stats: Dict[str, float] = {"min": 0.0, "max": 0.0, "mean": 0.0, "median": 0.0, PERCENTILE_KEY: 0.0}
    if len(times_ms):
        times = np.asarray(times_ms, dtype=np.float64)
        stats.update({"min": float(times.min()), "max": float(times.max()), "mean": float(times.mean()),
                      "median": float(np.median(times)), PERCENTILE_KEY: float(np.percentile(times, PERCENTILE))})
    stats["count"] = len(times_ms)
    return stats


def throughput(images_per_run: float, mean_ms: float) -> float:
    """Images per second: 1000 * (real images per timed run) / (mean ms per run); 0 when nothing was timed, as
    ais_bench reports it."""
    return 1000.0 * images_per_run / mean_ms if mean_ms > 0 else 0.0


def format_count(value: float) -> str:
    """A mean count of images per run: 4 when every run carried 4, 2.5 when a short last batch carried fewer."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def stats_line(name: str, stats: Dict[str, float]) -> str:
    return "[INFO] {} (ms): min = {}, max = {}, mean = {}, median = {}, {} = {}".format(
        name, stats["min"], stats["max"], stats["mean"], stats["median"], PERCENTILE_KEY, stats[PERCENTILE_KEY])


class RunTimes(object):
    """Per timed run: the compute time, the host-to-device and device-to-host copy times (ms; 0 on the CPU,
    where nothing is copied) and how many real images it carried."""

    def __init__(self) -> None:
        self.compute_ms: List[float] = []
        self.h2d_ms: List[float] = []
        self.d2h_ms: List[float] = []
        self.images: List[int] = []

    def add(self, compute_ms: float, images: int, h2d_ms: float = 0.0, d2h_ms: float = 0.0) -> None:
        self.compute_ms.append(compute_ms)
        self.h2d_ms.append(h2d_ms)
        self.d2h_ms.append(d2h_ms)
        self.images.append(images)

    @property
    def images_per_run(self) -> float:
        return float(np.mean(self.images)) if self.images else 0.0

    def ais_bench_keys(self) -> dict:
        """The timing keys of ais_bench's summary file (its `filesinfo`, `args` and `pid` come from the run)."""
        compute = time_stats(self.compute_ms)
        return {"NPU_compute_time": compute, "H2D_latency": time_stats(self.h2d_ms),
                "D2H_latency": time_stats(self.d2h_ms),
                "throughput": throughput(self.images_per_run, compute["mean"]),
                "npu_compute_time_list": list(self.compute_ms)}

    def block(self, display_all_summary: bool = False) -> List[str]:
        """ais_bench's printed summary block, line for line."""
        compute = time_stats(self.compute_ms)
        lines = ["[INFO] " + RULE_TITLE]
        if display_all_summary:
            lines.append(stats_line("H2D_latency", time_stats(self.h2d_ms)))
        lines.append(stats_line("NPU_compute_time", compute))
        if display_all_summary:
            lines.append(stats_line("D2H_latency", time_stats(self.d2h_ms)))
        lines.append("[INFO] throughput 1000*batchsize.mean({})/NPU_compute_time.mean({}): {}".format(
            format_count(self.images_per_run), compute["mean"], throughput(self.images_per_run, compute["mean"])))
        lines.append("[INFO] " + RULE_END)
        return lines


class FilesInfo(object):
    """ais_bench's `filesinfo`: per sample (numbered in run order, padding rows skipped), its input files and
    the output files written for it, paths as the command line gave them."""

    def __init__(self) -> None:
        self.samples: Dict[str, Dict[str, List[str]]] = {}

    def add(self, index: int, infile: str, outfile: str) -> None:
        entry = self.samples.setdefault(str(index), {"infiles": [infile], "outfiles": []})
        entry["outfiles"].append(outfile)
