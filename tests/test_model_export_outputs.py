"""The file the export (HRNet_pth2onnx.py) and the Resize rewrite (performance_optimize_resize.py) write: one run
per output file, never the checkpoint itself, never a FIFO, written through a symbolic link, and killed runs'
temporaries beside it removed. The scripts' main() runs in this process under run_cli."""
from __future__ import annotations

import os
import subprocess

import onnx
import pytest

import HRNet_pth2onnx as pth2onnx
import performance_optimize_resize as resize_script
from hrnetseg.graph import structure
from hrnetseg.util.locks import lock_path_for, output_lock

from helpers import EXPORT_ARGS, assert_user_error, lock_held_elsewhere, save_state
from helpers import run_in_process as cli


def export_argv(tiny_pth_path, out):
    return ["--pth", tiny_pth_path, "--save_path", out] + EXPORT_ARGS


def dead_pid() -> int:
    finished = subprocess.Popen(["true"])
    finished.wait()
    return finished.pid


@pytest.mark.parametrize("script", ["export", "rewrite"])
def test_a_second_run_writing_the_same_file_stops_at_once_naming_the_first(tmp_path, capsys, tiny_pth_path,
                                                                           tiny_copy, script):
    before = tiny_copy.read_bytes()
    with lock_held_elsewhere(tiny_copy) as pid:
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
                          "--save_path {} is the checkpoint of this run".format(out))
    assert (tmp_path / "hrnet.pth").read_bytes() == before


@pytest.mark.parametrize("script", ["export", "rewrite"])
def test_an_output_that_is_a_lock_the_run_holds_is_refused(tmp_path, capsys, tiny_pth_path, tiny_copy, script):
    """A script that holds its outputs' locks runs the step: writing one of those lock files would let a second
    run in. (The rewrite's OUT may be IN, the ModelZoo form; anything else is an output like any other.)"""
    held = str(tmp_path / "models")
    with output_lock(held):
        if script == "export":
            result = cli(pth2onnx.main, export_argv(tiny_pth_path, lock_path_for(held)), capsys)
        else:
            result = cli(resize_script.main, [tiny_copy, lock_path_for(held)], capsys)
    assert_user_error(result, "{} is a lock file this run holds".format(lock_path_for(held)))


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
    modes = {structure.attribute_value(node, "mode") for node in structure.head_resize_nodes(graph)}
    assert modes == ({"linear"} if script == "export" else {"nearest"})
    assert not dead.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["elsewhere", "hrnet.onnx", live.name])
