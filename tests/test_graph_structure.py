"""Reading ONNX graphs by structure (hrnetseg.graph.structure, performance_optimize_resize.py --list): the head's
Resize nodes, every Resize with its shapes and consumer, the output producers for atc. Files that are not ONNX
models, malformed nodes and names atc cannot tell apart get one line, never a traceback."""
from __future__ import annotations

import os

import onnx
import pytest
from onnx import TensorProto, helper

import performance_optimize_resize as resize_script
from hrnetseg.graph import structure
from hrnetseg.util.errors import UserError

from helpers import assert_user_error, run_script
from helpers import run_in_process as cli

SCRIPT = "performance_optimize_resize.py"


def head_concat(graph):
    made_by = structure.producers(graph)
    concats = [n for n in graph.node if n.op_type == "Concat" and len(n.input) == 4
               and sum(made_by[t][0].op_type == "Resize" for t in n.input if t in made_by) == 3]
    assert len(concats) == 1
    return concats[0]


def test_head_nodes_are_found_by_structure(tiny_onnx_path):
    graph = onnx.load(str(tiny_onnx_path)).graph
    head = structure.head_resize_nodes(graph)
    concat = head_concat(graph)
    assert [n.output[0] for n in head] == list(concat.input[1:])     # branches 2-4, in Concat order
    assert len(structure.resize_nodes(graph)) == 13                 # 1 + 3 + 6 in the fuse layers, 3 in the head


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


# --- files that are not ONNX models, malformed nodes -----------------------------------------------------------

def damaged_onnx(tmp_path, tiny_onnx_path, kind):
    path = tmp_path / "in.onnx"
    data = tiny_onnx_path.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "ir_version_only":       # protobuf parses it: a ModelProto with nothing but ir_version 7
        path.write_bytes(b"\x08\x07")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "no_opset":              # cut where the opset import begins
        model = onnx.load_from_string(data)
        del model.opset_import[:]
        path.write_bytes(model.SerializeToString())
    elif kind == "garbage":
        path.write_bytes(b"\x00\x01 not a model " * 10)
    elif kind == "fifo":
        os.mkfifo(str(path))
    elif kind == "symlink_loop":
        path.symlink_to(path.name)
    return path


@pytest.mark.parametrize("kind,fragment", [
    ("empty", "is not an ONNX model (an empty file)"),
    ("ir_version_only", "is not an ONNX model (no opset import, no graph nodes, no graph inputs, no graph outputs)"),
    ("truncated", "is not an ONNX model (truncated or another format"), ("no_opset", "no opset import"),
    ("garbage", "is not an ONNX model"),
    ("fifo", "is a FIFO, not a regular file"), ("symlink_loop", "is a symbolic link loop"),
])
def test_files_that_are_not_onnx_models_get_one_line_from_every_tool(tmp_path, capsys, tiny_onnx_path, kind, fragment):
    path = damaged_onnx(tmp_path, tiny_onnx_path, kind)
    out = tmp_path / "out.onnx"
    for main, argv in ((resize_script.main, [path, "--list"]), (resize_script.main, [path, out]),
                       (structure.main, ["out_nodes", path])):
        result = cli(main, argv, capsys)
        assert_user_error(result, fragment)
        assert result.stdout == ""
    assert not out.exists()


def test_list_on_an_empty_file_exits_2_from_the_command_line(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert_user_error(run_script(["performance_optimize_resize.py", empty, "--list"]),
                      "{} is not an ONNX model (an empty file)".format(empty))


def test_list_reports_malformed_resize_nodes_instead_of_failing(tmp_path, capsys):
    """--list reads a graph as it is (no onnx.checker): a Resize without inputs or outputs, a mode that is not
    UTF-8, are listed, not a traceback; the rewrite refuses the same file as failing onnx.checker."""
    nodes = [helper.make_node("Resize", [], [], name="bare"),
             helper.make_node("Resize", ["x"], ["r"], name="odd_mode", mode=b"\xff"),
             helper.make_node("Identity", ["x"], ["y"], name="id")]
    value = helper.make_tensor_value_info
    model = helper.make_model(helper.make_graph(nodes, "g", [value("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                                                [value("y", TensorProto.FLOAT, [1, 2, 4, 4])]),
                              opset_imports=[helper.make_opsetid("", 11)])
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    result = cli(resize_script.main, [path, "--list"], capsys)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["bare", "odd_mode"]
    assert all(line.endswith("feeds nothing") for line in lines)
    assert_user_error(cli(resize_script.main, [path, tmp_path / "out.onnx", "--select", "all"], capsys),
                      "fails onnx.checker", "bare")


# --- names atc cannot tell apart ------------------------------------------------------------------------------

def graph_with_names(first: str, second: str, resize_names=("up", "up2")):
    """x -> Resize -> Resize -> Relu (output y1), Sigmoid (output y2); the output producers named first, second."""
    inits = [helper.make_tensor("roi", TensorProto.FLOAT, [0], []),
             helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])]
    nodes = [helper.make_node("Resize", ["x", "roi", "scales"], ["a"], name=resize_names[0], mode="linear"),
             helper.make_node("Resize", ["a", "roi", "scales"], ["b"], name=resize_names[1], mode="linear"),
             helper.make_node("Relu", ["b"], ["y1"], name=first),
             helper.make_node("Sigmoid", ["b"], ["y2"], name=second)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 8, 8]) for n in ("y1", "y2")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], outputs, inits)).graph


def test_out_nodes_refuses_names_atc_cannot_tell_apart():
    """atc --out_nodes names nodes: a shared name, or one holding its ';' separator, picks the wrong node."""
    assert structure.output_producers(graph_with_names("aux", "main")) == ["aux:0", "main:0"]
    with pytest.raises(UserError, match="graph output y2 is named up, a name 2 nodes share"):
        structure.output_producers(graph_with_names("aux", "up", resize_names=("up", "up2")))
    with pytest.raises(UserError, match="graph output y1 is named 'aux;main:0': atc --out_nodes separates"):
        structure.output_producers(graph_with_names("aux;main:0", "main"))


def test_graph_commands_take_the_hyphenated_spelling_too():
    assert structure.build_parser().parse_args(["out-nodes", "m.onnx"]).command == "out_nodes"


def test_select_refuses_a_resize_name_two_nodes_share():
    """Unrefused, only the last of the two would change, silently."""
    graph = graph_with_names("aux", "main", resize_names=("up", "up"))
    with pytest.raises(UserError, match="2 Resize nodes are named up: --select cannot tell them apart"):
        structure.select_resize_nodes(graph, "up")
    assert len(structure.select_resize_nodes(graph, "all")) == 2
