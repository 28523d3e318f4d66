"""Checkpoints: strict loading of the official formats, and one-line refusals of everything else: files that are
not checkpoints, tensors that would load as wrong numbers, two entries for one weight; the export's command line
on such checkpoints writes nothing."""
from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch

import HRNet_pth2onnx
import HRNet_pth2onnx as pth2onnx
from hrnetseg.model.checkpoint import load_checkpoint, official_to_model_keys, read_state_dict
from hrnetseg.model.network import build_model, init_random_weights
from hrnetseg.model.random_weights import official_state_dict, write_official_checkpoint
from hrnetseg.util.errors import UserError

from helpers import EXPORT_ARGS, TINY_PRESET, assert_user_error, no_runtime_warnings, run_in_process, save_state
from helpers import run_in_process as cli

PRESET = "tiny_ocr"


def reference_state(seed=0):
    return init_random_weights(build_model(PRESET), seed).state_dict()


def assert_loaded_equals(model, seed=0):
    want = reference_state(seed)
    got = model.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "wrapped"])
@pytest.mark.parametrize("legacy", [False, True], ids=["aux_head", "last_layer"])
def test_official_formats_load_exactly(tmp_path, wrapped, legacy):
    path = write_official_checkpoint(tmp_path / "w.pth", PRESET, seed=0, wrapped=wrapped, legacy_last_layer=legacy)
    assert_loaded_equals(load_checkpoint(build_model(PRESET), path, PRESET))


def test_plain_state_dict_without_prefix_or_num_batches_tracked_loads(tmp_path):
    state = {k: v for k, v in reference_state().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "w.pth")
    assert_loaded_equals(load_checkpoint(build_model(PRESET), str(tmp_path / "w.pth"), PRESET))


def save_modified(tmp_path, change):
    state = official_state_dict(PRESET, seed=0)
    change(state)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    return str(path)


def refusal(tmp_path, change):
    path = save_modified(tmp_path, change)
    with pytest.raises(UserError) as info:
        load_checkpoint(build_model(PRESET), path, PRESET)
    return str(info.value)


def test_missing_key_is_named(tmp_path):
    message = refusal(tmp_path, lambda s: s.pop("model.cls_head.weight"))
    assert "1 missing key (cls_head.weight)" in message


def test_many_missing_keys_show_a_few_and_the_count(tmp_path):
    def drop_stage4(state):
        for key in [k for k in state if k.startswith("model.stage4.")]:
            del state[key]
    message = refusal(tmp_path, drop_stage4)
    count = sum(1 for k in reference_state() if k.startswith("stage4.") and not k.endswith("num_batches_tracked"))
    assert "{} missing keys (stage4.".format(count) in message and ", ...)" in message


def test_unexpected_key_is_named(tmp_path):
    message = refusal(tmp_path, lambda s: s.__setitem__("model.extra_head.weight", torch.zeros(3)))
    assert "1 unexpected key (extra_head.weight)" in message


def test_misshaped_key_is_named(tmp_path):
    message = refusal(tmp_path, lambda s: s.__setitem__("model.cls_head.bias", torch.zeros(7)))
    assert "mis-shaped key (cls_head.bias (7,) != (19,))" in message


def test_wrong_preset_is_refused(tmp_path):
    path = write_official_checkpoint(tmp_path / "w.pth", PRESET, seed=0)
    with pytest.raises(UserError, match="does not fit preset w48_ocr"):
        load_checkpoint(build_model("w48_ocr"), path, "w48_ocr")


# --- tensors that would load as wrong numbers ---------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    """A tiny_ocr model for checkpoints that are refused (a refused checkpoint leaves it untouched)."""
    return build_model(TINY_PRESET)


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


@pytest.mark.parametrize("first,second,key", [
    ("model.conv1.weight", "conv1.weight", "conv1.weight"),                    # with and without the prefix
    ("model.aux_head.0.weight", "model.last_layer.0.weight", "aux_head.0.weight"),   # the old and the new name
])
def test_two_checkpoint_entries_for_one_weight_are_refused(first, second, key):
    """Unrefused, whichever came last would win: zeros under `conv1.weight` would replace the real weights, exit 0."""
    state = {first: torch.ones(2), second: torch.zeros(2), "loss.criterion.weight": torch.ones(19)}
    with pytest.raises(UserError, match="checkpoint entries {} and {} both name the model's {}".format(
            first, second, key).replace(".", r"\.")):
        official_to_model_keys(state)
    assert list(official_to_model_keys({first: torch.ones(2)})) == [key]


# --- files that are not checkpoints --------------------------------------------------------------------------

class Payload:
    pass


