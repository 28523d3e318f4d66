"""The shell scripts of the deploy path, with stand-in atc / npu-smi / ais_bench / trtexec written into tmp_path.

Each stand-in logs its arguments (one JSON list per call) so the tests can assert the exact command lines.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from helpers import REPO, TINY_PRESET, assert_user_error
from hrnetseg.graph import structure as onnx_graph

ASCEND_TOOLS = ("atc", "npu-smi", "trtexec", "ais_bench")
NPU_SMI_TABLE = """\
+-------------------|-----------------|------------------------------------------------------+
| NPU     Name      | Health          | Power(W)     Temp(C)           Hugepages-Usage(page) |
| Chip    Device    | Bus-Id          | AICore(%)    Memory-Usage(MB)                        |
+===================+=================+======================================================+
| 0       310P3     | OK              | 15.8         42                0    / 0              |
| 0       0         | 0000:82:00.0    | 0            1074 / 21534                            |
+===================+=================+======================================================+
"""
ATC = r'''
import json, os, sys
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as fh:
    fh.write(json.dumps(["atc"] + args) + "\n")
if os.environ.get("STUB_FAIL"):
    sys.exit(3)
for arg in args:
    if arg.startswith("--output="):
        open(arg[len("--output="):] + ".om", "wb").close()
'''
NPU_SMI = r'''
import sys
sys.stdout.write(open(sys.argv[0] + ".txt").read())
'''
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
                    (1, 19) + tuple(-(-v // 4) for v in json.load(open(flags["--input"] + "/manifest.json"))["shape"][1:]))
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
TRTEXEC = r'''
import json, os, sys
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as fh:
    fh.write(json.dumps(["trtexec"] + args) + "\n")
batch = int(args[2].split(":")[1].split("x")[0])
print("[I] Host Latency: min = 1 ms, max = 999 ms, mean = 999.0 ms, median = 5 ms")
print("[01/01/2024-00:00:00] [I] GPU Compute Time: min = 100 ms, max = 300 ms, mean = %.1f ms, median = 7 ms, "
      "percentile(99%%) = 290 ms" % (160.0 * batch))
'''


def write_tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!{}\n{}".format(sys.executable, body))
    path.chmod(0o755)


def clean_path(extra: Path) -> str:
    """PATH with the stand-ins first and no real Ascend or TensorRT tool behind them."""
    keep = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not any(os.path.exists(os.path.join(d, tool)) for tool in ASCEND_TOOLS)]
    return os.pathsep.join([str(extra)] + keep)


@pytest.fixture
def tools(tmp_path):
    """A bin folder (empty: add stand-ins with write_tool), the environment that puts it on PATH, the call log."""
    folder = tmp_path / "bin"
    folder.mkdir()
    log = tmp_path / "calls.jsonl"
    env = dict(os.environ, PATH=clean_path(folder), PYTHON=sys.executable, STUB_LOG=str(log), HRNETSEG_PROGRESS="0")
    env.pop("AIS_BENCH", None)
    return folder, env, log


def calls(log: Path, tool: str) -> list:
    if not log.exists():
        return []
    return [c[1:] for c in map(json.loads, log.read_text().splitlines()) if c[0] == tool]


def bash(script: str, *args, env: dict, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / script)] + [str(a) for a in args], env=env, cwd=str(cwd),
                          capture_output=True, text=True, timeout=600)


def resize_mode(node) -> str:
    """A Resize node's mode attribute ("" when the node does not set it)."""
    return "".join(onnx.helper.get_attribute_value(a).decode() for a in node.attribute if a.name == "mode")


def eval_with_ais_bench(program: str, tmp_path: Path, data: Path, env: dict) -> subprocess.CompletedProcess:
    """eval_acc_perf.sh at batch size 1 on one image, with `program` (Python source) standing in for ais_bench
    and an hrnet_bs1.om in tmp_path; outputs under tmp_path/eval."""
    stub = tmp_path / "ais_bench_stand_in.py"
    stub.write_text(program)
    (tmp_path / "hrnet_bs1.om").write_bytes(b"om")
    return bash("eval_acc_perf.sh", "--datasets_path", data, "--model_dir", tmp_path, "--batch_sizes", "1",
                "--limit", "1", "--output_dir", tmp_path / "eval",
                env=dict(env, AIS_BENCH="{} {}".format(sys.executable, stub)))


def table_rows(stdout: str) -> list:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in stdout.splitlines()
            if re.match(r"^\| \d+ \|", line)]


# ----------------------------------------------------------------------------------------------- pth2om.sh

