"""The Atlas host's checks around ais_bench, under hostile input: the .om sidecar (python3 -m hrnetseg.atlas.om_sidecar),
the figures of a --device 0,1 run (python3 -m hrnetseg.atlas.acc_perf throughput / row --shards) and the CI gate with its
JUnit report (python3 -m hrnetseg.atlas.ci_gate). Each case: the right figure, or one line naming the problem."""
from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hrnetseg.atlas import acc_perf, ci_gate, om_sidecar
from hrnetseg.util.errors import UserError

from helpers import TINY_HEIGHT, TINY_IMAGES, TINY_WIDTH, assert_user_error, run_script


# ----------------------------------------------------------------------------------------------- .om sidecar

@pytest.fixture
def om(tmp_path) -> Path:
    path = tmp_path / "hrnet_bs4.om"
    path.write_bytes(b"om")
    om_sidecar.write_sidecar(str(path), 4, TINY_HEIGHT, TINY_WIDTH, "float32")
    return path


def test_a_sidecar_that_fits_passes_and_a_missing_one_is_a_warning(om, tiny_prep_path, tmp_path):
    assert json.loads(Path(str(om) + ".json").read_text()) == {
        "batch": 4, "height": TINY_HEIGHT, "width": TINY_WIDTH, "input_format": "NCHW", "input_dtype": "float32"}
    assert om_sidecar.check_bins_fit(str(om), str(tiny_prep_path), 4) is None
    os.remove(str(om) + ".json")
    result = run_script(["-m", "hrnetseg.atlas.om_sidecar", "check", om, "--prep", tiny_prep_path, "--batch", "4"])
    assert result.returncode == 0 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("warning: no hrnet_bs4.om.json beside {}".format(om))


def test_an_om_rebuilt_after_its_sidecar_is_named_and_still_checked(om, tiny_prep_path):
    """atc run by hand after pth2om.sh: the sidecar may describe the earlier build; a copy that lands the .om a
    little after its sidecar is no rebuild."""
    sidecar = str(om) + ".json"
    written = os.path.getmtime(sidecar)
    os.utime(str(om), (written + 5, written + 5))
    assert om_sidecar.check_bins_fit(str(om), str(tiny_prep_path), 4) is None
    os.utime(str(om), (written + 600, written + 600))
    warning = om_sidecar.check_bins_fit(str(om), str(tiny_prep_path), 4)
    assert warning.startswith("warning: {} is newer than its sidecar".format(om)) and "\n" not in warning
    with pytest.raises(UserError, match="built for batch size 4"):   # the sidecar's figures still hold
        om_sidecar.check_bins_fit(str(om), str(tiny_prep_path), 1)


def _prep_copy(tiny_prep_path: Path, tmp_path: Path, **manifest_changes) -> Path:
    """The tiny preprocess folder's manifest (no bins: the check reads only the manifest), changed."""
    prep = tmp_path / "prep"
    prep.mkdir()
    manifest = json.loads((tiny_prep_path / "manifest.json").read_text())
    manifest.update(manifest_changes)
    (prep / "manifest.json").write_text(json.dumps(manifest))
    return prep


@pytest.mark.parametrize("changes, batch, match", [
    ({"dtype": "float16"}, 4, "are float16 NCHW 3x64x128 but .*hrnet_bs4.om takes float32 NCHW 3x64x128"),
    ({"dtype": "uint8"}, 4, "make the bins with --input_format float32"),
    ({"shape": [3, 64, 256]}, 4, "3x64x256 but .* takes float32 NCHW 3x64x128"),
    ({"layout": "NHWC"}, 4, "NHWC"),
    ({}, 1, "built for batch size 4 .*, not 1"),
], ids=["float16_bins", "uint8_bins", "size", "layout", "batch"])
def test_bins_that_do_not_fit_the_om_are_one_line(changes, batch, match, om, tiny_prep_path, tmp_path):
    prep = _prep_copy(tiny_prep_path, tmp_path, **changes)
    with pytest.raises(UserError, match=match):
        om_sidecar.check_bins_fit(str(om), str(prep), batch)


