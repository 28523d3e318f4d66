"""The runner's summary as ais_bench (the CANN 6 era frontend) writes and prints it, plus our own keys.

ais_bench's summary file OUTPUT/<dirname>_summary.json holds `filesinfo` ({sample index: {"infiles": [...],
"outfiles": [...]}}, the index a JSON string, the infiles as the command line named them), `args` (the command
line, sys.argv), `NPU_compute_time`, `H2D_latency` and `D2H_latency` (each {"min", "max", "mean", "median",
"percentile(99%)", "count"}, in ms), `throughput`, `npu_compute_time_list` (ms per run) and `pid`; the runner's
adds its own (runner/cli.py), among them `device`, `output_dtype`, `throughput_real_images`, and the run and model
it belongs to (RUN_ID_KEY, MODEL_FILE_KEY). The keys other steps read back have their names here (..._KEY,
listed_outfiles).

ais_bench prints, when it has made the output folder OUTPUT/DIRNAME (each device process its device folder),
before the inference starts (output_path_line; no space after the colon):

    [INFO] output path:results/bs4

and after the inference its summary block, through its logger:

    [INFO] -----------------Performance Summary------------------
    [INFO] H2D_latency (ms): min = ..., ...                        (with --display_all_summary true)
    [INFO] NPU_compute_time (ms): min = 1.5, max = ..., mean = ..., median = ..., percentile(99%) = ...
    [INFO] D2H_latency (ms): min = ..., ...                        (with --display_all_summary true)
    [INFO] throughput 1000*batchsize.mean(4)/NPU_compute_time.mean(1.5): 2666.6666666666665
    [INFO] ------------------------------------------------------

Numbers are Python's full float repr (str.format of floats). B in batchsize.mean(B) is ais_bench's: the batch
size of every run, a padded last batch counted at full size, and `throughput` (file and line) is 1000 * B / the
mean time. The figure of the real images (1000 * real images per run / the mean time) is ours: the summary's
`throughput_real_images`, and, where a padded last batch makes the two differ, one line after the block:

    [INFO] throughput of the real images 1000*images.mean(3.5)/NPU_compute_time.mean(1.5): 2333.3333333333335

After a `--device 0,1` run, each device having printed its own block, one line per device in completion order
(without `[INFO]`, as ais_bench prints it) and the devices' throughputs summed:

    i:0 device_0 throughput:2666.6666666666665 start_time:1700000000.0 end_time:1700000001.5
    [INFO] summary throughput:5333.333333333333

parse_throughput reads the figure back: of the last summary line, else of the last throughput line.

Atlas-side module: numpy and the standard library, valid Python 3.7.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.util.errors import UserError

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
THROUGHPUT_REAL_IMAGES_KEY = "throughput_real_images"   # ours: `throughput` without a padded last batch's padding
# Ours: the run a summary belongs to (one id shared by the device processes of --device 0,1) and the model file it
# ran (path, size, mtime_ns), so that device folders of different runs or models are never read as one run
RUN_ID_KEY = "run_id"
MODEL_FILE_KEY = "model_file"
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
    """Images per second: 1000 * (images per timed run) / (mean ms per run); 0 when nothing was timed, as
    ais_bench reports it."""
    return 1000.0 * images_per_run / mean_ms if mean_ms > 0 else 0.0


def format_count(value: float) -> str:
    """A count of images per run: 4 when every run carried 4, 3.5 for the mean of 4 and 3."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def output_path_line(folder: str) -> str:
    """ais_bench's line once it has made the output folder (OUTPUT/DIRNAME, or a device folder): the folder as
    os.path.join(--output, --output_dirname) spells it."""
    return "[INFO] output path:{}".format(folder)


def stats_line(name: str, stats: Dict[str, float]) -> str:
    return "[INFO] {} (ms): min = {}, max = {}, mean = {}, median = {}, {} = {}".format(
        name, stats["min"], stats["max"], stats["mean"], stats["median"], PERCENTILE_KEY, stats[PERCENTILE_KEY])


def throughput_line(batch: int, mean_ms: float) -> str:
    """The block's THROUGHPUT_LINE: ais_bench's, every run counted at the batch size."""
    return "[INFO] throughput 1000*batchsize.mean({})/NPU_compute_time.mean({}): {}".format(
        format_count(batch), mean_ms, throughput(batch, mean_ms))