def test_pth2om_calls_atc_per_batch_size_and_writes_sidecars(tools, tmp_path, tiny_pth_path):
    """By default no --out_nodes: the graph's outputs (output1, output2) define the .om's, as mmdeploy converts."""
    folder, env, log = tools
    write_tool(folder, "atc", ATC)
    out = tmp_path / "om"
    result = bash("pth2om.sh", "--pth", tiny_pth_path, "--soc_version", "Ascend310P3", "--height", 256, "--width", 512,
                  "--preset", TINY_PRESET, "--output_dir", out, env=env)
    assert result.returncode == 0, result.stderr
    onnx_path = out / "hrnet.onnx"
    model = onnx.load(str(onnx_path))
    assert [o.name for o in model.graph.output] == ["output1", "output2"]
    assert calls(log, "atc") == [
        ["--framework=5", "--model={}".format(onnx_path), "--output={}/hrnet_bs{}".format(out, bs), "--input_format=NCHW",
         "--input_shape=image:{},3,256,512".format(bs), "--log=error", "--soc_version=Ascend310P3"] for bs in (1, 4)]
    assert "out_nodes: none given to atc" in result.stderr
    for bs in (1, 4):
        assert (out / "hrnet_bs{}.om".format(bs)).exists()
        assert json.loads((out / "hrnet_bs{}.om.json".format(bs)).read_text()) == {
            "batch": bs, "height": 256, "width": 512, "input_format": "NCHW", "input_dtype": "float32"}
    assert sorted(p.name for p in out.iterdir()) == ["hrnet.onnx", "hrnet_bs1.om", "hrnet_bs1.om.json",
                                                     "hrnet_bs4.om", "hrnet_bs4.om.json"]   # no temporaries left
    head = onnx_graph.head_resize_nodes(model.graph)         # rewritten in place, as the ModelZoo scripts do
    modes = {n.name: resize_mode(n) for n in onnx_graph.resize_nodes(model.graph)}
    assert sorted(k for k, v in modes.items() if v == "nearest") == sorted(n.name for n in head)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param          # one dynamic-batch export


def test_pth2om_reads_the_chip_and_stops_at_the_first_failure(tools, tmp_path, tiny_pth_path):
    folder, env, log = tools
    write_tool(folder, "atc", ATC)
    write_tool(folder, "npu-smi", NPU_SMI)
    (folder / "npu-smi.txt").write_text(NPU_SMI_TABLE)
    result = bash("pth2om.sh", "--pth", tiny_pth_path, "--height", 64, "--width", 128, "--preset", TINY_PRESET,
                  "--output_dir", tmp_path / "om", "--no_rewrite", "--precision_mode", "allow_mix_precision",
                  "--batch_sizes", "2 8", "--out_nodes", "producers", env=dict(env, STUB_FAIL="1"))
    assert result.returncode == 3, result.stderr
    [only] = calls(log, "atc")
    model = onnx.load(str(tmp_path / "om" / "hrnet.onnx"))                       # --no_rewrite: still linear
    made_by = {o: n.name for n in model.graph.node for o in n.output}              # producers: the older behaviour
    assert "--out_nodes={}:0;{}:0".format(made_by["output1"], made_by["output2"]) in only
    assert "--soc_version=Ascend310P3" in only and only[-1] == "--precision_mode=allow_mix_precision"
    assert "--input_shape=image:2,3,64,128" in only
    assert "error: command failed (exit 3): atc --framework=5" in result.stderr.splitlines()[-1]
    assert {resize_mode(n) for n in onnx_graph.resize_nodes(model.graph)} == {"linear"}
    assert not list((tmp_path / "om").glob("*.om*"))                               # no sidecar without its .om


PYTHON_WITH_A_READY_EXPORT = r'''
import os, shutil, sys
# Python for pth2om.sh, with the export already done: HRNet_pth2onnx.py copies STUB_ONNX to its --save_path
if os.path.basename(sys.argv[1]) == "HRNet_pth2onnx.py":
    shutil.copy(os.environ["STUB_ONNX"], sys.argv[sys.argv.index("--save_path") + 1])
    sys.exit(0)
os.execv(sys.executable, [sys.executable] + sys.argv[1:])
'''


