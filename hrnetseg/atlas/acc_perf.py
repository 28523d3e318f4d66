"""The checks and the table of scripts/eval_acc_perf.sh, as subcommands (no Python inside the shell script).

    python3 -m hrnetseg.atlas.acc_perf check_batch_sizes PREP 1 4 --backend ais_bench [--device 0,1]
        exit 2 when a batch size is larger than the number of images PREP's manifest lists, or when a device
        list names a device twice or is no list of ids (ais_bench would run for hours first); with ais_bench,
        exit 2 when PREP holds a .bin (.BIN, .npy, .NPY) its manifest does not list (ais_bench would run it
        too); a note for each batch size whose padded last batch inflates the throughput
    python3 -m hrnetseg.atlas.acc_perf check_labels PREP --data_path data/cityscapes/gtFine/val
        exit 2 when a label of an image PREP's manifest lists is not the size of PREP's images (from the headers:
        the postprocess would refuse it after the whole inference)
    python3 -m hrnetseg.atlas.acc_perf throughput --log results/bs4.log --command "ais_bench ..."
        the images/s of the last ais_bench (or hrnetseg.runner.cli) throughput line, or of its `summary throughput:`
        line after a --device 0,1 run (the sum over the devices); exit 2 when it is missing, not a number, not
        finite or not above 0
    python3 -m hrnetseg.atlas.acc_perf row --batch 4 --backend ais_bench --device npu:0 --fps 12.5 \
            --result result_bs4.json
        one row of the table: | batch | backend | device | throughput (fps) | mIoU |
        (--summary results/bs4_summary.json instead of --device: the device the local runner used;
        --shards results/bs4 instead: the devices of a --device 0,1 run, from its device<id>_summary.json files;
        --prep PREP: exit 2 unless the result counts every image PREP's manifest lists, and the fps is that of
        PREP's images, device by device with --shards: ais_bench's figure, and the runner's, which matches it,
        count a padded last batch in full; for the runner this gives its summary's throughput_real_images)
    python3 -m hrnetseg.atlas.acc_perf check_report report.html --output_dir OUT --written PATH ... \
            [--data_path GT] [--inputs MODEL ...] [--report_worst N]
        before any work: exit 2 when the report cannot be written (a folder, a missing folder other than
        OUT, which the script makes), or is, or is inside, one of the files and folders the script writes, or is
        one of its inputs (a label, a photo, a model)
    python3 -m hrnetseg.atlas.acc_perf report report.html --rows results/bs1_row.json ... --result result_bs4.json \
            --res_path results/bs4 --data_path GT [--prep PREP] [--output_dtype float16]
        after the table: the HTML report of the run (hrnetseg.evaluation.report): the table's figures per batch
        size (the rows' --record files), the bars, heat map and worst images of the last batch size (its result,
        written by HRNet_postprocess.py --report_worst N; the worst images' pictures are made again from their
        outputs, labels and photos)

Atlas-side module: standard library only (the manifest is read through hrnetseg.data.manifest, the labels' headers
through hrnetseg.data.cityscapes, the output folders through hrnetseg.runner.layout and
hrnetseg.evaluation.model_outputs, the throughput lines through hrnetseg.runner.summary), valid Python 3.7.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import List, Optional, Sequence, Tuple

from hrnetseg.atlas.figures import decimal_value, format_fps
from hrnetseg.data.cityscapes import check_label_header, find_labels, image_for_label
from hrnetseg.data.manifest import MANIFEST, read_manifest
from hrnetseg.evaluation import report as html_report
from hrnetseg.evaluation import worst_images
from hrnetseg.evaluation.model_outputs import OUTPUT_DTYPES, shard_image_counts
from hrnetseg.evaluation.postprocess import pictures_again, preprocess_image_size
from hrnetseg.runner.layout import (
    AIS_BENCH_INPUT_SUFFIXES,
    DEVICE_FOLDER,
    device_folders,
    device_list,
    device_parts,
    summary_path_for,
)
from hrnetseg.runner.summary import DEVICE_KEY, THROUGHPUT_KEY, THROUGHPUT_LINE, check_one_run, parse_throughput
from hrnetseg.util.cli import ArgumentParser, positive_int, run_cli
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import (
    check_output_file,
    check_outputs_apart,
    not_a_folder_above,
    require_folder,
    write_text_atomic,
)
from hrnetseg.util.structured import read_json, read_text, require_keys

# --- check_batch_sizes ---------------------------------------------------------------------------------

def listed_ids(prep: str) -> List[str]:
    return list(read_manifest(prep)["ids"])


def check_only_listed_bins(prep: str, ids: Sequence[str]) -> None:
    """ais_bench reads every input file in its --input folder (.bin, .BIN, .npy, .NPY), not the manifest: a file
    the manifest does not list (an image since removed from the data set, one that a changed --limit no longer
    covers, or x.npy / x.BIN beside a listed x.bin, whose outputs would replace x's) would be run and, where its
    label is there, counted in the mIoU."""
    inputs = {"{}.bin".format(sample_id) for sample_id in ids}
    unlisted = sorted(name for name in os.listdir(prep)   # hidden names too: ais_bench lists all
                      if name.endswith(AIS_BENCH_INPUT_SUFFIXES) and name not in inputs)
    if unlisted:
        raise UserError("{} holds {} input file{} its manifest does not list ({}{}): ais_bench reads every .bin "
                        "(.BIN, .npy, .NPY) file in its --input folder and would evaluate {}; remove {} or use "
                        "another --output_dir".format(
                            prep, len(unlisted), "" if len(unlisted) == 1 else "s", unlisted[0],
                            ", ..." if len(unlisted) > 1 else "", "it" if len(unlisted) == 1 else "them",
                            "it" if len(unlisted) == 1 else "them"))


def check_batch_sizes(prep: str, sizes: Sequence[int], counts_padding: bool = False,
                      reads_every_bin: bool = False, devices: int = 1) -> List[str]:
    """A batch larger than the data set is all padding after the images: its time would be charged to
    images that do not exist (or, as ais_bench counts, padding counted as images).

    Returns notes for the batch sizes that leave a padded last batch where the tool counts padding as
    images (counts_padding: ais_bench, and the runner that matches it, report 1000 * batch size / mean time
    for every run).
    reads_every_bin: the tool runs every .bin of the folder (ais_bench): bins the manifest does not list are
    an error.
    devices: how many devices the input is split across (--device 0,1): each pads its own last batch.
    """
    ids = listed_ids(prep)
    if reads_every_bin:
        check_only_listed_bins(prep, ids)
    count = len(ids)
    too_big = [size for size in sizes if size > count]
    if too_big:
        raise UserError("batch size{} {} {} larger than the {} image{} in {}: use --batch_sizes up to {} (or more "
                        "images)".format("s" if len(too_big) > 1 else "", ", ".join(map(str, too_big)),
                                         "are" if len(too_big) > 1 else "is", count, "" if count == 1 else "s", prep,
                                         count))
    notes = []
    parts = device_parts(count, devices)
    for size in sizes if counts_padding and devices > 1 else ():
        padded = sum(padded_images(part, size) for part in parts)
        if padded != count:
            notes.append("note: {} images split {} across {} devices run at batch size {} as {}: the inference tool "
                         "pads each device's last batch and counts it as {}, as ais_bench does; the table's "
                         "throughput takes that out device by device".format(
                             count, "+".join(map(str, parts)), devices, size, padded, size))
    for size in sizes if counts_padding and devices == 1 else ():
        if padded_images(count, size) != count:
            notes.append("note: {} images at batch size {} leave a last batch of {}, which the inference tool pads "
                         "and counts as {}, as ais_bench does: the table's throughput is its figure x {}/{} (the "
                         "images' own)".format(
                             count, size, count - (padded_images(count, size) - size), size, count,
                             padded_images(count, size)))
    return notes


def check_labels(prep: str, data_path: str) -> None:
    """The labels of PREP's images against the size of those images, from the headers, before inference: the
    same check HRNet_postprocess.py --prep_path makes. A missing label is the postprocess's to report."""
    made_from = preprocess_image_size(prep)
    labels = find_labels(data_path, read_manifest(prep)["split"])
    for sample_id in listed_ids(prep):
        if sample_id in labels:
            check_label_header(labels[sample_id], *made_from)


def padded_images(count: int, batch: int) -> int:
    """How many images a tool that pads the last batch runs: every batch full."""
    return -(-count // batch) * batch


def real_images_fps(fps: float, count: int, batch: int) -> float:
    """The images/s of `count` real images from a tool's figure that counted a padded last batch as full:
    runs x mean time is the total time, whoever counts the images."""
    return fps * count / padded_images(count, batch)


# --- throughput ------------------------------------------------------------------------------------------

def throughput(log: str, command: str) -> float:
    """The images/s the run reported; a UserError naming the log and the command when there is none usable."""
    source = "{} (the output of: {})".format(log, command) if command else log
    text = parse_throughput(read_text(log, "log", lenient=True))
    if text is None:
        raise UserError("no '{}' line in {}".format(THROUGHPUT_LINE, source))
    value = decimal_value(text)
    if not (math.isfinite(value) and value > 0):
        raise UserError("the throughput {!r} in {} is not a positive number: the run measured nothing usable"
                        .format(text, source))
    return value


# --- row -------------------------------------------------------------------------------------------------

def miou(result_path: str) -> float:
    """The mIoU fraction (0..1, as cityscapesScripts) of HRNet_postprocess.py's result file."""
    value = read_json(result_path, "result").get("mIoU")
    if value is None:
        raise UserError("no mIoU in {}".format(result_path))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise UserError("{} holds mIoU {!r}, not a fraction from 0 to 1".format(result_path, value))
    return float(value)


def check_every_image_counted(result_path: str, prep: str) -> None:
    """The mIoU must cover every preprocessed image: with --limit the postprocess allows labels without output
    (those past the limit), which would hide an image the inference tool left out; an image without a label
    is only logged by the postprocess."""
    images = read_json(result_path, "result").get("images")
    listed = len(listed_ids(prep))
    if isinstance(images, bool) or not isinstance(images, int):
        raise UserError("{} holds images {!r}, not a count".format(result_path, images))
    if images != listed:
        raise UserError("{} counts {} image{} but {} lists {}: the mIoU would not cover the data set (outputs "
                        "missing from the run, or labels missing; the postprocess log names them)".format(
                            result_path, images, "" if images == 1 else "s", prep, listed))


def summary_device(summary_path: str) -> str:
    device = read_json(summary_path, "runner summary").get(DEVICE_KEY)
    if not isinstance(device, str) or not device:
        raise UserError("runner summary {} names no device".format(summary_path))
    return device


# --- the shards of a multi-device run (ais_bench --device 0,1: OUT/DIRNAME/device<id>/ + device<id>_summary.json)

def shard_summaries(res: str) -> List[Tuple[str, str, dict]]:
    """(device folder name, summary path, summary) for each device<id>/ folder of the run in res."""
    require_folder(res, "result folder")
    shards = device_folders(res)
    if not shards:
        raise UserError("{} holds no device<id> folders: it is not the output of a multi-device run".format(res))
    found = []
    for shard in shards:
        path = summary_path_for(os.path.join(res, shard))
        found.append((shard, path, read_json(path, "device summary")))
    check_one_run([(os.path.join(res, shard), summary) for shard, _, summary in found])
    return found


def shards_device(summaries: Sequence[Tuple[str, str, dict]]) -> str:
    """The table's device column: each device the runner's summary names; ais_bench's names none, its NPU is
    the folder's device id."""
    devices = []
    for shard, path, summary in summaries:
        device = summary.get(DEVICE_KEY, "npu:" + DEVICE_FOLDER.match(shard).group("id"))
        if not isinstance(device, str) or not device:
            raise UserError("device summary {} names no device".format(path))
        devices.append(device)
    return ",".join(devices)


def shards_fps(fps: float, summaries: Sequence[Tuple[str, str, dict]], res: str, batch: int,
               counts_padding: bool) -> float:
    """The images/s of a multi-device run: its summed figure, which must be the sum of the device summaries'
    (else they are not this run's); where the tool counts a padded last batch as full (ais_bench, and the runner
    that matches it), each device's figure is taken for the images that device ran."""
    figures = []
    for _, path, summary in summaries:
        value = summary.get(THROUGHPUT_KEY)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise UserError("device summary {} holds throughput {!r}, not a positive number".format(path, value))
        figures.append(float(value))
    if not math.isclose(sum(figures), fps, rel_tol=1e-6):
        raise UserError("the run's summary throughput {!r} is not the sum of its device summaries' ({}): they are "
                        "not from that run".format(fps, " + ".join(repr(v) for v in figures)))
    if not counts_padding:
        return fps
    counts = shard_image_counts(res)
    return sum(real_images_fps(figure, counts[shard], batch) if counts[shard] else 0.0
               for figure, (shard, _, _) in zip(figures, summaries))


def table_row(batch: int, backend: str, device: str, fps: float, miou_fraction: float) -> str:
    return "| {} | {} | {} | {} | {:.2f}% |".format(batch, backend, device, format_fps(fps), 100.0 * miou_fraction)


# --- the report -----------------------------------------------------------------------------------------

TABLE_HEADERS = ("batch", "backend", "device", "throughput (fps)", "mIoU")


def check_report_path(path: str, output_dir: str, written: Sequence[str] = (), data_path: Optional[str] = None,
                      inputs: Sequence[str] = ()) -> None:
    """--report can be written: a file name in a folder that is there, or in OUTPUT_DIR (which the script makes);
    not one of the files and folders the script writes, nor inside one (it would be replaced or removed), nor one
    of the run's inputs: a label or photo of data_path, a model (`inputs`)."""
    target = os.path.realpath(path)
    for other in written:
        other_target = os.path.realpath(other)
        if target == other_target or target.startswith(other_target.rstrip(os.sep) + os.sep):
            raise UserError("--report {} is {} which eval_acc_perf.sh writes: give the report a path of its own".format(
                path, "one of the files" if target == other_target else "inside {},".format(other)))
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(folder) or os.path.realpath(folder) != os.path.realpath(output_dir):
        check_output_file(path, "--report")
    elif not_a_folder_above(folder) is not None:
        raise UserError("cannot write --report {}: {}".format(path, not_a_folder_above(folder)))
    labels = list(find_labels(data_path).values()) if data_path is not None else []
    check_outputs_apart({"--report": path}, {"a label": labels, "a photo": [image_for_label(label) for label in labels],
                                             "a model": inputs},
                        locked={"the output of eval_acc_perf.sh": written})


def read_record(path: str) -> dict:
    """A table row's figures (row --record)."""
    record = require_keys(read_json(path, "table row"), {"batch": int, "backend": str, "device": str, "fps": float,
                                                        "miou": float}, "table row", path)
    return dict(record)


def write_run_report(path: str, rows: Sequence[str], result_path: str, res_path: str, data_path: str,
                     prep: Optional[str] = None, output_dtype: Optional[str] = None) -> None:
    """The run's report: the table (one row per --record file), then the last batch size's figures and worst
    images."""
    check_output_file(path, "--report")
    check_outputs_apart({"--report": path}, {"a table row": rows, "the result": result_path})
    records = [read_record(row) for row in rows]
    result = html_report.check_result(read_json(result_path, "result"), "result", result_path)
    worst_recorded = result.get(worst_images.WORST_KEY)
    worst = pictures_again(res_path, data_path, worst_recorded, output_dtype, prep) if worst_recorded else None
    table = [(str(r["batch"]), r["backend"], r["device"], format_fps(r["fps"]), "{:.2f}%".format(100.0 * r["miou"]))
             for r in records]
    last = records[-1]["batch"] if records else None
    note = "The bars, the heat map and the worst images below are those of batch size {} ({}).".format(
        last, result_path)
    if len({round(r["miou"], 12) for r in records}) > 1:
        note += " The batch sizes' mIoU differ: their outputs are not the same."
    details = [("results", result_path), ("model outputs", res_path), ("labels", data_path)]
    page = html_report.render(
        result, "Segmentation report: eval_acc_perf.sh", details, worst,
        len(worst_recorded) if worst_recorded else worst_images.DEFAULT_WORST,
        worst_note=None if worst_recorded is not None else "No worst images: {} lists none (HRNet_postprocess.py "
                                                           "--report_worst N records them).".format(result_path),
        table=(TABLE_HEADERS, table), table_note=note)
    html_report.write_report(path, page)


# --- the command line -----------------------------------------------------------------------------------

def positive_number(text: str) -> float:
    value = decimal_value(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError("expected a positive number, got {!r}".format(text))
    return value


def check_record_path(args: argparse.Namespace) -> None:
    """`row --record` can be written and is none of the files the row is read from."""
    if args.record is None:
        return
    check_output_file(args.record, "--record")
    shards = args.shards if args.shards is not None and os.path.isdir(args.shards) else None
    check_outputs_apart({"--record": args.record}, {
        "the result": args.result, "the runner summary": args.summary,
        "the preprocess manifest": os.path.join(args.prep, MANIFEST) if args.prep is not None else None,
        "a device summary": [summary_path_for(os.path.join(shards, shard)) for shard in device_folders(shards)]
        if shards is not None else None})


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.strip().splitlines()[0])
    commands = parser.add_subparsers(dest="subcommand")
    check = commands.add_parser("check_batch_sizes", help="refuse batch sizes larger than the preprocessed images")
    check.add_argument("prep", help="the preprocess folder (its manifest.json lists the images)")
    check.add_argument("sizes", nargs="+", type=positive_int, help="the batch sizes")
    check.add_argument("--device", default=None, help="the run's --device: a list 0,1 splits the input across the "
                       "devices (checked here: ids 0..255, none twice)")
    check.add_argument("--backend", default="", help="the backend that will run the batches (ais_bench runs every "
                       ".bin of the folder)")
    labels = commands.add_parser("check_labels", help="refuse labels of another size than the preprocessed images")
    labels.add_argument("prep", help="the preprocess folder (its manifest.json gives the images' size and ids)")
    labels.add_argument("--data_path", required=True, help="the labels, as HRNet_postprocess.py --data_path")
    fps = commands.add_parser("throughput", help="print the images/s of the last throughput line of a log")
    fps.add_argument("--log", required=True, help="what ais_bench or python3 -m hrnetseg.infer printed")
    fps.add_argument("--command", default="", help="the command that wrote the log (for the error message)")
    row = commands.add_parser("row", help="print one row of the table")
    row.add_argument("--batch", required=True, type=positive_int)
    row.add_argument("--backend", required=True)
    where = row.add_mutually_exclusive_group(required=True)
    where.add_argument("--device", help="the device, as the table shows it (npu:0)")
    where.add_argument("--summary", help="the runner's OUTPUT/<dirname>_summary.json, which names the device")
    where.add_argument("--shards", metavar="RES", help="the output folder of a --device 0,1 run (results/bs4): the "
                       "devices and their throughputs from its device<id>_summary.json files")
    row.add_argument("--fps", required=True, type=positive_number, help="images/s (from the throughput command)")
    row.add_argument("--result", required=True, help="HRNet_postprocess.py's result JSON (its mIoU)")
    row.add_argument("--record", default=None, metavar="FILE", help="also write the row's figures, unrounded, as "
                     "JSON (for python3 -m hrnetseg.atlas.ci_gate judge)")
    row.add_argument("--prep", default=None, help="the preprocess folder: the result must count every image its "
                     "manifest lists (and the fps counts them, not the padding of a short last batch)")
    check = commands.add_parser("check_report", help="refuse a --report path that cannot be written or would "
                                "replace a file the run reads or writes")
    check.add_argument("report", help="the HTML report's path")
    check.add_argument("--output_dir", required=True, help="the script's --output_dir (it may not exist yet)")
    check.add_argument("--written", nargs="*", default=[], metavar="PATH",
                       help="the files and folders the run writes: the report may not be one of them or inside one")
    check.add_argument("--data_path", default=None, help="the labels (their photos beside them): not to be replaced")
    check.add_argument("--inputs", nargs="*", default=[], metavar="FILE", help="other files the run reads (models)")
    check.add_argument("--report_worst", type=html_report.worst_count, default=None, metavar="N",
                       help="the --report_worst the script passes on (checked here)")
    report = commands.add_parser("report", help="write the run's HTML report")
    report.add_argument("report", help="the HTML report to write")
    report.add_argument("--rows", nargs="+", required=True, metavar="ROW.json",
                        help="the table's rows (row --record files), in the table's order")
    report.add_argument("--result", required=True, help="the last batch size's result (HRNet_postprocess.py)")
    report.add_argument("--res_path", required=True, help="that batch size's model outputs")
    report.add_argument("--data_path", required=True, help="the labels, as HRNet_postprocess.py --data_path")
    report.add_argument("--prep", default=None, help="the preprocess folder (the labels' size)")
    report.add_argument("--output_dtype", default=None, choices=OUTPUT_DTYPES,
                        help="as HRNet_postprocess.py --output_dtype")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.subcommand == "check_batch_sizes":
        ais_bench = args.backend == "ais_bench"
        for note in check_batch_sizes(args.prep, args.sizes, counts_padding=True, reads_every_bin=ais_bench,
                                      devices=len(device_list(args.device) or [args.device])):
            print(note, file=sys.stderr)
    elif args.subcommand == "check_labels":
        check_labels(args.prep, args.data_path)
    elif args.subcommand == "throughput":
        print(repr(throughput(args.log, args.command)))
    elif args.subcommand == "row":
        fps = args.fps   # ais_bench's figure, padding counted as images (the runner prints the same)
        check_record_path(args)
        if args.shards is not None:
            summaries = shard_summaries(args.shards)
            device = shards_device(summaries)
            fps = shards_fps(fps, summaries, args.shards, args.batch, args.prep is not None)
        else:
            device = args.device if args.device is not None else summary_device(args.summary)
        if args.prep is not None:
            check_every_image_counted(args.result, args.prep)
            if args.shards is None:
                fps = real_images_fps(fps, len(listed_ids(args.prep)), args.batch)
        fraction = miou(args.result)
        if args.record is not None:
            write_text_atomic(args.record, json.dumps({"batch": args.batch, "backend": args.backend, "device": device,
                                                       "fps": fps, "miou": fraction}) + "\n")
        print(table_row(args.batch, args.backend, device, fps, fraction))
    elif args.subcommand == "check_report":
        check_report_path(args.report, args.output_dir, args.written, args.data_path, args.inputs)
    elif args.subcommand == "report":
        write_run_report(args.report, args.rows, args.result, args.res_path, args.data_path, args.prep,
                         args.output_dtype)
    else:
        parser.error("choose a command: check_batch_sizes, check_labels, throughput, row, check_report or report")
    return 0


if __name__ == "__main__":
    run_cli(main)
