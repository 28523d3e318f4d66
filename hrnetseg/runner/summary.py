"""The runner's summary as ais_bench (the CANN 6 era frontend) writes and prints it, plus our own keys.

ais_bench's summary file OUTPUT/<dirname>_summary.json holds `filesinfo` ({sample index: {"infiles": [...],
"outfiles": [...]}}, the index a JSON string), `args` (the command line, sys.argv), `NPU_compute_time`,
`H2D_latency` and `D2H_latency` (each {"min", "max", "mean", "median", "percentile(99%)", "count"}, in ms),
`throughput`, `npu_compute_time_list` (ms per run) and `pid`; the runner's adds its own (runner/cli.py), among
them `device` and `output_dtype`. The keys other steps read back have their names here (..._KEY, listed_outfiles).
ais_bench's printed block, through its logger:

    [INFO] -----------------Performance Summary------------------
    [INFO] H2D_latency (ms): min = ..., ...                        (with --display_all_summary true)
    [INFO] NPU_compute_time (ms): min = 1.5, max = ..., mean = ..., median = ..., percentile(99%) = ...
    [INFO] D2H_latency (ms): min = ..., ...                        (with --display_all_summary true)
    [INFO] throughput 1000*batchsize.mean(4)/NPU_compute_time.mean(1.5): 2666.6666666666665
    [INFO] ------------------------------------------------------

Numbers are Python's full float repr (str.format of floats). Our `B` in batchsize.mean(B) is the mean number
of real images per run: a padded last batch counts its real images only, and so does the throughput.

After a `--device 0,1` run, each device having printed its own block, one line per device in completion order
(without `[INFO]`, as ais_bench prints it) and the devices' throughputs summed:

    i:0 device_0 throughput:2666.6666666666665 start_time:1700000000.0 end_time:1700000001.5
    [INFO] summary throughput:5333.333333333333

parse_throughput reads the figure back: of the last summary line, else of the last throughput line.
"""
from __future__ import annotations

import re
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

PERCENTILE = 99
PERCENTILE_KEY = "percentile({}%)".format(PERCENTILE)
RULE_TITLE = "-----------------Performance Summary------------------"
RULE_END = "------------------------------------------------------"
# The summary's keys that other steps read: the files of each sample (a failed --device 0,1 run removes those of
# its finished devices; the postprocess finds the input folder from them), the throughput and the device (the table,
# atlas/acc_perf.py; ais_bench's summary names no device), the dtype of the output files and the input folder (the
# postprocess, evaluation/model_outputs.py; ours only)
FILESINFO_KEY = "filesinfo"
INPUT_KEY = "input"
THROUGHPUT_KEY = "throughput"
DEVICE_KEY = "device"
OUTPUT_DTYPE_KEY = "output_dtype"
# ais_bench's throughput line, which the runner prints with the same wording
THROUGHPUT_LINE = "throughput 1000*batchsize.mean(B)/NPU_compute_time.mean(T): X"
_THROUGHPUT = re.compile(r"throughput 1000\*batchsize\.mean\([^)]*\)/NPU_compute_time\.mean\([^)]*\):[ \t]*(\S*)")
# the last line of ais_bench --device 0,1 (and of the runner's): the devices' throughputs summed
SUMMARY_THROUGHPUT_LINE = "summary throughput:X"
_SUMMARY_THROUGHPUT = re.compile(r"summary throughput:[ \t]*(\S*)")


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


def throughput_line(images_per_run: float, mean_ms: float) -> str:
    """The block's THROUGHPUT_LINE."""
    return "[INFO] throughput 1000*batchsize.mean({})/NPU_compute_time.mean({}): {}".format(
        format_count(images_per_run), mean_ms, throughput(images_per_run, mean_ms))


def device_line(index: int, device: int, images_per_s: float, start_time: float, end_time: float) -> str:
    """The line of the index-th device listed in --device 0,1, once it has finished."""
    return "i:{} device_{} throughput:{} start_time:{} end_time:{}".format(
        index, device, images_per_s, start_time, end_time)


def summary_throughput_line(throughputs: Sequence[float]) -> str:
    """The last line of a --device 0,1 run (SUMMARY_THROUGHPUT_LINE): the finished devices' throughputs summed."""
    return "[INFO] summary throughput:{}".format(sum(throughputs))


def parse_throughput(text: str) -> Optional[str]:
    """The X of the last `summary throughput:X` line (a multi-device run: each device prints its own summary
    block, then this sum), else of the last throughput line, as written (None when there is neither)."""
    found = _SUMMARY_THROUGHPUT.findall(text) or _THROUGHPUT.findall(text)
    return found[-1] if found else None


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
                THROUGHPUT_KEY: throughput(self.images_per_run, compute["mean"]),
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
        lines.append(throughput_line(self.images_per_run, compute["mean"]))
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


def listed_outfiles(summary: dict) -> List[str]:
    """The output files a summary's filesinfo lists; KeyError, TypeError or AttributeError when it is not laid out
    as FilesInfo writes it."""
    return [out for entry in summary[FILESINFO_KEY].values() for out in entry["outfiles"]]
