"""The checks and figures of scripts/eval_acc_perf.sh (python3 -m hrnetseg.atlas.acc_perf) under hostile input: the
throughput read from ais_bench's log, batch sizes against the images, the table's row (real images' throughput,
never a zero or a bad mIoU), bins ais_bench would read that the manifest does not list, the figures of a
--device 0,1 run. Each case: the right figure, or one line naming the problem."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from hrnetseg.atlas import acc_perf, figures
from hrnetseg.data.manifest import read_manifest
from hrnetseg.runner import layout
from hrnetseg.util.errors import UserError

from helpers import TINY_IMAGES, assert_user_error, run_infer, run_script

# --- the throughput in ais_bench's log ------------------------------------------------------------------------

BS4_LINE = "[INFO] throughput 1000*batchsize.mean(4)/NPU_compute_time.mean(100.0): {}\n"


@pytest.mark.parametrize("text, value", [
    (BS4_LINE.format("40.0"), 40.0),
    ("[INFO] loading\n" + BS4_LINE.format("1e-3") + "[INFO] end\n", 0.001),
    (BS4_LINE.format("1.0") + BS4_LINE.format("2.5"), 2.5),          # the last line counts
])
def test_throughput_is_read_from_the_last_line(tmp_path, text, value):
    log = tmp_path / "bs4.log"
    log.write_text(text)
    assert acc_perf.throughput(str(log), "ais_bench --model m.om") == value


@pytest.mark.parametrize("text, words", [
    ("", "no 'throughput 1000*batchsize"),
    ("[INFO] throughput: 12\n", "no 'throughput 1000*batchsize"),
    (BS4_LINE.format("nan"), "'nan'"), (BS4_LINE.format("inf"), "'inf'"), (BS4_LINE.format("0.000"), "'0.000'"),
    (BS4_LINE.format("-5"), "'-5'"), (BS4_LINE.format(""), "''"), (BS4_LINE.format("fast"), "'fast'"),
])
def test_an_unusable_throughput_is_an_error_naming_the_log_and_the_command(tmp_path, text, words):
    log = tmp_path / "bs4.log"
    log.write_text(text)
    with pytest.raises(UserError) as caught:
        acc_perf.throughput(str(log), "ais_bench --model m.om")
    message = str(caught.value)
    assert words in message and str(log) in message and "ais_bench --model m.om" in message


LINE = "[INFO] throughput 1000*batchsize.mean(1)/NPU_compute_time.mean(2): {}\n"


@pytest.mark.parametrize("text", ["1_000", "\u0663", "infinity", "+5", "0x10"])
def test_a_throughput_is_a_plain_decimal_number(tmp_path, text):
    """float() takes "1_000" as 1000 and Arabic-Indic digits as digits; no tool prints those."""
    log = tmp_path / "bs1.log"
    log.write_text(LINE.format(text), encoding="utf-8")
    with pytest.raises(UserError, match="not a positive number"):
        acc_perf.throughput(str(log), "ais_bench")
    log.write_text(LINE.format("5.") + LINE.format(".5e1"))
    assert acc_perf.throughput(str(log), "ais_bench") == 5.0


# --- the images: batch sizes, bins the manifest does not list, every image counted ---------------------------

def test_batch_sizes_larger_than_the_images_are_refused(tiny_prep_path):
    assert acc_perf.check_batch_sizes(str(tiny_prep_path), [1, 4, TINY_IMAGES]) == []
    [note] = acc_perf.check_batch_sizes(str(tiny_prep_path), [1, 4, TINY_IMAGES], counts_padding=True)
    assert note.startswith("note: 5 images at batch size 4 leave a last batch of 1, which the inference tool pads "
                           "and counts as 4, as ais_bench does")
    assert note.endswith("the table's throughput is its figure x 5/8 (the images' own)")
    # 2 runs of 4 in 1 s: ais_bench says 8 images/s, the 5 real images ran at 5 images/s
    assert acc_perf.real_images_fps(8.0, 5, 4) == 5.0 and acc_perf.real_images_fps(8.0, 8, 4) == 8.0
    with pytest.raises(UserError, match="batch sizes 8, 16 are larger than the {} images".format(TINY_IMAGES)):
        acc_perf.check_batch_sizes(str(tiny_prep_path), [1, 8, 16])


def test_ais_bench_is_never_given_bins_the_manifest_does_not_list(tiny_prep_path, tmp_path):
    """ais_bench runs every .bin of its --input folder: an image since removed from the data set, or one a
    changed --limit no longer covers, would be counted in the mIoU."""
    prep = tmp_path / "prep"
    shutil.copytree(str(tiny_prep_path), str(prep))
    assert acc_perf.check_batch_sizes(str(prep), [1], reads_every_bin=True) == []
    listed = read_manifest(str(prep))["ids"][0]
    for name in ("aachen_000000_000001.bin", ".hidden.bin", listed + ".npy", listed + ".BIN"):   # x.npy: x's outputs
        (prep / name).write_bytes(b"\0" * 16)
        with pytest.raises(UserError, match=r"prep holds 1 input file its manifest does not list \({}\)".format(
                name.replace(".", r"\."))):
            acc_perf.check_batch_sizes(str(prep), [1], reads_every_bin=True)
        assert acc_perf.check_batch_sizes(str(prep), [1]) == []      # the local runner reads the manifest's ids
        (prep / name).unlink()
    result = run_script(["-m", "hrnetseg.atlas.acc_perf", "check_batch_sizes", prep, "1", "--backend", "ais_bench"])
    assert result.returncode == 0, result.stderr
    (prep / "x.bin").write_bytes(b"")
    assert_user_error(run_script(["-m", "hrnetseg.atlas.acc_perf", "check_batch_sizes", prep, "1", "--backend",
                                  "ais_bench"]), "does not list (x.bin)",
                      "ais_bench reads every .bin (.BIN, .npy, .NPY) file")


def test_a_result_that_does_not_count_every_preprocessed_image_gives_no_row(tiny_prep_path, tmp_path):
    """With --limit the postprocess allows labels without output, which hid an image the run left out; an image
    without a label was only logged. The table's mIoU must cover the preprocessed images."""
    result = tmp_path / "result_bs1.json"
    listed = len(read_manifest(str(tiny_prep_path))["ids"])
    result.write_text(json.dumps({"mIoU": 0.5, "images": listed}))
    acc_perf.check_every_image_counted(str(result), str(tiny_prep_path))
    for images, words in ((listed - 1, "counts {} images but .* lists {}".format(listed - 1, listed)),
                          (None, "holds images None, not a count"), (True, "not a count")):
        result.write_text(json.dumps({"mIoU": 0.5, "images": images}))
        with pytest.raises(UserError, match=words):
            acc_perf.check_every_image_counted(str(result), str(tiny_prep_path))
    assert_user_error(run_script(["-m", "hrnetseg.atlas.acc_perf", "row", "--batch", "1", "--backend", "x",
                                  "--device", "d",
                                  "--fps", "5", "--result", result, "--prep", tiny_prep_path]), "not a count")


