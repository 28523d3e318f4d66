"""`python3 -m hrnetseg.infer --device 0,1`: the input split between one process per device, as ais_bench does.

The input files, in natural-sort order (a folder; comma-separated files keep their order), are cut into
contiguous parts of ceil(n / devices) files, the first part to the first device. Each device is a process of
the runner writing OUTPUT/DIRNAME/device<N>/ and OUTPUT/DIRNAME/device<N>_summary.json (no combined
DIRNAME_summary.json) and printing its own summary block. Then, in completion order, one line per device
(`i:0 device_0 throughput:... start_time:... end_time:...`, without `[INFO]`, as ais_bench prints it) and
`[INFO] summary throughput:<sum of the devices' throughputs>` (both: summary.py); exit 1 when any device
failed, after removing what the others wrote (a part of the data must not pass for the whole).

A device without a usable GPU here is a CPU process (each says so in its first line); the CPU processes share
the cores, each with its part of the threads, so the layout runs and is tested on any machine.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

from hrnetseg.backends import visible_gpu_count
from hrnetseg.runner.inputs import check_bins, list_inputs
from hrnetseg.runner.layout import (
    OUTPUT_NAME,
    default_dirname,
    device_entry,
    device_folder_name,
    device_parts,
    summary_path_for,
)
from hrnetseg.runner.outputs import check_output_stems
from hrnetseg.runner.summary import device_line, listed_outfiles, print_lines, summary_throughput_line
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import make_output_folder, remove_quietly, write_target, write_text_atomic
from hrnetseg.util.locks import output_lock
from hrnetseg.util.processes import cpu_cores, die_with_parent, env_for_python_children, exit_status_text
from hrnetseg.util.structured import read_json, require_keys, require_list_of

POLL_S = 0.05
STOP_S = 30   # seconds an interrupted device process has to remove its files before it is killed
# what the parent writes for each device process (its part) and what that process writes back (its report)
SHARD_KEYS = {"index": int, "device": int, "devices": list, "folder": str, "ids": list, "first": int, "images": int,
              "output": (str, type(None)), "threads": (int, type(None)), "report": str, "command": list}
REPORT_KEYS = {"throughput": float, "start_time": float, "end_time": float}


def split_contiguous(items: Sequence[str], parts: int) -> List[List[str]]:
    """ais_bench's split: contiguous parts of ceil(n / parts) items, the first part first (3 on 2: 2 + 1); fewer
    parts than asked when the items run out."""
    split, start = [], 0
    for size in device_parts(len(items), parts):
        if size:
            split.append(list(items[start:start + size]))
            start += size
    return split


def check_device_folder(top: str, devices: Sequence[int], input_folder: str) -> None:
    """OUTPUT/DIRNAME may hold this layout from an earlier run on the same devices (replaced), nothing else that
    the postprocess would read as part of this run: output files of a one-device run, or device folders and
    summaries of other devices."""
    if os.path.lexists(top) and not os.path.isdir(top):
        make_output_folder(top, "--output_dirname")   # its one-line "exists and is ..., not a folder"
    if not os.path.isdir(top):
        return
    if os.path.samefile(top, input_folder):
        raise UserError("the output folder {} is the input folder: choose another --output or --output_dirname"
                        .format(top))
    mine = {device_folder_name(d) for d in devices}
    for name in sorted(os.listdir(top)):
        device = device_entry(name)
        if OUTPUT_NAME.match(name) or (device and device not in mine):
            raise UserError("{} holds {} from an earlier run, which the postprocess would read as part of this "
                            "--device {} run: remove it or choose another --output_dirname".format(
                                top, name, ",".join(str(d) for d in devices)))


def run_devices(input_spec: str, device: str, devices: List[int], output: Optional[str], output_dirname: Optional[str],
                cpu_threads: Optional[int], kind: str, command: List[str]) -> int:
    """Run the parts of --input `input_spec` on the `devices` of --device `device` in parallel, print ais_bench's
    per-device lines and the summed throughput; exit code 0, or a UserError with exit code 1 when a device
    failed. cpu_threads: --cpu_threads, for every device (default: the cores shared by the CPU processes)."""
    folder, ids, manifest, paths = list_inputs(input_spec)
    check_output_stems(ids)
    check_bins(manifest, paths)
    parts = split_contiguous(ids, len(devices))
    path_parts = split_contiguous(paths, len(devices))
    if len(parts) < len(devices):
        raise UserError("--device {}: {} images for {} devices: in parts of ceil({}/{}) = {} images, device {} "
                        "gets none".format(device, len(ids), len(devices), len(ids), len(devices),
                                           len(parts[0]), devices[len(parts)]))
    gpus = visible_gpu_count(kind)
    on_cpu = [d for d in devices if d >= gpus]
    threads = cpu_threads or (max(1, cpu_cores() // len(on_cpu)) if on_cpu else None)
    top = None
    if output is not None:
        top = os.path.join(output, output_dirname or default_dirname())
        check_device_folder(top, devices, folder)
    print_lines("[INFO] multidevice:{} run begin: {} images in parts of {} ({}), one process per device{}".format(
        devices, len(ids), " + ".join(str(len(part)) for part in parts), "natural-sort order" if
        os.path.isdir(input_spec) else "the order given", "; no usable GPU here for device{} {}: CPU processes "
        "with {} of {} CPU threads each".format("s" if len(on_cpu) > 1 else "", ", ".join(map(str, on_cpu)),
                                                threads, cpu_cores()) if on_cpu else ""))
    output_existed = output is None or os.path.isdir(output)   # the lock file may create --output
    removed: List[Tuple[int, int]] = []
    kept: List[str] = []
    try:
        with output_lock(top) if top is not None else contextlib.nullcontext():
            created = _prepare(output, top)
            try:
                finished = _run_parts(devices, parts, path_parts, folder, top, threads, set(on_cpu), cpu_threads,
                                      command)
            except BaseException:   # Ctrl-C: the devices stopped, each removing its files; the finished go too
                if top is not None:
                    _remove_parts(top, devices, created)
                raise
            failed = [i for i, (code, _) in finished if code != 0]
            if failed and top is not None:
                removed, kept = _remove_parts(top, [devices[i] for i, (code, _) in finished if code == 0], created)
    finally:
        if not output_existed:   # empty once the lock file beside DIRNAME is gone: the run made it
            with contextlib.suppress(OSError):
                os.rmdir(output)
    lines = ["[INFO] multidevice run end: {} of {} devices done, result:{}".format(
        len(devices) - len(failed), len(devices), 1 if failed else 0)]
    throughputs = []
    for i, (code, report) in finished:
        if code == 0:
            lines.append(device_line(i, devices[i], report["throughput"], report["start_time"], report["end_time"]))
            throughputs.append(report["throughput"])
    print_lines(*lines + [summary_throughput_line(throughputs)])
    if failed:
        codes = dict(finished)
        raise UserError("device{} {} failed (see above){}".format(
            "s" if len(failed) > 1 else "", ", ".join(
                str(devices[i]) + (" ({})".format(exit_status_text(codes[i][0])) if codes[i][0] < 0 else "")
                for i in failed), removal_note(removed, kept)), exit_code=1)
    return 0


def removal_note(removed: Sequence[Tuple[int, int]], kept: Sequence[str]) -> str:
    """What the failure message says of the finished devices' files: what was removed (device, files), and what
    could not be (paths): nothing when nothing was there to remove."""
    note = ""
    if removed:
        note += "; removed what device{} {} wrote ({} file{})".format(
            "s" if len(removed) > 1 else "", ", ".join(str(device) for device, _ in removed),
            sum(count for _, count in removed), "" if sum(count for _, count in removed) == 1 else "s")
    if kept:
        note += "; could not remove {}{}: remove {} before evaluating this folder".format(
            kept[0], " and {} more".format(len(kept) - 1) if len(kept) > 1 else "", "it" if len(kept) == 1 else "them")
    return note


def _prepare(output: Optional[str], top: Optional[str]) -> List[str]:
    """Make OUTPUT and OUTPUT/DIRNAME (the folders made, to remove on failure); an earlier one-device run's
    DIRNAME_summary.json goes: it would describe files this layout replaces."""
    if top is None:
        return []
    created = [path for path, flag in ((output, "--output"), (top, "--output_dirname"))
               if make_output_folder(path, flag)]
    remove_quietly(write_target(summary_path_for(top)))
    return created


def _run_parts(devices: List[int], parts: List[List[str]], path_parts: List[List[str]], folder: str,
               top: Optional[str], threads: Optional[int], on_cpu: set, cpu_threads: Optional[int],
               command: List[str]) -> List[Tuple[int, Tuple[int, Optional[dict]]]]:
    """Start one runner process per device and wait for all; (index, (exit code, report)) in completion order.
    The devices' summaries record one run id, made here."""
    workdir = tempfile.mkdtemp(prefix="hrnetseg-devices-")
    run_id = uuid.uuid4().hex
    running: Dict[int, Tuple[subprocess.Popen, str]] = {}
    finished: List[Tuple[int, Tuple[int, Optional[dict]]]] = []
    parent = os.getpid()
    env = env_for_python_children()
    try:
        first = 0
        for i, (device, part) in enumerate(zip(devices, parts)):
            spec = {"index": i, "device": device, "devices": devices, "folder": folder, "ids": part,
                    "paths": path_parts[i], "run_id": run_id, "first": first,
                    "images": sum(len(p) for p in parts), "output": top,
                    "threads": threads if device in on_cpu or cpu_threads else None,
                    "report": os.path.join(workdir, "report{}.json".format(i)), "command": command}
            first += len(part)
            spec_path = os.path.join(workdir, "shard{}.json".format(i))
            write_text_atomic(spec_path, json.dumps(spec))
            child = subprocess.Popen([sys.executable, "-m", "hrnetseg.infer"] + command[1:] + ["--shard", spec_path],
                                     env=env, preexec_fn=lambda: _device_process_setup(parent))
            running[i] = (child, spec["report"])
        while running:
            for i in sorted(running):
                child, report_path = running[i]
                code = child.poll()
                if code is not None:
                    del running[i]
                    report = _read_report(report_path) if code == 0 else None
                    finished.append((i, (code if report is not None or code != 0 else 1, report)))
            time.sleep(POLL_S)
    finally:
        for child, _ in running.values():   # interrupted: the devices stop with us, removing what they wrote
            child.send_signal(signal.SIGINT)
        for child, _ in running.values():
            try:
                child.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return finished


