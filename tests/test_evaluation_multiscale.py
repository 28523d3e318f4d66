"""hrnetseg.evaluation.multiscale against a straightforward restatement of upstream HRNet-OCR's multi-scale + flip
testing (torch, one window at a time, as lib/datasets/cityscapes.py at 0bbb288 loops), on the tiny model with small
base and crop sizes so that the whole-image branch, the sliding windows and the shifted last window all occur."""
from __future__ import annotations

import math
import re
import tracemalloc

import numpy as np
import pytest

from hrnetseg.backends import Backend, InputSpec
from hrnetseg.evaluation import multiscale
from hrnetseg.evaluation.multiscale import (
    MAX_SIDE,
    TestTimeAugmentation,
    check_memory,
    check_model_takes,
    combine_scales,
    main_output_runner,
    memory_needed,
    predict_train_ids,
    scale_runs,
    sliding_windows,
    summed_scores,
)
from hrnetseg.evaluation.tta_flags import add_tta_flags, tta_from_args
from hrnetseg.util.errors import UserError
from hrnetseg.util.memory import size_text

from helpers import TINY_PRESET, StubBackend

# tiny sizes: a 40 x 72 landscape and a 72 x 40 portrait image, base size 64, crop 32 x 48 (H x W)
BASE, CROP = 64, (32, 48)
SCALES = (0.5, 1.0, 1.25, 1.5)