def test_pth2om_passes_an_out_nodes_list_as_given(tools, tmp_path, tiny_onnx_path):
    folder, env, log = tools
    write_tool(folder, "atc", ATC)
    write_tool(folder, "python_ready_export", PYTHON_WITH_A_READY_EXPORT)
    out = tmp_path / "om"
    result = bash("pth2om.sh", "--pth", tiny_onnx_path, "--soc_version", "Ascend310P3", "--height", 64, "--width", 128,
                  "--batch_sizes", "2", "--output_dir", out, "--no_rewrite", "--input_format", "uint8",
                  "--out_nodes", "/head/Conv:0;/aux/Conv:0",
                  env=dict(env, PYTHON=str(folder / "python_ready_export"), STUB_ONNX=str(tiny_onnx_path)))
    assert result.returncode == 0, result.stderr
    [only] = calls(log, "atc")
    assert only[-1] == "--out_nodes=/head/Conv:0;/aux/Conv:0" and "--input_shape=image:2,3,64,128" in only
    assert json.loads((out / "hrnet_bs2.om.json").read_text()) == {
        "batch": 2, "height": 64, "width": 128, "input_format": "NCHW", "input_dtype": "uint8"}


def test_pth2om_refuses_before_the_export(tools, tmp_path, tiny_pth_path):
    folder, env, _ = tools
    out = tmp_path / "om"
    common = ["--pth", tiny_pth_path, "--output_dir", out]
    assert_user_error(bash("pth2om.sh", *common, env=env), "atc not found")
    write_tool(folder, "atc", ATC)
    assert_user_error(bash("pth2om.sh", *common, env=env), "npu-smi not found")
    assert_user_error(bash("pth2om.sh", *common, "--batch_sizes", "1 x", env=env), "--batch_sizes")
    assert_user_error(bash("pth2om.sh", "--output_dir", out, env=env), "--pth")
    assert_user_error(bash("pth2om.sh", *common, "--bogus", env=env), "--bogus")
    assert_user_error(bash("pth2om.sh", "--pth", tmp_path / "none.pth", env=env), "not found")
    assert not out.exists()


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
    result = bash("eval_acc_perf.sh", "--datasets_path", tiny_data_root, "--model_dir", models, "--output_dir", out,
                  env=env)
    assert result.returncode == 0, result.stderr
    runs = [c for c in calls(log, "ais_bench") if c != ["--help"]]
    assert runs == [["--model", "{}/hrnet_bs{}.om".format(models, bs), "--input", "{}/prep_dataset".format(out),
                     "--output", "{}/results".format(out), "--output_dirname", "bs{}".format(bs), "--batchsize", str(bs)]
                    for bs in (1, 4)]
    rows = table_rows(result.stdout)
    assert [r[:3] for r in rows] == [["1", "ais_bench", "npu:0"], ["4", "ais_bench", "npu:0"]]
    for bs, row in zip((1, 4), rows):
        saved = json.loads((out / "result_bs{}.json".format(bs)).read_text())
        assert row[4] == "{:.2f}%".format(100 * saved["mIoU"]) and saved["images"] == 5
        assert float(row[3]) > 0
    assert rows[0][4] == rows[1][4]          # bs1 and bs4 outputs agree, so the mIoU does too
    assert "5 images at batch size 4 leave a last batch of 1, which ais_bench pads and counts as 4" in result.stderr
    assert "warning: no hrnet_bs4.om.json beside {}/hrnet_bs4.om".format(models) in result.stderr   # not checked


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
    assert [r[:3] for r in table_rows(result.stdout)] == [["2", "onnxruntime", "cpu"]]
    assert json.loads((out / "result_bs2.json").read_text())["images"] == 3
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


# ---------------------------------------------------------------------------------------------- perf_gpu.sh

