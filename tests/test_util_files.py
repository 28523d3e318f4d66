"""File-system safety and output locks: what may be read or replaced, and one writer per output."""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import REPO, assert_user_error, lock_held_elsewhere, run_script
from hrnetseg.util.errors import UserError
from hrnetseg.util import locks
from hrnetseg.util.files import (atomic_path, check_output_file, make_output_folder, remove_stale_temporaries,
                                 remove_stale_temporaries_beside, require_file, write_text_atomic)
from hrnetseg.util.locks import acquire_on_descriptor, lock_path_for, output_lock, read_owner


def special_files(folder):
    """{kind: path} of non-regular files made in `folder` (a device only where mknod is allowed)."""
    found = {"FIFO": folder / "fifo.png", "folder": folder / "dir.json", "socket": folder / "sock.json"}
    os.mkfifo(str(found["FIFO"]))
    found["folder"].mkdir()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(found["socket"]))
    server.close()
    try:
        os.mknod(str(folder / "null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
        found["character device"] = folder / "null"
    except (PermissionError, OSError):
        pass
    return found


# --------------------------------------------------------------------------------------------- files

def test_outputs_that_are_not_regular_files_are_refused_before_any_work(tmp_path):
    for kind, path in special_files(tmp_path).items():
        with pytest.raises(UserError, match="cannot write"):
            check_output_file(str(path), "--save_path")
        with pytest.raises(UserError):
            write_text_atomic(str(path), "x")
        assert not stat.S_ISREG(os.lstat(str(path)).st_mode), kind     # never replaced by a regular file
    check_output_file(str(tmp_path / "new.json"))
    (tmp_path / "x.onnx").write_bytes(b"")
    for name in ("", str(tmp_path / "newdir") + "/", str(tmp_path / "x.onnx") + "/.", str(tmp_path / "..")):
        with pytest.raises(UserError, match="give a file name"):
            check_output_file(name, "--save_path")
    with pytest.raises(UserError, match="does not exist"):
        check_output_file(str(tmp_path / "no" / "new.json"))


def test_a_symlinked_output_is_written_through_to_its_target(tmp_path):
    target = tmp_path / "real" / "result.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "result.json"
    link.symlink_to(target)
    check_output_file(str(link))
    write_text_atomic(str(link), "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]   # the temporary went beside it
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    with pytest.raises(UserError, match="loop"):
        check_output_file(str(loop))


def test_inputs_say_what_they_are(tmp_path):
    found = special_files(tmp_path)
    with pytest.raises(UserError, match="FIFO, not a regular file"):
        require_file(str(found["FIFO"]), "checkpoint")
    loop = tmp_path / "loop.pth"
    loop.symlink_to(loop)
    with pytest.raises(UserError, match="symbolic link loop"):
        require_file(str(loop), "checkpoint")
    broken = tmp_path / "broken.pth"
    broken.symlink_to(tmp_path / "gone.pth")
    with pytest.raises(UserError, match="broken symbolic link"):
        require_file(str(broken), "checkpoint")
    with pytest.raises(UserError, match="checkpoint not found"):
        require_file(str(tmp_path / "none.pth"), "checkpoint")
    with pytest.raises(UserError, match="not a folder"):
        make_output_folder(str(found["FIFO"]), "--save_path")


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / ".hrnet.onnx.{}.abc123_x.tmp".format(int(dead.stdout))
    live = tmp_path / ".hrnet.onnx.{}.def456_y.tmp".format(os.getpid())
    other = tmp_path / ".notes.tmp"
    for path in (stale, live, other):
        path.write_bytes(b"partial")
    foreign = tmp_path / ".vimswap.{}.abc123_x.tmp".format(int(dead.stdout))   # another program's, same shape
    older = tmp_path / ".other.onnx.{}.abc123_x.tmp".format(int(dead.stdout))
    for path in (foreign, older):
        path.write_bytes(b"partial")
    assert remove_stale_temporaries_beside(str(tmp_path / "hrnet.onnx")) == 2    # .onnx files' only
    assert not stale.exists() and not older.exists() and foreign.exists() and live.exists()
    assert remove_stale_temporaries(str(tmp_path)) == 1                          # a folder the tools own: all
    assert not foreign.exists() and live.exists() and other.exists()
    with pytest.raises(RuntimeError):
        with atomic_path(str(tmp_path / "x.bin")) as tmp:
            assert ".x.bin.{}.".format(os.getpid()) in tmp
            raise RuntimeError
    assert not (tmp_path / "x.bin").exists()


# --------------------------------------------------------------------------------------------- locks

def test_a_second_writer_stops_at_once_naming_the_first(tmp_path):
    out = tmp_path / "results" / "bs1"
    with lock_held_elsewhere(out, kill=True) as pid:
        assert read_owner(lock_path_for(str(out))) == pid
        assert lock_path_for(str(out) + "/") == str(tmp_path / "results" / "bs1.lock")   # beside, not inside
        began = time.monotonic()
        with pytest.raises(UserError, match="another run \\(PID {}\\)".format(pid)):
            with output_lock(str(out)):
                pass
        assert time.monotonic() - began < 2
    with output_lock(str(out)):          # the kernel released the killed holder's lock
        with output_lock(str(out)):      # re-entrant in one process
            assert read_owner(lock_path_for(str(out))) == os.getpid()
    assert not os.path.exists(lock_path_for(str(out)))    # removed when released


def test_a_lock_kept_by_an_orphan_of_a_dead_owner_is_taken_over(tmp_path, capsys):
    out = tmp_path / "prep"
    with lock_held_elsewhere(out, orphan=True):
        with output_lock(str(out)):
            assert read_owner(lock_path_for(str(out))) == os.getpid()
        assert "took over" in capsys.readouterr().err


SCRIPT = """
source "{common}"
PYTHON="{python}"
lock_output "$1"
echo "locked by $$"
"{python}" -c "from hrnetseg.util.locks import output_lock
with output_lock('$1'): print('child shares it')"
sleep "$2"
"""


def test_shell_scripts_hold_a_lock_their_children_share(tmp_path):
    script = tmp_path / "writer.sh"
    script.write_text(SCRIPT.format(common=REPO / "scripts" / "common.sh", python=sys.executable))
    out = tmp_path / "results" / "bs4"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    first = subprocess.Popen(["bash", str(script), str(out), "3"], stdout=subprocess.PIPE, text=True, env=env)
    assert first.stdout.readline().strip() == "locked by {}".format(first.pid)
    assert first.stdout.readline().strip() == "child shares it"
    second = subprocess.run(["bash", str(script), str(out), "0"], capture_output=True, text=True, env=env)
    assert_user_error(second, "PID {}".format(first.pid))
    assert first.wait() == 0
    assert not os.path.exists(lock_path_for(str(out)))
    again = subprocess.run(["bash", str(script), str(out), "0"], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr


def test_probes_run_under_a_timeout(tmp_path):
    script = tmp_path / "probe.sh"
    script.write_text('source "{}"\nprobe "$@" || echo "status $?"\necho "output: ${{PROBE_OUTPUT}}"\n'.format(
        REPO / "scripts" / "common.sh"))
    hung = subprocess.run(["bash", str(script), "sleep", "20"], capture_output=True, text=True, timeout=15,
                          env=dict(os.environ, HRNETSEG_PROBE_TIMEOUT="1"))
    assert_user_error(hung, "'sleep 20' did not answer within 1 s", "HRNETSEG_PROBE_TIMEOUT")
    answered = subprocess.run(["bash", str(script), "sh", "-c", "echo hi; exit 3"], capture_output=True, text=True)
    assert answered.stdout.splitlines() == ["status 3", "output: hi"]
    bad = subprocess.run(["bash", str(script), "true"], capture_output=True, text=True,
                         env=dict(os.environ, HRNETSEG_PROBE_TIMEOUT="soon"))
    assert_user_error(bad, "HRNETSEG_PROBE_TIMEOUT")


def test_cli_lock_path_command(tmp_path):
    result = run_script(["-m", "hrnetseg.util.locks", "path", tmp_path / "results" / "bs1"])
    assert result.returncode == 0 and result.stdout.strip() == str(tmp_path / "results" / "bs1.lock")


def test_an_output_whose_folder_we_may_not_write_runs_unlocked_and_says_so(tmp_path, monkeypatch, capsys):
    real_open = os.open

    def refuse_lock_files(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(locks.os, "open", refuse_lock_files)
    with output_lock(str(tmp_path / "mount")):
        pass
    assert "is not locked against a second run" in capsys.readouterr().err


def test_a_lock_file_removed_after_the_script_opened_it_is_opened_again(tmp_path):
    """The previous owner finishing between the script's open and its lock: retry (exit 75), never an error,
    and never a lock on a file that is no longer the lock."""
    out = tmp_path / "results" / "bs1"
    lock = lock_path_for(str(out))
    os.makedirs(os.path.dirname(lock))
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        os.remove(lock)
        assert acquire_on_descriptor(fd, str(out), os.getpid()) == "retry"
    finally:
        os.close(fd)


@pytest.mark.parametrize("call", ["open", "mkdir"])
def test_a_ctrl_c_that_lands_as_the_temporary_appears_leaves_nothing(tmp_path, monkeypatch, call):
    """The interrupt arrives when the temporary file (a PNG) or folder (a video) exists but its writer has not
    yet been told its name: nothing stays behind, and the next write works."""
    from hrnetseg.data.videos import atomic_video

    real = getattr(os, call)

    def interrupted(*args, **kwargs):
        made = real(*args, **kwargs)
        if call == "open":
            os.close(made)   # the descriptor the interrupted writer never got
        monkeypatch.setattr(os, call, real)   # once
        raise KeyboardInterrupt

    def write(name):
        if call == "open":
            with atomic_path(str(tmp_path / name)) as tmp:
                with open(tmp, "wb") as fh:
                    fh.write(b"x")
        else:
            with atomic_video(str(tmp_path / name), 5.0, 16, 16) as video:
                video.write(np.zeros((16, 16, 3), np.uint8))

    monkeypatch.setattr(os, call, interrupted)
    with pytest.raises(KeyboardInterrupt):
        write("a.png" if call == "open" else "a.mp4")
    assert os.listdir(str(tmp_path)) == []
    write("b.png" if call == "open" else "b.mp4")
    assert os.listdir(str(tmp_path)) == ["b.png" if call == "open" else "b.mp4"]
