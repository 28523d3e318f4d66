"""scripts/eval_acc_perf.sh end to end, with a stand-in ais_bench (it runs the same model through the local runner
and writes what ais_bench writes: BIN/NPY/TXT, the device<id>/ shards of --device 0,1, fp16 outputs): the command
lines, the table, the backends, several devices, .om sidecars, the CI gate, and refusals before any work.

Each stand-in logs its arguments (one JSON list per call) so the tests can assert the exact command lines.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from helpers import (
    REPO,
    TINY_HEIGHT,
    TINY_PRESET,
    TINY_WIDTH,
    assert_user_error,
    bash,
    calls,
    cut_label_short,
    table_rows,
)

AIS_BENCH = r'''
import glob, json, os, shutil, subprocess, sys, time
import numpy as np
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as fh:
    fh.write(json.dumps(["ais_bench"] + args) + "\n")
if args == ["--help"]:
    sys.exit(0)
flags = dict(zip(args[0::2], args[1::2]))
gate = os.environ.get("STUB_GATE")
if gate:   # say that this run has started, then wait for the test to let it go on
    open(gate + ".started", "w").close()
    while not os.path.exists(gate + ".go"):
        time.sleep(0.02)
# What ais_bench would do with the .om: run the same model, write <id>_<k>.bin, print its summary lines.
code = subprocess.call([sys.executable, "-m", "hrnetseg.infer", "--model", os.environ["STUB_ONNX"],
                        "--input", flags["--input"], "--output", flags["--output"],
                        "--output_dirname", flags["--output_dirname"], "--batchsize", flags["--batchsize"]])
folder = os.path.join(flags["--output"], flags["--output_dirname"])
devices = flags.get("--device", "0").split(",")
if code == 0 and (len(devices) > 1 or flags.get("--outfmt", "BIN") != "BIN"):
    # as ais_bench: --outfmt NPY keeps the batch axis, TXT writes rows of "%f "; --device 0,1 splits the input
    # (natural order, ceil(n / devices) each) into folder/device<id>/ with folder/device<id>_summary.json
    single = folder + ".single"
    os.rename(folder, single)
    with open(folder + "_summary.json") as fh:
        summary = json.load(fh)
    os.remove(folder + "_summary.json")
    ids = sorted({name.rsplit("_", 1)[0] for name in os.listdir(single)})
    size = -(-len(ids) // len(devices))
    for i, device in enumerate(devices):
        part = folder if len(devices) == 1 else os.path.join(folder, "device" + device)
        os.makedirs(part)
        for sid in ids[i * size:(i + 1) * size]:
            for k in (0, 1):
                array = np.fromfile(os.path.join(single, "%s_%d.bin" % (sid, k)), np.float32).reshape(
                    (1,
                     19) + tuple(-(-v // 4) for v in json.load(open(flags["--input"] + "/manifest.json"))["shape"][1:]))
                stem = os.path.join(part, "%s_%d" % (sid, k))
                if flags.get("--outfmt") == "NPY":
                    np.save(stem + ".npy", array)
                elif flags.get("--outfmt") == "TXT":
                    with open(stem + ".txt", "wb") as fh:
                        for row in array.reshape(-1, array.shape[-1]):
                            np.savetxt(fh, np.c_[row], fmt="%f", newline=" ")
                            fh.write(b"\n")
                else:
                    array.tofile(stem + ".bin")
        if len(devices) > 1:
            summary["throughput"] = 10.0 * (i + 1) + 0.125
            summary.pop("device", None)
            with open(part + "_summary.json", "w") as fh:
                json.dump(summary, fh)
            print("[INFO] throughput 1000*batchsize.mean(1)/NPU_compute_time.mean(1): %r" % summary["throughput"])
        else:
            with open(folder + "_summary.json", "w") as fh:
                json.dump(summary, fh)
    if len(devices) > 1:
        for i, device in enumerate(devices):
            print("i:%d device_%s throughput:%r start_time:1 end_time:2" % (i, device, 10.0 * (i + 1) + 0.125))
        print("[INFO] summary throughput:%r" % sum(10.0 * (i + 1) + 0.125 for i in range(len(devices))))
    if not os.environ.get("STUB_KEEP_SINGLE"):
        shutil.rmtree(single)
if os.environ.get("STUB_FLOAT16"):   # an .om made with atc --output_type=FP16; ais_bench's summary names no dtype
    for path in glob.glob(os.path.join(folder, "*.bin")):
        np.fromfile(path, dtype=np.float32).astype(np.float16).tofile(path)
    with open(folder + "_summary.json") as fh:
        summary = json.load(fh)
    summary.pop("output_dtype")
    with open(folder + "_summary.json", "w") as fh:
        json.dump(summary, fh)
sys.exit(code)
'''


def eval_with_ais_bench(program: str, tmp_path: Path, data: Path, env: dict) -> subprocess.CompletedProcess:
    """eval_acc_perf.sh at batch size 1 on one image, with `program` (Python source) standing in for ais_bench
    and an hrnet_bs1.om in tmp_path; outputs under tmp_path/eval."""
    stub = tmp_path / "ais_bench_stand_in.py"
    stub.write_text(program)
    (tmp_path / "hrnet_bs1.om").write_bytes(b"om")
    return bash("eval_acc_perf.sh", "--datasets_path", data, "--model_dir", tmp_path, "--batch_sizes", "1",
                "--limit", "1", "--output_dir", tmp_path / "eval",
                env=dict(env, AIS_BENCH="{} {}".format(sys.executable, stub)))


# ------------------------------------------------------------------------------------------ eval_acc_perf.sh

def test_eval_with_ais_bench_and_om_files(tools, tmp_path, tiny_onnx_path, tiny_data_root):
    folder, env, log = tools
    stub = tmp_path / "ais_bench_stub.py"
    stub.write_text(AIS_BENCH)
    models = tmp_path / "models"
    models.mkdir()
    for bs in (1, 4):
        (models / "hrnet_bs{}.om".format(bs)).write_bytes(b"om")
    out = tmp_path / "eval"
    env = dict(env, AIS_BENCH="{} {}".format(sys.executable, stub), STUB_ONNX=str(tiny_onnx_path))
    page = out / "report.html"     # in --output_dir, which the script makes
    result = bash("eval_acc_perf.sh", "--datasets_path", tiny_data_root, "--model_dir", models, "--output_dir", out,
                  "--report", page, "--report_worst", "3", env=env)
    assert result.returncode == 0, result.stderr
    runs = [c for c in calls(log, "ais_bench") if c != ["--help"]]
    assert runs == [["--model", "{}/hrnet_bs{}.om".format(models, bs), "--input", "{}/prep_dataset".format(out),
                     "--output", "{}/results".format(out), "--output_dirname", "bs{}".format(bs),
                     "--batchsize", str(bs)]
                    for bs in (1, 4)]
    rows = table_rows(result.stdout)
    assert [r[:3] for r in rows] == [["1", "ais_bench", "npu:0"], ["4", "ais_bench", "npu:0"]]
    for bs, row in zip((1, 4), rows):
        saved = json.loads((out / "result_bs{}.json".format(bs)).read_text())
        assert row[4] == "{:.2f}%".format(100 * saved["mIoU"]) and saved["images"] == 5
        assert float(row[3]) > 0
    assert rows[0][4] == rows[1][4]          # bs1 and bs4 outputs agree, so the mIoU does too
    assert ("5 images at batch size 4 leave a last batch of 1, which the inference tool pads and counts as 4, as "
            "ais_bench does") in result.stderr
    assert "warning: no hrnet_bs4.om.json beside {}/hrnet_bs4.om".format(models) in result.stderr   # not checked
    # --report: one page for the run, the table's rows, the last batch size's figures and its 3 worst images
    assert "report: {}".format(page) in result.stdout
    html = page.read_text()
    for row in rows:
        assert "<td>{}</td><td>ais_bench</td><td>npu:0</td><td>{}</td><td>{}</td>".format(*row[:1], *row[3:5]) in html
    saved = json.loads((out / "result_bs4.json").read_text())
    assert [entry["id"] for entry in saved["worst_images"]] == re.findall(r"<code>([^<]+)</code>", html)
    assert len(saved["worst_images"]) == 3 and html.count('src="data:image/png;base64,') == 12
    assert "those of batch size 4" in html and not list(out.rglob("*.lock"))


def test_eval_auto_stops_when_om_files_exist_but_ais_bench_does_not_start(tools, tmp_path, tiny_data_root):
    _, env, _ = tools
    (tmp_path / "hrnet_bs1.om").write_bytes(b"om")
    (tmp_path / "hrnet.onnx").write_bytes(b"onnx")
    result = bash("eval_acc_perf.sh", "--datasets_path", tiny_data_root, "--model_dir", tmp_path, "--batch_sizes", "1",
                  "--output_dir", tmp_path / "eval", env=dict(env, AIS_BENCH=str(tmp_path / "no_ais_bench")))
    assert_user_error(result, "ais_bench does not start", "--backend onnxruntime")
    assert not (tmp_path / "eval").exists()


def test_eval_auto_without_om_files_runs_the_local_runner(tools, tmp_path, tiny_onnx_path, tiny_data_root):
    _, env, _ = tools
    shutil.copy(tiny_onnx_path, tmp_path / "hrnet.onnx")
    out = tmp_path / "eval"
    result = bash("eval_acc_perf.sh", "--datasets_path", tiny_data_root, "--model_dir", tmp_path, "--output_dir", out,
                  "--batch_sizes", "2", "--limit", "3", "--device", "cpu", env=env)
    assert result.returncode == 0, result.stderr
    assert "backend onnxruntime (auto: no .om files" in result.stderr
    [row] = table_rows(result.stdout)
    assert row[:3] == ["2", "onnxruntime", "cpu"]
    assert json.loads((out / "result_bs2.json").read_text())["images"] == 3
    # 3 images at bs2: the runner prints ais_bench's figure (a padded last batch in full); the table shows the real
    # images' figure, its summary's throughput_real_images
    real = json.loads((out / "results" / "bs2_summary.json").read_text())["throughput_real_images"]
    assert abs(float(row[3]) - real) <= 0.005 + 1e-9 * real
    assert len(list((out / "results" / "bs2").glob("*_1.bin"))) == 3


def test_eval_torch_backend_with_uint8_bins(tools, tmp_path, tiny_pth_path, tiny_data_root):
    _, env, _ = tools
    out = tmp_path / "eval"
    result = bash("eval_acc_perf.sh", "--datasets_path", tiny_data_root, "--model_dir", tmp_path, "--pth",
                  tiny_pth_path, "--preset", TINY_PRESET, "--backend", "torch", "--input_format", "uint8",
                  "--batch_sizes", "4", "--output_dir", out, "--device", "cpu", env=env)
    assert result.returncode == 0, result.stderr
    assert [r[:3] for r in table_rows(result.stdout)] == [["4", "torch", "cpu"]]
    assert json.loads((out / "prep_dataset_uint8" / "manifest.json").read_text())["dtype"] == "uint8"


def test_eval_refuses_bad_arguments(tools, tmp_path, tiny_data_root):
    _, env, _ = tools
    assert_user_error(bash("eval_acc_perf.sh", env=env), "--datasets_path")
    data = ["--datasets_path", tiny_data_root, "--model_dir", tmp_path]
    assert_user_error(bash("eval_acc_perf.sh", *data, env=env), "nothing to run")
    assert_user_error(bash("eval_acc_perf.sh", *data, "--backend", "tensorrt", env=env), "--backend")
    assert_user_error(bash("eval_acc_perf.sh", *data, "--backend", "torch", env=env), "--pth")
    assert_user_error(bash("eval_acc_perf.sh", *data, "--batch_sizes", "0", env=env), "--batch_sizes")
    assert_user_error(bash("eval_acc_perf.sh", *data, "--output_dtype", "float64", env=env), "--output_dtype")
    (tmp_path / "a_file").write_text("")
    assert_user_error(bash("eval_acc_perf.sh", *data, "--output_dir", tmp_path / "a_file", env=env),
                      "--output_dir", "not a folder")
    (tmp_path / "hrnet.onnx").write_bytes(b"onnx")     # the local runner writes float32 only
    assert_user_error(bash("eval_acc_perf.sh", *data, "--output_dtype", "float16", env=env),
                      "--output_dtype float16", "onnxruntime backend writes float32")
    assert_user_error(bash("eval_acc_perf.sh", "--datasets_path", tmp_path / "nope", env=env), "not found")


def test_eval_without_a_usable_throughput_says_so(tools, tmp_path, tiny_data_root):
    """One clear line naming the log and the command, never a bare failed-command trace or 0.00 in the table
    (python3 -m hrnetseg.atlas.acc_perf throughput; its cases are in test_atlas_acc_perf.py)."""
    _, env, _ = tools
    result = eval_with_ais_bench("print('[INFO] throughput 1000*batchsize.mean(1)/NPU_compute_time.mean(1.000): "
                                 "0.000')\n", tmp_path, tiny_data_root, env)
    assert_user_error(result, "'0.000'", "not a positive", "{}/eval/results/bs1.log".format(tmp_path),
                      str(tmp_path / "ais_bench_stand_in.py"))
    assert "| 1 |" not in result.stdout


def test_eval_limit_gets_its_own_prep_folder(tools, tmp_path, tiny_onnx_path, tiny_data_root):
    """ais_bench reads every bin of its input folder: --limit N must not see an earlier full run's bins."""
    _, env, _ = tools
    shutil.copy(str(tiny_onnx_path), str(tmp_path / "hrnet.onnx"))
    out = tmp_path / "eval"
    for limit in ((), ("--limit", "2")):
        result = bash("eval_acc_perf.sh", "--datasets_path", tiny_data_root, "--model_dir", tmp_path,
                      "--batch_sizes", "1", "--output_dir", out, *limit, env=env)
        assert result.returncode == 0, result.stderr
    assert len(list((out / "prep_dataset_limit2").glob("*.bin"))) == 2
    assert json.loads((out / "result_bs1.json").read_text())["images"] == 2