# --- the table's row ------------------------------------------------------------------------------------------

def test_table_row_never_shows_a_zero_throughput_or_a_bad_miou(tmp_path):
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"mIoU": 0.6526}))
    assert acc_perf.table_row(1, "ais_bench", "npu:0", 0.004, acc_perf.miou(str(result))) == \
        "| 1 | ais_bench | npu:0 | 0.004 | 65.26% |"
    assert figures.format_fps(37.456) == "37.46"
    for bad in ('{"mIoU": null}', '{"mIoU": 1.5}', '{"mIoU": "0.5"}', '{"mean_Iou": 0.5}', "[0.5]", "{",
                "[" * 100000 + "]" * 100000):
        result.write_text(bad)
        with pytest.raises(UserError, match="result"):
            acc_perf.miou(str(result))
    summary = tmp_path / "bs1_summary.json"   # the runner summary that names the device
    summary.write_text('{"device": ' * 100000 + '"cpu"' + "}" * 100000)
    with pytest.raises(UserError, match="runner summary .* deeper than 100 levels"):
        acc_perf.summary_device(str(summary))
    assert_user_error(run_script(["-m", "hrnetseg.atlas.acc_perf", "row", "--batch", "1", "--backend", "x",
                                  "--device", "d",
                                  "--fps", "nan", "--result", result]), "--fps")
    result.write_text(json.dumps({"mIoU": 0.5}))
    with pytest.raises(UserError, match="--record {} is the result of this run".format(result)):
        acc_perf.main(["row", "--batch", "1", "--backend", "x", "--device", "d", "--fps", "5", "--result",
                       str(result), "--record", str(result)])
    assert json.loads(result.read_text()) == {"mIoU": 0.5}


