"""The data-side tools and the shell scripts under hostile input: empty flag values, symbolic links
where the tools write, special files as lock files, bins ais_bench would read that the manifest does not list,
throughput figures that are not plain numbers."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hrnetseg.atlas import acc_perf
from hrnetseg.data import cityscapes, preprocess, sample_scenes as sample_data
from hrnetseg.util import locks
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import make_output_folder, require_file, require_folder
from hrnetseg.data.manifest import read_manifest
from hrnetseg.evaluation.postprocess import evaluate_folder

from helpers import REPO, assert_user_error, lock_held_elsewhere, run_script


def _quiet(*_args):
    pass


def _bash(script: str, *args, env: dict = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / script)] + [str(a) for a in args], cwd=str(cwd),
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True, timeout=60)


# --- shell scripts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("script, args", [
    ("eval_acc_perf.sh", ["--datasets_path", "data", "--output_dir", ""]),     # would write /prep_dataset, /results
    ("eval_acc_perf.sh", ["--datasets_path", "data", "--model_dir", ""]),      # would look for /hrnet_bs1.om
    ("pth2om.sh", ["--pth", "x.pth", "--soc_version", ""]),
    ("demo.sh", ["--output_dir", ""]),
    ("perf_gpu.sh", ["--output_dir", ""]),
])
def test_an_empty_flag_value_is_refused_not_taken_as_the_root(tmp_path, script, args):
    result = _bash(script, *args, cwd=tmp_path)
    assert_user_error(result, "needs a value, not an empty string")
    assert os.listdir(str(tmp_path)) == []


GUARDED_SCRIPT = """
source "{common}"
PYTHON="{python}"
lock_output "$1"
{run}
"""
CHILD = """sh -c 'echo "$$"; exec sleep 60'"""


def _gone(pid: int) -> bool:
    try:
        with open("/proc/{}/stat".format(pid)) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="Linux: the kernel kills the children")
@pytest.mark.parametrize("run", ["step " + CHILD, 'guard {}\n"${{GUARDED[@]}}" | cat'.format(CHILD)])
def test_a_script_killed_with_sigkill_leaves_no_child_writing(tmp_path, run):
    """The next run takes over a killed script's locks; its step (the runner, ais_bench) must not go on writing
    into that run's outputs."""
    script = tmp_path / "writer.sh"
    script.write_text(GUARDED_SCRIPT.format(common=REPO / "scripts" / "common.sh", python=sys.executable, run=run))
    writer = subprocess.Popen(["bash", str(script), str(tmp_path / "results" / "bs1")], stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    child = int(writer.stdout.readline())
    writer.kill()
    writer.wait()
    deadline = time.monotonic() + 5
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    if not _gone(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the script's child {} outlived it".format(child))


FLAGS_SCRIPT = """
source "{common}"
limit=""; no_rewrite=0
parse_flags "output_dir limit" "no_rewrite" "$@"
echo "output_dir=${{output_dir-}} limit=${{limit}} no_rewrite=${{no_rewrite}}"
"""


@pytest.mark.parametrize("args, said", [
    (["--output_dir=a b", "--limit=5", "--no-rewrite"], "output_dir=a b limit=5 no_rewrite=1"),
    (["--output-dir", "x", "--limit", "-5"], "output_dir=x limit=-5 no_rewrite=0"),   # the script checks -5
    (["--output_dir=--limit"], "output_dir=--limit limit= no_rewrite=0"),                 # said with =, meant
    (["--output_dir", "--limit", "5"], "error: --output_dir needs a value, not the flag --limit"),
    (["--output_dir", "--no_rewrite"], "error: --output_dir needs a value, not the flag --no_rewrite"),
    (["--output_dir="], "error: --output_dir needs a value, not an empty string"),
    (["--no_rewrite=1"], "error: --no_rewrite takes no value"),
    (["--bogus=1"], "error: unknown argument: --bogus (see --help)"),
])
def test_flags_as_users_write_them(tmp_path, args, said):
    """--name=VALUE was 'unknown argument'; a forgotten value took the next flag as a folder name."""
    script = tmp_path / "flags.sh"
    script.write_text(FLAGS_SCRIPT.format(common=REPO / "scripts" / "common.sh"))
    result = subprocess.run(["bash", str(script)] + args, capture_output=True, text=True, timeout=30)
    if said.startswith("error"):
        assert_user_error(result, said)
    else:
        assert result.returncode == 0 and result.stdout.strip() == said, result


def test_an_output_dir_that_is_a_file_is_one_line_before_any_work(tmp_path):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "x.pth").write_bytes(b"pth")
    (tmp_path / "x.onnx").write_bytes(b"onnx")
    for script, args in (("pth2om.sh", ["--pth", "x.pth"]), ("perf_gpu.sh", ["--onnx", "x.onnx"])):
        assert_user_error(_bash(script, *args, "--output_dir", "a_file", cwd=tmp_path), "--output_dir a_file",
                          "not a folder")


TRTEXEC_MEAN = '#!/bin/sh\necho "[I] GPU Compute Time: min = 1 ms, max = 3 ms, mean = {} ms, median = 2 ms"\n'


@pytest.mark.parametrize("mean, row", [
    ("0", None), ("0.0", None), (".", None), ("-5", None), ("1e", None), ("1e-320", None),   # inf fps
    ("1500", "| 1 | 1500.00 | 0.667 |"),                      # below 1 fps: three digits, never 0.00
    ("0.004", "| 1 | 0.004 | 250000.00 |"),
])
def test_perf_gpu_never_shows_an_infinite_negative_or_zero_throughput(tmp_path, mean, row):
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "trtexec").write_text(TRTEXEC_MEAN.format(mean))
    (tools / "trtexec").chmod(0o755)
    (tmp_path / "x.onnx").write_bytes(b"onnx")
    result = _bash("perf_gpu.sh", "--onnx", "x.onnx", "--batch_sizes", "1", cwd=tmp_path,
                   env={"PATH": "{}:{}".format(tools, os.environ["PATH"])})
    if row is None:
        assert_user_error(result, "'{}' ms".format(mean), "trtexec_bs1.log", "not a usable time")
        assert "| 1 |" not in result.stdout
    else:
        assert result.returncode == 0, result.stderr
        assert row in result.stdout.splitlines()


