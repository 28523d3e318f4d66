"""Hostile and damaged input to the export, the checkpoint reader and the ONNX graph tools.

No wrong number with exit code 0: NaN or inf anywhere fails the export's check (exit 1, no file), tensors
that would load as wrong numbers are refused (exit 2, the key named), damaged files and non-regular paths
get one line, two runs never write the same file, and a killed run's temporary file does not outlive it.
The scripts run in this process under run_cli (torch is imported once); one test runs a real subprocess.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import HRNet_pth2onnx as pth2onnx
import performance_optimize_resize as resize_script
from helpers import REPO, TINY_HEIGHT, TINY_PRESET, TINY_WIDTH, assert_user_error, run_script
from helpers import run_in_process as cli
from hrnetseg.graph import structure as onnx_graph
from hrnetseg.model.checkpoint import load_checkpoint, read_state_dict
from hrnetseg.util.errors import UserError
from hrnetseg.model.export import MAX_RELATIVE_ERROR, check_errors, output_errors
from hrnetseg.model.network import build_model
from hrnetseg.util.numerics import relative_error
from hrnetseg.model.random_weights import official_state_dict

EXPORT_ARGS = ["--preset", TINY_PRESET, "--height", str(TINY_HEIGHT), "--width", str(TINY_WIDTH)]


# --- helpers -------------------------------------------------------------------------------------------------

def assert_failed_check(result, *fragments) -> None:
    """Exit code 1 (a failed check), its last stderr line naming it, no traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and lines and "error" in lines[-1], result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


@contextlib.contextmanager
def no_runtime_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def official_state():
    """tiny_ocr's official-format state dict. Changes replace its tensors in a copy, never edit them."""
    return official_state_dict(TINY_PRESET, seed=0)


@pytest.fixture(scope="module")
def model():
    """A tiny_ocr model for checkpoints that are refused (a refused checkpoint leaves it untouched)."""
    return build_model(TINY_PRESET)


def save_state(path, state, change=None) -> str:
    state = dict(state)
    if change:
        change(state)
    torch.save(state, str(path))
    return str(path)


HOLDER = ("import sys\nfrom hrnetseg.util.locks import output_lock\nwith output_lock(sys.argv[1]):\n"
          "    print('held', flush=True)\n    sys.stdin.read()\n")