def test_the_row_counts_real_images_not_the_padding(tmp_path, tiny_prep_path):
    """ais_bench, and the local runner that matches it, report 1000 x batch size / mean time for a padded last batch
    too; the table's fps is the images' own for both."""
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"mIoU": 0.5, "images": TINY_IMAGES}))
    rows = {}
    for backend in ("ais_bench", "onnxruntime"):
        out = run_script(["-m", "hrnetseg.atlas.acc_perf", "row", "--batch", "4", "--backend", backend, "--device", "d",
                          "--fps", "8.0", "--result", result, "--prep", tiny_prep_path])
        assert out.returncode == 0, out.stderr
        rows[backend] = out.stdout.strip()
    assert rows == {"ais_bench": "| 4 | ais_bench | d | 5.00 | 50.00% |",       # 5 images, padded to 8
                    "onnxruntime": "| 4 | onnxruntime | d | 5.00 | 50.00% |"}


def test_the_runner_row_is_its_real_images_figure(tmp_path, tiny_onnx_path, tiny_prep_path, stub, capsys):
    """5 images at bs4 through the runner: its log's figure is ais_bench's (B = 4, 1000 * 4 / mean), the table's fps
    its summary's throughput_real_images (1000 * 2.5 / mean)."""
    run_infer(tiny_onnx_path, tiny_prep_path, tmp_path / "results", "--batchsize", 4)
    log = tmp_path / "bs4.log"
    log.write_text(capsys.readouterr().out)
    summary = json.loads((tmp_path / "results" / "bs_summary.json").read_text())
    fps = acc_perf.throughput(str(log), "python3 -m hrnetseg.infer")
    assert fps == summary["throughput"] == 1000.0 * 4 / summary["NPU_compute_time"]["mean"]
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"mIoU": 0.5, "images": TINY_IMAGES}))
    record = tmp_path / "row.json"
    assert acc_perf.main(["row", "--batch", "4", "--backend", "onnxruntime", "--summary",
                          str(tmp_path / "results" / "bs_summary.json"), "--fps", repr(fps), "--result", str(result),
                          "--prep", str(tiny_prep_path), "--record", str(record)]) == 0
    assert json.loads(record.read_text())["fps"] == pytest.approx(summary["throughput_real_images"], rel=1e-12)


# --- the figures of a --device 0,1 run -----------------------------------------------------------------------

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


def mark_run(res: Path, device: int, run_id: str) -> None:
    """The runner's run id (and a model) in res/device<device>_summary.json."""
    path = res / "device{}_summary.json".format(device)
    path.write_text(json.dumps(dict(json.loads(path.read_text()), run_id=run_id,
                                    model_file={"path": "/m.onnx", "size": 1, "mtime_ns": 1})))


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
    assert acc_perf.shards_fps(30.0, summaries, str(res), 4, counts_padding=False) == 30.0   # no --prep: as given
    runner = _shards(tmp_path / "runner", [10.0, 20.0], [3, 2], device_key=True)
    for device in (0, 1):   # the runner's summaries: one run id and model throughout
        mark_run(runner, device, "r")
    assert acc_perf.shards_device(acc_perf.shard_summaries(str(runner))) == "cuda:0,cuda:1"
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"mIoU": 0.5, "images": TINY_IMAGES}))
    shown = run_script(["-m", "hrnetseg.atlas.acc_perf", "row", "--batch", "4", "--backend", "ais_bench", "--shards",
                        res,
                        "--fps", "30.0", "--result", result, "--prep", tiny_prep_path])
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "| 4 | ais_bench | npu:0,npu:1 | 17.50 | 50.00% |\n"


def test_the_padding_note_counts_each_device_part(tiny_prep_path):
    assert layout.device_parts(5, 2) == [3, 2] and layout.device_parts(3, 2) == [2, 1]
    assert layout.device_parts(1, 2) == [1, 0] and layout.device_parts(8, 3) == [3, 3, 2]
    [note] = acc_perf.check_batch_sizes(str(tiny_prep_path), [1, 4], counts_padding=True, devices=2)
    assert note.startswith("note: 5 images split 3+2 across 2 devices run at batch size 4 as 8: ")
    assert acc_perf.check_batch_sizes(str(tiny_prep_path), [1], counts_padding=True, devices=5) == []