# --- acc_perf --------------------------------------------------------------------------------------------

def test_ais_bench_is_never_given_bins_the_manifest_does_not_list(tiny_prep_path, tmp_path):
    """ais_bench runs every .bin of its --input folder: an image since removed from the data set, or one a
    changed --limit no longer covers, would be counted in the mIoU."""
    prep = tmp_path / "prep"
    shutil.copytree(str(tiny_prep_path), str(prep))
    assert acc_perf.check_batch_sizes(str(prep), [1], reads_every_bin=True) == []
    listed = read_manifest(str(prep))["ids"][0]
    for name in ("aachen_000000_000001.bin", ".hidden.bin", listed + ".npy", listed + ".BIN"):   # x.npy: x's outputs
        (prep / name).write_bytes(b"\0" * 16)
        with pytest.raises(UserError, match=r"prep holds 1 input file its manifest does not list \({}\)".format(
                name.replace(".", r"\."))):
            acc_perf.check_batch_sizes(str(prep), [1], reads_every_bin=True)
        assert acc_perf.check_batch_sizes(str(prep), [1]) == []      # the local runner reads the manifest's ids
        (prep / name).unlink()
    result = run_script(["-m", "hrnetseg.atlas.acc_perf", "check_batch_sizes", prep, "1", "--backend", "ais_bench"])
    assert result.returncode == 0, result.stderr
    (prep / "x.bin").write_bytes(b"")
    assert_user_error(run_script(["-m", "hrnetseg.atlas.acc_perf", "check_batch_sizes", prep, "1", "--backend",
                                  "ais_bench"]), "does not list (x.bin)",
                      "ais_bench reads every .bin (.BIN, .npy, .NPY) file")


def test_a_result_that_does_not_count_every_preprocessed_image_gives_no_row(tiny_prep_path, tmp_path):
    """With --limit the postprocess allows labels without output, which hid an image the run left out; an image
    without a label was only logged. The table's mIoU must cover the preprocessed images."""
    result = tmp_path / "result_bs1.json"
    listed = len(read_manifest(str(tiny_prep_path))["ids"])
    result.write_text(json.dumps({"mIoU": 0.5, "images": listed}))
    acc_perf.check_every_image_counted(str(result), str(tiny_prep_path))
    for images, words in ((listed - 1, "counts {} images but .* lists {}".format(listed - 1, listed)),
                          (None, "holds images None, not a count"), (True, "not a count")):
        result.write_text(json.dumps({"mIoU": 0.5, "images": images}))
        with pytest.raises(UserError, match=words):
            acc_perf.check_every_image_counted(str(result), str(tiny_prep_path))
    assert_user_error(run_script(["-m", "hrnetseg.atlas.acc_perf", "row", "--batch", "1", "--backend", "x", "--device", "d",
                                  "--fps", "5", "--result", result, "--prep", tiny_prep_path]), "not a count")


LINE = "[INFO] throughput 1000*batchsize.mean(1)/NPU_compute_time.mean(2): {}\n"


