"""metrics: the confusion matrix, scores, shards and merge; damaged shards are refused in one line."""
from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hrnetseg.data import cityscapes
from hrnetseg.data.cityscapes import CLASS_NAMES
from hrnetseg.evaluation import metrics
from hrnetseg.evaluation.metrics import ConfusionMatrix
from hrnetseg.util.errors import UserError
from hrnetseg.util.locks import lock_path_for, output_lock

from helpers import assert_user_error, run_script, strict


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


# --- damaged shards ------------------------------------------------------------------------------------------

def _npz(path: Path, **arrays) -> Path:
    fields = dict(matrix=np.eye(19, dtype=np.int64), images=np.int64(1), ids=np.array(["a"]),
                  skipped=np.array([], dtype=np.str_), class_names=np.array(cityscapes.CLASS_NAMES))
    fields.update(arrays)
    np.savez(str(path), **{k: v for k, v in fields.items() if v is not None})
    return path


def test_merge_refuses_damaged_shards(tmp_path):
    good = _npz(tmp_path / "good.npz")
    assert metrics.ConfusionMatrix.load(str(good)).images == 1
    pickled = tmp_path / "pickled.npz"
    np.savez(str(pickled), matrix=np.array([{"a": 1}], dtype=object), images=np.int64(1), ids=np.array(["a"]),
             skipped=np.array([]), class_names=np.array(cityscapes.CLASS_NAMES))
    npy = tmp_path / "array.npz"
    with open(str(npy), "wb") as fh:
        np.save(fh, np.eye(19))
    cases = {
        "empty": (tmp_path / "empty.npz", "is not a confusion file"),
        "truncated": (tmp_path / "cut.npz", "is not a confusion file"),
        "no matrix": (_npz(tmp_path / "keys.npz", matrix=None), "\\(no matrix\\)"),
        "strings": (_npz(tmp_path / "str.npz", matrix=np.full((19, 19), "5")), "damaged confusion matrix: <U1"),
        "floats": (_npz(tmp_path / "float.npz", matrix=np.eye(19)), "damaged confusion matrix: float64"),
        "3-D": (_npz(tmp_path / "3d.npz", matrix=np.zeros((19, 19, 2), np.int64)), "damaged confusion matrix"),
        "negative": (_npz(tmp_path / "neg.npz", matrix=-np.eye(19, dtype=np.int64)), "counts from -1"),
        "ids": (_npz(tmp_path / "ids.npz", images=np.int64(2)), "images 2 but 1 image ids"),
        "images array": (_npz(tmp_path / "imgs.npz", images=np.array([1, 1])), "images \\[1, 1\\]"),
        "numeric ids": (_npz(tmp_path / "numids.npz", ids=np.array([1])), "ids is int64"),
        "no classes": (_npz(tmp_path / "none.npz", matrix=np.zeros((0, 0), np.int64), class_names=np.array([])),
                       "damaged confusion matrix"),
        "huge counts": (_npz(tmp_path / "huge.npz", matrix=np.full((19, 19), 2 ** 58, np.int64)), "in all"),
        "pickle": (pickled, "is not a confusion file"),
        "npy": (npy, "not an .npz archive"),
        "fifo": (tmp_path / "fifo.npz", "is a FIFO, not a regular file"),
    }
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:-40])
    os.mkfifo(str(tmp_path / "fifo.npz"))
    for path, match in cases.values():
        with strict(), pytest.raises(UserError, match=match):
            metrics.ConfusionMatrix.load(str(path))
    other = _npz(tmp_path / "other.npz", ids=np.array(["b"]), class_names=np.array(["x"] * 19))
    with pytest.raises(UserError, match="different classes"):
        metrics.merge_files([str(good), str(other)])
    big = [_npz(tmp_path / "big{}.npz".format(i), ids=np.array([str(i)]), matrix=np.full((19, 19), 2 ** 44, np.int64))
           for i in range(2)]
    with pytest.raises(UserError, match="more than 9.01e\\+15 pixels together"):   # int64 sums would wrap later
        metrics.merge_files([str(path) for path in big])
    out = tmp_path / "merged.json"
    result = run_script(["-m", "hrnetseg.metrics", "merge", good, tmp_path / "cut.npz", "--save_path", out])
    assert_user_error(result, "cut.npz is not a confusion file")
    assert not out.exists()
    fifo_out = run_script(["-m", "hrnetseg.metrics", "merge", good, "--save_path", tmp_path / "fifo.npz"])
    assert_user_error(fifo_out, "cannot write --save_path", "FIFO")
    itself = run_script(["-m", "hrnetseg.metrics", "merge", good, "--save_path", good])
    assert_user_error(itself, "--save_path {} is a shard of this run".format(good))
    os.symlink(str(good), str(tmp_path / "link.json"))   # through a link
    with pytest.raises(UserError, match=re.escape("is a shard of this run ({})".format(good))):
        metrics.main(["merge", str(good), "--save_path", str(tmp_path / "link.json")])
    with output_lock(str(tmp_path / "table.json")):   # as a script that holds its outputs' locks runs it
        with pytest.raises(UserError, match="is a lock file this run holds"):
            metrics.main(["merge", str(good), "--save_path", lock_path_for(str(tmp_path / "table.json"))])
    assert zipfile.is_zipfile(str(good))


def test_a_shard_that_unpacks_far_beyond_its_size_is_refused_before_it_is_unpacked(tmp_path, monkeypatch):
    """The archive's members are sized from its directory: a small compressed file that would unpack to more than
    the reader's cap never reaches np.load."""
    fields = dict(matrix=np.zeros((19, 19), np.int64), images=np.int64(0), ids=np.array([], dtype=np.str_),
                  skipped=np.zeros(100000, dtype="<U8"), class_names=np.array(cityscapes.CLASS_NAMES))
    np.savez_compressed(str(tmp_path / "packed.npz"), **fields)
    monkeypatch.setattr(metrics, "MAX_BYTES", 1024 * 1024)
    assert (tmp_path / "packed.npz").stat().st_size < 100000
    with pytest.raises(UserError, match=r"packed.npz is not a .*\(its arrays unpack to 32\d+ bytes, more than 1 MiB"):
        metrics.ConfusionMatrix.load(str(tmp_path / "packed.npz"))
