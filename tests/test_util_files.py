"""File-system safety: what may be read or replaced, non-regular files and empty paths named for what they are,
symbolic links written through, temporaries of dead writers removed, nothing left by a Ctrl-C."""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

import numpy as np
import pytest

from hrnetseg.evaluation.postprocess import evaluate_folder
from hrnetseg.util import locks
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import (
    atomic_path,
    check_output_file,
    check_outputs_apart,
    make_output_folder,
    remove_stale_temporaries,
    remove_stale_temporaries_beside,
    require_file,
    require_folder,
    write_text_atomic,
)

from helpers import assert_user_error, quiet, run_script


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
            evaluate_folder(str(sample_results_path), labels, log=quiet, warn=quiet,
                            **{flag: str(tmp_path / "x.txt" / "sub" / "out")})
    with pytest.raises(UserError, match="cannot create output folder DIR .*: {}$".format(blocked)):
        make_output_folder(str(tmp_path / "x.txt" / "data"), "DIR")
    with pytest.raises(UserError, match="cannot create lock file .*: {}$".format(blocked)):
        with locks.output_lock(str(tmp_path / "x.txt" / "out")):
            pass
    assert (tmp_path / "x.txt").read_text() == "precious"


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


def test_outputs_apart_from_inputs_by_link_hard_link_and_lock(tmp_path):
    """One rule for every tool: an output may not be an input (by name, through a symbolic link, as a hard link,
    or a name not there yet that resolves to one), another output, or a lock the run holds; each refusal is one
    line naming both roles."""
    model = tmp_path / "hrnet.onnx"
    model.write_bytes(b"model")
    os.symlink(str(model), str(tmp_path / "link.json"))
    os.link(str(model), str(tmp_path / "hard.json"))
    (tmp_path / "sub").mkdir()
    os.symlink(str(tmp_path / "sub"), str(tmp_path / "via"))
    inputs = {"the model": str(model), "a label": [str(tmp_path / "a.png"), None]}

    def refused(outputs, fragment, **kwargs):
        with pytest.raises(UserError, match=fragment):
            check_outputs_apart(outputs, inputs, **kwargs)

    refused({"--save_path": str(model)}, "--save_path .*hrnet.onnx is the model of this run: writing it would replace")
    refused({"--save_path": str(tmp_path / "link.json")}, r"link.json is the model of this run \(.*hrnet.onnx\)")
    refused({"--save_path": str(tmp_path / "hard.json")}, "hard.json is the model")
    refused({"--save_path": str(tmp_path / "sub" / ".." / "a.png")}, "is a label of this run")   # not there yet
    refused({"--save_path": str(tmp_path / "r.json"), "--save_confusion": str(tmp_path / "via" / ".." / "r.json")},
            "--save_path .*r.json and --save_confusion .*r.json are the same file")
    refused({"--save_path": str(tmp_path / "r.json"), "--save_confusion": str(tmp_path / "r.json.lock")},
            "--save_confusion .*r.json.lock is the lock file of --save_path .*r.json: writing it would break the lock")
    refused({"a picture": [str(tmp_path / "vis.lock")]}, "is the lock file of --save_vis", locked={
        "--save_vis": str(tmp_path / "vis")})
    with locks.output_lock(str(tmp_path / "held")):
        refused({"--junit": str(tmp_path / "held.lock")}, "is a lock file this run holds")
    check_outputs_apart({"--save_path": str(tmp_path / "r.json"), "--save_confusion": None}, inputs)


READ_ONLY_CHECKS = """
import sys
from hrnetseg.util import locks
from hrnetseg.util.errors import UserError
from hrnetseg.util.files import check_output_file, make_output_folder, write_text_atomic
ro = sys.argv[1]
for call in (lambda: check_output_file(ro + "/r.json", "--save_path"),
             lambda: make_output_folder(ro + "/vis", "--save_vis"),
             lambda: write_text_atomic(ro + "/r.json", "{}")):
    try:
        call()
    except UserError as exc:
        print(exc)
with locks.output_lock(ro + "/out"):
    pass
"""


def test_a_read_only_file_system_is_named_as_such(tmp_path):
    """EROFS was reported as "permission denied", which sends the user to chmod: in a mount namespace of its own
    the test mounts a read-only tmpfs and has the output checks, a write and a lock meet it."""
    import errno
    import shutil

    from hrnetseg.util.files import describe_os_error

    assert describe_os_error(OSError(errno.EROFS, "Read-only file system"), "x") == \
        "cannot write x: read-only file system"
    ro = tmp_path / "ro"
    ro.mkdir()
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to mount a read-only file system in a namespace of the test's own")
    mount = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=64k,ro none "$1" && shift && '
                            'exec "$@"', "sh", str(ro), sys.executable, "-c", READ_ONLY_CHECKS, str(ro)],
                           capture_output=True, text=True, timeout=60)
    if mount.returncode != 0 and not mount.stdout and ("unshare" in mount.stderr or "mount" in mount.stderr):
        pytest.skip("a user and mount namespace cannot be made here: {}".format(mount.stderr.strip()))
    assert mount.returncode == 0, mount.stderr
    assert mount.stdout.splitlines() == [
        "cannot write --save_path {}/r.json: folder {} is on a read-only file system".format(ro, ro),
        "cannot create output folder --save_vis {}/vis: read-only file system".format(ro),
        "cannot write {}/r.json: read-only file system".format(ro)], mount.stdout
    assert "(its folder is on a read-only file system)" in mount.stderr and "permission" not in mount.stdout
