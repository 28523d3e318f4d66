"""The structural Resize rewrite (performance_optimize_resize.py) and the graph facts for atc (hrnetseg.graph.structure)."""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from hrnetseg.graph import structure as onnx_graph, rewrite_check
from helpers import assert_user_error, run_in_process

SCRIPT = "performance_optimize_resize.py"


def resize_attrs(model) -> dict:
    return {n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute}
            for n in model.graph.node if n.op_type == "Resize"}


def changed_nodes(before, after) -> list:
    """Names of nodes whose serialized form differs (the graphs must have the same nodes in the same order)."""
    assert [n.name for n in before.graph.node] == [n.name for n in after.graph.node]
    return [a.name for a, b in zip(before.graph.node, after.graph.node) if a.SerializeToString() != b.SerializeToString()]


def head_concat(graph):
    made_by = onnx_graph.producers(graph)
    concats = [n for n in graph.node if n.op_type == "Concat" and len(n.input) == 4
               and sum(made_by[t][0].op_type == "Resize" for t in n.input if t in made_by) == 3]
    assert len(concats) == 1
    return concats[0]


@pytest.fixture
def tiny_copy(tmp_path, tiny_onnx_path):
    path = tmp_path / "hrnet.onnx"
    shutil.copy(tiny_onnx_path, path)
    return path


def no_head_model(path) -> None:
    """A valid IR 6 / opset 11 model with one Resize that feeds an Add, no 4-way Concat."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])
    inits = [helper.make_tensor("roi", TensorProto.FLOAT, [0], []),
             helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2]),
             helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])]
    nodes = [helper.make_node("Resize", ["x", "roi", "scales"], ["up"], name="up", mode="linear"),
             helper.make_node("Add", ["up", "one"], ["y"], name="add")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    onnx.save(model, str(path))


def test_head_nodes_are_found_by_structure(tiny_onnx_path):
    graph = onnx.load(str(tiny_onnx_path)).graph
    head = onnx_graph.head_resize_nodes(graph)
    concat = head_concat(graph)
    assert [n.output[0] for n in head] == list(concat.input[1:])     # branches 2-4, in Concat order
    assert len(onnx_graph.resize_nodes(graph)) == 13                 # 1 + 3 + 6 in the fuse layers, 3 in the head


def test_default_rewrite_in_place_changes_exactly_the_head(run, tiny_copy, tiny_onnx_path):
    before = onnx.load(str(tiny_onnx_path))
    result = run([SCRIPT, tiny_copy, tiny_copy])
    assert result.returncode == 0, result.stderr
    after = onnx.load(str(tiny_copy))
    head = {n.name for n in onnx_graph.head_resize_nodes(before.graph)}
    assert set(changed_nodes(before, after)) == head and len(head) == 3
    for name, attrs in resize_attrs(after).items():
        assert attrs["mode"] == (b"nearest" if name in head else b"linear")
        assert attrs["coordinate_transformation_mode"] == b"align_corners"
    assert (after.ir_version, list(after.opset_import)) == (before.ir_version, list(before.opset_import))
    assert list(after.graph.initializer) == list(before.graph.initializer)
    assert "relative error" in result.stdout and "argmax agreement" in result.stdout
    onnx.checker.check_model(str(tiny_copy))

    again = run([SCRIPT, tiny_copy, tiny_copy])    # idempotent: already nearest, still found, still valid
    assert again.returncode == 0 and "0 changed" in again.stdout, again.stderr


def test_ir_version_and_opset_are_kept(run, tmp_path, tiny_copy):
    model = onnx.load(str(tiny_copy))
    model.ir_version = 7                            # whatever the file says, it says it afterwards too
    onnx.save(model, str(tiny_copy))
    out = tmp_path / "out.onnx"
    assert run([SCRIPT, tiny_copy, out, "--no_verify"]).returncode == 0
    rewritten = onnx.load(str(out))
    assert rewritten.ir_version == 7 and [o.version for o in rewritten.opset_import] == [11]


def test_select_all_and_by_name(run, tmp_path, tiny_copy):
    graph = onnx.load(str(tiny_copy)).graph
    fuse = [n.name for n in onnx_graph.resize_nodes(graph)][:2]     # the ModelZoo scripts' 4th node was one of these
    out = tmp_path / "named.onnx"
    result = run([SCRIPT, tiny_copy, out, "--select", ",".join(fuse)])
    assert result.returncode == 0, result.stderr
    modes = {k: v["mode"] for k, v in resize_attrs(onnx.load(str(out))).items()}
    assert sorted(k for k, v in modes.items() if v == b"nearest") == sorted(fuse)

    out_all = tmp_path / "all.onnx"
    assert run([SCRIPT, tiny_copy, out_all, "--select", "all", "--no_verify"]).returncode == 0
    assert {v["mode"] for v in resize_attrs(onnx.load(str(out_all))).values()} == {b"nearest"}


def test_nothing_matched_is_refused_and_nothing_written(run, tmp_path, tiny_copy, capsys):
    """The first refusal runs the real command line; the rest run the script's main() under run_cli here."""
    import performance_optimize_resize as script

    plain = tmp_path / "plain.onnx"
    no_head_model(plain)
    original = plain.read_bytes()
    result = run([SCRIPT, plain, plain])
    assert_user_error(result, "4-way Concat")
    assert plain.read_bytes() == original

    out = tmp_path / "never.onnx"
    assert_user_error(run_in_process(script.main, [tiny_copy, out, "--select", "Resize_1376"], capsys), "Resize_1376")
    assert not out.exists()
    assert_user_error(run_in_process(script.main, [tmp_path / "missing.onnx", out], capsys), "not found")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert_user_error(run_in_process(script.main, [tmp_path / "junk.onnx", out], capsys), "is not an ONNX model")
    assert not out.exists()
    unwritable = run_in_process(script.main, [tiny_copy, tmp_path / "absent" / "o.onnx"], capsys)
    assert_user_error(unwritable, "does not exist")
    assert "argmax" not in unwritable.stdout   # refused before the slow comparison, not after it


def test_list_shows_every_resize_with_shapes_and_consumer(run, tiny_onnx_path):
    result = run([SCRIPT, tiny_onnx_path, "--list"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 13
    head = [line for line in lines if line.endswith("[head]")]
    assert len(head) == 3 and all("(Concat)" in line and "mode=linear" in line for line in head)
    # Shapes come out concrete: the head's upsampled tensors end at branch-1 size (1/4 of 64x128).
    assert all("-> batchx" in line and "x16x32" in line.split("->")[1] for line in head)


def test_out_nodes_are_the_output_producers(run, tiny_onnx_path):
    graph = onnx.load(str(tiny_onnx_path)).graph
    made_by = {o: n.name for n in graph.node for o in n.output}
    result = run(["-m", "hrnetseg.graph.structure", "out_nodes", tiny_onnx_path])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{}:0;{}:0".format(made_by["output1"], made_by["output2"])
    assert made_by["output1"].startswith("/aux_head/") and made_by["output2"].startswith("/cls_head/")


def test_check_input_and_compare_outputs():
    same = [np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)]
    assert rewrite_check.compare_outputs(same, same) == [(0.0, 1.0)]
    swapped = [same[0][:, ::-1]]
    rel, agree = rewrite_check.compare_outputs(same, swapped)[0]
    assert rel > 0 and agree == 0.0