def _device_process_setup(parent: int) -> None:
    """In the device process before it starts: it dies with the parent, and the parent's SIGINT (its way to stop
    it, Ctrl-C or not) is a KeyboardInterrupt even where SIGINT was ignored (a background job)."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _read_report(path: str) -> Optional[dict]:
    """A device process's report; None when it wrote none that is usable (the device counts as failed)."""
    try:
        return require_keys(read_json(path, "device report"), REPORT_KEYS, "device report", path)
    except UserError:
        return None


def _remove_parts(top: str, devices: Sequence[int], created: List[str]) -> Tuple[List[Tuple[int, int]], List[str]]:
    """Remove what the devices that finished wrote (the files their summaries list, the summaries, their folders
    when empty), and the folders this run made, when empty. Returns (device, files removed) for each device that
    had files removed, and the files that could not be removed."""
    removed: List[Tuple[int, int]] = []
    kept: List[str] = []
    for device in devices:
        folder = os.path.join(top, device_folder_name(device))
        summary = summary_path_for(folder)
        try:
            files = listed_outfiles(read_json(summary, "device summary"))
        except (UserError, KeyError, TypeError, AttributeError):
            files = []
        count = sum(_remove(path, kept) for path in files + [summary])
        if count:
            removed.append((device, count))
        with contextlib.suppress(OSError):
            os.rmdir(folder)
    for path in reversed(created):
        with contextlib.suppress(OSError):
            os.rmdir(path)
    return removed, kept