@contextlib.contextmanager
def held_by_another_run(output):
    """A separate process (not our descendant) holding the output's lock; yields its PID."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(output)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def dead_pid() -> int:
    finished = subprocess.Popen(["true"])
    finished.wait()
    return finished.pid


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


# --- item: NaN or inf never passes the export's check ---------------------------------------------------------

def finite_pair(shape=(1, 19, 4, 8)):
    rng = np.random.default_rng(0)
    want = rng.standard_normal(shape).astype(np.float32)
    return want + np.float32(1e-7), want


@pytest.mark.parametrize("side,bad", [("ONNX Runtime's", np.nan), ("ONNX Runtime's", np.inf), ("PyTorch's", np.nan),
                                      ("PyTorch's", -np.inf)])
def test_nan_or_inf_in_either_output_fails_the_check(side, bad):
    got, expected = finite_pair()
    outputs = {"ONNX Runtime's": [got, got.copy()], "PyTorch's": [expected, expected.copy()]}
    outputs[side][1][0, 3, 2, 1] = bad
    with no_runtime_warnings(), pytest.raises(UserError) as info:
        output_errors(outputs["ONNX Runtime's"], outputs["PyTorch's"])
    assert info.value.exit_code == 1
    assert "{} output2 holds 1 {} of 608 values".format(side, "NaN" if math.isnan(bad) else "inf") in str(info.value)


def test_finite_outputs_give_their_errors():
    got, expected = finite_pair()
    errors = output_errors([got, got], [expected, expected])
    assert set(errors) == {"output1", "output2"}
    assert all(0 < rel <= MAX_RELATIVE_ERROR and 0 < max_abs < 1e-6 for max_abs, rel in errors.values())


def test_a_nan_relative_error_never_passes():
    """max() over (3.5e-7, nan) is 3.5e-7: the check looks at every output and NaN fails it."""
    with no_runtime_warnings():
        assert math.isnan(relative_error(np.array([np.nan, 1.0]), np.array([1.0, 1.0])))
        assert math.isnan(relative_error(np.array([1.0, 1.0]), np.array([np.inf, 1.0])))
    with pytest.raises(UserError) as info:
        check_errors({"output1": (3.5e-7, 3.5e-7), "output2": (float("nan"), float("nan"))})
    assert info.value.exit_code == 1 and "output2: relative error nan" in str(info.value)


def test_weights_that_overflow_in_the_forward_pass_fail_the_export_and_write_nothing(tmp_path, capsys,
                                                                                    official_state):
    """Finite weights (one conv scaled by 1e30) whose forward pass overflows float32: NaN on both sides."""
    def scale(state):
        state["model.conv1.weight"] = state["model.conv1.weight"] * 1e30
    pth = save_state(tmp_path / "huge.pth", official_state, scale)
    out = tmp_path / "hrnet.onnx"
    with no_runtime_warnings():
        result = cli(pth2onnx.main, ["--pth", pth, "--save_path", out] + EXPORT_ARGS, capsys)
    assert_failed_check(result, "holds", "NaN", "random check input", "not writing {}".format(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.pth"]


# --- item: checkpoint tensors that would load as wrong numbers are bad input ----------------------------------

def first_key(state, suffix):
    return next(k for k in state if k.endswith(suffix))


def poison(kind):
    def change(state):
        if kind == "running_var":
            key = first_key(state, "running_var")
            state[key] = state[key].clone()
            state[key][0] = -1.0
            return
        if kind == "float_counter":
            key = first_key(state, "num_batches_tracked")
            state[key] = state[key].float()
            return
        key = "model.cls_head.weight"
        value = state[key].clone()
        if kind in ("nan", "inf"):
            value.view(-1)[:2] = float(kind)
        elif kind == "int32":
            value = value.to(torch.int32)
        elif kind == "bool":
            value = value > 0
        elif kind == "float64_overflow":
            value = value.double() * 1e300
        elif kind == "sparse":
            value = value.to_sparse()
        state[key] = value
    return change


@pytest.mark.parametrize("kind,fragment", [
    ("nan", "cls_head.weight holds 2 NaN of"), ("inf", "cls_head.weight holds 2 inf of"),
    ("int32", "cls_head.weight holds int32 values where the model has float32 parameters"),
    ("bool", "cls_head.weight holds bool values"),
    ("float64_overflow", "cls_head.weight holds values beyond the float32 range"),
    ("sparse", "cls_head.weight is a sparse_coo tensor"),
    ("running_var", "running_var holds negative variances"),
    ("float_counter", "num_batches_tracked holds float32 values where the model has an int64 counter"),
])
def test_checkpoint_tensors_that_would_load_as_wrong_numbers_are_refused(tmp_path, official_state, model, kind,
                                                                        fragment):
    path = save_state(tmp_path / "bad.pth", official_state, poison(kind))
    with no_runtime_warnings(), pytest.raises(UserError) as info:
        load_checkpoint(model, path, TINY_PRESET)
    assert info.value.exit_code == 2 and fragment in str(info.value)


def test_several_bad_tensors_name_the_first_and_count_the_rest(tmp_path, official_state, model):
    def change(state):
        for key in ("model.cls_head.weight", "model.cls_head.bias", "model.conv1.weight"):
            state[key] = state[key].to(torch.int32)
    with pytest.raises(UserError, match=r"; 2 more unusable tensors \("):
        load_checkpoint(model, save_state(tmp_path / "bad.pth", official_state, change), TINY_PRESET)


def test_half_precision_checkpoint_loads_exactly(tmp_path, official_state):
    """float16 / float64 tensors are cast exactly where they fit: not refused."""
    def change(state):
        for key in [k for k in state if state[k].is_floating_point()]:
            state[key] = state[key].half() if "conv" in key else state[key].double()
    path = save_state(tmp_path / "half.pth", official_state, change)
    model = load_checkpoint(build_model(TINY_PRESET), path, TINY_PRESET)
    saved = torch.load(path, weights_only=True)
    weight = model.state_dict()["conv1.weight"]
    assert weight.dtype == torch.float32 and torch.equal(weight, saved["model.conv1.weight"].float())


def test_cli_refuses_a_nan_checkpoint_in_one_line_and_writes_nothing(tmp_path, capsys, official_state):
    pth = save_state(tmp_path / "nan.pth", official_state, poison("nan"))
    result = cli(pth2onnx.main, ["--pth", pth, "--save_path", tmp_path / "m.onnx"] + EXPORT_ARGS, capsys)
    assert_user_error(result, "checkpoint tensor cls_head.weight holds 2 NaN")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pth"]


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch {}".format(self.marker),))


@pytest.mark.parametrize("kind,fragment", [
    ("fifo", "is a FIFO, not a regular file"), ("symlink_loop", "is a symbolic link loop"),
    ("folder", "is a folder, not a regular file"), ("empty", "is not a PyTorch checkpoint (an empty file)"),
    ("code_pickle", "refused by weights_only loading: Trying to load unsupported GLOBAL posix.system"),
    ("foreign_zip", "not a readable PyTorch checkpoint"), ("int_keys", "its keys must be names, found 1"),
    ("non_tensor", "is not a state dict: 1 entry is not a tensor (epoch)"), ("empty_dict", "found an empty dict"),
])
def test_hostile_checkpoint_files_get_one_line(tmp_path, kind, fragment):
    import pickle
    import zipfile

    path = tmp_path / "x.pth"
    marker = tmp_path / "code_ran"
    if kind == "fifo":
        os.mkfifo(str(path))          # never opened: a reader would block
    elif kind == "symlink_loop":
        path.symlink_to(path.name)
    elif kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "code_pickle":
        path.write_bytes(pickle.dumps({"state_dict": RunsCode(marker)}, protocol=2))
    elif kind == "foreign_zip":
        with zipfile.ZipFile(str(path), "w") as archive:
            archive.writestr("notes.txt", "hello")
    elif kind == "int_keys":
        torch.save({1: torch.zeros(1), "conv1.weight": torch.zeros(1)}, str(path))
    elif kind == "non_tensor":
        torch.save({"state_dict": {"epoch": 3, "conv1.weight": torch.zeros(1)}}, str(path))
    elif kind == "empty_dict":
        torch.save({"state_dict": {}}, str(path))
    with pytest.raises(UserError) as info:
        read_state_dict(str(path))
    message = str(info.value)
    assert fragment in message and "\n" not in message and info.value.exit_code == 2
    assert "weights_only` set to `False`" not in message   # torch's advice to run the file's code is not passed on
    assert not marker.exists()


# --- flags ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags,fragment", [
    (["--height", "0"], "--height: expected a positive integer"), (["--width", "x"], "--width: expected a positive"),
    (["--batch", "0"], "--batch: expected 'dynamic' or a positive integer"), (["--opset", "-1"], "--opset"),
    (["--random_weights", str(2 ** 70)], "expected a seed from 0 to 18446744073709551615"),
    (["--random_weights", "-1"], "expected a seed from 0 to"),
    (["--preset", "w96"], "--preset: invalid choice"),
])
def test_bad_export_flags_are_one_line_errors(tmp_path, capsys, flags, fragment):
    argv = ["--save_path", tmp_path / "m.onnx"] + (["--random_weights", "0"] if "--random_weights" not in flags
                                                    else []) + flags
    assert_user_error(cli(pth2onnx.main, argv, capsys), fragment)
    assert not list(tmp_path.iterdir())


def test_an_export_too_large_for_memory_is_one_line(tmp_path, capsys):
    result = cli(pth2onnx.main, ["--random_weights", "0", "--preset", TINY_PRESET, "--height", "10000000",
                                 "--width", "10000000", "--save_path", tmp_path / "m.onnx"], capsys)
    assert_user_error(result, "not enough memory to export", "1 x 3 x 10000000 x 10000000")
    assert not list(tmp_path.iterdir())


# --- items: one writer per output file, non-regular outputs, symlinks, killed runs' temporaries ----------------

@pytest.fixture
def tiny_copy(tmp_path, tiny_onnx_path):
    path = tmp_path / "hrnet.onnx"
    shutil.copy(str(tiny_onnx_path), str(path))
    return path


def export_argv(tiny_pth_path, out):
    return ["--pth", tiny_pth_path, "--save_path", out] + EXPORT_ARGS


@pytest.mark.parametrize("script", ["export", "rewrite"])
def test_a_second_run_writing_the_same_file_stops_at_once_naming_the_first(tmp_path, capsys, tiny_pth_path,
                                                                           tiny_copy, script):
    before = tiny_copy.read_bytes()
    with held_by_another_run(tiny_copy) as pid:
        if script == "export":
            result = cli(pth2onnx.main, export_argv(tiny_pth_path, tiny_copy), capsys)
        else:
            result = cli(resize_script.main, [tiny_copy, tiny_copy], capsys)
    assert_user_error(result, "is being written by another run (PID {})".format(pid))
    assert tiny_copy.read_bytes() == before and "wrote" not in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hrnet.onnx"]   # the holder's lock file is gone too


def test_the_checkpoint_itself_is_refused_as_the_output(tmp_path, capsys, official_state):
    pth = save_state(tmp_path / "hrnet.pth", official_state)
    link = tmp_path / "hrnet.onnx"
    link.symlink_to(pth)
    before = (tmp_path / "hrnet.pth").read_bytes()
    for out in (pth, link):
        assert_user_error(cli(pth2onnx.main, ["--pth", pth, "--save_path", out] + EXPORT_ARGS, capsys),
                          "is the checkpoint itself")
    assert (tmp_path / "hrnet.pth").read_bytes() == before


@pytest.mark.parametrize("script", ["export", "rewrite"])
def test_a_fifo_as_the_output_file_is_refused_before_any_work(tmp_path, capsys, tiny_pth_path, tiny_copy, script):
    fifo = tmp_path / "out.onnx"
    os.mkfifo(str(fifo))
    if script == "export":
        result = cli(pth2onnx.main, export_argv(tiny_pth_path, fifo), capsys)
    else:
        result = cli(resize_script.main, [tiny_copy, fifo], capsys)
    assert_user_error(result, "cannot write", str(fifo), "it is a FIFO")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hrnet.onnx", "out.onnx"]


@pytest.mark.parametrize("script", ["export", "rewrite"])
def test_a_symlinked_output_is_written_through_and_dead_runs_temporaries_beside_it_go(tmp_path, capsys, tiny_pth_path,
                                                                                      tiny_copy, script):
    """The rewrite runs in place through the link (IN == OUT); killed runs' temporaries sit beside the target."""
    link = tmp_path / "elsewhere" / "hrnet.onnx"
    link.parent.mkdir()
    link.symlink_to(tiny_copy)
    dead = tmp_path / ".hrnet.onnx.{}.abc123.tmp".format(dead_pid())
    live = tmp_path / ".hrnet.onnx.{}.def456.tmp".format(os.getpid())
    dead.write_bytes(b"half an export")
    live.write_bytes(b"being written")
    if script == "export":
        tiny_copy.write_bytes(b"an older file")
        result = cli(pth2onnx.main, export_argv(tiny_pth_path, link), capsys)
    else:
        result = cli(resize_script.main, [link, link], capsys)
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and os.readlink(str(link)) == str(tiny_copy)
    graph = onnx.load(str(tiny_copy)).graph
    modes = {onnx_graph.attribute_value(node, "mode") for node in onnx_graph.head_resize_nodes(graph)}
    assert modes == ({"linear"} if script == "export" else {"nearest"})
    assert not dead.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["elsewhere", "hrnet.onnx", live.name])