def test_a_device_list_ais_bench_would_split_wrongly_is_refused_before_inference(tiny_prep_path, capsys):
    """--device 0,0: ais_bench runs two processes into device0/ (hours, then a summed throughput that is not the
    device summaries'); the runner refuses it too, with the same line."""
    check = ["check_batch_sizes", str(tiny_prep_path), "4", "--backend", "ais_bench", "--device"]
    for device, fragment in (("0,0", "--device 0,0 names a device twice"),
                             ("0,,1", r"--device 0,,1: a device id is an integer 0\.\.255"),
                             ("0,256", r"--device 0,256: a device id is an integer 0\.\.255"),
                             ("256", r"--device 256: a device id is an integer 0\.\.255")):
        with pytest.raises(UserError, match=fragment):
            acc_perf.main(check + [device])
    assert acc_perf.main(check + ["1,0"]) == 0 and "split 3+2 across 2 devices" in capsys.readouterr().err
    assert acc_perf.main(check + ["cuda:1"]) == 0 and "pads and counts" in capsys.readouterr().err   # one device
    for device in ("\u0661", "0,\u0661", "cuda:\u0661"):   # an Arabic-Indic one: no device ais_bench knows
        with pytest.raises(UserError, match="device numbers are written in ASCII digits"):
            acc_perf.main(check + [device])


@pytest.mark.parametrize("damage, match", [
    (lambda res: (res / "device1_summary.json").write_text(json.dumps({"throughput": 25.0})),
     r"summary throughput 30.0 is not the sum of its device summaries' \(10.0 \+ 25.0\)"),
    (lambda res: (res / "device1_summary.json").write_text(json.dumps({"throughput": "20"})),
     "device1_summary.json holds throughput '20', not a positive number"),
    (lambda res: (res / "device1_summary.json").write_text("{"), "device1_summary.json is not JSON"),
    (lambda res: (res / "device1_summary.json").write_text("[" * 100000 + "]" * 100000),
     "device1_summary.json nests arrays or objects deeper than 100 levels"),
    (lambda res: (res / "device1_summary.json").unlink(), "device summary not found"),
    (lambda res: (res / "device1_summary.json").write_text(json.dumps({"throughput": 20.0, "device": ""})),
     "names no device"),
    (lambda res: shutil.rmtree(str(res)) or res.mkdir(), "holds no device<id> folders"),
    (lambda res: [mark_run(res, d, "r{}".format(d)) for d in (0, 1)],
     "device folders .*device0 and .*device1 are from different runs \\(run r0 and r1\\)"),
    (lambda res: mark_run(res, 1, "r1"), "device folders .*device1 and .*device0 are not one run"),
], ids=["stale", "string", "not_json", "deep", "missing", "no_device", "no_shards", "other_run", "ids_missing"])
def test_device_summaries_that_are_not_this_run_are_one_line(damage, match, tmp_path):
    res = _shards(tmp_path / "bs4", [10.0, 20.0], [3, 2])
    damage(res)
    with pytest.raises(UserError, match=match):
        summaries = acc_perf.shard_summaries(str(res))
        acc_perf.shards_device(summaries)
        acc_perf.shards_fps(30.0, summaries, str(res), 4, counts_padding=True)


# --- the run's HTML report (check_report before any work, report after the table) -------------------------------

