"""metrics: the confusion matrix, scores, shards and merge."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hrnetseg.evaluation import metrics
from hrnetseg.data.cityscapes import CLASS_NAMES
from hrnetseg.util.errors import UserError
from hrnetseg.evaluation.metrics import ConfusionMatrix

from helpers import assert_user_error, run_script


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


def test_scores_follow_cityscapes_and_the_modelzoo_scripts():
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


def test_miou_equals_the_modelzoo_mean_when_every_class_occurs():
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
    from hrnetseg.evaluation.metrics import merge_files
    from hrnetseg.evaluation.postprocess import evaluate_folder

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


def test_a_damaged_output_index_in_a_shard_is_refused(tmp_path):
    shard = ConfusionMatrix()
    shard.add(np.eye(19, dtype=np.int64), "a")
    shard.save(str(tmp_path / "good.npz"))
    with np.load(str(tmp_path / "good.npz")) as data:
        fields = {key: data[key] for key in data.files}
    for bad in (np.int64(-1), np.array("1"), np.array([1, 0]), np.float64(1.0)):
        np.savez(str(tmp_path / "bad.npz"), output_index=bad, **fields)
        with pytest.raises(UserError, match="output_index"):
            ConfusionMatrix.load(str(tmp_path / "bad.npz"))
