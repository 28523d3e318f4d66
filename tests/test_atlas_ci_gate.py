"""The CI gate (python3 -m hrnetseg.atlas.ci_gate) and its JUnit report: floors per batch size, a report whatever the
run's end, flags and report paths refused in one line."""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hrnetseg.atlas import ci_gate
from hrnetseg.util.errors import UserError

from helpers import assert_user_error, run_script


def _row(path: Path, batch: int, fps: float, miou: float) -> str:
    path.write_text(json.dumps({"batch": batch, "backend": "ais_bench", "device": "npu:0", "fps": fps,
                                "miou": miou}))
    return str(path)


def gate(*args):
    return run_script(["-m", "hrnetseg.atlas.ci_gate"] + [str(a) for a in args])


def gate_refuses(capsys, fragment, *args) -> None:
    """ci_gate.main in this process (a subprocess per case would cost more than the check): a flag argparse
    refuses (exit 2, its message last), or a UserError, naming `fragment`."""
    try:
        ci_gate.main([str(a) for a in args])
    except SystemExit as exc:
        assert exc.code == 2
        message = capsys.readouterr().err.strip().splitlines()[-1]
    except UserError as exc:
        message = str(exc)
    else:
        raise AssertionError("accepted: {}".format(args))
    assert fragment in message, message


def test_a_passing_gate_writes_a_report_and_exits_0(tmp_path):
    rows = [_row(tmp_path / "bs1.json", 1, 9.5, 0.8051), _row(tmp_path / "bs4.json", 4, 7.0, 0.8051)]
    report = tmp_path / "report.xml"
    assert ci_gate.main(["judge", "--min_miou", "80.5", "--min_fps", "1:9 4:7", "--junit", str(report)] + rows) == 0
    suite = ET.parse(str(report)).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "0", "0")
    assert [c.get("name") for c in suite] == ["bs1.accuracy", "bs1.throughput", "bs4.accuracy", "bs4.throughput"]
    assert all(c.find("failure") is None for c in suite)
    assert suite[0].find("system-out").text == "mIoU 80.51% (floor 80.50%)"


def test_a_failing_gate_names_each_batch_size_and_still_writes_the_report(tmp_path):
    rows = [_row(tmp_path / "bs1.json", 1, 8.99, 0.81), _row(tmp_path / "bs4.json", 4, 3.0, 0.791)]
    report = tmp_path / "report.xml"
    report.write_text("an earlier run's report")
    result = gate("judge", "--min_miou", "80.5", "--min_fps", "1:9", "--junit", report, *rows)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(
        "error: batch sizes 1, 4 below the floor: bs1 throughput 8.99 fps < 9.00 fps; bs4 mIoU 79.10% < 80.50%")
    failures = {c.get("name"): c.find("failure").get("message")
                for c in ET.parse(str(report)).getroot() if c.find("failure") is not None}
    assert failures == {"bs1.throughput": "throughput 8.99 fps < 9.00 fps", "bs4.accuracy": "mIoU 79.10% < 80.50%"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]          # written atomically


@pytest.mark.parametrize("args, fragment", [
    (["--min_miou", "0.805"], "reads as a fraction"),
    (["--min_miou", "101"], "percentage from 0 to 100"),
    (["--min_miou", "nan"], "percentage from 0 to 100"),
    (["--min_fps", "1:9 1:8"], "batch size 1 is given two floors"),
    (["--min_fps", "0:9"], "BATCH:FPS"),
    (["--min_fps", "4:-1"], "BATCH:FPS"),
    (["--min_fps", "١:9"], "BATCH:FPS"),
    (["--min_fps", "1:\u0669"], "BATCH:FPS"),
    (["--min_miou", "\u0668\u0660"], "percentage from 0 to 100"),
    (["--min_miou", "8_0"], "percentage from 0 to 100"),
    (["--min_fps", " "], "BATCH:FPS"),
    (["--min_fps", "8:1"], "floor for batch size 8"),
], ids=["fraction", "over_100", "nan", "twice", "zero_batch", "negative", "other_digits", "other_digits_fps",
        "other_digits_miou", "underscore_miou", "empty", "unknown_batch"])
def test_gate_flags_are_refused_in_one_line(args, fragment, capsys):
    gate_refuses(capsys, fragment, "check", "--batch_sizes", "1 4", *args)