def test_report_path_is_checked_before_any_work(tmp_path, sample_data_root):
    gt = sample_data_root / "cityscapes" / "gtFine" / "val"
    label = sorted(gt.rglob("*_gtFine_labelIds.png"))[0]
    photo = sorted((sample_data_root / "cityscapes" / "leftImg8bit").rglob("*.png"))[0]
    out = tmp_path / "eval"
    model = tmp_path / "hrnet_bs1.om"
    model.write_bytes(b"om")
    written = [str(out / "results" / "bs1"), str(out / "result_bs1.json")]
    check = ["check_report", "--output_dir", str(out), "--data_path", str(gt), "--inputs", str(model),
             "--written"] + written
    acc_perf.main([check[0], str(out / "report.html")] + check[1:])      # in --output_dir, which the script makes
    for report, fragment in ((out / "results" / "bs1" / "r.html", "is inside {}, which eval_acc_perf.sh writes".format(
                                 written[0])),
                             (out / "result_bs1.json", "is one of the files which eval_acc_perf.sh writes"),
                             (label, "--report {} is a label of this run".format(label)),
                             (photo, "--report {} is a photo of this run".format(photo)),
                             (model, "--report {} is a model of this run".format(model)),
                             (tmp_path / "none" / "r.html", "folder {} does not exist".format(tmp_path / "none")),
                             (tmp_path, "it is a folder")):
        with pytest.raises(UserError, match=re.escape(fragment)):
            acc_perf.main([check[0], str(report)] + check[1:])
    with pytest.raises(SystemExit):
        acc_perf.main([check[0], str(out / "r.html"), "--output_dir", str(out), "--report_worst", "-1"])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, sample_data_root, sample_results_path) -> dict:
    """The sample outputs evaluated as eval_acc_perf.sh evaluates a batch size (its 2 worst images recorded), and the
    table's rows of two batch sizes."""
    from hrnetseg.evaluation import postprocess

    folder = tmp_path_factory.mktemp("evaluated")
    gt = sample_data_root / "cityscapes" / "gtFine" / "val"
    result = folder / "result_bs4.json"
    saved = postprocess.evaluate_folder(str(sample_results_path), str(gt), save_path=str(result), report_worst=2,
                                        workers=1, log=lambda _: None)
    rows = []
    for batch, fps in ((1, 12.5), (4, 0.5)):
        rows.append(folder / "bs{}_row.json".format(batch))
        rows[-1].write_text(json.dumps({"batch": batch, "backend": "ais_bench", "device": "npu:0", "fps": fps,
                                        "miou": saved["mIoU"]}))
    return {"result": result, "rows": rows, "gt": gt, "res": sample_results_path, "saved": saved}


def test_the_run_report_has_the_table_and_the_last_batch_sizes_worst_images(evaluated, tmp_path):
    page = tmp_path / "report.html"
    acc_perf.main(["report", str(page), "--rows"] + [str(r) for r in evaluated["rows"]] +
                  ["--result", str(evaluated["result"]), "--res_path", str(evaluated["res"]), "--data_path",
                   str(evaluated["gt"])])
    html = page.read_text()
    miou = "{:.2f}%".format(100 * evaluated["saved"]["mIoU"])
    assert "<td>1</td><td>ais_bench</td><td>npu:0</td><td>12.50</td><td>{}</td>".format(miou) in html
    assert "<td>4</td><td>ais_bench</td><td>npu:0</td><td>0.5</td>" in html      # the table's own fps format
    assert "those of batch size 4" in html and "The 2 worst images" in html
    assert html.count('src="data:image/png;base64,') == 8
    for entry in evaluated["saved"]["worst_images"]:
        assert "<code>{}</code>".format(entry["id"]) in html
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_the_run_report_refuses_a_result_that_is_not_of_the_outputs_and_damaged_rows(evaluated, tmp_path):
    page = tmp_path / "report.html"
    result = json.loads(evaluated["result"].read_text())
    result["worst_images"][0]["mIoU"] += 0.01
    other = tmp_path / "other.json"
    other.write_text(json.dumps(result))
    args = ["report", str(page), "--res_path", str(evaluated["res"]), "--data_path", str(evaluated["gt"])]
    with pytest.raises(UserError, match="the result gives image {} an mIoU of .*: the result is not of these "
                                        "outputs".format(result["worst_images"][0]["id"])):
        acc_perf.main(args + ["--rows", str(evaluated["rows"][0]), "--result", str(other)])
    result["worst_images"][0]["id"] = "nowhere_000000_000000"
    other.write_text(json.dumps(result))
    with pytest.raises(UserError, match="names nowhere_000000_000000 among the worst images, with no label"):
        acc_perf.main(args + ["--rows", str(evaluated["rows"][0]), "--result", str(other)])
    row = tmp_path / "row.json"
    row.write_text(json.dumps({"batch": 1, "backend": "x", "device": "npu:0", "fps": "fast", "miou": 0.5}))
    with pytest.raises(UserError, match="table row {}: 'fps' is \"fast\", not a number".format(row)):
        acc_perf.main(args + ["--rows", str(row), "--result", str(evaluated["result"])])
    with pytest.raises(UserError, match="--report {} is a table row of this run".format(row)):
        acc_perf.main(["report", str(row)] + args[2:] + ["--rows", str(row), "--result", str(evaluated["result"])])
    del result["worst_images"]                       # a result written without --report_worst: said in the page
    other.write_text(json.dumps(result))
    acc_perf.main(args + ["--rows", str(evaluated["rows"][0]), "--result", str(other)])
    assert "lists none (HRNet_postprocess.py --report_worst N records them)" in page.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json", "report.html", "row.json"]
