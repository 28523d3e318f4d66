"""The CI gate of scripts/eval_acc_perf.sh: floors for the mIoU and the throughput per batch size, and a JUnit
XML report for the Atlas host's CI job.

    python3 -m hrnetseg.atlas.ci_gate check --batch_sizes "1 4" --min_miou 80.5 --min_fps "1:9 4:7" --junit report.xml
        before any work: exit 2 with one line for a floor that is not a number, a batch size given a floor that
        the run does not have, a report that cannot be written or whose path holds a file that is no report;
        with --written PATH ..., a report path that is one of the run's own files or folders, or inside one
    python3 -m hrnetseg.atlas.ci_gate judge --min_miou 80.5 --min_fps "1:9 4:7" --junit report.xml \
            results/bs1_row.json ...
        after the table: writes the report (always, pass or fail; atomically), then exit 1 with one line naming
        each batch size below a floor
    python3 -m hrnetseg.atlas.ci_gate judge ... --batch_sizes "1 4" --stopped 2 [ROW ...]
        when the script stopped before its table: the report still, the rows there are judged, each batch size
        without one is an error case naming the exit code; exit 0 (the script keeps its own)

--min_miou is in percent (compared with 100 x the result's mIoU, the table's figure); --min_fps takes
`BATCH:FPS` pairs for any subset of the batch sizes. The rows (`hrnetseg.atlas.acc_perf row --record`) hold the
figures the table shows, before they are rounded for it.
Atlas-side module: standard library only, valid Python 3.7.
"""
from __future__ import annotations

import argparse
import math
import os
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Sequence, Tuple

from hrnetseg.atlas.figures import decimal_value, format_fps
from hrnetseg.util.cli import ArgumentParser, nonnegative_int, positive_int, run_cli
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import (
    check_output_file,
    check_outputs_apart,
    make_output_folder,
    not_a_folder_above,
    write_bytes_atomic,
)
from hrnetseg.util.structured import read_json

SUITE = "eval_acc_perf"
EXIT_BELOW_FLOOR = 1


def percent_floor(text: str) -> float:
    """--min_miou: a percentage above 1 and up to 100 (0.805 would be a fraction: every run would pass)."""
    value = decimal_value(text)
    if not (math.isfinite(value) and 0 < value <= 100):
        raise argparse.ArgumentTypeError("expected a percentage from 0 to 100, got {!r}".format(text))
    if value <= 1:
        raise argparse.ArgumentTypeError("{!r} reads as a fraction; the floor is in percent (80.5 for an mIoU of "
                                         "0.805)".format(text))
    return value


def fps_floors(text: str) -> Dict[int, float]:
    """--min_fps "1:9 4:7" -> {1: 9.0, 4: 7.0}."""
    floors: Dict[int, float] = {}
    pairs = text.split()
    if not pairs:
        raise argparse.ArgumentTypeError("expected BATCH:FPS pairs such as \"1:9 4:7\", got {!r}".format(text))
    for pair in pairs:
        batch, _, fps = pair.partition(":")
        value = decimal_value(fps)
        if not (batch.isdigit() and batch.isascii() and int(batch) > 0 and math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError("expected BATCH:FPS pairs such as \"1:9 4:7\" (a positive batch size "
                                             "and a positive number), got {!r}".format(pair))
        if int(batch) in floors:
            raise argparse.ArgumentTypeError("batch size {} is given two floors in {!r}".format(int(batch), text))
        floors[int(batch)] = value
    return floors


def check_floors(batch_sizes: Sequence[int], fps: Dict[int, float]) -> None:
    unknown = sorted(set(fps) - set(batch_sizes))
    if unknown:
        raise UserError("--min_fps gives a floor for batch size {} but the run has --batch_sizes \"{}\"".format(
            ", ".join(map(str, unknown)), " ".join(map(str, batch_sizes))))


# --- judging the rows ---------------------------------------------------------------------------------------

def read_row(path: str) -> Tuple[int, float, float]:
    """(batch, fps, mIoU fraction) of one row record."""
    row = read_json(path, "table row")
    batch, fps, miou = row.get("batch"), row.get("fps"), row.get("miou")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (fps, miou))
    if not (isinstance(batch, int) and not isinstance(batch, bool) and batch > 0 and numbers):
        raise UserError("table row {} is damaged (batch {!r}, fps {!r}, miou {!r})".format(path, batch, fps, miou))
    return batch, float(fps), float(miou)


