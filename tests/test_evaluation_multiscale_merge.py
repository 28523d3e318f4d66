"""The fast multi-scale merge (multiscale_merge.py) and the GPU merge (multiscale_merge_torch.py, here on torch's
CPU device as its stand-in) against the merge as first written (merge_reference.py), on small images whose
scales make whole inputs, windows with shifted last ones and odd sizes; which merge runs follows backend.device."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hrnetseg.backends import Backend, InputSpec
from hrnetseg.evaluation import multiscale, multiscale_merge_torch
from hrnetseg.evaluation.merge_reference import reference_labels, reference_scale_scores, reference_summed_scores
from hrnetseg.evaluation.multiscale import TestTimeAugmentation, main_output_runner, predict_train_ids, scale_runs
from hrnetseg.evaluation.multiscale_merge import merged_labels, merged_scores, scale_scores
from hrnetseg.util.errors import UserError

from helpers import REPO


class SmoothModel(Backend):
    """Logits that are a smooth random function of every 4th pixel (regions and boundaries of many classes), at
    a quarter of the input's size rounded up, as HRNet's."""

    name, device, precision = "smooth", "cpu", "fp32"

    def __init__(self, device: str = "cpu") -> None:
        rng = np.random.default_rng(5)
        self.weights = rng.standard_normal((19, 3)).astype(np.float32) * 4
        self.input = InputSpec("image", np.dtype("float32"), (None, 3, None, None))
        self.output_names = ["output"]
        self.device = device

    def run(self, batch):
        return [np.einsum("kc,nchw->nkhw", self.weights, batch[:, :, ::4, ::4]).astype(np.float32)]


def image_of(height: int, width: int, seed: int) -> np.ndarray:
    import cv2

    small = np.random.default_rng(seed).standard_normal((max(2, height // 6), max(2, width // 6), 3))
    return cv2.resize(small.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)


def inferred(height: int, width: int, tta: TestTimeAugmentation, seed: int = 0):
    run_main = main_output_runner(SmoothModel())
    return [(run.without_batch(), run_main(run.batch)) for run in scale_runs(image_of(height, width, seed), tta)]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


# odd sizes, portrait and landscape; scales above 1 in windows (the last ones shifted back), below 1 whole
CASES = [((37, 53), TestTimeAugmentation((0.5, 1.0, 1.5), True, 64, (32, 48))),
         ((41, 29), TestTimeAugmentation((0.75, 1.25, 1.75), False, 64, (33, 21))),
         ((64, 128), TestTimeAugmentation((0.5, 0.75, 1.0, 1.25, 1.5, 1.75), True, 128, (64, 128))),
         ((23, 61), TestTimeAugmentation((1.0, 2.0), True, 61, (7, 9)))]


@pytest.mark.parametrize("size, tta", CASES)
def test_the_fast_merge_is_the_reference_merge(size, tta):
    runs = inferred(*size, tta)
    want = reference_summed_scores(*size, runs, tta.flip)
    got = merged_scores(*size, runs, tta.flip)
    assert got.shape == want.shape and got.dtype == np.float32
    assert relative_error(got, want) < 1e-5
    labels = merged_labels(*size, runs, tta.flip)
    assert labels.dtype == np.uint8 and np.mean(labels == reference_labels(*size, runs, tta.flip)) >= 0.9999
    assert len(np.unique(labels)) >= 4   # a telling map
    np.testing.assert_array_equal(labels, got.argmax(axis=0))   # the bands sum the whole map's values
    for run, logits in runs:
        assert relative_error(scale_scores(run, logits, tta.flip), reference_scale_scores(run, logits, tta.flip)) < 1e-5


@pytest.mark.parametrize("band_rows", [1, 3, 7])
def test_bands_of_any_height_give_the_same_labels(band_rows):
    (height, width), tta = CASES[0]
    runs = inferred(height, width, tta, seed=band_rows)
    whole = merged_scores(height, width, runs, tta.flip).argmax(axis=0)
    np.testing.assert_array_equal(merged_labels(height, width, runs, tta.flip, band_rows), whole)
    assert np.mean(whole == reference_labels(height, width, runs, tta.flip)) >= 0.9999


@pytest.mark.parametrize("size, tta", CASES[:2])
def test_the_torch_merge_on_the_cpu_is_the_numpy_merge(size, tta):
    import torch

    runs = inferred(*size, tta, seed=1)
    labels = multiscale_merge_torch.merged_labels(*size, runs, tta.flip, "cpu")
    assert labels.dtype == np.uint8 and labels.shape == size
    assert np.mean(labels == merged_labels(*size, runs, tta.flip)) >= 0.9999
    for run, logits in runs:
        on_torch = multiscale_merge_torch._scale_scores(run, torch.from_numpy(logits), tta.flip)[0].numpy()
        assert relative_error(on_torch, scale_scores(run, logits, tta.flip)) < 1e-5


def test_the_merge_runs_where_the_backend_runs(monkeypatch):
    import torch

    (height, width), tta = CASES[0]
    runs = inferred(height, width, tta)
    calls = []

    def torch_merge(height, width, runs, flip, device):
        calls.append(device)
        return merged_labels(height, width, runs, flip)

    monkeypatch.setattr(multiscale_merge_torch, "merged_labels", torch_merge)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert multiscale_merge_torch.merge_device("cpu") is None
    assert multiscale_merge_torch.merge_device("cuda:1") == "cuda:1"
    multiscale.labels_from_scales(height, width, runs, tta.flip)                  # the CPU by default
    multiscale.labels_from_scales(height, width, runs, tta.flip, device="cpu")
    assert calls == []
    multiscale.labels_from_scales(height, width, runs, tta.flip, device="cuda:1")
    assert calls == ["cuda:1"]
    # predict_train_ids merges where main_output_runner's backend runs
    image = image_of(height, width, 0)
    predict_train_ids(image, main_output_runner(SmoothModel("cuda:0")), tta)
    predict_train_ids(image, main_output_runner(SmoothModel("cpu")), tta)
    assert calls == ["cuda:1", "cuda:0"]
    # a CUDA backend where torch has no GPU (ONNX Runtime's CUDA build beside a CPU torch): numpy
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert multiscale_merge_torch.merge_device("cuda:0") is None
    predict_train_ids(image, main_output_runner(SmoothModel("cuda:0")), tta)
    assert calls == ["cuda:1", "cuda:0"]


def test_the_numpy_merge_imports_and_runs_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"   # any import of torch fails
            "import numpy as np\n"
            "from hrnetseg.evaluation.multiscale import TestTimeAugmentation, predict_train_ids\n"
            "def run_main(batch):\n"
            "    return np.ones((len(batch), 19, -(-batch.shape[2] // 4), -(-batch.shape[3] // 4)), np.float32)\n"
            "run_main.device = 'cuda:0'\n"
            "tta = TestTimeAugmentation((0.5, 1.5), True, 32, (16, 16))\n"
            "print(predict_train_ids(np.zeros((16, 32, 3), np.float32), run_main, tta).shape)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(16, 32)"


def test_bad_logits_are_refused_or_merged_as_the_reference_merges_them():
    (height, width), tta = CASES[0]
    runs = inferred(height, width, tta)
    run, logits = runs[0]
    for bad in (logits[:1], logits[:, :18], logits[0], np.zeros((2, 19, 0, 4), np.float32)):
        with pytest.raises(UserError, match="main output is"):
            merged_labels(height, width, [(run, bad)], tta.flip)
        with pytest.raises(UserError, match="main output is"):
            multiscale_merge_torch.merged_labels(height, width, [(run, bad)], tta.flip, "cpu")
    # logits whose exp() overflows float32: one line, as before
    with pytest.raises(UserError, match="not finite"):
        merged_labels(height, width, [(run, logits * 100)], tta.flip)
    with pytest.raises(UserError, match="not finite"):
        merged_scores(height, width, [(run, logits * 100)], tta.flip)
    with pytest.raises(UserError, match="not finite"):
        multiscale_merge_torch.merged_labels(height, width, [(run, logits * 100)], tta.flip, "cpu")
    # float64 logits are taken as float32; logits too large to subtract go the reference's way (no overflow)
    np.testing.assert_array_equal(merged_labels(height, width, [(run, logits.astype(np.float64))], tta.flip),
                                  merged_labels(height, width, [(run, logits)], tta.flip))
    huge = np.where(logits > 0, np.float32(2e38), np.float32(-3e38))
    np.testing.assert_array_equal(scale_scores(run, huge, tta.flip), reference_scale_scores(run, huge, tta.flip))
