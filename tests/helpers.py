"""Helpers shared by the tests: run the CLIs and the shell scripts as a user would, check a one-line refusal, the
small sizes and command lines the tests use, a process that holds an output lock, stand-in inference backends and
executables, small file and process facts. Fixtures live in conftest.py."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from hrnetseg.backends import Backend, InputSpec
from hrnetseg.data import cityscapes

REPO = Path(__file__).resolve().parents[1]

# the deploy path's tiny model and data: tiny_ocr at 64x128, 5 images (one full batch of 4 and a short one)
TINY_PRESET = "tiny_ocr"
TINY_HEIGHT, TINY_WIDTH = 64, 128
TINY_IMAGES = 5
# the data steps' synthetic scenes: 3 images at 128x256, every evaluated class in each
SAMPLE_IMAGES, SAMPLE_HEIGHT, SAMPLE_WIDTH = 3, 128, 256

# the command lines of the entry points, for run_script
RUNNER = ["-m", "hrnetseg.infer"]
EVALUATE = ["-m", "hrnetseg.evaluate"]
PREDICT = ["-m", "hrnetseg.predict"]
# the tiny export's shape flags for HRNet_pth2onnx.py
EXPORT_ARGS = ["--preset", TINY_PRESET, "--height", str(TINY_HEIGHT), "--width", str(TINY_WIDTH)]
# Multi-scale + flip testing on the 64 x 128 tiny images at base size 128: scales 0.5 and 1.0 run whole (32x64,
# 64x128); 1.5 makes 96 x 192 in 3 x 3 windows of 40 x 72 (rows 0, 40, 56; columns 0, 72, 120), the last row and
# column shifted back (crops of 32 x 64 would end exactly and shift nothing): 2 x (1 + 1 + 9) = 22 forward passes.
TTA_FLAGS = ["--scales", "0.5,1.0,1.5", "--flip", "--base_size", "128", "--crop_size", "40,72"]


# --- running the tools --------------------------------------------------------------------------------------

def run_script(args: Sequence[str], cwd: Path = REPO, env: dict = None, timeout: float = 600,
               input_text: str = None) -> subprocess.CompletedProcess:
    """Run `python <args>` (a top-level script or `-m module`) and capture text output."""
    full_env = dict(os.environ)   # hrnetseg: this checkout, installed editable into the tests' venv (scripts/test.sh)
    full_env.setdefault("HRNETSEG_PROGRESS", "0")
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, *map(str, args)], cwd=str(cwd), env=full_env, capture_output=True,
                          text=True, timeout=timeout, input=input_text, preexec_fn=default_sigint)


def run_in_process(main, argv: Sequence, capsys) -> subprocess.CompletedProcess:
    """A script's main() under run_cli in this process, as its command line runs it: exit code, stdout, stderr.
    Spares a test the interpreter and torch start-up of run_script where the process boundary is not what it
    checks (keep one run_script test per CLI for that)."""
    import pytest

    from hrnetseg.util.cli import run_cli

    with pytest.raises(SystemExit) as info:
        run_cli(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(argv), info.value.code, out, err)


def load_script(name: str):
    """A top-level script (HRNet_pth2onnx.py, ...) loaded as a module from the repository, whatever sys.path holds."""
    spec = importlib.util.spec_from_file_location(name[:-3], str(REPO / name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def default_sigint() -> None:
    """Children get Ctrl-C back even when the test run itself was started with SIGINT ignored
    (a background job of a non-interactive shell), so Python turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def quiet(*_args) -> None:
    """A log (or warn) callback that says nothing."""


# --- what a refusal looks like -------------------------------------------------------------------------------

def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) >= 1 and "error" in lines[-1].lower(), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


def assert_failed_check(result, *fragments) -> None:
    """Exit code 1 (a failed check), its last stderr line naming it, no traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and lines and "error" in lines[-1], result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


def refused_by_argparse(main, argv, capsys, *fragments) -> None:
    """argparse's refusal: exit 2 and its one-line error naming the flag."""
    import pytest

    with pytest.raises(SystemExit) as caught:
        main(list(map(str, argv)))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert caught.value.code == 2 and "error:" in last and all(f in last for f in fragments), last