STOPPED = "stopped: "   # a measured text that starts so is an error case: the figure was never measured


def judge(rows: Sequence[Tuple[int, float, float]], min_miou: Optional[float], min_fps: Dict[int, float],
          batch_sizes: Sequence[int] = (), stopped: Optional[int] = None) -> List[Tuple[str, str, Optional[str]]]:
    """(testcase name, what was measured, failure message or None; "" when no floor applies) per check; with
    `stopped` (the script's exit code), the batch sizes without a row are error cases."""
    cases = []
    measured_sizes = {batch for batch, _, _ in rows}
    for batch in batch_sizes if stopped is not None else ():
        if batch not in measured_sizes:
            for check in ("accuracy", "throughput"):
                cases.append(("bs{}.{}".format(batch, check), "{}eval_acc_perf.sh stopped (exit {}) before batch "
                              "size {}'s figures".format(STOPPED, stopped, batch), None))
    for batch, fps, miou in rows:
        percent = 100.0 * miou
        measured = "mIoU {:.2f}%".format(percent)
        if min_miou is None:
            cases.append(("bs{}.accuracy".format(batch), measured, ""))
        else:
            below = percent < min_miou
            cases.append(("bs{}.accuracy".format(batch), measured + " (floor {:.2f}%)".format(min_miou),
                          "mIoU {}% < {}%".format(*_apart(percent, min_miou, "{:.2f}".format)) if below else None))
        measured = "throughput {} fps".format(format_fps(fps))
        if batch not in min_fps:
            cases.append(("bs{}.throughput".format(batch), measured, ""))
        else:
            floor = min_fps[batch]
            below = fps < floor
            cases.append(("bs{}.throughput".format(batch), measured + " (floor {} fps)".format(format_fps(floor)),
                          "throughput {} fps < {} fps".format(*_apart(fps, floor, format_fps)) if below else None))
    return cases


def _apart(value: float, floor: float, shown) -> Tuple[str, str]:
    """value and the floor it is below as the table shows figures, or with the decimals that tell them apart
    (80.4999 < 80.5 is not `80.50% < 80.50%`)."""
    for text in (shown, "{:.4f}".format, "{:.6f}".format, repr):
        if text(value) != text(floor):
            return text(value), text(floor)
    return repr(value), repr(floor)


def junit_xml(cases: Sequence[Tuple[str, str, Optional[str]]]) -> bytes:
    """A JUnit report: testsuite eval_acc_perf, one testcase per check; a failure carries its message, a check
    without a floor is skipped (its figure in system-out either way)."""
    failures = sum(1 for _, _, failure in cases if failure)
    skipped = sum(1 for _, _, failure in cases if failure == "")
    errors = sum(1 for _, measured, _ in cases if measured.startswith(STOPPED))
    suite = ET.Element("testsuite", name=SUITE, tests=str(len(cases)), failures=str(failures), errors=str(errors),
                       skipped=str(skipped))
    for name, measured, failure in sorted(cases, key=lambda case: _case_order(case[0])):
        case = ET.SubElement(suite, "testcase", classname=SUITE, name=name)
        if measured.startswith(STOPPED):
            message = measured[len(STOPPED):]
            ET.SubElement(case, "error", message=message, type="stopped").text = message
            continue
        if failure:
            ET.SubElement(case, "failure", message=failure, type="below_floor").text = failure
        elif failure == "":
            ET.SubElement(case, "skipped", message="no floor given")
        ET.SubElement(case, "system-out").text = measured
    # us-ascii (the default): no declaration of its own, anything else as character references
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite) + b"\n"


def _case_order(name: str) -> Tuple[int, str]:
    batch, _, check = name[2:].partition(".")
    return int(batch), check


def failure_line(cases: Sequence[Tuple[str, str, Optional[str]]]) -> Optional[str]:
    failed = [(name, failure) for name, _, failure in cases if failure]
    if not failed:
        return None
    sizes = sorted({int(name[2:].split(".")[0]) for name, _ in failed})
    return "batch size{} {} below the floor: {}".format(
        "s" if len(sizes) > 1 else "", ", ".join(map(str, sizes)),
        "; ".join("{} {}".format(name.split(".")[0], failure) for name, failure in failed))


# --- the command line ---------------------------------------------------------------------------------------

