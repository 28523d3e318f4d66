"""python -m hrnetseg.evaluate refuses bad input in one line before any work: output files that are not regular
files or are the model itself, a model path that is not a file or is empty, an empty image or label, a second run
on the same output files, bad flag and test hook values."""
from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

import pytest

from hrnetseg.data import cityscapes
from hrnetseg.evaluation import cli as evaluate
from hrnetseg.evaluation import streaming
from hrnetseg.util.errors import UserError

from helpers import (
    TINY_HEIGHT,
    TINY_WIDTH,
    assert_user_error,
    cut_label_short,
    find_images,
    lock_held_elsewhere,
    refused_by_argparse,
    run_in_process,
    run_infer,
)

# --- output files ---------------------------------------------------------------------------------------------

def non_regular_files(folder: Path):
    """(what, path) for a FIFO, a socket and (as root) a character device, made in `folder`."""
    os.mkfifo(str(folder / "fifo.json"))
    made = [("a FIFO", folder / "fifo.json")]
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "socket.json"))
    server.close()
    made.append(("a socket", folder / "socket.json"))
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        import stat

        os.mknod(str(folder / "null.json"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))   # /dev/null's numbers
        made.append(("a character device", folder / "null.json"))
    return made


def test_evaluate_refuses_output_files_that_are_not_regular_before_any_work(tmp_path, tiny_onnx_path):
    nowhere = str(tmp_path / "no_data")          # were the data set looked at first, this would be the error
    for what, path in non_regular_files(tmp_path):
        for flag in ("--save_path", "--save_confusion"):
            with pytest.raises(UserError, match="cannot write {} {}: it is {}".format(flag, path, what)):
                evaluate.main(["--datasets_path", nowhere, "--onnx", str(tiny_onnx_path), flag, str(path)])
    with pytest.raises(UserError, match="are the same file: give two names"):
        evaluate.main(["--datasets_path", nowhere, "--onnx", str(tiny_onnx_path), "--save_path",
                       str(tmp_path / "r"), "--save_confusion", str(tmp_path / "." / "r")])


def test_evaluate_never_writes_its_result_over_the_model(tmp_path, tiny_onnx_path):
    """--save_path hrnet.onnx replaced the model with the result JSON, exit 0."""
    model = tmp_path / "hrnet.onnx"
    shutil.copy(str(tiny_onnx_path), str(model))
    os.symlink(model.name, str(tmp_path / "link.json"))
    nowhere = str(tmp_path / "no_data")          # refused before the data set is looked at
    for flag, path in (("--save_path", model), ("--save_confusion", tmp_path / "link.json")):
        with pytest.raises(UserError, match="{} {} is the model of this run.*: writing it would replace".format(
                flag, path)):
            evaluate.main(["--datasets_path", nowhere, "--onnx", str(model), flag, str(path)])
    assert model.read_bytes() == tiny_onnx_path.read_bytes()


def test_evaluate_never_writes_over_an_image_or_label_or_its_own_lock(tmp_path, tiny_data_root, tiny_onnx_path,
                                                                      monkeypatch):
    """--save_path pointed at a label PNG replaced the label: an image or label of the run, named directly,
    through a symbolic link or as a hard link, and the lock file of the other output, are refused before the
    model loads."""
    monkeypatch.setattr(evaluate, "load_backend", lambda *a, **k: pytest.fail("the model was loaded"))
    sample = find_images(tiny_data_root)[0]
    label_bytes, image_bytes = Path(sample.label).read_bytes(), Path(sample.image).read_bytes()
    os.symlink(sample.image, str(tmp_path / "image_link.npz"))
    os.link(sample.label, str(tmp_path / "label_hard_link.json"))
    base = ["--datasets_path", str(tiny_data_root), "--onnx", str(tiny_onnx_path)]
    for flags, fragment in (
            (["--save_path", sample.label], "--save_path {} is a label of this run".format(sample.label)),
            (["--save_confusion", str(tmp_path / "image_link.npz")], "is an image of this run ({})".format(
                sample.image)),
            (["--save_path", str(tmp_path / "label_hard_link.json")], "is a label of this run"),
            (["--save_path", str(tmp_path / "r.json"), "--save_confusion", str(tmp_path / "r.json.lock")],
             "--save_confusion {}.lock is the lock file of --save_path".format(tmp_path / "r.json"))):
        with pytest.raises(UserError, match=re.escape(fragment)):
            evaluate.main(base + flags)
    assert Path(sample.label).read_bytes() == label_bytes and Path(sample.image).read_bytes() == image_bytes


def test_evaluate_refuses_a_report_path_before_the_model_loads(tmp_path, tiny_data_root, tiny_onnx_path, monkeypatch,
                                                                capsys):
    """--report at a label would replace it; in a missing folder, as a folder or as another output's name it could
    not be written after the whole run: each is one line before the model loads, and nothing is written."""
    monkeypatch.setattr(evaluate, "load_backend", lambda *a, **k: pytest.fail("the model was loaded"))
    sample = find_images(tiny_data_root)[0]
    label_bytes = Path(sample.label).read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    base = ["--datasets_path", tiny_data_root, "--onnx", tiny_onnx_path, "--save_path", out / "r.json"]
    for report, fragment in ((sample.label, "--report {} is a label of this run".format(sample.label)),
                             (tiny_onnx_path, "--report {} is the model of this run".format(tiny_onnx_path)),
                             (out / "missing" / "r.html", "folder {} does not exist".format(out / "missing")),
                             (out, "--report {}: it is a folder".format(out)),
                             (out / "r.json", "are the same file")):
        result = run_in_process(evaluate.main, base + ["--report", report], capsys)
        assert_user_error(result, fragment)
    assert Path(sample.label).read_bytes() == label_bytes and sorted(out.iterdir()) == []
    result = run_in_process(evaluate.main, base + ["--ray", "auto", "--report_worst", "3"], capsys)
    assert_user_error(result, "--report_worst 3: not with --ray")


