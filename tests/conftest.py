"""The tests' fixtures: expensive artefacts built once per session (a checkpoint, its export, synthetic data, their
preprocess and model-like outputs, a reference evaluation), private copies to change, the stand-in backend and the
stand-in tools' folder. Helpers: helpers.py."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from helpers import (
    SAMPLE_HEIGHT,
    SAMPLE_IMAGES,
    SAMPLE_WIDTH,
    TINY_HEIGHT,
    TINY_IMAGES,
    TINY_PRESET,
    TINY_WIDTH,
    StubBackend,
    clean_path,
    run_script,
)


@pytest.fixture
def run():
    return run_script


# --- the deploy path: a small official-format checkpoint, its dynamic-batch export, tiny data --------------

@pytest.fixture(scope="session")
def tiny_pth_path(tmp_path_factory) -> Path:
    """An official-format checkpoint (model. prefix, loss entry) of the tiny_ocr preset, seed 0."""
    from hrnetseg.model.random_weights import write_official_checkpoint

    path = tmp_path_factory.mktemp("tiny_pth") / "tiny_ocr.pth"
    write_official_checkpoint(path, TINY_PRESET, seed=0)
    return path


@pytest.fixture(scope="session")
def tiny_onnx_path(tmp_path_factory, tiny_pth_path) -> Path:
    """tiny_ocr exported from tiny_pth_path at TINY_HEIGHT x TINY_WIDTH, dynamic batch, float32 input, not rewritten.

    Shared: copy it before changing it.
    """
    from hrnetseg.model.export import export_onnx, load_model

    path = tmp_path_factory.mktemp("tiny_onnx") / "hrnet.onnx"
    export_onnx(load_model(TINY_PRESET, pth=str(tiny_pth_path)), str(path), TINY_HEIGHT, TINY_WIDTH, batch=None)
    return path


@pytest.fixture
def tiny_copy(tmp_path, tiny_onnx_path) -> Path:
    """A private copy of tiny_onnx_path, tmp_path / hrnet.onnx, free to change."""
    path = tmp_path / "hrnet.onnx"
    shutil.copy(str(tiny_onnx_path), str(path))
    return path


@pytest.fixture(scope="session")
def official_state():
    """tiny_ocr's official-format state dict (seed 0). Changes replace its tensors in a copy, never edit them."""
    from hrnetseg.model.random_weights import official_state_dict

    return official_state_dict(TINY_PRESET, seed=0)


