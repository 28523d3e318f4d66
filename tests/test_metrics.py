"""metrics: the exact fast upsample-argmax against torch, the confusion matrix, scores, shards and merge."""
from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from hrnetseg import metrics, sample_data
from hrnetseg.cityscapes import CLASS_NAMES, ID_TO_TRAIN
from hrnetseg.cli import UserError
from hrnetseg.metrics import ConfusionMatrix

from conftest import assert_user_error, run_script

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_labels(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    up = F.interpolate(torch.from_numpy(logits)[None], size=(height, width), mode="bilinear", align_corners=True)
    return up[0].numpy().argmax(axis=0)


def realistic_logits(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    labels = sample_data.scene_labels(max(height, 64), max(width, 128), rng)[:height, :width]
    return sample_data.fake_logits(ID_TO_TRAIN[labels], rng)


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
    assert np.array_equal(metrics.logits_to_labels(logits, height, width), torch_labels(logits, height, width))


@pytest.mark.parametrize("seed", range(6))
def test_matches_torch_with_ties_and_one_ulp_near_ties(seed):
    rng = np.random.RandomState(seed)
    h, w = rng.randint(2, 40, size=2)
    height, width = 4 * h + rng.randint(-3, 4), 4 * w + rng.randint(-3, 4)
    height, width = max(height, 70), max(width, 70)  # torch uses another kernel when height + width <= 128
    base = (rng.standard_normal((19, h, w)) * 3).astype(np.float32)
    for logits in (near_ties(base, seed), np.round(base), np.zeros_like(base)):
        assert np.array_equal(metrics.logits_to_labels(logits, height, width), torch_labels(logits, height, width))


def test_matches_torch_on_noise_dense_path_and_identity_size():
    rng = np.random.RandomState(7)
    noise = rng.standard_normal((19, 40, 70)).astype(np.float32)
    assert np.array_equal(metrics.logits_to_labels(noise, 157, 279), torch_labels(noise, 157, 279))
    assert np.array_equal(metrics.logits_to_labels(noise, 40, 170), torch_labels(noise, 40, 170))
    assert np.array_equal(metrics.logits_to_labels(noise, 40, 70), noise.argmax(axis=0))


def test_upsample_reference_is_bitwise_torch():
    logits = np.random.RandomState(3).standard_normal((19, 17, 29)).astype(np.float32)
    up = F.interpolate(torch.from_numpy(logits)[None], size=(67, 115), mode="bilinear", align_corners=True)
    assert np.array_equal(metrics.upsample_reference(logits, 67, 115), up[0].numpy())


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
    ours = metrics.fma32(a, b, c)
    assert all(ours[i] == _fma_exact(a[i], b[i], c[i]) for i in range(a.size))


def test_logits_to_labels_rejects_nan():
    logits = np.zeros((19, 8, 8), np.float32)
    logits[3, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.logits_to_labels(logits, 32, 32)


def test_confusion_rows_are_ground_truth():
    gt = np.array([[0, 0, 1, 255], [2, 254, 1, 1]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 5], [2, 2, 0, 1]], dtype=np.uint8)
    counts = metrics.confusion(pred, gt)
    expected = np.zeros((19, 19), np.int64)
    for g, p in [(0, 0), (0, 1), (1, 1), (2, 2), (1, 0), (1, 1)]:
        expected[g, p] += 1
    assert np.array_equal(counts, expected)
    with pytest.raises(ValueError):
        metrics.confusion(pred + 30, gt)


def test_scores_follow_cityscapes_and_the_seed():
    matrix = np.zeros((19, 19), np.int64)
    matrix[0, 0], matrix[0, 1], matrix[1, 1], matrix[2, 0] = 8, 2, 5, 1  # classes 3..18 never occur
    result = metrics.scores(matrix, images=2)
    assert result["per_class"]["road"] == pytest.approx(8 / 11)
    assert result["per_class"]["sidewalk"] == pytest.approx(5 / 7)
    assert result["per_class"]["building"] == 0.0 and result["per_class"]["wall"] is None
    assert result["mIoU"] == pytest.approx((8 / 11 + 5 / 7 + 0) / 3)
    assert result["value"]["mean_Iou"] == pytest.approx((8 / 11 + 5 / 7) / 19)
    assert result["value"]["Iou_array"][3] == 0.0 and len(result["value"]["Iou_array"]) == 19
    assert result["pixel_accuracy"] == pytest.approx(13 / 16)
    assert result["mean_accuracy"] == pytest.approx((0.8 + 1 + 0) / 3)
    assert result["title"] == "overall statistical evaluation" and result["images"] == 2
    assert list(result["per_class"]) == list(CLASS_NAMES)


def test_miou_equals_seed_mean_when_every_class_occurs():
    rng = np.random.RandomState(1)
    matrix = rng.randint(1, 100, size=(19, 19))
    result = metrics.scores(matrix, images=1)
    assert result["mIoU"] == result["value"]["mean_Iou"]


def _shard(seed: int, ids) -> metrics.ConfusionMatrix:
    rng = np.random.RandomState(seed)
    shard = metrics.ConfusionMatrix()
    for sample_id in ids:
        gt = rng.randint(0, 19, size=(20, 30)).astype(np.uint8)
        gt[:3] = 255
        shard.update(rng.randint(0, 19, size=(20, 30)).astype(np.uint8), gt, sample_id)
    return shard


def test_shards_merge_exactly(tmp_path):
    a, b = _shard(0, ["a1", "a2"]), _shard(1, ["b1"])
    whole = metrics.ConfusionMatrix()
    for shard in (_shard(0, ["a1", "a2"]), _shard(1, ["b1"])):
        whole.add(shard.matrix)
    a.save(str(tmp_path / "a.npz"))
    b.save(str(tmp_path / "b.npz"))
    loaded = metrics.ConfusionMatrix.load(str(tmp_path / "a.npz"))
    assert np.array_equal(loaded.matrix, a.matrix) and loaded.images == 2 and loaded.ids == ["a1", "a2"]
    merged = loaded.merge(metrics.ConfusionMatrix.load(str(tmp_path / "b.npz")))
    assert merged.compute()["confusion_matrix"] == whole.compute()["confusion_matrix"]
    assert merged.images == 3
    with pytest.raises(UserError, match="two shards"):
        merged.merge(_shard(2, ["b1"]))


def test_merge_cli(tmp_path):
    _shard(0, ["a1", "a2"]).save(str(tmp_path / "a.npz"))
    _shard(1, ["b1"]).save(str(tmp_path / "b.npz"))
    result = run_script(["-m", "hrnetseg.metrics", "merge", tmp_path / "a.npz", tmp_path / "b.npz",
                         "--save_path", tmp_path / "result.json"])
    assert result.returncode == 0, result.stderr
    assert "mIoU" in result.stdout
    merged = json.loads((tmp_path / "result.json").read_text())
    expected = _shard(0, ["a1", "a2"]).merge(_shard(1, ["b1"])).compute()
    assert merged == json.loads(json.dumps(expected))


def test_merge_cli_errors(tmp_path):
    _shard(0, ["a1"]).save(str(tmp_path / "a.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    out = tmp_path / "result.json"
    base = ["-m", "hrnetseg.metrics", "merge"]
    assert_user_error(run_script(base + [tmp_path / "a.npz", tmp_path / "none.npz", "--save_path", out]),
                      "not found", "none.npz")
    assert_user_error(run_script(base + [tmp_path / "a.npz", tmp_path / "junk.npz", "--save_path", out]),
                      "junk.npz")
    assert_user_error(run_script(base + [tmp_path / "a.npz", tmp_path / "a.npz", "--save_path", out]),
                      "two shards")
    assert not out.exists()


def test_shards_of_different_model_outputs_are_not_summed(tmp_path, sample_data_root, sample_results_path):
    """An aux-output shard summed with main-output shards would be no model's mIoU: merge refuses it."""
    from hrnetseg.metrics import merge_files
    from hrnetseg.postprocess import evaluate_folder

    labels = str(sample_data_root / "cityscapes" / "gtFine" / "val")
    shards = {}
    for index in (0, 1):
        shards[index] = str(tmp_path / "out{}.npz".format(index))
        evaluate_folder(str(sample_results_path), labels, output_index=index, save_confusion=shards[index],
                        log=lambda message: None)
        assert ConfusionMatrix.load(shards[index]).output_index == index
    with pytest.raises(UserError, match="different model outputs"):
        merge_files([shards[0], shards[1]])
    old = ConfusionMatrix.load(shards[0])       # a shard written before the output was recorded merges as before
    old.output_index, old.ids = None, ["other_{}".format(i) for i in range(old.images)]
    old.save(str(tmp_path / "old.npz"))
    assert merge_files([str(tmp_path / "old.npz"), shards[1]]).output_index == 1
