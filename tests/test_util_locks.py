"""Output locks (hrnetseg.util.locks, and lock_output in scripts/common.sh): one writer per output, a second run
stops at once naming the first, a dead owner's lock is taken over, lock files that are not regular files are
refused."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from hrnetseg.util import locks
from hrnetseg.util.errors import UserError
from hrnetseg.util.locks import acquire_on_descriptor, lock_path_for, output_lock, read_owner

from helpers import REPO, assert_user_error, lock_held_elsewhere, run_script
from media_helpers import full_disk_skip_reason, on_a_full_disk


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


FULL_DISK_LOCKS = r"""
import subprocess
TAKE = (
    "import sys\nfrom hrnetseg.util.cli import run_cli\nfrom hrnetseg.util.locks import output_lock\n"
    "def take(argv):\n    with output_lock(argv[0]):\n        print('held')\nrun_cli(take, sys.argv[1:])\n")
script = os.path.join(disk, "..", "lock.sh")
with open(script, "w") as fh:
    fh.write('source "{}/scripts/common.sh"\nPYTHON="{}"\nlock_output "$1"\necho locked\n'.format(
        os.getcwd(), sys.executable))
print("shell", subprocess.run(["bash", script, os.path.join(disk, "by_shell")]).returncode, flush=True)
print("python", subprocess.run([sys.executable, "-c", TAKE, os.path.join(disk, "by_python")]).returncode, flush=True)
print("left", sorted(os.listdir(disk)), flush=True)
nodes = os.path.join(disk, "..", "nodes")   # a tmpfs without a free inode: the lock file cannot even be made
os.makedirs(nodes)
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,nr_inodes=2", "tmpfs", nodes], check=True)
open(os.path.join(nodes, "filler"), "w").close()
print("shell", subprocess.run(["bash", script, os.path.join(nodes, "by_shell")]).returncode, flush=True)
print("python", subprocess.run([sys.executable, "-c", TAKE, os.path.join(nodes, "by_python")]).returncode, flush=True)
print("left", sorted(os.listdir(nodes)), flush=True)
"""


def test_a_lock_on_a_full_disk_is_one_line_and_leaves_no_lock_file(tmp_path):
    """A lock file made on a full disk that its owner cannot be written into, and one that cannot be made at all:
    one line, exit 1, no empty lock file left (by Python, and by lock_output in scripts/common.sh)."""
    reason = full_disk_skip_reason()
    if reason:
        pytest.skip(reason)
    result = on_a_full_disk(tmp_path / "disk", FULL_DISK_LOCKS)
    assert result.stdout.splitlines() == ["shell 1", "python 1", "left ['filler']"] * 2, (result.stdout,
                                                                                          result.stderr)
    full = "no space left on the device while writing {}"
    assert result.stderr.splitlines() == [
        "python3 -m hrnetseg.util.locks: error: " + full.format(tmp_path / "disk" / "by_shell.lock"),
        "-c: error: " + full.format(tmp_path / "disk" / "by_python.lock"),
        "error: cannot create lock file {}: No space left on device".format(tmp_path / "nodes" / "by_shell.lock"),
        "-c: error: " + full.format(tmp_path / "nodes" / "by_python.lock")], result.stderr