# ------------------------------------------------------------------- hostile runs: locks, batch sizes, failed tools

def eval_with_ais_bench_stub(tmp_path, env, tiny_onnx_path, batch_sizes=(1,), **extra_env):
    """(the environment, models folder) for eval_acc_perf.sh with the ais_bench stand-in and .om files."""
    stub = tmp_path / "ais_bench_stub.py"
    stub.write_text(AIS_BENCH)
    models = tmp_path / "models"
    models.mkdir()
    for bs in batch_sizes:
        (models / "hrnet_bs{}.om".format(bs)).write_bytes(b"om")
    return dict(env, AIS_BENCH="{} {}".format(sys.executable, stub), STUB_ONNX=str(tiny_onnx_path), **extra_env), models


def test_a_second_eval_into_the_same_output_dir_stops_at_once(tools, tmp_path, tiny_onnx_path, tiny_data_root):
    _, env, _ = tools
    gate = tmp_path / "gate"
    env, models = eval_with_ais_bench_stub(tmp_path, env, tiny_onnx_path, STUB_GATE=str(gate))
    out = tmp_path / "eval"
    args = ["--datasets_path", tiny_data_root, "--model_dir", models, "--batch_sizes", "1", "--limit", "2",
            "--output_dir", out]
    first = subprocess.Popen(["bash", str(REPO / "scripts" / "eval_acc_perf.sh")] + [str(a) for a in args], env=env,
                             cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not (tmp_path / "gate.started").exists():   # the first run is inside ais_bench, holding its locks
            assert first.poll() is None, first.communicate()
            time.sleep(0.02)
        began = time.monotonic()
        second = bash("eval_acc_perf.sh", *args, env=env)
        assert_user_error(second, "being written by another run (PID {})".format(first.pid))
        assert time.monotonic() - began < 10 and "HRNet_preprocess.py" not in second.stderr   # before any work
    finally:
        (tmp_path / "gate.go").touch()
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert [r[:3] for r in table_rows(stdout)] == [["1", "ais_bench", "npu:0"]]
    assert json.loads((out / "result_bs1.json").read_text())["images"] == 2
    assert len(list((out / "results" / "bs1").glob("*_1.bin"))) == 2
    assert not list(out.rglob("*.lock"))                                  # released when the first run ended


def test_eval_refuses_a_batch_size_larger_than_the_images(tools, tmp_path, tiny_onnx_path, tiny_data_root):
    """Its padding would be timed as images (ais_bench counts a padded batch as full)."""
    _, env, log = tools
    env, models = eval_with_ais_bench_stub(tmp_path, env, tiny_onnx_path, batch_sizes=(1, 4))
    out = tmp_path / "eval"
    result = bash("eval_acc_perf.sh", "--datasets_path", tiny_data_root, "--model_dir", models, "--batch_sizes", "1 4",
                  "--limit", "3", "--output_dir", out, env=env)
    assert_user_error(result, "batch size 4 is larger than the 3 images in {}/prep_dataset_limit3".format(out))
    assert [c for c in calls(log, "ais_bench") if c != ["--help"]] == []    # refused before any inference


def test_eval_passes_output_dtype_float16_for_an_fp16_om(tools, tmp_path, tiny_onnx_path, tiny_data_root):
    _, env, _ = tools
    env, models = eval_with_ais_bench_stub(tmp_path, env, tiny_onnx_path, STUB_FLOAT16="1")
    out = tmp_path / "eval"
    result = bash("eval_acc_perf.sh", "--datasets_path", tiny_data_root, "--model_dir", models, "--batch_sizes", "1",
                  "--limit", "1", "--output_dtype", "float16", "--output_dir", out, env=env)
    assert result.returncode == 0, result.stderr
    outputs = sorted((out / "results" / "bs1").glob("*_1.bin"))
    assert len(outputs) == 1 and outputs[0].stat().st_size == 2 * 19 * (64 // 4) * (128 // 4)    # float16 files
    assert json.loads((out / "result_bs1.json").read_text())["images"] == 1
    assert [r[:3] for r in table_rows(result.stdout)] == [["1", "ais_bench", "npu:0"]]


def test_a_failed_long_step_names_the_command_and_its_time(tools, tmp_path, tiny_data_root):
    """The inference through tee fails: the command and how long it ran, not just an exit status."""
    _, env, _ = tools
    result = eval_with_ais_bench("import sys\nif sys.argv[1:] != ['--help']:\n    sys.exit(5)\n", tmp_path,
                                 tiny_data_root, env)
    stub = tmp_path / "ais_bench_stand_in.py"
    assert result.returncode == 5, result.stderr
    last = result.stderr.splitlines()[-1]
    assert re.match(r"error: command failed \(exit 5\): \S+ {} --model .*hrnet_bs1.om .* \(after \d+ s\)$".format(
        re.escape(str(stub))), last), last


# ------------------------------------------------------- eval_acc_perf.sh: several devices, .om sidecars, CI gate

def write_sidecars(models: Path, batch_sizes, input_dtype="float32") -> None:
    """What scripts/pth2om.sh writes beside hrnet_bs<N>.om for the tiny model."""
    for bs in batch_sizes:
        (models / "hrnet_bs{}.om.json".format(bs)).write_text(json.dumps(
            {"batch": bs, "height": 64, "width": 128, "input_format": "NCHW", "input_dtype": input_dtype}))


def test_eval_on_two_devices_with_a_failing_gate(tools, tmp_path, tiny_onnx_path, tiny_data_root):
    """ais_bench --device 0,1 layout: the table's fps is the summed throughput (padding taken out per device), the
    device column the device summaries', the mIoU that of every image (a one-device run's); a floor above the
    mIoU exits 1 after the table, and the JUnit report names the failing case."""
    import xml.etree.ElementTree as ET

    from hrnetseg.evaluation import postprocess

    _, env, log = tools
    env, models = eval_with_ais_bench_stub(tmp_path, env, tiny_onnx_path, batch_sizes=(2,), STUB_KEEP_SINGLE="1")
    write_sidecars(models, (2,))
    out, report = tmp_path / "eval", tmp_path / "ci" / "report.xml"
    report.parent.mkdir()
    page = tmp_path / "ci" / "report.html"
    result = bash("eval_acc_perf.sh", "--datasets_path", tiny_data_root, "--model_dir", models, "--output_dir", out,
                  "--batch_sizes", "2", "--limit", "3", "--device", "0,1", "--min_miou", "99.9", "--min_fps", "2:1",
                  "--junit", report, "--report", page, "--report_worst", "2", env=env)
    assert result.returncode == 1, result.stderr
    assert [c[-2:] for c in calls(log, "ais_bench") if c != ["--help"]] == [["--device", "0,1"]]
    assert "note: 3 images split 2+1 across 2 devices run at batch size 2 as 4" in result.stderr
    [row] = table_rows(result.stdout)
    assert row[:3] == ["2", "ais_bench", "npu:0,npu:1"]
    single = postprocess.evaluate_folder(str(out / "results" / "bs2.single"), str(tiny_data_root / "cityscapes"),
                                         workers=1, log=lambda _: None, allow_missing=True)
    res = out / "results" / "bs2"
    assert sorted(p.name for p in res.iterdir()) == ["device0", "device0_summary.json", "device1",
                                                     "device1_summary.json"]
    saved = json.loads((out / "result_bs2.json").read_text())
    assert saved["images"] == 3 and saved["mIoU"] == single["mIoU"] and row[4] == "{:.2f}%".format(100 * saved["mIoU"])
    expected = 0.0
    for device, images in ((0, 2), (1, 1)):    # each device's figure, for its own images (ais_bench pads each)
        assert len(list((res / "device{}".format(device)).glob("*_1.bin"))) == images
        figure = json.loads((res / "device{}_summary.json".format(device)).read_text())["throughput"]
        expected += figure * images / 2
    assert row[3] == "{:.2f}".format(expected)
    last = result.stderr.splitlines()[-1]
    assert "error: batch size 2 below the floor: bs2 mIoU {:.2f}% < 99.90%".format(100 * saved["mIoU"]) in last
    suite = ET.parse(str(report)).getroot()
    assert suite.tag == "testsuite" and suite.get("name") == "eval_acc_perf" and suite.get("failures") == "1"
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert sorted(cases) == ["bs2.accuracy", "bs2.throughput"]
    assert cases["bs2.accuracy"].find("failure").get("message") == "mIoU {:.2f}% < 99.90%".format(
        100 * saved["mIoU"])
    assert cases["bs2.throughput"].find("failure") is None and cases["bs2.throughput"].find("skipped") is None
    assert sorted(p.name for p in report.parent.iterdir()) == ["report.html", "report.xml"]   # whole, nothing else
    # the HTML report is written before the gate judges: the worst images' pictures from the device folders
    html = page.read_text()
    assert "npu:0,npu:1" in html and html.count('src="data:image/png;base64,') == 8


def test_eval_refuses_bins_that_do_not_fit_the_om_before_ais_bench(tools, tmp_path, tiny_onnx_path, tiny_data_root):
    _, env, log = tools
    env, models = eval_with_ais_bench_stub(tmp_path, env, tiny_onnx_path)
    write_sidecars(models, (1,))
    report = tmp_path / "report.xml"
    report.write_text("<testsuite/>")                # an earlier run's report must not stand for this one
    result = bash("eval_acc_perf.sh", "--datasets_path", tiny_data_root, "--model_dir", models, "--batch_sizes", "1",
                  "--limit", "1", "--input_format", "uint8", "--output_dir", tmp_path / "eval", "--junit", report,
                  env=env)
    assert_user_error(result, "are uint8 NCHW 3x64x128 but {}/hrnet_bs1.om takes float32".format(models),
                      "--input_format float32")
    assert [c for c in calls(log, "ais_bench") if c != ["--help"]] == []     # stopped before the inference
    import xml.etree.ElementTree as ET
    suite = ET.parse(str(report)).getroot()            # the CI job still gets a report: the run stopped
    assert suite.get("errors") == "2" and [c.get("name") for c in suite] == ["bs1.accuracy", "bs1.throughput"]
    assert suite[0].find("error").get("message") == "eval_acc_perf.sh stopped (exit 2) before batch size 1's figures"


def test_eval_gate_flags_are_checked_before_any_work(tools, tmp_path, tiny_data_root):
    _, env, _ = tools
    shutil.copy(__file__, str(tmp_path / "hrnet.onnx"))    # never run: every case stops first
    common = ["--datasets_path", tiny_data_root, "--model_dir", tmp_path, "--output_dir", tmp_path / "eval"]
    for flags, fragment in ((["--min_fps", "8:5"], "floor for batch size 8 but the run has --batch_sizes \"1 4\""),
                            (["--junit", tmp_path], "it is a folder"),   # the others: test_atlas_ci_gate
                            (["--junit", tmp_path / "eval" / "result_bs1.json"],   # the report would replace it
                             "one of the files which eval_acc_perf.sh writes")):
        assert_user_error(bash("eval_acc_perf.sh", *common, *flags, env=env), fragment)
    assert not (tmp_path / "eval").exists()


def test_eval_report_flags_are_checked_before_any_work(tools, tmp_path, tiny_data_root):
    """--report may not replace an input (a label), sit in a folder the run replaces, be the --junit report, or come
    with --report_worst alone: one line each, before the preprocess (the other cases: test_atlas_acc_perf)."""
    _, env, _ = tools
    shutil.copy(__file__, str(tmp_path / "hrnet.onnx"))    # never run: every case stops first
    label = sorted(tiny_data_root.rglob("*_gtFine_labelIds.png"))[0]
    out = tmp_path / "eval"
    common = ["--datasets_path", tiny_data_root, "--model_dir", tmp_path, "--output_dir", out]
    for flags, fragment in ((["--report", label], "--report {} is a label of this run".format(label)),
                            (["--report", tmp_path / "hrnet.onnx"], "is a model of this run"),
                            (["--report", out / "results" / "bs1" / "r.html"], "is inside {}/results/bs1, which "
                                                                              "eval_acc_perf.sh writes".format(out)),
                            (["--report", tmp_path / "r.xml", "--junit", tmp_path / "r.xml"],
                             "--report {} is one of the files which eval_acc_perf.sh writes".format(
                                 tmp_path / "r.xml")),
                            (["--report_worst", "2"], "--report_worst needs --report FILE.html"),
                            (["--report", tmp_path / "r.html", "--report_worst", "x"],
                             "--report_worst/--report-worst: expected an integer from 0 to 100, got 'x'")):
        assert_user_error(bash("eval_acc_perf.sh", *common, *flags, env=env), fragment)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bin", "hrnet.onnx"]


def test_eval_refuses_a_label_of_another_size_than_its_image_before_ais_bench(tools, tmp_path, tiny_data_root):
    # a row short, the label would still fit its output (a quarter of the size, rounded up); the postprocess holds
    # it to the preprocessed images' size too (--prep_path), for every backend and --device list
    _, env, log = tools
    data = tmp_path / "data"
    shutil.copytree(str(tiny_data_root), str(data))
    label = cut_label_short(sorted(data.rglob("*_gtFine_labelIds.png"))[0])   # the first image: within --limit 1
    result = eval_with_ais_bench(AIS_BENCH, tmp_path, data, env)
    assert_user_error(result, "label ", label.name, "is {}x{} but the image its output was made from".format(
        TINY_HEIGHT - 1, TINY_WIDTH), "is {}x{}".format(TINY_HEIGHT, TINY_WIDTH))
    assert [c for c in calls(log, "ais_bench") if c != ["--help"]] == []     # stopped before the inference
