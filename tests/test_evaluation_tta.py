"""python -m hrnetseg.evaluate with --scales / --flip: upstream's multi-scale testing inside the streaming
stages gives the per-image function's confusion matrix; the default stays the single-scale path; a model that
cannot take the sizes is refused in one line."""
from __future__ import annotations

import time

import numpy as np
import pytest

from hrnetseg.data import cityscapes
from hrnetseg.evaluation import cli as evaluate
from hrnetseg.evaluation import multiscale, streaming
from hrnetseg.evaluation.metrics import ConfusionMatrix
from hrnetseg.evaluation.multiscale import TestTimeAugmentation
from hrnetseg.util.errors import UserError

from helpers import (
    TINY_HEIGHT,
    TINY_PRESET,
    TINY_WIDTH,
    TTA_FLAGS,
    assert_user_error,
    refused_by_argparse,
    run_in_process,
)

# TTA_FLAGS (helpers.py): scales 0.5 and 1.0 whole, 1.5 in 3 x 3 windows of 40 x 72, each twice with flip
TTA = TestTimeAugmentation(scales=(0.5, 1.0, 1.5), flip=True, base_size=128, crop_size=(40, 72))
PASSES = 2 * (1 + 1 + 9)


def test_windows_of_the_chosen_sizes_shift_the_last_ones():
    assert TTA.windows(1.5, 96, 192) == [(h0, h0 + 40, w0, w0 + 72) for h0 in (0, 40, 56) for w0 in (0, 72, 120)]
    assert TTA.forward_passes(TINY_HEIGHT, TINY_WIDTH) == PASSES


def test_tta_evaluation_matches_the_per_image_function(tmp_path, tiny_data_root, tiny_pth_path, capsys):
    from hrnetseg.backends import load_backend

    npz = tmp_path / "tta.npz"
    assert evaluate.main(["--datasets_path", str(tiny_data_root), "--pth", str(tiny_pth_path), "--preset",
                          TINY_PRESET, "--batchsize", "4", "--limit", "2", "--save_confusion", str(npz)]
                         + TTA_FLAGS) == 0
    out = capsys.readouterr().out
    assert "{} forward passes per image (model inputs 32x64, 64x128, 40x72)".format(PASSES) in out
    assert "forward passes: {} per image, {} in all".format(PASSES, PASSES * 2) in out
    assert "scales 0.5,1,1.5 + flip, base size 128, crop size 40x72" in out

    # the same images through the plain per-image function (what a Ray worker calls), same batch size
    backend = load_backend("torch", str(tiny_pth_path), device="cpu", preset=TINY_PRESET)
    want = np.zeros((19, 19), np.int64)
    for sample in cityscapes.find_images(str(tiny_data_root))[:2]:
        image, labels = streaming.decode(sample, "float32", (TINY_HEIGHT, TINY_WIDTH))
        want += streaming.tta_confusion(image, labels, backend, TTA, batch_size=4)
    got = ConfusionMatrix.load(str(npz))
    assert got.images == 2 and np.count_nonzero(want) > 1
    np.testing.assert_array_equal(got.matrix, want)


def test_default_and_scale_one_stay_on_the_single_scale_path(tmp_path, tiny_data_root, tiny_onnx_path, capsys,
                                                              monkeypatch):
    # a fixed 64 x 128 export: the single-scale path runs it; nothing resizes to the default base size 2048
    built = []
    monkeypatch.setattr(evaluate, "AugmentedStreamingEvaluation",
                        lambda *a, **k: built.append(a) or pytest.fail("test-time augmentation ran"))
    for extra in ([], ["--scales", "1.0"], ["--scales", "1", "--base_size", str(TINY_WIDTH)]):
        assert evaluate.main(["--datasets_path", str(tiny_data_root), "--onnx", str(tiny_onnx_path), "--limit", "1"]
                             + extra) == 0
        assert "forward passes" not in capsys.readouterr().out
    assert built == []


@pytest.mark.parametrize("extra, message", [
    (["--scales", "0.5,1.0", "--base_size", "128"],
     "the model takes float32 ?x3x64x128 but these scales need a 32x64 input"),
    (["--scales", "1.0", "--base_size", "256"], "need a 128x256 input"),   # scale 1.0 with a resize
    (["--scales", "0.0001"], "no pixels left"),
])
def test_a_model_that_cannot_take_the_sizes_is_refused(tiny_data_root, tiny_onnx_path, extra, message):
    with pytest.raises(UserError) as info:
        evaluate.main(["--datasets_path", str(tiny_data_root), "--onnx", str(tiny_onnx_path)] + extra)
    assert message in str(info.value) and info.value.exit_code == 2


def test_uint8_input_is_refused_with_tta(tiny_data_root, tiny_pth_path):
    with pytest.raises(UserError, match="feeds the normalized float32 image"):
        evaluate.main(["--datasets_path", str(tiny_data_root), "--pth", str(tiny_pth_path), "--preset", TINY_PRESET,
                       "--input_dtype", "uint8", "--flip", "--base_size", "128"])


def test_scales_and_sizes_beyond_the_memory_are_refused_at_once(tiny_data_root, tiny_onnx_path, capsys, monkeypatch):
    monkeypatch.setattr(multiscale, "available_memory", lambda: 8 * 10 ** 9)
    base = ["--datasets_path", tiny_data_root, "--onnx", tiny_onnx_path]
    began = time.perf_counter()
    result = run_in_process(evaluate.main, base + ["--base_size", "100000"], capsys)
    assert time.perf_counter() - began < 1.0   # from the first image's header: no label read, no model loaded
    assert_user_error(result, "scales 1, base size 100000, crop size 1024x2048 need about ",
                      " of memory for a {}x{} image".format(TINY_HEIGHT, TINY_WIDTH), "but 8.0 GB is available")
    refused_by_argparse(evaluate.main, base + ["--scales", "0.5,40"], capsys, "--scales", "scales in (0, 8]")
