"""Who writes a preprocess folder: one run at a time, worker processes that die with a killed parent, and a bin
that is a symbolic link replaced, never written through."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from hrnetseg.data import cityscapes, preprocess
from hrnetseg.data.manifest import read_manifest
from hrnetseg.util.errors import UserError
from hrnetseg.util.locks import lock_path_for

from helpers import REPO, bins, file_tree, find_images, lock_held_elsewhere, process_running, quiet


def test_a_second_preprocess_into_the_folder_stops_at_once(tiny_prep_path, tiny_data_root, tmp_path):
    out = tmp_path / "prep"
    shutil.copytree(str(tiny_prep_path), str(out))
    before = file_tree(out)
    with lock_held_elsewhere(out) as pid:
        began = time.monotonic()
        with pytest.raises(UserError, match=r"is being written by another run \(PID {}\)".format(pid)):
            preprocess.preprocess(str(tiny_data_root), str(out), log=quiet)
        assert time.monotonic() - began < 2
        assert file_tree(out) == before
    preprocess.preprocess(str(tiny_data_root), str(out), log=quiet)
    assert file_tree(out) == before and not os.path.exists(lock_path_for(str(out)))   # nothing inside, none left


SLOW_RUN = """
import sys, time
from hrnetseg.data import preprocess
from hrnetseg.util.cli import run_cli
import HRNet_preprocess

convert = preprocess.convert
def slow_convert(*args):
    time.sleep(0.2)
    return convert(*args)
preprocess.convert = slow_convert
run_cli(HRNet_preprocess.main, sys.argv[1:])
"""


def _children(pid: int) -> list:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/{}/stat".format(entry), "rb") as fh:
                    stat = fh.read()
            except OSError:
                continue
            if int(stat[stat.rfind(b")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_workers_die_with_a_killed_parent(tiny_data_root, tmp_path):
    """--workers 5 runs in processes; a SIGKILLed parent leaves no worker converting the queued images."""
    source = find_images(tiny_data_root)[0].image
    city = tmp_path / "data" / "leftImg8bit" / "val" / "aachen"
    city.mkdir(parents=True)
    for index in range(40):
        os.link(source, str(city / "aachen_{:06d}_000019{}".format(index, cityscapes.IMAGE_SUFFIX)))
    out = tmp_path / "prep"
    env = dict(os.environ, PYTHONPATH=str(REPO), HRNETSEG_PROGRESS="0")
    run = subprocess.Popen([sys.executable, "-c", SLOW_RUN, "--src_path", str(tmp_path / "data"), "--save_path",
                            str(out), "--workers", "5"], env=env, cwd=str(REPO),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers = []
    try:
        deadline = time.monotonic() + 60
        while len(bins(out) if out.is_dir() else ()) < 2:
            assert run.poll() is None and time.monotonic() < deadline, run.stderr.read() if run.poll() else "slow"
            time.sleep(0.02)
        workers = _children(run.pid)
        assert len(workers) == 5
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        written = set(bins(out))     # each worker is within its 0.2 s image: an orphan would finish and write it
        deadline = time.monotonic() + 5
        while any(process_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not [pid for pid in workers if process_running(pid)], "orphaned workers"
        time.sleep(0.3)
        assert set(bins(out)) == written and len(written) < 40
    finally:
        for pid in [run.pid] + workers:
            if process_running(pid):
                os.kill(pid, signal.SIGKILL)
        run.wait()


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
    preprocess.preprocess(str(tiny_data_root), str(out), workers=1, log=quiet)
    assert precious.read_text() == "precious" and not (tmp_path / "nowhere").exists()
    for sample_id in ids[:3]:
        path = out / (sample_id + ".bin")
        assert not path.is_symlink() and path.read_bytes() == (tiny_prep_path / (sample_id + ".bin")).read_bytes()


def test_a_manifest_that_is_a_source_image_or_a_lock_is_refused_before_any_work(tiny_data_root, tmp_path):
    """manifest.json is written through a symbolic link: one to a source image (or the folder's own lock, which
    the run holds) would be replaced. Refused before any bin is made, naming both."""
    image = find_images(tiny_data_root)[0].image
    before = open(image, "rb").read()
    out = tmp_path / "prep"
    out.mkdir()
    os.symlink(image, str(out / "manifest.json"))
    with pytest.raises(UserError, match="the manifest {} is a source image of this run \\({}\\)".format(
            out / "manifest.json", image)):
        preprocess.preprocess(str(tiny_data_root), str(out), workers=1, log=quiet)
    (out / "manifest.json").unlink()
    os.symlink(lock_path_for(str(out)), str(out / "manifest.json"))
    with pytest.raises(UserError, match="is the lock file of --save_path"):
        preprocess.preprocess(str(tiny_data_root), str(out), workers=1, log=quiet)
    assert open(image, "rb").read() == before and sorted(os.listdir(str(out))) == ["manifest.json"]