@pytest.fixture(scope="session")
def tiny_int8_onnx_path(tmp_path_factory, tiny_onnx_path, tiny_prep_path) -> Path:
    """tiny_onnx_path quantised to int8 (NNCF, QDQ ONNX, the OCR attention float), calibrated on 2 of tiny_prep_path's
    bins. Shared: copy it before changing it."""
    pytest.importorskip("nncf")
    from hrnetseg.model.calibration import read_bin_images
    from hrnetseg.model.quantize import quantize_onnx

    path = tmp_path_factory.mktemp("tiny_int8") / "hrnet_int8.onnx"
    quantize_onnx(str(tiny_onnx_path), str(path), read_bin_images(str(tiny_prep_path), 2))
    return path


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    """TINY_IMAGES synthetic scenes at TINY_HEIGHT x TINY_WIDTH in the ModelZoo scripts' ./data layout
    (root/cityscapes/...)."""
    from hrnetseg.data.sample_scenes import generate

    root = tmp_path_factory.mktemp("tiny_data")
    generate(str(root), n=TINY_IMAGES, height=TINY_HEIGHT, width=TINY_WIDTH, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_prep_path(tmp_path_factory, tiny_data_root) -> Path:
    """tiny_data_root preprocessed to float32 bins + manifest.json. Shared: do not change it."""
    from hrnetseg.data.preprocess import preprocess

    out = tmp_path_factory.mktemp("tiny_prep") / "prep_dataset"
    preprocess(str(tiny_data_root), str(out), dtype="float32", workers=1, log=lambda message: None)
    return out


@pytest.fixture
def prep_copy(tmp_path, tiny_prep_path) -> Path:
    """A private copy of tiny_prep_path, tmp_path / prep, free to change."""
    path = tmp_path / "prep"
    shutil.copytree(tiny_prep_path, path)
    return path


@pytest.fixture(scope="session")
def local_npz(tmp_path_factory, tiny_data_root, tiny_onnx_path) -> Path:
    """The local streaming evaluation's confusion file for the tiny data at --batchsize 1 (run in this process):
    the reference for the scale-out runs. Shared: do not change it."""
    from hrnetseg.evaluation import cli as evaluate

    out = tmp_path_factory.mktemp("local_npz") / "local.npz"
    assert evaluate.main(["--datasets_path", str(tiny_data_root), "--onnx", str(tiny_onnx_path), "--batchsize", "1",
                          "--save_confusion", str(out)]) == 0
    return out


# --- the data steps: synthetic Cityscapes scenes and model-like outputs ---------------------------------

@pytest.fixture(scope="session")
def sample_data_root(tmp_path_factory) -> Path:
    """SAMPLE_IMAGES synthetic scenes at 128x256 in the ModelZoo scripts' ./data layout (root/cityscapes/...), every
    evaluated class in every image. Shared: do not change it."""
    from hrnetseg.data.sample_scenes import generate

    root = tmp_path_factory.mktemp("sample_data")
    generate(str(root), n=SAMPLE_IMAGES, height=SAMPLE_HEIGHT, width=SAMPLE_WIDTH, seed=0)
    return root


@pytest.fixture(scope="session")
def sample_results_path(tmp_path_factory, sample_data_root) -> Path:
    """Model-like outputs for sample_data_root as ais_bench names them (results/bs1/<id>_0.bin aux,
    <id>_1.bin main; 19 x 32 x 64 float32). Shared: do not change it."""
    from hrnetseg.data.sample_scenes import write_fake_outputs

    res = tmp_path_factory.mktemp("sample_results") / "bs1"
    write_fake_outputs(str(sample_data_root), str(res), seed=0)
    return res


@pytest.fixture(scope="session")
def gt(sample_data_root) -> Path:
    """sample_data_root's label folder, cityscapes/gtFine/val."""
    return sample_data_root / "cityscapes" / "gtFine" / "val"


# --- the runner with a stand-in model -------------------------------------------------------------------------

@pytest.fixture
def stub(monkeypatch):
    """infer.main loads this stand-in instead of the model; `stub.loaded` says whether it got that far."""
    backend = StubBackend()
    backend.loaded = False

    def load(*args, **kwargs):
        backend.loaded = True
        return backend

    from hrnetseg.runner import cli as infer

    monkeypatch.setattr(infer, "load_backend", load)
    return backend


@pytest.fixture(scope="session", autouse=True)
def auto_backend_stand_in_machine(tmp_path_factory):
    """--backend auto, the default of predict and evaluate, sees a CPU without bf16 (HRNETSEG_CPU_FLAGS) in every
    test: it picks the reference paths (onnxruntime fp32, torch fp32) without a check, so the tests' exact figures
    stay those of the reference path on any machine; its verdicts go to a private cache, never the user's.
    tests/test_backends_auto.py sets its own stand-in flags."""
    with pytest.MonkeyPatch.context() as patch:   # session-wide: the session fixtures run evaluate too
        patch.setenv("HRNETSEG_CPU_FLAGS", "fpu sse2 avx2")
        patch.setenv("HRNETSEG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "hrnetseg-cache"))
        yield


@pytest.fixture(autouse=True)
def default_pixel_budget():
    """The tools set the pixel budget for their whole process (--max_pixels): each test starts from the default."""
    yield
    from hrnetseg.data import images

    if images.max_pixels() != images.DEFAULT_MAX_PIXELS:
        images.set_max_pixels(images.DEFAULT_MAX_PIXELS)


@pytest.fixture
def colour_model(monkeypatch):
    """python -m hrnetseg.predict runs media_helpers.ColourModel, whatever model file it is given."""
    from hrnetseg.prediction import cli as predict

    from media_helpers import ColourModel

    model = ColourModel()
    monkeypatch.setattr(predict, "load_backend", lambda *args, **kwargs: model)
    return model


# --- the shell scripts' stand-in tools -------------------------------------------------------------------------

@pytest.fixture
def tools(tmp_path):
    """A bin folder (empty: add stand-ins with helpers.write_tool), the environment that puts it first on PATH,
    the stand-ins' call log."""
    folder = tmp_path / "bin"
    folder.mkdir()
    log = tmp_path / "calls.jsonl"
    env = dict(os.environ, PATH=clean_path(folder), PYTHON=sys.executable, STUB_LOG=str(log), HRNETSEG_PROGRESS="0")
    env.pop("AIS_BENCH", None)
    return folder, env, log