def test_perf_gpu_reads_the_mean_gpu_compute_time_by_name(tools, tmp_path, tiny_onnx_path):
    folder, env, log = tools
    write_tool(folder, "trtexec", TRTEXEC)
    result = bash("perf_gpu.sh", "--onnx", tiny_onnx_path, "--output_dir", tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert calls(log, "trtexec") == [["--onnx={}".format(tiny_onnx_path), "--fp16",
                                      "--shapes=image:{}x3x1024x2048".format(bs)] for bs in (1, 4)]
    rows = table_rows(result.stdout)
    assert rows == [["1", "160.00", "6.25"], ["4", "640.00", "6.25"]]     # fps = N * 1000 / mean


def test_perf_gpu_names_a_failed_trtexec_run_and_its_time(tools, tmp_path, tiny_onnx_path):
    folder, env, _ = tools
    write_tool(folder, "trtexec", "import sys\nprint('[E] engine build failed')\nsys.exit(4)\n")
    result = bash("perf_gpu.sh", "--onnx", tiny_onnx_path, "--output_dir", tmp_path, env=env)
    assert result.returncode == 4 and "engine build failed" in result.stderr
    assert re.match(r"error: command failed \(exit 4\): trtexec --onnx=\S+ --fp16 --shapes=image:1x3x1024x2048 "
                    r"\(after \d+ s\)$", result.stderr.splitlines()[-1]), result.stderr


def test_perf_gpu_without_trtexec_says_so(tools, tiny_onnx_path):
    _, env, _ = tools
    result = bash("perf_gpu.sh", "--onnx", tiny_onnx_path, env=env)
    assert result.returncode != 0 and "trtexec not found" in result.stderr


# ------------------------------------------------------------------------------------------------- demo.sh

def test_demo_runs_the_whole_pipeline_small(tools, tmp_path):
    _, env, _ = tools
    out = tmp_path / "demo"
    result = bash("demo.sh", "--preset", TINY_PRESET, "--height", 64, "--width", 128, "--output_dir", out,
                  "--device", "cpu", env=dict(env, HRNETSEG_VENV="none"))
    assert result.returncode == 0, result.stderr
    assert [r[:3] for r in table_rows(result.stdout)] == [["1", "onnxruntime", "cpu"], ["4", "onnxruntime", "cpu"]]
    assert "meaningless" in result.stdout and "random weights" in result.stderr
    assert "argmax agreement" in result.stdout
    assert (out / "hrnet.onnx").exists() and (out / "result_bs1.json").exists() and (out / "result_bs4.json").exists()


def test_demo_refuses_an_output_dir_that_is_a_file(tools, tmp_path):
    _, env, _ = tools
    (tmp_path / "a_file").write_text("")
    result = bash("demo.sh", "--output_dir", tmp_path / "a_file", env=dict(env, HRNETSEG_VENV="none"))
    assert_user_error(result, "--output_dir", "not a folder")


def test_eval_without_a_usable_throughput_says_so(tools, tmp_path, tiny_data_root):
    """One clear line naming the log and the command, never a bare failed-command trace or 0.00 in the table
    (python3 -m hrnetseg.atlas.acc_perf throughput; its cases are in test_hostile_runner.py)."""
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


# ------------------------------------------------------------------- hostile runs: locks, batch sizes, hung tools

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


HANG = "import time\ntime.sleep(120)\n"


def test_hung_probes_stop_the_scripts_with_one_line(tools, tmp_path, tiny_pth_path, tiny_data_root):
    folder, env, _ = tools
    write_tool(folder, "atc", ATC)
    write_tool(folder, "npu-smi", HANG)
    hung = tmp_path / "hung_ais_bench.py"
    hung.write_text(HANG)
    (tmp_path / "hrnet_bs1.om").write_bytes(b"om")
    env = dict(env, HRNETSEG_PROBE_TIMEOUT="1", AIS_BENCH="{} {}".format(sys.executable, hung))
    commands = {"pth2om.sh": ["--pth", tiny_pth_path, "--output_dir", tmp_path / "om"],
                "eval_acc_perf.sh": ["--datasets_path", tiny_data_root, "--model_dir", tmp_path, "--batch_sizes", "1",
                                     "--output_dir", tmp_path / "eval"]}
    began = time.monotonic()
    running = {name: subprocess.Popen(["bash", str(REPO / "scripts" / name)] + [str(a) for a in args], env=env,
                                      cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, args in commands.items()}
    results = {name: subprocess.CompletedProcess(p.args, 0, *p.communicate(timeout=60)) for name, p in running.items()}
    for name, process in running.items():
        results[name].returncode = process.returncode
    assert time.monotonic() - began < 30
    assert_user_error(results["pth2om.sh"], "'npu-smi info' did not answer within 1 s", "HRNETSEG_PROBE_TIMEOUT")
    assert_user_error(results["eval_acc_perf.sh"], "--help' did not answer within 1 s")
    assert not (tmp_path / "om").exists() and not (tmp_path / "eval").exists()


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
    result = bash("eval_acc_perf.sh", "--datasets_path", tiny_data_root, "--model_dir", models, "--output_dir", out,
                  "--batch_sizes", "2", "--limit", "3", "--device", "0,1", "--min_miou", "99.9", "--min_fps", "2:1",
                  "--junit", report, env=env)
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
    assert sorted(p.name for p in report.parent.iterdir()) == ["report.xml"]     # written whole, nothing else


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
                            (["--junit", tmp_path], "it is a folder"),   # the others: test_hostile_atlas_checks
                            (["--junit", tmp_path / "eval" / "result_bs1.json"],   # the report would replace it
                             "one of the files which eval_acc_perf.sh writes")):
        assert_user_error(bash("eval_acc_perf.sh", *common, *flags, env=env), fragment)
    assert not (tmp_path / "eval").exists()