@pytest.mark.parametrize("text", ["1_000", "\u0663", "infinity", "+5", "0x10"])
def test_a_throughput_is_a_plain_decimal_number(tmp_path, text):
    """float() takes "1_000" as 1000 and Arabic-Indic digits as digits; no tool prints those."""
    log = tmp_path / "bs1.log"
    log.write_text(LINE.format(text), encoding="utf-8")
    with pytest.raises(UserError, match="not a positive number"):
        acc_perf.throughput(str(log), "ais_bench")
    log.write_text(LINE.format("5.") + LINE.format(".5e1"))
    assert acc_perf.throughput(str(log), "ais_bench") == 5.0


# --- preprocess ------------------------------------------------------------------------------------------

def test_a_symlinked_bin_is_replaced_never_written_through(tiny_data_root, tiny_prep_path, tmp_path):
    out = tmp_path / "prep"
    shutil.copytree(str(tiny_prep_path), str(out))
    ids = read_manifest(str(out))["ids"]
    precious = tmp_path / "precious.txt"
    precious.write_text("precious")
    other = tmp_path / "other.bin"
    other.write_bytes((out / (ids[1] + ".bin")).read_bytes())
    (out / (ids[0] + ".bin")).unlink()
    (out / (ids[0] + ".bin")).symlink_to(precious)          # a wrong size: redone, through the link before
    (out / (ids[1] + ".bin")).unlink()
    (out / (ids[1] + ".bin")).symlink_to(other)             # the right size: taken as finished before
    (out / (ids[2] + ".bin")).unlink()
    (out / (ids[2] + ".bin")).symlink_to(tmp_path / "nowhere")
    preprocess.preprocess(str(tiny_data_root), str(out), workers=1, log=_quiet)
    assert precious.read_text() == "precious" and not (tmp_path / "nowhere").exists()
    for sample_id in ids[:3]:
        path = out / (sample_id + ".bin")
        assert not path.is_symlink() and path.read_bytes() == (tiny_prep_path / (sample_id + ".bin")).read_bytes()


def test_a_stray_test_hook_value_is_ignored(tiny_data_root, tmp_path, monkeypatch):
    monkeypatch.setenv(preprocess.KILL_AFTER_ENV, "x")      # was a ValueError traceback from the first write
    manifest = preprocess.preprocess(str(tiny_data_root), str(tmp_path / "prep"), workers=1, log=_quiet)
    assert manifest["complete"] and len(manifest["ids"]) == len(cityscapes.find_images(str(tiny_data_root)))


def test_an_image_dated_before_1970_gives_a_manifest_the_tools_accept(tiny_data_root, tmp_path):
    """Its modification time is negative: the manifest recorded it and then refused itself as damaged, on the
    rerun and in the runner."""
    data = tmp_path / "data"
    shutil.copytree(str(tiny_data_root), str(data))
    samples = cityscapes.find_images(str(data))
    os.utime(samples[0].image, ns=(-86400 * 10 ** 9, -86400 * 10 ** 9))
    out = str(tmp_path / "prep")
    first = preprocess.preprocess(str(data), out, workers=1, log=_quiet)
    assert first["sources"][samples[0].id][1] < 0
    assert read_manifest(out)["ids"] == first["ids"]
    os.utime(samples[0].image, ns=(-2 * 86400 * 10 ** 9, -2 * 86400 * 10 ** 9))
    logged = []
    preprocess.preprocess(str(data), out, workers=1, log=logged.append)
    assert "4 already there, 1 redone as their image changed" in logged[-1]


def test_a_second_sample_data_run_into_the_folder_stops_at_once(tmp_path):
    """Two runs with other seeds would pair one run's photo with the other's label."""
    root = tmp_path / "data"
    with lock_held_elsewhere(root) as pid:
        with pytest.raises(UserError, match=r"is being written by another run \(PID {}\)".format(pid)):
            sample_data.generate(str(root), n=1, height=64, width=128)
        assert not root.exists()
    assert sample_data.generate(str(root), n=1, height=64, width=128) == [sample_data.sample_id(0)]
    assert not os.path.exists(locks.lock_path_for(str(root)))


# --- postprocess -----------------------------------------------------------------------------------------

def test_a_result_file_and_a_picture_folder_of_one_name_are_refused_before_any_work(sample_results_path,
                                                                                    sample_data_root, tmp_path):
    labels = str(sample_data_root / "cityscapes" / "gtFine" / "val")
    same = str(tmp_path / "same")
    for files, folders in (({"save_path": same}, {"save_vis": same}),
                           ({"save_confusion": same}, {"save_pred": same + os.sep})):
        with pytest.raises(UserError, match="are the same path .*one is a file, the other a folder"):
            evaluate_folder(str(sample_results_path), labels, log=_quiet, warn=_quiet, **files, **folders)
        assert not os.path.lexists(same)
    for flag in ("save_vis", "save_pred"):
        with pytest.raises(UserError, match="--{} is empty: give a folder name".format(flag)):
            evaluate_folder(str(sample_results_path), labels, log=_quiet, warn=_quiet, **{flag: ""})


