"""Helpers shared by the tests: run the CLIs as a user would, check a one-line refusal, the small sizes the
tests use, a process that holds an output lock, a stand-in inference backend. Fixtures live in conftest.py."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from hrnetseg.backends import Backend, InputSpec

REPO = Path(__file__).resolve().parents[1]

# the deploy path's tiny model and data: tiny_ocr at 64x128, 5 images (one full batch of 4 and a short one)
TINY_PRESET = "tiny_ocr"
TINY_HEIGHT, TINY_WIDTH = 64, 128
TINY_IMAGES = 5
# the data steps' synthetic scenes: 3 images at 128x256, every evaluated class in each
SAMPLE_IMAGES, SAMPLE_HEIGHT, SAMPLE_WIDTH = 3, 128, 256


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


def default_sigint() -> None:
    """Children get Ctrl-C back even when the test run itself was started with SIGINT ignored
    (a background job of a non-interactive shell), so Python turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) >= 1 and "error" in lines[-1].lower(), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


# --- a process holding an output lock ------------------------------------------------------------------------

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
    """Another process holds `path`'s output lock for the block; yields its PID. orphan: the holder is the
    forked child of a process that has already exited. kill: it ends with SIGKILL (its lock file stays behind,
    naming a dead PID), else it lets go normally."""
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


def run_infer(model, prep, out=None, *extra):
    """python3 -m hrnetseg.infer in this process (with the `stub` fixture: the stand-in model)."""
    args = ["--model", str(model), "--input", str(prep)] + list(map(str, extra))
    if out is not None:
        args += ["--output", str(out), "--output_dirname", "bs"]
    from hrnetseg.runner import cli as infer

    return infer.main(args)
