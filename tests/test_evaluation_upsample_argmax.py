"""upsample_argmax: the exact fast upsample + argmax against torch, bit for bit."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from hrnetseg.data import sample_scenes
from hrnetseg.data.cityscapes import ID_TO_TRAIN
from hrnetseg.evaluation import upsample_argmax

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_labels(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    up = F.interpolate(torch.from_numpy(logits)[None], size=(height, width), mode="bilinear", align_corners=True)
    return up[0].numpy().argmax(axis=0)


def realistic_logits(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    labels = sample_scenes.scene_labels(max(height, 64), max(width, 128), rng)[:height, :width]
    return sample_scenes.fake_logits(ID_TO_TRAIN[labels], rng)


def near_ties(logits: np.ndarray, seed: int) -> np.ndarray:
    """Copies of one class into another, exactly or one float32 step apart, over random halves."""
    rng = np.random.RandomState(seed)
    logits = logits.copy()
    for _ in range(4):
        a, b = rng.randint(0, logits.shape[0], 2)
        half = rng.rand(*logits.shape[1:]) < 0.5
        logits[b][half] = np.nextafter(logits[a][half], np.float32(np.inf * (1 if seed % 2 else -1)))
        logits[b][~half] = logits[a][~half]
    return logits


@pytest.mark.parametrize("height,width", [(128, 256), (129, 257), (100, 300), (1024, 2048)])
def test_matches_torch_on_model_like_logits(height, width):
    logits = realistic_logits(height, width, seed=height)
    assert np.array_equal(upsample_argmax.logits_to_labels(logits, height, width), torch_labels(logits, height, width))


@pytest.mark.parametrize("seed", range(6))
def test_matches_torch_with_ties_and_one_ulp_near_ties(seed):
    rng = np.random.RandomState(seed)
    h, w = rng.randint(2, 40, size=2)
    height, width = 4 * h + rng.randint(-3, 4), 4 * w + rng.randint(-3, 4)
    height, width = max(height, 70), max(width, 70)  # torch uses another kernel when height + width <= 128
    base = (rng.standard_normal((19, h, w)) * 3).astype(np.float32)
    for logits in (near_ties(base, seed), np.round(base), np.zeros_like(base)):
        assert np.array_equal(upsample_argmax.logits_to_labels(logits, height, width), torch_labels(logits, height,
                                                                                                    width))


def test_matches_torch_on_noise_dense_path_and_identity_size():
    rng = np.random.RandomState(7)
    noise = rng.standard_normal((19, 40, 70)).astype(np.float32)
    assert np.array_equal(upsample_argmax.logits_to_labels(noise, 157, 279), torch_labels(noise, 157, 279))
    assert np.array_equal(upsample_argmax.logits_to_labels(noise, 40, 170), torch_labels(noise, 40, 170))
    assert np.array_equal(upsample_argmax.logits_to_labels(noise, 40, 70), noise.argmax(axis=0))


def test_upsample_reference_is_bitwise_torch():
    logits = np.random.RandomState(3).standard_normal((19, 17, 29)).astype(np.float32)
    up = F.interpolate(torch.from_numpy(logits)[None], size=(67, 115), mode="bilinear", align_corners=True)
    assert np.array_equal(upsample_argmax.upsample_reference(logits, 67, 115), up[0].numpy())


def _fma_exact(a, b, c) -> np.float32:
    """Correctly rounded float32 of a * b + c, from exact rationals (ties to even)."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    guess = np.float32(float(exact))
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    errors = [abs(Fraction(float(x)) - exact) for x in candidates]
    best = min(errors)
    nearest = [x for x, e in zip(candidates, errors) if e == best]
    return min(nearest, key=lambda x: int(np.array(x).view(np.uint32)) & 1)


def test_fma32_is_correctly_rounded():
    rng = np.random.RandomState(0)
    a = (rng.standard_normal(2000) * 10).astype(np.float32)
    b = rng.rand(2000).astype(np.float32)
    c = (rng.standard_normal(2000) * np.float32(2.0) ** rng.randint(-30, 30, 2000)).astype(np.float32)
    c[:500] = -(a[:500] * b[:500])  # cancellation
    # a case where rounding to float64 first and then to float32 gives the wrong answer (double rounding)
    a[0], b[0], c[0] = np.float32(1 + 2.0 ** -23), np.float32((1 - 2.0 ** -23) * 2.0 ** -24), np.float32(1 + 2.0 ** -23)
    assert np.float32(float(a[0]) * float(b[0]) + float(c[0])) != _fma_exact(a[0], b[0], c[0])
    ours = upsample_argmax.fma32(a, b, c)
    assert all(ours[i] == _fma_exact(a[i], b[i], c[i]) for i in range(a.size))


def test_logits_to_labels_rejects_nan():
    logits = np.zeros((19, 8, 8), np.float32)
    logits[3, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        upsample_argmax.logits_to_labels(logits, 32, 32)