def test_evaluate_locks_its_output_files(tmp_path, tiny_data_root, tiny_onnx_path, monkeypatch):
    loaded = []
    monkeypatch.setattr(evaluate, "load_backend", lambda *a, **k: loaded.append(1))
    with lock_held_elsewhere(tmp_path / "c.npz") as pid:
        with pytest.raises(UserError, match=r"c.npz is being written by another run \(PID {}\)".format(pid)):
            evaluate.main(["--datasets_path", str(tiny_data_root), "--onnx", str(tiny_onnx_path), "--save_path",
                           str(tmp_path / "r.json"), "--save_confusion", str(tmp_path / "c.npz")])
    assert not loaded and sorted(p.name for p in tmp_path.iterdir()) == []


# --- the model and the data ---------------------------------------------------------------------------------

def test_evaluate_says_what_a_model_path_is(tmp_path, tiny_data_root):
    """A FIFO, a folder or a link loop given as the model was 'model not found' (and the FIFO never opened)."""
    os.mkfifo(str(tmp_path / "fifo.onnx"))
    (tmp_path / "folder.onnx").mkdir()
    os.symlink("loop.onnx", str(tmp_path / "loop.onnx"))
    for name, what in (("fifo.onnx", "is a FIFO, not a regular file"), ("folder.onnx", "is a folder, not a regular"),
                       ("loop.onnx", "is a symbolic link loop")):
        with pytest.raises(UserError, match="model {} {}".format(tmp_path / name, what)):
            evaluate.main(["--datasets_path", str(tiny_data_root), "--onnx", str(tmp_path / name)])


def test_an_empty_model_name_is_one_line(tmp_path, tiny_prep_path, stub):
    """evaluate --onnx '' was a traceback (the empty name taken for no model at all)."""
    for flag in ("--onnx", "--pth"):
        with pytest.raises(UserError, match="{} is an empty name: give the model file".format(flag)):
            evaluate.main(["--datasets_path", str(tmp_path), flag, ""])
    with pytest.raises(UserError, match="--model is an empty name"):
        run_infer("", tiny_prep_path)
    assert not stub.loaded


def test_evaluate_names_an_empty_image_or_label(tmp_path, tiny_data_root):
    data = tmp_path / "data"
    shutil.copytree(str(tiny_data_root), str(data))
    samples = cityscapes.find_images(str(data))
    Path(samples[0].image).write_bytes(b"")      # the first image: its size is read before the model loads
    with pytest.raises(UserError, match="image {} cannot be decoded".format(samples[0].image)):
        evaluate.main(["--datasets_path", str(data), "--onnx", str(tmp_path / "model_not_loaded_yet.onnx")])

    size = (TINY_HEIGHT, TINY_WIDTH)
    Path(samples[1].label).write_bytes(Path(samples[1].label).read_bytes()[:60])   # truncated label
    with pytest.raises(UserError, match="label {}".format(re.escape(samples[1].label))):
        streaming.decode(samples[1], "float32", size)
    os.remove(samples[2].image)
    os.mkfifo(samples[2].image)                  # never opened
    with pytest.raises(UserError, match="image {} is a FIFO, not a regular file".format(samples[2].image)):
        streaming.decode(samples[2], "float32", size)


def test_evaluate_refuses_a_label_of_another_size_than_its_image(tmp_path, tiny_data_root, capsys):
    data = tmp_path / "data"
    shutil.copytree(str(tiny_data_root), str(data))
    sample = cityscapes.find_images(str(data))[1]
    cut_label_short(Path(sample.label))
    # from the headers, before the model loads (there is none)
    result = run_in_process(evaluate.main, ["--datasets_path", data, "--onnx", tmp_path / "not_loaded.onnx"], capsys)
    assert_user_error(result, "label {} is {}x{} but its image {} is {}x{}".format(
        sample.label, TINY_HEIGHT - 1, TINY_WIDTH, sample.image, TINY_HEIGHT, TINY_WIDTH))
    # and decoded, in the decode stage of the local pipeline and of every Ray worker: the same rule
    with pytest.raises(UserError, match="label {} is {}x{} but its image is {}x{}".format(
            re.escape(sample.label), TINY_HEIGHT - 1, TINY_WIDTH, TINY_HEIGHT, TINY_WIDTH)):
        streaming.decode(sample, "float32", (TINY_HEIGHT, TINY_WIDTH))


# --- flags and the test hook ---------------------------------------------------------------------------------

def test_evaluate_command_line_refusals(tiny_data_root, tiny_onnx_path, capsys):
    base = ["--datasets_path", tiny_data_root, "--onnx", tiny_onnx_path]
    refused_by_argparse(evaluate.main, base + ["--preset", "w18"], capsys, "--preset", "invalid choice")
    refused_by_argparse(evaluate.main, base + ["--split", "../val"], capsys, "--split", "plain name")


def test_evaluate_test_hook_value_that_is_not_a_count_is_one_line(tmp_path, tiny_onnx_path, monkeypatch):
    monkeypatch.setenv(streaming.INTERRUPT_AFTER_ENV, "two")
    with pytest.raises(UserError, match="HRNETSEG_TEST_INTERRUPT_AFTER='two': expected a number of images"):
        evaluate.main(["--datasets_path", str(tmp_path), "--onnx", str(tiny_onnx_path)])
