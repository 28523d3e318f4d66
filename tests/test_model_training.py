"""The reference model's training (hrnetseg.model.training, scripts/train_reference_model.py), at a tiny size: the
loss falls, the written file is an official-format checkpoint that the export loads, and the same command gives the
same bytes."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import HRNet_pth2onnx
from hrnetseg.data.sample_scenes import scene_labels, scene_photo
from hrnetseg.model import training
from hrnetseg.model.checkpoint import load_checkpoint, read_state_dict
from hrnetseg.model.network import build_model
from hrnetseg.model.random_weights import LOSS_WEIGHT_KEY

from helpers import load_script, run_in_process

SCRIPT = load_script("scripts/train_reference_model.py")
# tiny: 2 scenes of 64 x 128, crops of 64 x 96, batches of 2, one thread
TINY = ["--scenes", "2", "--scene_size", "64x128", "--crop", "64,96", "--batch", "2", "--threads", "1"]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def restore_torch_settings():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def test_scenes_are_those_sample_data_writes():
    photo, train_ids = training.make_scene(5, 3, 64, 128)
    rng = np.random.RandomState([5, 3])
    labels = scene_labels(64, 128, rng)
    assert np.array_equal(photo, scene_photo(labels, rng))
    assert np.array_equal(train_ids, training.ID_TO_TRAIN[labels])


def test_augment_keeps_pixels_and_labels_together():
    photo, train_ids = training.make_scene(0, 0, 64, 128)
    rng = np.random.RandomState(0)
    for _ in range(10):
        image, label = training.augment(photo, train_ids, (48, 80), (0.5, 2.0), rng)
        assert image.shape == (48, 80, 3) and label.shape == (48, 80)
        assert set(np.unique(label)) <= set(np.unique(train_ids)) | {training.IGNORE}
    seen = set()
    for seed in range(10):   # at scale 1 and full size: the scene itself or its mirror image
        image, label = training.augment(photo, train_ids, (64, 128), (1.0, 1.0), np.random.RandomState(seed))
        if np.array_equal(label, train_ids):
            assert np.array_equal(image, photo)
            seen.add("plain")
        else:
            assert np.array_equal(image, photo[:, ::-1]) and np.array_equal(label, train_ids[:, ::-1])
            seen.add("flipped")
    assert seen == {"plain", "flipped"}
    held = 0
    for seed in range(20):   # a crop around a pixel holds it (but for rounding at the crop's far edge)
        rng = np.random.RandomState(seed)
        row, col = training.class_pixel(train_ids, rng)
        marked = train_ids.copy()
        marked[row, col] = 254   # a label the scenes never hold
        _, label = training.augment(photo, marked, (32, 48), (0.5, 2.0), rng, around=(row, col))
        held += int((label == 254).any())
    assert held >= 18

def test_loss_falls_on_a_fixed_batch():
    recipe = training.Recipe(iterations=12, batch=2, scenes=1, scene_size=(64, 128), crop=(64, 128),
                             scale=(1.0, 1.0), lr=5e-3, threads=1)
    scenes = training.make_scenes(recipe.scene_seed, recipe.scenes, *recipe.scene_size)
    _, losses = training.train(recipe, scenes)
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_script_writes_an_official_checkpoint_that_exports(tmp_path, capsys):
    pth = tmp_path / "models" / "ref.pth"   # the folder made as in a fresh clone
    result = run_in_process(SCRIPT.main, ["--save_path", pth, "--iterations", "2", "--eval_scenes", "1",
                                          "--eval_sizes", "64x128", "--result", tmp_path / "r.json"] + TINY, capsys)
    assert result.returncode == 0, result.stderr
    assert "sha256 {}".format(sha256(pth)) in result.stdout and "mIoU" in result.stdout
    state = read_state_dict(str(pth))
    assert all(k.startswith("model.") for k in state if k != LOSS_WEIGHT_KEY)
    assert state[LOSS_WEIGHT_KEY].shape == (19,)
    model = load_checkpoint(build_model("tiny_ocr"), str(pth), "tiny_ocr")
    assert not torch.equal(model.conv1.weight, build_model("tiny_ocr").conv1.weight)   # trained, not a fresh model
    export = run_in_process(HRNet_pth2onnx.main, ["--pth", pth, "--preset", "tiny_ocr", "--height", "64",
                                                  "--width", "128", "--save_path", tmp_path / "ref.onnx"], capsys)
    assert export.returncode == 0, export.stderr
    scored = run_in_process(SCRIPT.main, ["--eval_only", pth, "--eval_scenes", "1", "--eval_sizes", "64x128"], capsys)
    assert scored.returncode == 0, scored.stderr
    assert scored.stdout.splitlines()[-1] == result.stdout.splitlines()[-1]   # the same mIoU row


def test_same_command_same_bytes(tmp_path, capsys):
    digests = []
    for name in ("a.pth", "b.pth"):
        argv = ["--save_path", tmp_path / name, "--iterations", "2", "--eval_scenes", "0"] + TINY
        assert run_in_process(SCRIPT.main, argv, capsys).returncode == 0
        digests.append(sha256(tmp_path / name))
    assert digests[0] == digests[1]
    argv = ["--save_path", tmp_path / "c.pth", "--iterations", "2", "--eval_scenes", "0", "--seed", "1"] + TINY
    assert run_in_process(SCRIPT.main, argv, capsys).returncode == 0
    assert sha256(tmp_path / "c.pth") != digests[0]


def test_held_out_seed_must_differ(capsys):
    result = run_in_process(SCRIPT.main, ["--eval_seed", "1000", "--eval_only", "x.pth"], capsys)
    assert result.returncode == 2 and "not held out" in result.stderr
