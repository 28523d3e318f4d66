"""scripts/pth2om.sh end to end, with stand-in atc and npu-smi: one export, atc per batch size with the chip read
from npu-smi, .om sidecars, --out_nodes as asked, the first failure stops it, refusals before the export."""
from __future__ import annotations

import json

import onnx

from hrnetseg.graph import structure

from helpers import ATC, NPU_SMI, TINY_PRESET, assert_user_error, bash, calls, write_tool

NPU_SMI_TABLE = """\
+-------------------|-----------------|------------------------------------------------------+
| NPU     Name      | Health          | Power(W)     Temp(C)           Hugepages-Usage(page) |
| Chip    Device    | Bus-Id          | AICore(%)    Memory-Usage(MB)                        |
+===================+=================+======================================================+
| 0       310P3     | OK              | 15.8         42                0    / 0              |
| 0       0         | 0000:82:00.0    | 0            1074 / 21534                            |
+===================+=================+======================================================+
"""


def resize_mode(node) -> str:
    """A Resize node's mode attribute ("" when the node does not set it)."""
    return "".join(onnx.helper.get_attribute_value(a).decode() for a in node.attribute if a.name == "mode")


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
        ["--framework=5", "--model={}".format(onnx_path), "--output={}/hrnet_bs{}".format(out, bs),
         "--input_format=NCHW",
         "--input_shape=image:{},3,256,512".format(bs), "--log=error", "--soc_version=Ascend310P3"] for bs in (1, 4)]
    assert "out_nodes: none given to atc" in result.stderr
    for bs in (1, 4):
        assert (out / "hrnet_bs{}.om".format(bs)).exists()
        assert json.loads((out / "hrnet_bs{}.om.json".format(bs)).read_text()) == {
            "batch": bs, "height": 256, "width": 512, "input_format": "NCHW", "input_dtype": "float32"}
    assert sorted(p.name for p in out.iterdir()) == ["hrnet.onnx", "hrnet_bs1.om", "hrnet_bs1.om.json",
                                                     "hrnet_bs4.om", "hrnet_bs4.om.json"]   # no temporaries left
    head = structure.head_resize_nodes(model.graph)         # rewritten in place, as the ModelZoo scripts do
    modes = {n.name: resize_mode(n) for n in structure.resize_nodes(model.graph)}
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
    assert {resize_mode(n) for n in structure.resize_nodes(model.graph)} == {"linear"}
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