@pytest.mark.parametrize("content, match", [
    (b"", ".om sidecar .*json is not JSON"),
    (b"{not json", "is not JSON"),
    (b"\xff\xfe", "is not JSON"),
    (b"[1, 2]", "holds no JSON object"),
    (b'{"batch": 4}', "height, width, input_format, input_dtype missing"),
    (b'{"batch": "4", "height": 64, "width": 128, "input_format": "NCHW", "input_dtype": "float32"}',
     "batch is '4', not a positive integer"),
    (b'{"batch": true, "height": 64, "width": 128, "input_format": "NCHW", "input_dtype": "float32"}',
     "batch is True"),
    (b'{"batch": 4, "height": 0, "width": 128, "input_format": "NCHW", "input_dtype": "float32"}', "height is 0"),
    (b'{"batch": 4, "height": 64, "width": 128, "input_format": "NCHW", "input_dtype": "float64"}',
     "input_dtype is 'float64'"),
    (b'{"batch": 4, "height": 64, "width": 128, "input_format": 1, "input_dtype": "float32"}', "input_format is 1"),
], ids=["empty", "not_json", "not_utf8", "list", "keys", "string", "bool", "zero", "dtype", "format"])
def test_damaged_sidecars_are_one_line(content, match, om, tiny_prep_path):
    Path(str(om) + ".json").write_bytes(content)
    with pytest.raises(UserError, match=match):
        om_sidecar.check_bins_fit(str(om), str(tiny_prep_path), 4)


def test_a_sidecar_that_is_not_a_regular_file_is_never_opened(om, tiny_prep_path, tmp_path):
    sidecar = Path(str(om) + ".json")
    sidecar.unlink()
    os.mkfifo(str(sidecar))                     # opening it would block
    result = run_script(["-m", "hrnetseg.atlas.om_sidecar", "check", om, "--prep", tiny_prep_path, "--batch", "4"],
                        timeout=60)
    assert_user_error(result, ".om sidecar {}".format(sidecar), "FIFO")
    result = run_script(["-m", "hrnetseg.atlas.om_sidecar", "write", om, "--batch", "4", "--height", "64", "--width", "128",
                         "--input_dtype", "float32"], timeout=60)
    assert_user_error(result, "not a regular file")                  # never replaced either
    assert sidecar.is_fifo()


# -------------------------------------------------------------------------- the figures of a --device 0,1 run

def _shards(res: Path, figures, images, device_key=False) -> Path:
    """res as ais_bench --device 0,1 leaves it: device<i>/ with `images[i]` outputs, device<i>_summary.json with
    throughput `figures[i]` (and, as the local runner writes it, a device name when device_key)."""
    for i, (figure, count) in enumerate(zip(figures, images)):
        folder = res / "device{}".format(i)
        folder.mkdir(parents=True)
        for n in range(count):
            for k in (0, 1):
                (folder / "frankfurt_000000_{:06d}_{}.bin".format(100 * i + n, k)).write_bytes(b"")
        summary = {"throughput": figure, "NPU_compute_time": {}}
        if device_key:
            summary["device"] = "cuda:{}".format(i)
        Path(str(folder) + "_summary.json").write_text(json.dumps(summary))
    return res


def test_the_summed_throughput_line_of_a_multi_device_run_wins(tmp_path):
    log = tmp_path / "bs4.log"
    log.write_text("[INFO] throughput 1000*batchsize.mean(4)/NPU_compute_time.mean(400.0): 10.0\n"
                   "[INFO] throughput 1000*batchsize.mean(4)/NPU_compute_time.mean(200.0): 20.0\n"
                   "i:1 device_1 throughput:20.0 start_time:1 end_time:2\n"
                   "i:0 device_0 throughput:10.0 start_time:1 end_time:2\n"
                   "[INFO] summary throughput:30.0\n")
    assert acc_perf.throughput(str(log), "ais_bench --device 0,1") == 30.0
    log.write_text(log.read_text().replace("summary throughput:30.0", "summary throughput:nan"))
    with pytest.raises(UserError, match="'nan' .* not a positive number"):
        acc_perf.throughput(str(log), "ais_bench --device 0,1")


def test_row_of_shards_takes_padding_out_device_by_device(tmp_path, tiny_prep_path):
    res = _shards(tmp_path / "bs4", [10.0, 20.0], [3, 2])
    summaries = acc_perf.shard_summaries(str(res))
    assert acc_perf.shards_device(summaries) == "npu:0,npu:1"
    assert acc_perf.shards_fps(30.0, summaries, str(res), 4, counts_padding=True) == 10.0 * 3 / 4 + 20.0 * 2 / 4
    assert acc_perf.shards_fps(30.0, summaries, str(res), 1, counts_padding=True) == 30.0
    assert acc_perf.shards_fps(30.0, summaries, str(res), 4, counts_padding=False) == 30.0   # the local runner
    runner = _shards(tmp_path / "runner", [10.0, 20.0], [3, 2], device_key=True)
    assert acc_perf.shards_device(acc_perf.shard_summaries(str(runner))) == "cuda:0,cuda:1"
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"mIoU": 0.5, "images": TINY_IMAGES}))
    shown = run_script(["-m", "hrnetseg.atlas.acc_perf", "row", "--batch", "4", "--backend", "ais_bench", "--shards", res,
                        "--fps", "30.0", "--result", result, "--prep", tiny_prep_path])
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "| 4 | ais_bench | npu:0,npu:1 | 17.50 | 50.00% |\n"


