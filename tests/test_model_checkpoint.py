"""Strict loading of official-format checkpoints, and one-line refusals of everything else."""
from __future__ import annotations

import argparse
import pickle

import pytest
import torch

import HRNet_pth2onnx
from helpers import assert_user_error, run_in_process
from hrnetseg.model.checkpoint import load_checkpoint, read_state_dict
from hrnetseg.util.errors import UserError
from hrnetseg.model.network import build_model, init_random_weights
from hrnetseg.model.random_weights import official_state_dict, write_official_checkpoint

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


def test_cli_refuses_missing_cls_head_without_traceback_or_onnx(tmp_path, capsys):
    """The script's main() under run_cli in this process (test_export.py runs its command line)."""
    path = save_modified(tmp_path, lambda s: s.pop("model.cls_head.weight"))
    out = tmp_path / "m.onnx"
    result = run_in_process(HRNet_pth2onnx.main, ["--pth", path, "--save_path", out, "--preset", PRESET,
                                                  "--height", "64", "--width", "128"], capsys)
    assert_user_error(result, "cls_head.weight")
    assert list(tmp_path.glob("*.onnx*")) == [] and list(tmp_path.glob(".m.onnx*")) == []


@pytest.mark.parametrize("problem", ["missing", "text", "folder_output", "no_output_dir"])
def test_cli_input_and_output_errors(tmp_path, capsys, problem):
    """The script's main() under run_cli in this process (test_export.py runs its command line)."""
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
