"""Local inference runner with ais_bench's options, files, summary and printed lines, on ONNX Runtime, OpenVINO
or PyTorch.

    python3 -m hrnetseg.infer --model hrnet.onnx --input prep_dataset --output results --output_dirname bs4 \
        --batchsize 4

Reads a preprocess folder (its manifest.json says dtype and shape; bins that do not fit the model's
input are refused, never reinterpreted) in ais_bench's order (natural sort), runs it in batches (a short last
batch is padded; the padding is not written, and the throughput counts it at full size as ais_bench does, while
our throughput_real_images counts the real images only: summary.py) and writes one float32 file per input file and
model output, as ais_bench does: OUTPUT/OUTPUT_DIRNAME/<id>_0.bin (output1) and <id>_1.bin (output2) (or .npy,
.txt: outputs.py, the names in layout.py), plus OUTPUT/<dirname>_summary.json with ais_bench's keys and ours, and
prints ais_bench's lines (`output path:`, the summary block: summary.py), so one parser reads both tools.
`--device 0,1` splits the input between one process per device (multi_device.py). OUTPUT/OUTPUT_DIRNAME is
locked for the run (a second run into it stops at once), and a run that fails or is interrupted removes what it
wrote.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import uuid
from typing import List, Optional, Sequence, Tuple

import numpy as np

from hrnetseg.backends import Backend, backend_for_model, check_model_file, load_backend
from hrnetseg.backends.batching import batch_size_for, output_rows, pad_batch
from hrnetseg.data.manifest import MANIFEST, read_manifest
from hrnetseg.runner import multi_device, options
from hrnetseg.runner.inputs import (
    Inputs,
    check_bins,
    check_bins_fit_model,
    list_inputs,
    parse_index_list,
    parse_indices,
    read_bin,
)
from hrnetseg.runner.layout import default_dirname, device_folder_name, device_ids, device_list
from hrnetseg.runner.outputs import OUTPUT_DTYPE, RunOutputs, check_output_stems
from hrnetseg.runner.summary import (
    DEVICE_KEY,
    FILESINFO_KEY,
    INPUT_KEY,
    MODEL_FILE_KEY,
    OUTPUT_DTYPE_KEY,
    PERCENTILE_KEY,
    RUN_ID_KEY,
    THROUGHPUT_KEY,
    THROUGHPUT_REAL_IMAGES_KEY,
    FilesInfo,
    RunTimes,
    model_file_record,
    print_lines,
)
from hrnetseg.util.cli import progress, run_cli


def build_parser() -> argparse.ArgumentParser:
    return options.build_parser(__doc__.strip().splitlines()[0])


# ------------------------------------------------------------------------------------------------ runner

def run_inference(backend: Backend, ids: Sequence[str], paths: Sequence[str], dtype: np.dtype,
                  shape: Tuple[int, ...], batch: int, outputs: Optional[RunOutputs], indices: Sequence[int],
                  loop: int = 1, warmup: int = 0, files_info: Optional[FilesInfo] = None) -> RunTimes:
    """Run every input (its id, and its bin at the path of the same index) in batches; write <stem>_<k>.<fmt> per
    output index k when outputs is set, and record them in files_info (ais_bench's sample numbering: run order,
    padding rows skipped)."""
    times = RunTimes(batch)
    with progress(total=len(ids), desc="infer bs{}".format(batch)) as bar:
        for start in range(0, len(ids), batch):
            chunk = ids[start:start + batch]
            rows = (read_bin(path, dtype, shape) for path in paths[start:start + batch])
            data = pad_batch(rows, batch, shape, dtype)
            if start == 0:
                for _ in range(warmup):
                    backend.run(data)
            for _ in range(loop):
                began = time.perf_counter()
                results = backend.run(data)
                total_ms = (time.perf_counter() - began) * 1000.0
                h2d_ms, d2h_ms = backend.copy_ms
                times.add(total_ms - h2d_ms - d2h_ms, len(chunk), h2d_ms, d2h_ms)
            if outputs is not None:
                for k in indices:
                    for row, (sample_id, array) in enumerate(zip(chunk, output_rows(results, k, batch))):
                        path = outputs.write(sample_id, k, array)
                        if files_info is not None:
                            files_info.add(start + row, paths[start + row], path)
            bar.update(len(chunk))
    return times


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    command = list(sys.argv) if argv is None else ["python3 -m hrnetseg.infer"] + list(argv)
    options.check_options(args)
    check_model_file(args.model)
    kind = args.backend or backend_for_model(args.model)
    parse_index_list(args.output_indices)
    devices = device_list(args.device)
    if devices is not None and args.shard is None:
        return multi_device.run_devices(args.input, args.device, devices, args.output, args.output_dirname,
                                        args.cpu_threads, kind, command)
    shard = multi_device.read_shard(args.shard) if args.shard is not None else None
    if shard is not None:
        inputs = Inputs(shard["folder"], shard["ids"], read_manifest(shard["folder"]), shard["paths"])
        command = shard["command"]
    else:
        inputs = list_inputs(args.input)
    check_output_stems(inputs.ids)
    bins = check_bins(inputs.manifest, inputs.paths)
    outputs = None
    if args.output is not None:
        if shard is not None:
            outputs = RunOutputs(shard["output"], device_folder_name(shard["device"]), args.outfmt)
        else:
            outputs = RunOutputs(args.output, args.output_dirname or default_dirname(), args.outfmt)
        outputs.check(inputs.folder)
        outputs.check_apart(inputs.ids, {"the model": args.model, "an input file": list(inputs.paths),
                                         "the preprocess manifest": os.path.join(inputs.folder, MANIFEST),
                                         "the device part": args.shard})
    with outputs.open() if outputs is not None else contextlib.nullcontext():
        report = run_model(args, kind, inputs, bins, outputs, command, shard)
    if shard is not None:
        multi_device.write_report(shard, report)
    return 0


def run_model(args: argparse.Namespace, kind: str, inputs: Inputs, bins: Tuple[np.dtype, Tuple[int, ...]],
              outputs: Optional[RunOutputs], command: List[str], shard: Optional[dict]) -> dict:
    """Load the model, run every input, print ais_bench's summary block and write the summary file; what the
    parent of --device 0,1 needs to know (throughput, start and end time)."""
    folder, ids, manifest = inputs.folder, inputs.ids, inputs.manifest
    dtype, shape = bins
    model_file = model_file_record(args.model)   # the file about to be loaded, before it loads
    device = str(shard["device"]) if shard is not None else args.device
    threads = shard["threads"] if shard is not None else args.cpu_threads
    backend = load_backend(kind, args.model, device=device, precision=args.precision, preset=args.preset,
                           input_dtype=manifest["dtype"], compile=args.compile, threads=threads,
                           cpu_fallback=device_ids(device) is not None)   # ais_bench's NPU ids: a CPU here
    check_bins_fit_model(manifest, backend, folder, dtype, shape)
    batch = batch_size_for(backend, args.batchsize)
    warmup = args.warmup_count
    indices = parse_indices(args.output_indices, len(backend.output_names))
    if outputs is not None:
        outputs.begin(ids, indices)
    notes = [backend.device_note] if backend.device_note else []
    if shard is not None:
        notes.insert(0, multi_device.shard_note(shard, backend.device))
    print_lines("[INFO] {} on {} ({}), batch size {}, {} images, {} {}, warm-up {}, loop {}{}".format(
        backend.name, backend.device, backend.precision, batch, len(ids), dtype.name, "x".join(map(str, shape)),
        warmup, args.loop, "".join("; " + note for note in notes)))
    if args.debug:
        print_lines("[DEBUG] input {} {}; outputs {}".format(backend.input.name, backend.input.describe(),
                                                            ", ".join(backend.output_names)))
    files_info = FilesInfo()
    start_time = time.time()
    began = time.perf_counter()
    times = run_inference(backend, ids, inputs.paths, dtype, shape, batch, outputs, indices, args.loop, warmup,
                          files_info)
    wall = time.perf_counter() - began
    end_time = time.time()
    print_lines(*times.block(args.display_all_summary))
    timing = times.ais_bench_keys()
    report = {"throughput": timing[THROUGHPUT_KEY], "start_time": start_time, "end_time": end_time}
    if outputs is None:
        return report
    summary = {FILESINFO_KEY: files_info.samples, "args": command}
    summary.update(timing)
    summary["pid"] = os.getpid()
    compute = timing["NPU_compute_time"]
    summary.update({
        RUN_ID_KEY: shard["run_id"] if shard is not None else uuid.uuid4().hex, MODEL_FILE_KEY: model_file,
        "backend": backend.name, DEVICE_KEY: backend.device, "precision": backend.precision,
        "batchsize": batch, "batchsize_mean": batch, "real_images_per_run": times.images_per_run,
        THROUGHPUT_REAL_IMAGES_KEY: times.real_images_throughput(), "images": len(ids),
        "compute_time_ms": {"min": compute["min"], "max": compute["max"], "mean": compute["mean"],
                            "median": compute["median"], "p99": compute[PERCENTILE_KEY]},
        "wall_time_s": wall, "loop": args.loop, "warmup_count": warmup,
        "model": os.path.abspath(args.model), INPUT_KEY: os.path.abspath(folder),
        "output": os.path.abspath(outputs.folder), "outfmt": args.outfmt, "output_indices": indices,
        OUTPUT_DTYPE_KEY: OUTPUT_DTYPE,
    })
    outputs.write_summary(summary)
    sys.stderr.write("[INFO] wrote {} files to {}; summary {}\n".format(   # one write: device processes share it
        len(outputs.written), outputs.folder, outputs.summary))
    return report


if __name__ == "__main__":
    run_cli(main)