@contextlib.contextmanager
def no_runtime_warnings():
    """The block gives no RuntimeWarning (numpy's 'invalid value' and the like)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]


@contextlib.contextmanager
def strict(seconds: int = 20):
    """No numpy warning may slip out, and nothing may block (a FIFO opened by mistake would)."""
    def hung(*_args):
        raise AssertionError("blocked for {} s: a FIFO was opened?".format(seconds))

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- files ---------------------------------------------------------------------------------------------------

def manifest_ids(prep) -> list:
    """The image ids a preprocess folder's manifest.json lists, in its order."""
    return json.loads((prep / "manifest.json").read_text())["ids"]


def find_images(root) -> list:
    """The samples of a data folder, as the tools find them."""
    return cityscapes.find_images(str(root))


def bins(folder) -> dict:
    """Every .bin file of a folder: name -> bytes."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.bin"))}


def output_ids(res: Path) -> list:
    """The image ids of a folder of model outputs named <id>_0.bin / <id>_1.bin, sorted."""
    return sorted(p.name[:-len("_1.bin")] for p in res.glob("*_1.bin"))


def file_tree(folder) -> dict:
    """Every path under folder (relative) -> its bytes (None for a folder)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(str(folder)):
        for name in dirnames:
            found[os.path.relpath(os.path.join(dirpath, name), str(folder))] = None
        for name in filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, str(folder))] = Path(path).read_bytes()
    return found


def make_special(path: Path, kind: str) -> None:
    """Replace path (if there is one) by a FIFO, a folder, a symbolic link loop, a broken symbolic link or an
    empty file."""
    if path.exists():
        path.unlink()
    if kind == "FIFO":
        os.mkfifo(str(path))
    elif kind == "folder":
        path.mkdir()
    elif kind == "symbolic link loop":
        os.symlink(path.name, str(path))
    elif kind == "broken symbolic link":
        os.symlink("nowhere.png", str(path))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        raise AssertionError(kind)


# --- checkpoints -------------------------------------------------------------------------------------------------

def save_state(path, state, change=None) -> str:
    """torch.save a shallow copy of `state`, first changed in place by change(copy) if given; returns the path."""
    import torch

    state = dict(state)
    if change:
        change(state)
    torch.save(state, str(path))
    return str(path)


# --- processes -----------------------------------------------------------------------------------------------

_HOLD = """
import os, sys
from hrnetseg.util.locks import output_lock
with output_lock(sys.argv[1]):
    if sys.argv[2] == "orphan":          # a worker that outlives its parent keeps the lock's descriptor
        child = os.fork()
        if child:
            print("held", child, flush=True)
            os._exit(0)
    else:
        print("held", os.getpid(), flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def lock_held_elsewhere(path, orphan: bool = False, kill: bool = False) -> Iterator[int]:
    """Another process (not our descendant) holds `path`'s output lock for the block; yields its PID. orphan: the
    holder is the forked child of a process that has already exited. kill: it ends with SIGKILL (its lock file
    stays behind, naming a dead PID), else it lets go normally."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path), "orphan" if orphan else "-"], cwd=str(REPO),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = holder.stdout.readline().split()
    assert line and line[0] == "held", line
    pid = int(line[1])
    if orphan:
        holder.wait()   # the lock's owner is gone; its child keeps the descriptor
    try:
        yield pid
    finally:
        if kill or orphan:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        holder.stdin.close()
        holder.wait()
        holder.stdout.close()


