"""The structural Resize rewrite (performance_optimize_resize.py): exactly the head's Resize nodes by default, others
by name, the rest of the model as it was; a model it cannot check or rewrite is one line, and no file."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

import performance_optimize_resize as resize_script
from hrnetseg.graph import rewrite_check, structure

from helpers import assert_failed_check, assert_user_error, no_runtime_warnings, run_in_process
from helpers import run_in_process as cli

SCRIPT = "performance_optimize_resize.py"


def resize_attrs(model) -> dict:
    return {n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute}
            for n in model.graph.node if n.op_type == "Resize"}


def changed_nodes(before, after) -> list:
    """Names of nodes whose serialized form differs (the graphs must have the same nodes in the same order)."""
    assert [n.name for n in before.graph.node] == [n.name for n in after.graph.node]
    return [a.name for a, b in zip(before.graph.node,
                                   after.graph.node) if a.SerializeToString() != b.SerializeToString()]


def no_head_model(path) -> None:
    """A valid IR 6 / opset 11 model with one Resize that feeds an Add, no 4-way Concat."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])
    inits = [helper.make_tensor("roi", TensorProto.FLOAT, [0], []),
             helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2]),
             helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])]
    nodes = [helper.make_node("Resize", ["x", "roi", "scales"], ["up"], name="up", mode="linear"),
             helper.make_node("Add", ["up", "one"], ["y"], name="add")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("",
                                                                                                                 11)])
    model.ir_version = 6
    onnx.save(model, str(path))


def test_default_rewrite_in_place_changes_exactly_the_head(run, tiny_copy, tiny_onnx_path):
    before = onnx.load(str(tiny_onnx_path))
    result = run([SCRIPT, tiny_copy, tiny_copy])
    assert result.returncode == 0, result.stderr
    after = onnx.load(str(tiny_copy))
    head = {n.name for n in structure.head_resize_nodes(before.graph)}
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
    fuse = [n.name for n in structure.resize_nodes(graph)][:2]     # the ModelZoo scripts' 4th node was one of these
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


def test_check_input_and_compare_outputs():
    same = [np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)]
    assert rewrite_check.compare_outputs(same, same) == [(0.0, 1.0)]
    swapped = [same[0][:, ::-1]]
    rel, agree = rewrite_check.compare_outputs(same, swapped)[0]
    assert rel > 0 and agree == 0.0


# --- models the rewrite cannot check or rewrite ---------------------------------------------------------------

def small_model(path, second_input=False, tail="Add", external=False) -> None:
    """A valid IR 6 / opset 11 model: y = tail(Resize(x) upsampled 2x), where tail adds a constant row (kept in
    an external data file with external=True) or the second input z, or takes Log (NaN on a random input)."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])]
    if second_input:
        inputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 8, 8]))
    inits = [helper.make_tensor("roi", TensorProto.FLOAT, [0], []),
             helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])]
    nodes = [helper.make_node("Resize", ["x", "roi", "scales"], ["up"], name="up", mode="linear")]
    if tail == "Log":
        nodes.append(helper.make_node("Log", ["up"], ["y"], name="log"))
    else:
        if not second_input:   # raw bytes: the only tensor save_as_external_data moves out
            inits.append(helper.make_tensor("ones", TensorProto.FLOAT, [8], np.ones(8, np.float32).tobytes(), raw=True))
        nodes.append(helper.make_node("Add", ["up", "z" if second_input else "ones"], ["y"], name="add"))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, [y], inits),
                              opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    if external:
        onnx.save(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    else:
        onnx.save(model, str(path))


def test_a_model_with_two_inputs_cannot_be_checked_but_can_be_rewritten_unchecked(tmp_path, capsys):
    model = tmp_path / "two.onnx"
    small_model(model, second_input=True)
    out = tmp_path / "out.onnx"
    result = cli(resize_script.main, [model, out, "--select", "all"], capsys)
    assert_user_error(result, "the model has 2 inputs (x, z)", "--no_verify")
    assert not out.exists()
    result = cli(resize_script.main, [model, out, "--select", "all", "--no_verify"], capsys)
    assert result.returncode == 0, result.stderr
    resizes = [n for n in onnx.load(str(out)).graph.node if n.op_type == "Resize"]
    assert [structure.attribute_value(n, "mode") for n in resizes] == ["nearest"]


def test_a_model_whose_outputs_are_nan_fails_the_rewrite_check_without_warnings(tmp_path, capsys):
    model = tmp_path / "log.onnx"
    small_model(model, tail="Log")            # log of a random normal input: NaN
    out = tmp_path / "out.onnx"
    with no_runtime_warnings():
        result = cli(resize_script.main, [model, out, "--select", "all"], capsys)
    assert_failed_check(result, "the original model's y holds", "NaN", "--no_verify")
    assert not out.exists()


def test_external_data_is_never_read_and_the_rewrite_refuses_it(tmp_path, capsys):
    model = tmp_path / "ext.onnx"
    small_model(model, external=True)
    (tmp_path / "weights.bin").write_bytes(b"")   # a reader of the external data would fail here
    result = cli(resize_script.main, [model, "--list"], capsys)
    assert result.returncode == 0 and "up " in result.stdout, result.stderr
    out = tmp_path / "out.onnx"
    assert_user_error(cli(resize_script.main, [model, out, "--select", "all"], capsys), "external data files")
    assert not out.exists()