def _remove(path: str, kept: List[str]) -> bool:
    """Whether path was removed; one that is there but cannot be removed is added to kept."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    except OSError:
        kept.append(path)
        return False
    return True


# --- one device's process --------------------------------------------------------------------------------------

def read_shard(path: str) -> dict:
    """The part of the input, the device and the threads the parent gave this process."""
    shard = require_keys(read_json(path, "device part"), SHARD_KEYS, "device part", path)
    require_list_of(shard["ids"], str, "device part", path, "ids")
    require_list_of(shard["devices"], int, "device part", path, "devices")
    require_list_of(shard["command"], str, "device part", path, "command")
    return shard


def shard_note(shard: dict, device: str) -> str:
    """The device process's part of its first line: which device and images, and the CPU threads it has."""
    note = "device {} of --device {} (images {}-{} of {})".format(
        shard["device"], ",".join(str(d) for d in shard["devices"]), shard["first"] + 1,
        shard["first"] + len(shard["ids"]), shard["images"])
    if device == "cpu":
        note += ", a CPU process with {} of {} CPU threads".format(shard["threads"] or cpu_cores(), cpu_cores())
    return note


def write_report(shard: dict, report: dict) -> None:
    """Throughput, start and end time for the parent's per-device line."""
    write_text_atomic(shard["report"], json.dumps(report))
