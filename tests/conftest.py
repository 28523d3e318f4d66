"""Shared test helpers: run the CLIs as a user would, share expensive artefacts per session."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_script(args: Sequence[str], cwd: Path = REPO, env: dict = None, timeout: float = 600,
               input_text: str = None) -> subprocess.CompletedProcess:
    """Run `python <args>` (a top-level script or `-m module`) and capture text output."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.setdefault("HRNETSEG_PROGRESS", "0")
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, *map(str, args)], cwd=str(cwd), env=full_env, capture_output=True,
                          text=True, timeout=timeout, input=input_text, preexec_fn=default_sigint)


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


@pytest.fixture
def run():
    return run_script


# --- deploy-path fixtures (issue 4): a small official-format checkpoint and its dynamic-batch export -----

TINY_PRESET = "tiny_ocr"
TINY_HEIGHT, TINY_WIDTH = 64, 128


@pytest.fixture(scope="session")
def tiny_pth_path(tmp_path_factory) -> Path:
    """An official-format checkpoint (model. prefix, loss entry) of the tiny_ocr preset, seed 0."""
    from hrnetseg.testing import write_official_checkpoint

    path = tmp_path_factory.mktemp("tiny_pth") / "tiny_ocr.pth"
    write_official_checkpoint(path, TINY_PRESET, seed=0)
    return path


@pytest.fixture(scope="session")
def tiny_onnx_path(tmp_path_factory, tiny_pth_path) -> Path:
    """tiny_ocr exported from tiny_pth_path at TINY_HEIGHT x TINY_WIDTH, dynamic batch, float32 input, not rewritten.

    Shared: copy it before changing it.
    """
    from hrnetseg.export import export_onnx, load_model

    path = tmp_path_factory.mktemp("tiny_onnx") / "hrnet.onnx"
    export_onnx(load_model(TINY_PRESET, pth=str(tiny_pth_path)), str(path), TINY_HEIGHT, TINY_WIDTH, batch=None)
    return path


TINY_IMAGES = 5   # one full batch of 4 and a short one


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    """TINY_IMAGES synthetic scenes at TINY_HEIGHT x TINY_WIDTH in the seed's ./data layout (root/cityscapes/...)."""
    from hrnetseg.sample_data import generate

    root = tmp_path_factory.mktemp("tiny_data")
    generate(str(root), n=TINY_IMAGES, height=TINY_HEIGHT, width=TINY_WIDTH, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_prep_path(tmp_path_factory, tiny_data_root) -> Path:
    """tiny_data_root preprocessed to float32 bins + manifest.json. Shared: do not change it."""
    from hrnetseg.preprocess import preprocess

    out = tmp_path_factory.mktemp("tiny_prep") / "prep_dataset"
    preprocess(str(tiny_data_root), str(out), dtype="float32", workers=1, log=lambda message: None)
    return out


# --- data-step fixtures (issue 3): synthetic Cityscapes scenes and model-like outputs ---------------------

SAMPLE_IMAGES, SAMPLE_HEIGHT, SAMPLE_WIDTH = 3, 128, 256


@pytest.fixture(scope="session")
def sample_data_root(tmp_path_factory) -> Path:
    """SAMPLE_IMAGES synthetic scenes at 128x256 in the seed's ./data layout (root/cityscapes/...), every
    evaluated class in every image. Shared: do not change it."""
    from hrnetseg.sample_data import generate

    root = tmp_path_factory.mktemp("sample_data")
    generate(str(root), n=SAMPLE_IMAGES, height=SAMPLE_HEIGHT, width=SAMPLE_WIDTH, seed=0)
    return root


@pytest.fixture(scope="session")
def sample_results_path(tmp_path_factory, sample_data_root) -> Path:
    """Model-like outputs for sample_data_root as ais_bench names them (results/bs1/<id>_0.bin aux,
    <id>_1.bin main; 19 x 32 x 64 float32). Shared: do not change it."""
    from hrnetseg.sample_data import write_fake_outputs

    res = tmp_path_factory.mktemp("sample_results") / "bs1"
    write_fake_outputs(str(sample_data_root), str(res), seed=0)
    return res
