"""Synthetic scenes (python -m hrnetseg.sample_data): every class in every scene at any size, the same scenes for
a seed, flags out of range refused, one run per folder, nothing left behind on a full disk."""
from __future__ import annotations

import errno
import os

import cv2
import numpy as np
import pytest

from hrnetseg.data import cityscapes, sample_scenes
from hrnetseg.util import locks
from hrnetseg.util.errors import UserError

from helpers import assert_user_error, file_tree, lock_held_elsewhere, run_script


def test_sample_scenes_hold_every_class(sample_data_root):
    for sample in cityscapes.find_images(str(sample_data_root)):
        label = cv2.imread(sample.label, cv2.IMREAD_UNCHANGED)
        image = cv2.imread(sample.image, cv2.IMREAD_COLOR)
        assert label.shape == image.shape[:2] == (128, 256) and label.dtype == np.uint8
        present = set(np.unique(cityscapes.labels_to_train_ids(label)).tolist())
        assert set(range(19)) <= present and 255 in present


@pytest.mark.parametrize("height,width", [(64, 128), (1024, 2048)])
def test_scene_labels_every_class_at_extreme_sizes(height, width):
    labels = sample_scenes.scene_labels(height, width, np.random.RandomState([3, 1]))
    assert set(range(19)) <= set(np.unique(cityscapes.ID_TO_TRAIN[labels]).tolist())


def test_sample_data_is_deterministic(tmp_path):
    ids_a = sample_scenes.generate(str(tmp_path / "a"), n=2, height=64, width=128, seed=5)
    ids_b = sample_scenes.generate(str(tmp_path / "b"), n=2, height=64, width=128, seed=5)
    assert ids_a == ids_b
    for sample in cityscapes.find_images(str(tmp_path / "a")):
        other = str(sample.image).replace(str(tmp_path / "a"), str(tmp_path / "b"))
        with open(sample.image, "rb") as fa, open(other, "rb") as fb:
            assert fa.read() == fb.read()


def test_sample_data_cli(tmp_path):
    result = run_script(["-m", "hrnetseg.sample_data", tmp_path / "data", "--n", "2", "--height", "64",
                         "--width", "128", "--seed", "1"])
    assert result.returncode == 0, result.stderr
    assert len(cityscapes.find_images(str(tmp_path / "data"))) == 2
    assert_user_error(run_script(["-m", "hrnetseg.sample_data", tmp_path / "x", "--height", "32"]), "at least")
    with pytest.raises(UserError, match="at most 4096x8192"):     # not a MemoryError traceback
        sample_scenes.generate(str(tmp_path / "huge"), n=1, height=100000, width=200000)
    assert not (tmp_path / "huge").exists()


@pytest.mark.parametrize("parser_module,argv", [
    ("HRNet_preprocess", ["--src_path", "d", "--save_path", "o", "--split", "../val"]),
    ("hrnetseg.data.sample_scenes", ["d", "--split", "val/frankfurt"]),
    ("hrnetseg.data.sample_scenes", ["d", "--seed", "-1"]),
    ("hrnetseg.data.sample_scenes", ["d", "--seed", str(2 ** 32)]),
    ("hrnetseg.data.sample_scenes", ["d", "--seed", "0x10"]),
])
def test_flags_out_of_range_are_refused_by_the_parser(parser_module, argv, capsys):
    import importlib

    parser = importlib.import_module(parser_module).build_parser()
    with pytest.raises(SystemExit) as info:
        parser.parse_args(argv)
    assert info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: argument --s" in error and ("plain name" in error or "0 to 4294967295" in error)


def test_seed_out_of_range_through_the_cli(tmp_path):
    assert_user_error(run_script(["-m", "hrnetseg.sample_data", tmp_path / "d", "--seed", "-5"]),
                      "--seed", "0 to 4294967295")
    assert not (tmp_path / "d").exists()
    with pytest.raises(UserError, match="--seed must be an integer from 0 to 4294967295"):
        sample_scenes.generate(str(tmp_path / "d"), n=1, height=64, width=128, seed=2 ** 32)


def test_a_second_sample_data_run_into_the_folder_stops_at_once(tmp_path):
    """Two runs with other seeds would pair one run's photo with the other's label."""
    root = tmp_path / "data"
    with lock_held_elsewhere(root) as pid:
        with pytest.raises(UserError, match=r"is being written by another run \(PID {}\)".format(pid)):
            sample_scenes.generate(str(root), n=1, height=64, width=128)
        assert not root.exists()
    assert sample_scenes.generate(str(root), n=1, height=64, width=128) == [sample_scenes.sample_id(0)]
    assert not os.path.exists(locks.lock_path_for(str(root)))


def test_sample_data_on_a_full_disk_removes_what_it_wrote(tmp_path, monkeypatch):
    root = tmp_path / "data"
    sample_scenes.generate(str(root), n=1, height=64, width=128, seed=0)     # a scene from before
    before = file_tree(root)
    real_open = open
    temporaries = []

    def full_disk_open(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).endswith(".tmp"):
            temporaries.append(path)
            if len(temporaries) == 4:     # the second scene's label
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_disk_open)
    with pytest.raises(UserError, match="no space left on the device while writing .*lindau"):
        sample_scenes.generate(str(root), n=3, height=64, width=128, seed=0)
    monkeypatch.undo()
    assert file_tree(root) == before

    fresh = tmp_path / "fresh" / "data"
    monkeypatch.setattr("builtins.open", full_disk_open)
    temporaries.clear()
    with pytest.raises(UserError, match="no space left"):
        sample_scenes.generate(str(fresh), n=3, height=64, width=128, seed=0)
    monkeypatch.undo()
    assert not (tmp_path / "fresh").exists()