def batch_sizes(text: str) -> List[int]:
    sizes = []
    for word in text.split():
        try:
            sizes.append(positive_int(word))
        except argparse.ArgumentTypeError as exc:
            raise UserError("--batch_sizes: {}".format(exc))
    return sizes


def check_report_path(path: Optional[str], written: Sequence[str] = ()) -> None:
    """The report can be written: a regular file's name (or none yet) in a folder that is there, or that
    eval_acc_perf.sh will make (--junit OUTPUT_DIR/report.xml before OUTPUT_DIR exists); not a file that holds
    something else (the script removes the report's path first: --junit hrnet_bs1.om would delete the model),
    nor one of the files and folders the script itself writes (`written`), which it would replace or remove, nor
    the lock file of one (the script holds them: removing one would let a second run in)."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(folder):
        check_output_file(path, "--junit")
    else:
        blocked = not_a_folder_above(folder)
        if blocked is not None:
            raise UserError("cannot write --junit {}: {}".format(path, blocked))
    target = os.path.realpath(path)
    for other in written:
        other_target = os.path.realpath(other)
        if target == other_target or target.startswith(other_target.rstrip(os.sep) + os.sep):
            where = "one of the files" if target == other_target else "inside {},".format(other)
            raise UserError("--junit {} is {} which eval_acc_perf.sh writes: give the report a path of its own".format(
                path, where))
    check_outputs_apart({"--junit": path}, locked={"the output of eval_acc_perf.sh": written})
    if os.path.isfile(target) and not _holds_a_report(target):
        raise UserError("--junit {} exists and is not a JUnit report: it would be replaced; give the report a path "
                        "of its own".format(path))


def _holds_a_report(path: str) -> bool:
    """An earlier JUnit report (its <testsuite> or <testsuites> near the start) or an empty file: what a new
    report may replace; any other XML (a pom.xml) is not."""
    try:
        with open(path, "rb") as fh:
            start = fh.read(512)
    except OSError as exc:
        raise UserError("cannot read --junit {}: {}".format(path, exc.strerror or exc))
    return not start.strip() or b"<testsuite" in start


def add_gate_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min_miou", type=percent_floor, default=None, metavar="PERCENT",
                        help="fail (exit 1) when a batch size's mIoU, in percent, is below this")
    parser.add_argument("--min_fps", type=fps_floors, default={}, metavar="\"BATCH:FPS ...\"",
                        help="fail (exit 1) when the throughput of one of these batch sizes is below its floor")
    parser.add_argument("--junit", default=None, metavar="FILE", help="write a JUnit XML report (pass or fail)")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.strip().splitlines()[0])
    commands = parser.add_subparsers(dest="subcommand")
    check = commands.add_parser("check", help="check the floors and the report's path before any work")
    check.add_argument("--batch_sizes", required=True, help="the run's batch sizes, e.g. \"1 4\"")
    check.add_argument("--written", nargs="+", default=[], metavar="PATH",
                       help="the files and folders the run writes: the report may not be one of them or inside one")
    add_gate_flags(check)
    decide = commands.add_parser("judge", help="write the report, then exit 1 naming each batch size below a floor")
    decide.add_argument("rows", nargs="*", help="the table rows (hrnetseg.atlas.acc_perf row --record FILE)")
    decide.add_argument("--batch_sizes", default="", help="the run's batch sizes (with --stopped)")
    decide.add_argument("--stopped", type=nonnegative_int, default=None, metavar="EXIT_CODE",
                        help="the script stopped with this exit code before its table: report what there is")
    add_gate_flags(decide)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.subcommand == "check":
        check_floors(batch_sizes(args.batch_sizes), args.min_fps)
        check_report_path(args.junit, args.written)
    elif args.subcommand == "judge":
        if args.junit:
            make_output_folder(os.path.dirname(os.path.abspath(args.junit)), "--junit's folder")
        check_output_file(args.junit, "--junit")
        check_outputs_apart({"--junit": args.junit}, {"a table row": args.rows})
        cases = judge([read_row(path) for path in args.rows], args.min_miou, args.min_fps,
                      batch_sizes(args.batch_sizes), args.stopped)
        if args.junit:
            write_bytes_atomic(args.junit, junit_xml(cases))
        failed = failure_line(cases)
        if args.stopped is not None:
            return 0
        if failed is not None:
            raise UserError(failed, exit_code=EXIT_BELOW_FLOOR)
    else:
        parser.error("choose a command: check or judge")
    return 0


if __name__ == "__main__":
    run_cli(main)