def reference_summed(model, image_hwc: np.ndarray, scales, flip: bool, base: int, crop) -> np.ndarray:
    """Upstream's multi_scale_inference, restated plainly with torch: window by window, batch size 1."""
    import cv2
    import torch
    import torch.nn.functional as F

    def inference(crop_hwc):
        x = torch.from_numpy(np.ascontiguousarray(crop_hwc.transpose(2, 0, 1)))[None]
        with torch.no_grad():
            pred = F.interpolate(model(x)[1], x.shape[-2:], mode="bilinear", align_corners=True)
            if flip:
                flipped = F.interpolate(model(torch.flip(x, [3]))[1], x.shape[-2:], mode="bilinear",
                                        align_corners=True)
                pred = (pred + torch.flip(flipped, [3])) * 0.5
        return pred.exp()

    height, width = image_hwc.shape[:2]
    final = torch.zeros(1, 19, height, width)
    for scale in scales:
        long_side = int(base * scale + 0.5)
        if height > width:
            new_h, new_w = long_side, int(width * long_side / height + 0.5)
        else:
            new_h, new_w = int(height * long_side / width + 0.5), long_side
        image = cv2.resize(image_hwc, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        if scale <= 1.0:
            preds = inference(image)
        else:
            rows = int(np.ceil(1.0 * (new_h - crop[0]) / crop[0])) + 1
            cols = int(np.ceil(1.0 * (new_w - crop[1]) / crop[1])) + 1
            preds = torch.zeros(1, 19, new_h, new_w)
            count = torch.zeros(1, 1, new_h, new_w)
            for r in range(rows):
                for c in range(cols):
                    h1, w1 = min(r * crop[0] + crop[0], new_h), min(c * crop[1] + crop[1], new_w)
                    h0, w0 = max(h1 - crop[0], 0), max(w1 - crop[1], 0)
                    preds[:, :, h0:h1, w0:w1] += inference(image[h0:h1, w0:w1])
                    count[:, :, h0:h1, w0:w1] += 1
            preds = preds / count
        final += F.interpolate(preds, (height, width), mode="bilinear", align_corners=True)
    return final[0].numpy()


@pytest.fixture(scope="module")
def tiny_torch(tmp_path_factory):
    """(our torch backend on a tiny checkpoint, the same model as a plain torch module). Seed 2: its random
    weights give several classes on the test images, so the argmax comparisons mean something."""
    from hrnetseg.backends import load_backend
    from hrnetseg.model.checkpoint import load_checkpoint
    from hrnetseg.model.network import build_model
    from hrnetseg.model.random_weights import write_official_checkpoint

    tiny_pth_path = write_official_checkpoint(tmp_path_factory.mktemp("tta") / "tiny.pth", TINY_PRESET, seed=2)
    backend = load_backend("torch", str(tiny_pth_path), device="cpu", preset=TINY_PRESET)
    model = load_checkpoint(build_model(TINY_PRESET), str(tiny_pth_path), TINY_PRESET).eval()
    return backend, model


def normalized_image(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random scene (blobs, not noise, so classes form regions), normalized as upstream does."""
    import cv2

    from hrnetseg.data.cityscapes import MEAN, STD

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3)).astype(np.uint8)
    rgb = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    return ((rgb / np.float32(255.0) - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).astype(np.float32)


def test_windows_follow_upstream_count_and_shift_the_last_one_back():
    # 44 x 80 (a 40 x 72 image at scale 1.25, base 64) in 32 x 48 crops: 2 x 2 windows; the last row starts
    # at 44 - 32 = 12, the last column at 80 - 48 = 32 (both shifted back from a stride of one crop)
    assert sliding_windows(44, 80, (32, 48)) == [(0, 32, 0, 48), (0, 32, 32, 80), (12, 44, 0, 48), (12, 44, 32, 80)]
    # exactly two crops wide: no shift; smaller than the crop: one window of the whole image
    assert sliding_windows(32, 96, (32, 48)) == [(0, 32, 0, 48), (0, 32, 48, 96)]
    assert sliding_windows(20, 30, (32, 48)) == [(0, 20, 0, 30)]
    tta = TestTimeAugmentation(scales=SCALES, flip=True, base_size=BASE, crop_size=CROP)
    assert tta.scaled_sizes(40, 72) == [(18, 32), (36, 64), (44, 80), (53, 96)]
    assert tta.scaled_sizes(72, 40) == [(32, 18), (64, 36), (80, 44), (96, 53)]
    # per scale: whole, whole, 2 x 2 windows, 2 x 2 windows; each twice with flip
    assert tta.forward_passes(40, 72) == 2 * (1 + 1 + 4 + 4)
    assert tta.input_sizes(40, 72) == [(18, 32), (36, 64), (32, 48)]


@pytest.mark.parametrize("height, width, flip", [(40, 72, True), (72, 40, False)])
def test_summed_scores_match_the_restatement(tiny_torch, height, width, flip):
    backend, model = tiny_torch
    image = normalized_image(height, width, seed=height)
    tta = TestTimeAugmentation(scales=SCALES, flip=flip, base_size=BASE, crop_size=CROP)
    got = summed_scores(image, main_output_runner(backend), tta)
    want = reference_summed(model, image, SCALES, flip, BASE, CROP)
    assert got.shape == want.shape == (19, height, width) and got.dtype == np.float32
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5
    labels = predict_train_ids(image, main_output_runner(backend, batch_size=3), tta)
    assert labels.dtype == np.uint8
    assert np.mean(labels == want.argmax(axis=0)) >= 0.9999
    assert len(np.unique(labels)) > 1   # a map of one class would hide a mix-up of windows or scales


def test_scale_one_without_flip_agrees_with_single_scale_evaluation(tiny_torch):
    from hrnetseg.evaluation.upsample_argmax import logits_to_labels

    backend, _ = tiny_torch
    run_main = main_output_runner(backend)
    plain = TestTimeAugmentation(base_size=128)
    assert plain.is_plain() and plain.runs_as_is(64, 128) and not plain.runs_as_is(64, 100)
    agree = total = 0
    for seed in range(4):
        image = normalized_image(64, 128, seed)
        logits = run_main(image.transpose(2, 0, 1)[None].copy())[0]
        today = logits_to_labels(logits, 64, 128)
        agree += int((predict_train_ids(image, run_main, plain) == today).sum())
        total += today.size
    assert agree / total >= 0.9999


def test_a_fixed_size_model_that_cannot_take_a_scale_is_refused_in_one_line():
    stub = StubBackend()   # float32 N x 3 x 64 x 128
    tta = TestTimeAugmentation(scales=(0.5, 1.0), base_size=128)
    check_model_takes(stub.input, tta.input_sizes(64, 128)[1:])   # scale 1.0 is its size
    with pytest.raises(UserError, match=re.escape("the model takes float32 ?x3x64x128 but these scales need a "
                                                  "32x64 input")):
        check_model_takes(stub.input, tta.input_sizes(64, 128))
    with pytest.raises(UserError, match="--dynamic_hw"):
        summed_scores(normalized_image(64, 128, 0), main_output_runner(stub), tta)


def test_bad_model_outputs_are_refused():
    class NaNBackend(StubBackend):
        def run(self, batch):
            outputs = super().run(batch)
            outputs[1][:, 3, 0, 0] = np.nan
            return outputs

    class EighteenClasses(StubBackend):
        def run(self, batch):
            return [out[:, :18] for out in super().run(batch)]

    with pytest.raises(UserError, match=r"main output is 2x18x16x32 for 2 inputs; expected 2 x 19 x h x w"):
        predict_train_ids(normalized_image(64, 128, 0), main_output_runner(EighteenClasses()),
                          TestTimeAugmentation(flip=True, base_size=128))
    stub = NaNBackend()
    with pytest.raises(UserError, match="NaN or infinite"):
        predict_train_ids(normalized_image(64, 128, 0), main_output_runner(stub), TestTimeAugmentation(base_size=128))
    with pytest.raises(UserError, match="--output_index 2 does not fit a model with 2 outputs"):
        main_output_runner(stub, output_index=2)
    with pytest.raises(ValueError, match="float32 H x W x 3"):
        summed_scores(np.zeros((64, 128), np.float32), main_output_runner(stub), TestTimeAugmentation())


def test_flags_parse_and_refuse_bad_values():
    from hrnetseg.util.cli import ArgumentParser

    parser = ArgumentParser(prog="x")
    add_tta_flags(parser)
    tta = tta_from_args(parser.parse_args([]))
    assert tta == TestTimeAugmentation() and tta.is_plain() and tta.crop_size == (1024, 2048)
    tta = tta_from_args(parser.parse_args(["--scales", "0.5,0.75,1.0,1.25,1.5,1.75", "--flip", "--base-size", "1024",
                                           "--crop_size", "512,1024"]))
    assert tta.scales == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) and tta.flip and not tta.is_plain()
    assert (tta.base_size, tta.crop_size) == (1024, (512, 1024))
    for flag, value in (("--scales", ""), ("--scales", "0"), ("--scales", "-1"), ("--scales", "nan"),
                        ("--scales", "inf"), ("--scales", "1,1.0"), ("--scales", "1,,2"), ("--scales", "1e9"),
                        ("--crop_size", "1024"), ("--crop_size", "0,5"), ("--crop_size", "a,b"),
                        ("--crop_size", "1,2,3"), ("--base_size", "0"), ("--base_size", "-5"), ("--base_size", "1.5"),
                        ("--scales", "0.5,\u0661.5"), ("--scales", "1_0"), ("--scales", "\u00b2"),
                        ("--crop_size", "\u0661,2"), ("--base_size", "\u0661\u0662\u0668")):
        with pytest.raises(SystemExit):
            parser.parse_args([flag, value])
    # numbers in ASCII digits only, sides bounded (a float must hold every size they make)
    for flag, value in (("--scales", "0.5,40"), ("--scales", "\u0661"), ("--scales", "0.5,1_0"), ("--scales", " 1"),
                        ("--scales", "1e400"), ("--base_size", "\u0661\u0662\u0668"), ("--base_size", "1_024"),
                        ("--base_size", str(MAX_SIDE + 1)), ("--base_size", "1" + "0" * 400),
                        ("--crop_size", "\u0661,2"), ("--crop_size", "1,{}".format(MAX_SIDE + 1))):
        with pytest.raises(SystemExit):
            parser.parse_args([flag, value])
    assert tta_from_args(parser.parse_args(["--scales", ".5,1.,2", "--base_size", str(MAX_SIDE)])).scales == (
        0.5, 1.0, 2.0)
    with pytest.raises(UserError, match="no pixels left"):
        TestTimeAugmentation(scales=(0.01,), base_size=16).input_sizes(10, 20)
    with pytest.raises(UserError):
        TestTimeAugmentation(scales=(math.nan,))


@pytest.mark.parametrize("shape, out", [((19, 5, 7), (17, 29)), ((3, 8, 9), (8, 20)), ((3, 8, 9), (21, 9)),
                                        ((2, 6, 6), (6, 6)), ((2, 1, 4), (3, 9))])
def test_upsample_bilinear_is_torchs_align_corners_upsample(shape, out):
    import torch
    import torch.nn.functional as F

    from hrnetseg.evaluation.upsample_argmax import upsample_bilinear

    maps = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32) * 10
    want = F.interpolate(torch.from_numpy(maps)[None], out, mode="bilinear", align_corners=True)[0].numpy()
    got = upsample_bilinear(maps, *out)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    if shape[1:] == out:
        np.testing.assert_array_equal(got, maps)   # same size: a copy, as torch gives


@pytest.mark.parametrize("tta", [
    TestTimeAugmentation(scales=(0.5, 1.0, 1.5), flip=True, base_size=128, crop_size=(40, 72)),
    TestTimeAugmentation(scales=(1.0,), base_size=256),
    TestTimeAugmentation(scales=(0.5, 2.0), flip=True, base_size=128, crop_size=(7, 9))])
def test_the_memory_estimate_covers_what_the_merge_allocates(tta):
    # as the pipeline does it: every scale's logits made (the infer stage), then merged; tracemalloc counts
    # numpy's buffers. The estimate adds the image's copies and the next image's inputs, made meanwhile.
    import cv2  # noqa: F401 - imported before the count starts: its own allocations are not the merge's

    height, width = 64, 128
    image = np.random.default_rng(0).random((height, width, 3), dtype=np.float32)

    def run_main(batch):
        return np.ones((len(batch), 19, -(-batch.shape[2] // 4), -(-batch.shape[3] // 4)), np.float32)

    peaks = []
    for merge in (combine_scales, multiscale.labels_from_scales):   # the whole sum; every map and bands of the sum
        tracemalloc.start()
        try:
            merge(height, width, [(run.without_batch(), run_main(run.batch)) for run in scale_runs(image, tta)],
                  tta.flip)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert max(peaks) <= memory_needed(tta, height, width) <= 2 * max(peaks)


def test_scales_that_need_more_memory_than_is_available_are_refused(monkeypatch):
    monkeypatch.setattr(multiscale, "available_memory", lambda: 8 * 10 ** 9)
    huge = TestTimeAugmentation(base_size=100000)
    needed = memory_needed(huge, 64, 128)
    assert needed > 19 * 50000 * 100000 * 4   # the 19-class map of the 50000 x 100000 image it resizes to, at least
    with pytest.raises(UserError, match=re.escape(
            "scales 1, base size 100000, crop size 1024x2048 need about {} of memory for a 64x128 image (the "
            "multi-scale merge's 19-class maps and model inputs; the model's own memory not counted), but 8.0 GB is "
            "available: lower --base_size or the largest of --scales".format(size_text(needed)))):
        check_memory(huge, [(16, 64), (64, 128)])   # the size that needs the most is named
    check_memory(TestTimeAugmentation(scales=(0.5, 1.0, 1.5), flip=True, base_size=128), [(64, 128)])   # fits
    monkeypatch.setattr(multiscale, "available_memory", lambda: None)
    check_memory(huge, [(64, 128)])   # not known: nothing refused


class LinearModel(Backend):
    """A stand-in whose class scores are a fixed linear function of every 4th pixel's colour (many classes
    per picture, boundaries everywhere)."""

    name, device, precision = "linear", "cpu", "fp32"

    def __init__(self) -> None:
        rng = np.random.default_rng(1)
        self.weights = rng.standard_normal((19, 3)).astype(np.float32) * 3
        self.input = InputSpec("image", np.dtype("float32"), (None, 3, None, None))
        self.output_names = ["output"]

    def run(self, batch):
        return [np.einsum("kc,nchw->nkhw", self.weights, batch[:, :, ::4, ::4]).astype(np.float32)]


@pytest.mark.parametrize("band_rows", [1, 3, 7])
def test_labels_made_in_bands_of_rows_equal_the_whole_map(band_rows):
    """Predict's full-size work in bands of rows (tiny bands here) gives the labels of the whole summed map,
    bit for bit: every scale's upsample, band by band, is those rows of the whole upsample."""
    from hrnetseg.evaluation.multiscale import combine_scales, labels_from_scales, scale_runs
    from hrnetseg.evaluation.upsample_argmax import upsample_bilinear

    image = normalized_image(37, 53, 3)
    tta = TestTimeAugmentation(scales=(0.5, 1.0, 1.5), flip=True, base_size=64, crop_size=(32, 48))
    run_main = main_output_runner(LinearModel())
    runs = [(run.without_batch(), run_main(run.batch)) for run in scale_runs(image, tta)]
    whole = combine_scales(37, 53, runs, flip=True).argmax(axis=0).astype(np.uint8)
    assert len(np.unique(whole)) >= 5   # a telling map
    np.testing.assert_array_equal(labels_from_scales(37, 53, runs, True, band_rows=band_rows), whole)
    np.testing.assert_array_equal(predict_train_ids(image, run_main, tta), whole)   # the default band size

    maps = np.random.default_rng(band_rows).standard_normal((4, 9, 13)).astype(np.float32)
    full = upsample_bilinear(maps, 37, 53)
    for start in range(0, 37, band_rows):
        stop = min(start + band_rows, 37)
        np.testing.assert_array_equal(upsample_bilinear(maps, 37, 53, (start, stop)), full[:, start:stop])
    np.testing.assert_array_equal(upsample_bilinear(maps, 9, 53, (2, 5)), upsample_bilinear(maps, 9, 53)[:, 2:5])


def test_a_large_photo_never_gets_its_full_size_class_scores_at_once(monkeypatch):
    """19 x H x W float32 would be 76 bytes per pixel; in bands, the full-size work is a few bands of rows."""
    import tracemalloc

    from hrnetseg.evaluation import multiscale_merge

    monkeypatch.setattr(multiscale_merge, "BAND_BYTES", 1 << 20)
    image = normalized_image(600, 800, 4)   # 5.8 MB itself
    tta = TestTimeAugmentation(scales=(0.5, 1.0), base_size=64, crop_size=(32, 48))
    run_main = main_output_runner(LinearModel())
    tracemalloc.start()
    try:
        labels = predict_train_ids(image, run_main, tta)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert labels.shape == (600, 800)
    assert peak < 8 * (1 << 20), peak   # the whole map: 36 MB