# --- item: ONNX inputs that are not ONNX models ---------------------------------------------------------------

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
                       (onnx_graph.main, ["list", path]), (onnx_graph.main, ["out_nodes", path])):
        result = cli(main, argv, capsys)
        assert_user_error(result, fragment)
        assert result.stdout == ""
    assert not out.exists()


def test_list_on_an_empty_file_exits_2_from_the_command_line(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert_user_error(run_script(["performance_optimize_resize.py", empty, "--list"]),
                      "{} is not an ONNX model (an empty file)".format(empty))


def test_a_model_with_two_inputs_cannot_be_checked_but_can_be_rewritten_unchecked(tmp_path, capsys):
    model = tmp_path / "two.onnx"
    small_model(model, second_input=True)
    out = tmp_path / "out.onnx"
    result = cli(resize_script.main, [model, out, "--select", "all"], capsys)
    assert_user_error(result, "the model has 2 inputs (x, z)", "--no_verify")
    assert not out.exists()
    result = cli(resize_script.main, [model, out, "--select", "all", "--no_verify"], capsys)
    assert result.returncode == 0, result.stderr
    assert [onnx_graph.attribute_value(n, "mode") for n in onnx.load(str(out)).graph.node if n.op_type == "Resize"] == ["nearest"]


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