@pytest.mark.parametrize("kind", ["text", "truncated", "pickled_object", "pickled_namespace", "empty", "list"])
def test_files_that_are_not_checkpoints_are_refused(tmp_path, kind):
    path = tmp_path / "x.pth"
    if kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "truncated":
        write_official_checkpoint(tmp_path / "full.pth", PRESET)
        data = (tmp_path / "full.pth").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "pickled_object":
        path.write_bytes(pickle.dumps({"state_dict": Payload()}))
    elif kind == "pickled_namespace":
        torch.save({"args": argparse.Namespace(a=1), "w": torch.zeros(1)}, path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "list":
        torch.save([torch.zeros(1)], path)
    with pytest.raises(UserError) as info:
        read_state_dict(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


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


@pytest.mark.parametrize("content", [b"\x08\x06\x12\x07pytorch", bytes(range(1, 256)), b"weights\n"],
                         ids=["onnx", "binary", "text"])
def test_files_torch_save_never_writes_are_not_called_python_objects(tmp_path, content):
    """An ONNX file or random bytes reached the weights_only unpickler, whose refusal ("Unsupported operand")
    was reported as a checkpoint holding Python objects that could run code."""
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        read_state_dict(str(path))
    assert "not a readable PyTorch checkpoint (another format" in str(info.value)
    assert "Python objects" not in str(info.value)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy pickle"])
def test_both_formats_torch_save_writes_still_load(tmp_path, zip_format):
    """The header check refuses other formats only: the official torch 1.1 files are legacy pickles."""
    path = tmp_path / "m.pth"
    torch.save({"model.conv1.weight": torch.ones(2)}, str(path), _use_new_zipfile_serialization=zip_format)
    assert torch.equal(read_state_dict(str(path))["model.conv1.weight"], torch.ones(2))


def test_a_truncated_checkpoint_gets_the_readers_first_sentence(tmp_path):
    """torch's zip reader adds advice that the 160-character cut left as "... there is a high)"."""
    path = tmp_path / "cut.pth"
    torch.save({"model.conv1.weight": torch.zeros(64, 3, 3, 3)}, str(path))
    path.write_bytes(path.read_bytes()[:1000])   # the zip directory at the end is gone
    with pytest.raises(UserError) as info:
        read_state_dict(str(path))
    assert str(info.value).endswith("(truncated or another format: PytorchStreamReader failed reading zip archive: "
                                    "failed finding central directory)"), str(info.value)


# --- the export's command line on checkpoints it refuses --------------------------------------------------

def test_cli_refuses_missing_cls_head_without_traceback_or_onnx(tmp_path, capsys):
    """The script's main() under run_cli in this process (test_model_export.py runs its command line)."""
    path = save_modified(tmp_path, lambda s: s.pop("model.cls_head.weight"))
    out = tmp_path / "m.onnx"
    result = run_in_process(HRNet_pth2onnx.main, ["--pth", path, "--save_path", out, "--preset", PRESET,
                                                  "--height", "64", "--width", "128"], capsys)
    assert_user_error(result, "cls_head.weight")
    assert list(tmp_path.glob("*.onnx*")) == [] and list(tmp_path.glob(".m.onnx*")) == []


@pytest.mark.parametrize("problem", ["missing", "text", "folder_output", "no_output_dir"])
def test_cli_input_and_output_errors(tmp_path, capsys, problem):
    """The script's main() under run_cli in this process (test_model_export.py runs its command line)."""
    good = write_official_checkpoint(tmp_path / "w.pth", PRESET)
    pth, out, fragment = good, tmp_path / "m.onnx", ""
    if problem == "missing":
        pth, fragment = tmp_path / "nope.pth", "checkpoint not found"
    elif problem == "text":
        pth = tmp_path / "notes.txt"
        pth.write_text("hello")
        fragment = "not a readable PyTorch checkpoint"
    elif problem == "folder_output":
        out, fragment = tmp_path, "is a folder"
    elif problem == "no_output_dir":
        out, fragment = tmp_path / "absent" / "m.onnx", "does not exist"
    result = run_in_process(HRNet_pth2onnx.main, ["--pth", pth, "--save_path", out, "--preset", PRESET,
                                                  "--height", "64", "--width", "128"], capsys)
    assert_user_error(result, fragment)
    assert not list(tmp_path.rglob("*.onnx"))


def test_cli_refuses_a_nan_checkpoint_in_one_line_and_writes_nothing(tmp_path, capsys, official_state):
    pth = save_state(tmp_path / "nan.pth", official_state, poison("nan"))
    result = cli(pth2onnx.main, ["--pth", pth, "--save_path", tmp_path / "m.onnx"] + EXPORT_ARGS, capsys)
    assert_user_error(result, "checkpoint tensor cls_head.weight holds 2 NaN")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pth"]