def test_a_report_path_that_cannot_be_written_and_damaged_rows(tmp_path, capsys):
    os.mkfifo(str(tmp_path / "fifo.xml"))
    assert_user_error(gate("check", "--batch_sizes", "1", "--junit", tmp_path / "fifo.xml"), "FIFO")
    assert ci_gate.main(["check", "--batch_sizes", "1", "--junit", str(tmp_path / "made" / "later" / "r.xml")]) == 0
    (tmp_path / "file").write_text("")
    gate_refuses(capsys, "is a file", "check", "--batch_sizes", "1", "--junit", tmp_path / "file" / "r.xml")
    row = tmp_path / "bs1.json"
    for content in ('{"batch": 1, "fps": NaN, "miou": 0.5}', '{"batch": true, "fps": 1, "miou": 0.5}', "[]", "",
                    "[" * 100000 + "]" * 100000):
        row.write_text(content)
        gate_refuses(capsys, str(row), "judge", "--min_miou", "50", row)
    gate_refuses(capsys, "--junit {} is a table row of this run".format(row), "judge", "--junit", row, row)


def test_a_report_path_that_would_replace_other_files_is_refused(tmp_path, capsys):
    """eval_acc_perf.sh removes the report's path before its run and writes the report after its table: the
    path must not be a file of other content (a model, a manifest) nor one of the run's own files or folders."""
    model = tmp_path / "hrnet_bs1.om"
    model.write_bytes(b"\x00om")
    gate_refuses(capsys, "exists and is not a JUnit report", "check", "--batch_sizes", "1", "--junit", model)
    (tmp_path / "pom.xml").write_text('<?xml version="1.0"?>\n<project></project>\n')
    gate_refuses(capsys, "exists and is not a JUnit report", "check", "--batch_sizes", "1", "--junit",
                 tmp_path / "pom.xml")
    written = [tmp_path / "eval" / "prep_dataset", tmp_path / "eval" / "result_bs1.json"]
    check = ["check", "--batch_sizes", "1", "--written"] + written + ["--junit"]
    gate_refuses(capsys, "one of the files which", *check, written[1])
    gate_refuses(capsys, "inside {},".format(written[0]), *check, written[0] / "manifest.json")
    # the run's own lock (eval_acc_perf.sh removes the report's path first: that deleted the lock mid-run)
    gate_refuses(capsys, "--junit {0}.lock is the lock file of the output of eval_acc_perf.sh {0}".format(written[1]),
                 *check, str(written[1]) + ".lock")
    (tmp_path / "eval").mkdir()
    os.symlink(str(written[1]), str(tmp_path / "link.xml"))   # a link to the result is the result
    gate_refuses(capsys, "one of the files which", *check, tmp_path / "link.xml")
    (tmp_path / "old.xml").write_bytes(ci_gate.junit_xml([("bs1.accuracy", "mIoU 80.00%", "")]))
    (tmp_path / "empty.xml").write_bytes(b"")
    for report in ("old.xml", "empty.xml", "eval/report.xml"):   # an earlier report, an empty file, a new name
        assert ci_gate.main([str(a) for a in check + [tmp_path / report]]) == 0
    assert model.read_bytes() == b"\x00om"


def test_a_failure_message_tells_the_figure_from_its_floor():
    """80.4999% fails a floor of 80.5%: the message must not read 80.50% < 80.50%."""
    cases = dict((name, failure) for name, _, failure in ci_gate.judge([(1, 8.999, 0.804999)], 80.5, {1: 9.0}))
    assert cases == {"bs1.accuracy": "mIoU 80.4999% < 80.5000%", "bs1.throughput": "throughput 8.9990 fps < 9.0000 fps"}
    cases = dict((name, failure) for name, _, failure in ci_gate.judge([(1, 7.5, 0.791)], 80.5, {1: 9.0}))
    assert cases == {"bs1.accuracy": "mIoU 79.10% < 80.50%", "bs1.throughput": "throughput 7.50 fps < 9.00 fps"}


def test_a_run_that_stopped_still_gets_a_report_of_what_it_measured(tmp_path):
    report = tmp_path / "report.xml"
    rows = [_row(tmp_path / "bs1.json", 1, 9.5, 0.81)]
    assert ci_gate.main(["judge", "--min_miou", "80.5", "--junit", str(report), "--batch_sizes", "1 4",
                         "--stopped", "3"] + rows) == 0
    suite = ET.parse(str(report)).getroot()
    assert (suite.get("tests"), suite.get("errors"), suite.get("failures")) == ("4", "2", "0")
    by_name = {c.get("name"): c for c in suite}
    assert by_name["bs1.accuracy"].find("error") is None and by_name["bs1.accuracy"].find("failure") is None
    assert by_name["bs4.throughput"].find("error").get("message") == \
        "eval_acc_perf.sh stopped (exit 3) before batch size 4's figures"