def test_a_preprocess_folder_as_res_path_is_named_for_what_it_is(tiny_prep_path, tiny_data_root, tmp_path):
    """Its bins read as outputs (frankfurt_000000_000294.bin: output 294 of frankfurt_000000): the message was
    'mixes output sets'."""
    labels = str(tiny_data_root / "cityscapes" / "gtFine" / "val")
    with pytest.raises(UserError, match="prep_dataset is a preprocess folder .*not model outputs"):
        evaluate_folder(str(tiny_prep_path), labels, log=_quiet, warn=_quiet)
    shutil.copytree(str(tiny_prep_path), str(tmp_path / "prep"))       # beside it, never taken for the outputs
    with pytest.raises(UserError, match="no model outputs in"):
        evaluate_folder(str(tmp_path), labels, log=_quiet, warn=_quiet)


def test_output_index_is_digits_only(capsys):
    """int() reads "1_0" as 10 and Arabic-Indic digits as digits."""
    import HRNet_postprocess

    parser = HRNet_postprocess.build_parser()
    required = ["--res_path", "r", "--data_path", "d"]
    for text in ("1_0", "\u0663", " 1", "1\n", "-1", ""):
        with pytest.raises(SystemExit):
            parser.parse_args(required + ["--output_index", text])
        assert "expected an output number 0, 1, ..., got {!r}".format(text) in capsys.readouterr().err
    assert parser.parse_args(required + ["--output_index", "0"]).output_index == 0


# --- files and locks -------------------------------------------------------------------------------------

def test_an_empty_path_is_named_as_such_not_as_not_found():
    for check, what in ((require_file, "confusion file"), (require_folder, "label folder")):
        with pytest.raises(UserError, match=r"^no {} given \(an empty path\)$".format(what)):
            check("", what)
    with pytest.raises(UserError, match="^DIR is empty: give a folder name$"):
        make_output_folder("", "DIR")
    assert_user_error(run_script(["HRNet_preprocess.py", "--src_path", "", "--save_path", "x"]), "no data folder given")


def test_an_output_under_a_file_names_the_file_not_a_missing_folder(sample_results_path, sample_data_root, tmp_path):
    """'folder x.txt does not exist' (it does), 'cannot create lock file ...: File exists', 'Not a directory'."""
    (tmp_path / "x.txt").write_text("precious")
    blocked = "{} is a file, not a folder".format(tmp_path / "x.txt")
    labels = str(sample_data_root / "cityscapes" / "gtFine" / "val")
    for flag in ("save_path", "save_confusion", "save_vis", "save_pred"):
        with pytest.raises(UserError, match="--{} .*: {}$".format(flag, blocked)):
            evaluate_folder(str(sample_results_path), labels, log=_quiet, warn=_quiet,
                            **{flag: str(tmp_path / "x.txt" / "sub" / "out")})
    with pytest.raises(UserError, match="cannot create output folder DIR .*: {}$".format(blocked)):
        make_output_folder(str(tmp_path / "x.txt" / "data"), "DIR")
    with pytest.raises(UserError, match="cannot create lock file .*: {}$".format(blocked)):
        with locks.output_lock(str(tmp_path / "x.txt" / "out")):
            pass
    assert (tmp_path / "x.txt").read_text() == "precious"


def test_a_lock_file_that_is_not_a_regular_file_is_refused_never_written_through(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("precious")
    os.mkfifo(str(tmp_path / "fifo_out.lock"))
    (tmp_path / "link_out.lock").symlink_to(precious)
    (tmp_path / "folder_out.lock").mkdir()
    for name, words in (("fifo_out", "is a FIFO"), ("link_out", "is a symbolic link"), ("folder_out", "is a folder")):
        with pytest.raises(UserError, match="lock file .*{}.lock {}.*remove it".format(name, words)):
            with locks.output_lock(str(tmp_path / name)):
                pass
        # the scripts ask for the path first, before their shell opens it (a FIFO would block that open)
        assert_user_error(run_script(["-m", "hrnetseg.util.locks", "path", tmp_path / name]), words)
    assert precious.read_text() == "precious" and (tmp_path / "link_out.lock").is_symlink()
    with locks.output_lock(str(tmp_path / "plain_out")):
        assert (tmp_path / "plain_out.lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / "plain_out.lock").exists()


def test_positive_int_takes_ascii_digits_only():
    import argparse

    from hrnetseg.util.cli import positive_int

    assert positive_int("12") == 12
    for bad in ("1_0", "\u0663", "0", "-1", " 1", "", "1.0"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(bad)