def test_the_padding_note_counts_each_device_part(tiny_prep_path):
    assert acc_perf.device_parts(5, 2) == [3, 2] and acc_perf.device_parts(3, 2) == [2, 1]
    assert acc_perf.device_parts(1, 2) == [1, 0] and acc_perf.device_parts(8, 3) == [3, 3, 2]
    [note] = acc_perf.check_batch_sizes(str(tiny_prep_path), [1, 4], counts_padding=True, devices=2)
    assert note.startswith("note: 5 images split 3+2 across 2 devices run at batch size 4 as 8: ")
    assert acc_perf.check_batch_sizes(str(tiny_prep_path), [1], counts_padding=True, devices=5) == []


def test_a_device_list_ais_bench_would_split_wrongly_is_refused_before_inference(tiny_prep_path, capsys):
    """--device 0,0: ais_bench runs two processes into device0/ (hours, then a summed throughput that is not the
    device summaries'); the runner refuses it too, with the same line."""
    check = ["check_batch_sizes", str(tiny_prep_path), "4", "--backend", "ais_bench", "--device"]
    for device, fragment in (("0,0", "--device 0,0 names a device twice"), ("0,,1", "holds ids 0..255"),
                             ("0,256", "holds ids 0..255")):
        with pytest.raises(UserError, match=fragment):
            acc_perf.main(check + [device])
    assert acc_perf.main(check + ["1,0"]) == 0 and "split 3+2 across 2 devices" in capsys.readouterr().err
    assert acc_perf.main(check + ["cuda:1"]) == 0 and "pads and counts" in capsys.readouterr().err   # one device


@pytest.mark.parametrize("damage, match", [
    (lambda res: (res / "device1_summary.json").write_text(json.dumps({"throughput": 25.0})),
     r"summary throughput 30.0 is not the sum of its device summaries' \(10.0 \+ 25.0\)"),
    (lambda res: (res / "device1_summary.json").write_text(json.dumps({"throughput": "20"})),
     "device1_summary.json holds throughput '20', not a positive number"),
    (lambda res: (res / "device1_summary.json").write_text("{"), "device1_summary.json is not JSON"),
    (lambda res: (res / "device1_summary.json").unlink(), "device summary not found"),
    (lambda res: (res / "device1_summary.json").write_text(json.dumps({"throughput": 20.0, "device": ""})),
     "names no device"),
    (lambda res: shutil.rmtree(str(res)) or res.mkdir(), "holds no device<id> folders"),
], ids=["stale", "string", "not_json", "missing", "no_device", "no_shards"])
def test_device_summaries_that_are_not_this_run_are_one_line(damage, match, tmp_path):
    res = _shards(tmp_path / "bs4", [10.0, 20.0], [3, 2])
    damage(res)
    with pytest.raises(UserError, match=match):
        summaries = acc_perf.shard_summaries(str(res))
        acc_perf.shards_device(summaries)
        acc_perf.shards_fps(30.0, summaries, str(res), 4, counts_padding=True)


# ---------------------------------------------------------------------------------------------- the CI gate

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
    (["--min_fps", " "], "BATCH:FPS"),
    (["--min_fps", "8:1"], "floor for batch size 8"),
], ids=["fraction", "over_100", "nan", "twice", "zero_batch", "negative", "other_digits", "empty", "unknown_batch"])
def test_gate_flags_are_refused_in_one_line(args, fragment, capsys):
    gate_refuses(capsys, fragment, "check", "--batch_sizes", "1 4", *args)


def test_a_report_path_that_cannot_be_written_and_damaged_rows(tmp_path, capsys):
    os.mkfifo(str(tmp_path / "fifo.xml"))
    assert_user_error(gate("check", "--batch_sizes", "1", "--junit", tmp_path / "fifo.xml"), "FIFO")
    assert ci_gate.main(["check", "--batch_sizes", "1", "--junit", str(tmp_path / "made" / "later" / "r.xml")]) == 0
    (tmp_path / "file").write_text("")
    gate_refuses(capsys, "is a file", "check", "--batch_sizes", "1", "--junit", tmp_path / "file" / "r.xml")
    row = tmp_path / "bs1.json"
    for content in ('{"batch": 1, "fps": NaN, "miou": 0.5}', '{"batch": true, "fps": 1, "miou": 0.5}', "[]", ""):
        row.write_text(content)
        gate_refuses(capsys, str(row), "judge", "--min_miou", "50", row)


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