def real_images_line(images_per_run: float, mean_ms: float) -> str:
    """Our line after the block: the throughput of the real images (a padded last batch counts its real images)."""
    return "[INFO] throughput of the real images 1000*images.mean({})/NPU_compute_time.mean({}): {}".format(
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
    """Per timed run of `batch` rows: the compute time, the host-to-device and device-to-host copy times (ms; 0 on
    the CPU, where nothing is copied) and how many real images it carried (fewer in a padded last batch)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
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
        """The mean number of real images per timed run."""
        return float(np.mean(self.images)) if self.images else 0.0

    def ais_bench_keys(self) -> dict:
        """The timing keys of ais_bench's summary file (its `filesinfo`, `args` and `pid` come from the run)."""
        compute = time_stats(self.compute_ms)
        return {"NPU_compute_time": compute, "H2D_latency": time_stats(self.h2d_ms),
                "D2H_latency": time_stats(self.d2h_ms),
                THROUGHPUT_KEY: throughput(self.batch, compute["mean"]),
                "npu_compute_time_list": list(self.compute_ms)}

    def real_images_throughput(self) -> float:
        """THROUGHPUT_REAL_IMAGES_KEY: the images/s of the real images."""
        return throughput(self.images_per_run, time_stats(self.compute_ms)["mean"])

    def block(self, display_all_summary: bool = False) -> List[str]:
        """ais_bench's printed summary block, line for line; then our real images' line where a padded last batch
        makes it differ from ais_bench's."""
        compute = time_stats(self.compute_ms)
        lines = ["[INFO] " + RULE_TITLE]
        if display_all_summary:
            lines.append(stats_line("H2D_latency", time_stats(self.h2d_ms)))
        lines.append(stats_line("NPU_compute_time", compute))
        if display_all_summary:
            lines.append(stats_line("D2H_latency", time_stats(self.d2h_ms)))
        lines.append(throughput_line(self.batch, compute["mean"]))
        lines.append("[INFO] " + RULE_END)
        if self.images and self.images_per_run != self.batch:
            lines.append(real_images_line(self.images_per_run, compute["mean"]))
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


# --- the run and the model a summary belongs to ----------------------------------------------------------

def model_file_record(path: str) -> dict:
    """MODEL_FILE_KEY's value: the model's absolute path, size and mtime_ns. Its size and modification time, not a
    hash: reading a 260 MB model once more in every device process would cost seconds, and a model rewritten or
    replaced between two device processes changes its mtime_ns all the same."""
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _model_difference(first: object, other: object) -> str:
    if not (isinstance(first, dict) and isinstance(other, dict)):
        return "model {!r} and {!r}".format(first, other)
    return ", ".join("model {} {!r} and {!r}".format(key, first.get(key), other.get(key))
                     for key in sorted(set(first) | set(other)) if first.get(key) != other.get(key))


def check_one_run(summaries: Sequence[Tuple[str, Optional[dict]]]) -> None:
    """The device folders of a --device 0,1 run must be one run of one model: each (device folder, its summary, or
    None where it has none) must record the same RUN_ID_KEY and MODEL_FILE_KEY. Summaries that record no run
    (ais_bench's) leave nothing to compare; a mix of both, or two that differ, is a UserError naming the two
    device folders and what differs."""
    def run_id(summary: Optional[dict]) -> Optional[object]:
        return summary.get(RUN_ID_KEY) if isinstance(summary, dict) else None

    marked = [(folder, summary) for folder, summary in summaries if run_id(summary) is not None]
    if not marked:
        return
    first_folder, first = marked[0]
    for folder, summary in summaries:
        if run_id(summary) is None:
            raise UserError("device folders {} and {} are not one run: the summary of the first records run {}, "
                            "{}; keep one run per folder".format(
                                first_folder, folder, first[RUN_ID_KEY], "the other's none" if summary is not None
                                else "the other has no summary"))
        if summary[RUN_ID_KEY] != first[RUN_ID_KEY]:
            raise UserError("device folders {} and {} are from different runs (run {} and {}); keep one run per "
                            "folder".format(first_folder, folder, first[RUN_ID_KEY], summary[RUN_ID_KEY]))
        if summary.get(MODEL_FILE_KEY) != first.get(MODEL_FILE_KEY):
            raise UserError("device folders {} and {} ran different models ({}): not one run".format(
                first_folder, folder, _model_difference(first.get(MODEL_FILE_KEY), summary.get(MODEL_FILE_KEY))))