def process_running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan may wait a while for its new parent to reap it)."""
    try:
        with open("/proc/{}/stat".format(pid), "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:].split()[0] not in (b"Z", b"X")


def process_gone(pid: int) -> bool:
    """Exited (a zombie counts: it runs no more code)."""
    return not process_running(pid)


# --- a stand-in backend for the runner ------------------------------------------------------------------

OUT_SHAPE = (19, TINY_HEIGHT // 4, TINY_WIDTH // 4)


class StubBackend(Backend):
    """Constant logits for any batch; raises `error` on run number `fail_at` (1-based)."""

    name, device, precision = "stub", "cpu", "fp32"

    def __init__(self, fail_at: int = 0, error: BaseException = None) -> None:
        self.input = InputSpec("image", np.dtype("float32"), (None, 3, TINY_HEIGHT, TINY_WIDTH))
        self.output_names = ["output1", "output2"]
        self.fail_at, self.error, self.calls, self.batches = fail_at, error, 0, []

    def run(self, batch):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.error
        self.batches.append(batch.shape[0])
        logits = np.ones((batch.shape[0],) + OUT_SHAPE, np.float32)
        return [logits, logits]


def worker_config(model, **changes):
    """A Ray evaluation worker's settings for the tiny model (onnxruntime, batch size 1, one thread), changed."""
    from hrnetseg.scaleout.worker import WorkerConfig

    fields = dict(kind="onnxruntime", model=str(model), device=None, precision="fp32", preset="w48_ocr",
                  input_dtype="float32", size=(TINY_HEIGHT, TINY_WIDTH), batchsize=1, output_index=None, warmup=None,
                  threads=1, batch_delay_s=0.0, tta=None)
    fields.update(changes)
    return WorkerConfig(**fields)


def run_infer(model, prep, out=None, *extra):
    """python3 -m hrnetseg.infer in this process (with the `stub` fixture: the stand-in model)."""
    args = ["--model", str(model), "--input", str(prep)] + list(map(str, extra))
    if out is not None:
        args += ["--output", str(out), "--output_dirname", "bs"]
    from hrnetseg.runner import cli as infer

    return infer.main(args)


# --- the shell scripts, and stand-ins for the Ascend and TensorRT tools ------------------------------------
# Each stand-in logs its arguments (one JSON list per call) to $STUB_LOG, so the tests can assert the exact
# command lines (calls()). The `tools` fixture gives the folder to write them into and the environment.

ASCEND_TOOLS = ("atc", "npu-smi", "trtexec", "ais_bench")
ATC = r'''
import json, os, sys
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as fh:
    fh.write(json.dumps(["atc"] + args) + "\n")
if os.environ.get("STUB_FAIL"):
    sys.exit(3)
for arg in args:
    if arg.startswith("--output="):
        open(arg[len("--output="):] + ".om", "wb").close()
'''
NPU_SMI = r'''
import sys
sys.stdout.write(open(sys.argv[0] + ".txt").read())
'''


def write_tool(folder: Path, name: str, body: str) -> None:
    """An executable `name` in folder that runs the Python source `body`."""
    path = folder / name
    path.write_text("#!{}\n{}".format(sys.executable, body))
    path.chmod(0o755)


def clean_path(extra: Path) -> str:
    """PATH with the stand-ins first and no real Ascend or TensorRT tool behind them."""
    keep = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not any(os.path.exists(os.path.join(d, tool)) for tool in ASCEND_TOOLS)]
    return os.pathsep.join([str(extra)] + keep)


def calls(log: Path, tool: str) -> list:
    """The argument lists `tool`'s stand-in was called with, in order."""
    if not log.exists():
        return []
    return [c[1:] for c in map(json.loads, log.read_text().splitlines()) if c[0] == tool]


def bash(script: str, *args, env: dict, cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess:
    """scripts/<script> ARGS under bash with exactly the environment `env`, text output captured."""
    return subprocess.run(["bash", str(REPO / "scripts" / script)] + [str(a) for a in args], env=env, cwd=str(cwd),
                          capture_output=True, text=True, timeout=timeout)


def bash_plus_env(script: str, *args, env: dict = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """scripts/<script> ARGS under bash with this process's environment plus `env`, a minute at most."""
    return bash(script, *args, env=dict(os.environ, **(env or {})), cwd=cwd, timeout=60)


def table_rows(stdout: str) -> list:
    """The cells of the rows of a script's markdown table whose first cell is a number (a batch size)."""
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in stdout.splitlines()
            if re.match(r"^\| \d+ \|", line)]
