"""python -m hrnetseg.predict's outputs on a rerun (hrnetseg.prediction.outputs): kept only when the record says they
were made from this very input with these settings and they decode whole; damaged, outdated or unrecorded ones
are made again. Odd sizes are kept exactly; a full disk is one line and leaves nothing broken in place."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from hrnetseg.data import cityscapes
from hrnetseg.util.errors import UserError

from helpers import assert_user_error, run_in_process
from media_helpers import (
    by_colour,
    full_disk_skip_reason,
    on_a_full_disk,
    picture,
    read,
    run_predict,
    video_frames,
    write_video,
)


def inodes(folder):
    """Every file under folder (relative) -> its inode: a file written again (renamed into place) gets a new one."""
    return {p.relative_to(folder).as_posix(): p.stat().st_ino for p in folder.rglob("*") if p.is_file()}


def last_summary(capsys) -> str:
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("predicted ")][-1]


def test_a_damaged_output_is_made_again_and_the_sound_ones_are_kept(tmp_path, tiny_pth_path, colour_model, capsys):
    photo, clip, out = tmp_path / "a.png", tmp_path / "clip.mp4", tmp_path / "out"
    cv2.imwrite(str(photo), picture(1, 40, 64))
    write_video(clip)
    kinds = ("--save", "overlay,labelIds")
    assert run_predict(tiny_pth_path, [photo, clip], out, *kinds) == 0
    # a video's frames as decoded (its header's count may differ): what a rerun checks its outputs against
    assert json.loads((out / "predict_record.json").read_text())["entries"]["clip"]["frames"] == 3
    first = inodes(out)
    assert run_predict(tiny_pth_path, [photo, clip], out, *kinds) == 0
    assert "predicted 0 images and 0 video frames" in last_summary(capsys) and inodes(out) == first

    label = out / "a_labelIds.png"
    label.write_bytes(label.read_bytes()[:-30])   # cut short, as by a full disk or a copy that stopped
    video = out / "clip_overlay.mp4"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    assert run_predict(tiny_pth_path, [photo, clip], out, *kinds) == 0
    assert "predicted 1 image and 3 video frames" in last_summary(capsys)
    again = inodes(out)
    # the video's frames are predicted again, their sound PNGs kept
    assert {name for name in first if again[name] != first[name]} == {
        "a_labelIds.png", "clip_overlay.mp4", "predict_record.json"}
    np.testing.assert_array_equal(read(label), cityscapes.TRAIN_TO_ID[by_colour(read(photo, cv2.IMREAD_COLOR))])
    assert len(video_frames(video)[0]) == 3


def test_an_input_or_setting_that_changed_is_made_again(tmp_path, tiny_pth_path, colour_model, capsys):
    photo, other, out = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "out"
    cv2.imwrite(str(photo), picture(2, 40, 64))
    cv2.imwrite(str(other), picture(3, 40, 64))
    assert run_predict(tiny_pth_path, [photo, other], out, "--save", "trainIds") == 0
    record = json.loads((out / "predict_record.json").read_text())
    entry = record["entries"]["a"]
    assert entry["source"] == os.path.realpath(str(photo)) and entry["size"] == photo.stat().st_size
    assert record["settings"][entry["kinds"]["trainIds"]]["scales"] == [1.0]
    first = inodes(out)

    cv2.imwrite(str(photo), picture(4, 40, 64))   # another picture under the same name
    assert run_predict(tiny_pth_path, [photo, other], out, "--save", "trainIds") == 0
    assert "predicted 1 image " in last_summary(capsys)
    np.testing.assert_array_equal(read(out / "a_trainIds.png"), by_colour(read(photo, cv2.IMREAD_COLOR)))
    assert inodes(out)["b_trainIds.png"] == first["b_trainIds.png"]

    os.utime(str(other), ns=(1, 1))   # the same bytes, touched: the record cannot tell, so it is made again
    assert run_predict(tiny_pth_path, [photo, other], out, "--save", "trainIds") == 0
    assert "predicted 1 image " in last_summary(capsys)
    assert run_predict(tiny_pth_path, [photo, other], out, "--save", "trainIds", "--flip") == 0   # other settings
    assert "predicted 2 images " in last_summary(capsys)
    assert run_predict(tiny_pth_path, [photo, other], out, "--save", "trainIds", "--flip") == 0
    assert "predicted 0 images " in last_summary(capsys)


def test_a_run_that_stops_halfway_leaves_no_record_vouching_for_what_it_was_rewriting(tmp_path, tiny_pth_path,
                                                                                     colour_model, monkeypatch,
                                                                                     capsys):
    """Before rewriting anything, the record stops vouching for it; a run stopped halfway leaves pictures of two
    settings, and the next run sees which is which."""
    from hrnetseg.prediction import per_input

    photos = [tmp_path / "a.png", tmp_path / "b.png"]
    for seed, photo in enumerate(photos):
        cv2.imwrite(str(photo), picture(5 + seed, 40, 64))
    out = tmp_path / "out"
    assert run_predict(tiny_pth_path, photos, out, "--save", "trainIds") == 0
    real = per_input.predict_picture
    calls = []

    def stops_at_the_second(bgr, run_main, tta):
        calls.append(1)
        if len(calls) == 2:
            raise UserError("stopped")
        return real(bgr, run_main, tta)

    monkeypatch.setattr(per_input, "predict_picture", stops_at_the_second)
    with pytest.raises(UserError, match="stopped"):
        run_predict(tiny_pth_path, photos, out, "--save", "trainIds", "--flip")
    entries = json.loads((out / "predict_record.json").read_text())["entries"]
    assert entries["b"]["kinds"] == {} and len(entries["a"]["kinds"]) == 1   # a: with flip; b: nothing vouched
    monkeypatch.setattr(per_input, "predict_picture", real)
    capsys.readouterr()
    assert run_predict(tiny_pth_path, photos, out, "--save", "trainIds") == 0   # without flip again: both
    assert "predicted 2 images " in last_summary(capsys)


def test_odd_sizes_give_outputs_of_exactly_that_size(tmp_path, tiny_pth_path, colour_model):
    """101 x 57: every picture at that size, the overlay video too (Motion JPEG .avi: OpenCV's FFmpeg writers
    would round it down to 100 x 56)."""
    photo, clip, out = tmp_path / "odd.png", tmp_path / "odd_clip.avi", tmp_path / "out"
    cv2.imwrite(str(photo), picture(7, 57, 101))
    writer = cv2.VideoWriter(str(clip), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (101, 57))
    for index in range(2):
        writer.write(picture(8 + index, 57, 101))
    writer.release()
    assert run_predict(tiny_pth_path, [photo, clip], out, "--save", "overlay,labelIds,color") == 0
    for kind in ("overlay", "labelIds", "color"):
        assert read(out / "odd_{}.png".format(kind)).shape[:2] == (57, 101)
        if kind != "overlay":
            assert read(out / "odd_clip" / "odd_clip_000001_{}.png".format(kind)).shape[:2] == (57, 101)
    frames, fps = video_frames(out / "odd_clip_overlay.avi")
    assert len(frames) == 2 and fps == 5.0 and all(frame.shape == (57, 101, 3) for frame in frames)
    assert not (out / "odd_clip_overlay.mp4").exists()


FULL_DISK_PREDICT = r"""
import subprocess
from hrnetseg.prediction import cli
from hrnetseg.util.cli import run_cli
from media_helpers import ColourModel
cli.load_backend = lambda *args, **kwargs: ColourModel()
model, photo, clip = sys.argv[2:5]

def predict(*inputs):
    try:
        run_cli(cli.main, ["--pth", model, "--input", *inputs, "--output", disk, "--base_size", "64"])
    except SystemExit as exc:
        print("exit", exc.code, sorted(os.listdir(disk)), flush=True)

predict(photo)
predict(clip)
os.remove(os.path.join(disk, "filler"))
predict(photo, clip)
"""


def test_a_full_disk_is_one_line_and_leaves_nothing_broken_in_place(tmp_path, tiny_pth_path):
    reason = full_disk_skip_reason()
    if reason:
        pytest.skip(reason)
    photo, clip = tmp_path / "a.png", tmp_path / "clip.mp4"
    cv2.imwrite(str(photo), picture(9, 40, 64))
    write_video(clip, frames=2)
    result = on_a_full_disk(tmp_path / "disk", FULL_DISK_PREDICT, tiny_pth_path, photo, clip, size="256k")
    disk = tmp_path / "disk"
    assert [line for line in result.stdout.splitlines() if line.startswith("exit")] == [
        "exit 1 ['filler']", "exit 1 ['filler']",
        "exit 0 ['a_overlay.png', 'clip_overlay.mp4', 'predict_record.json']"], (result.stdout, result.stderr)
    errors = result.stderr.splitlines()
    assert errors == ["-c: error: no space left on the device while writing {}".format(disk / "a_overlay.png"),
                      "-c: error: cannot write video {}: OpenCV cannot start it (the disk is full: 0 bytes free)"
                      .format(disk / "clip_overlay.mp4")], result.stderr


@pytest.mark.parametrize("record", [
    "",                                                   # empty
    '{"format": "hrnetseg-predict-record", "entries": {',  # cut short
    "[" * 100000 + "]" * 100000,                          # nested beyond any record
    '{"format": "hrnetseg-predict-record", "version": 1, "settings": {}, '
    '"entries": {"b": {"kinds": 5}, "c": {"kinds": {"x": [1]}}}}',   # entries of other inputs, wrong types
    '{"format": "hrnetseg-predict-record", "version": 1, "settings": {}, '
    '"entries": {"a": {"kinds": {"overlay": [1]}, "frames": NaN}}}',
], ids=["empty", "truncated", "deep", "wrong_types", "nan_and_lists"])
def test_a_damaged_record_vouches_for_nothing_and_is_rewritten(tmp_path, tiny_pth_path, colour_model, capsys, record):
    photo, out = tmp_path / "a.png", tmp_path / "out"
    cv2.imwrite(str(photo), picture(4, 40, 64))
    assert run_predict(tiny_pth_path, [photo], out, "--save", "overlay") == 0
    (out / "predict_record.json").write_text(record)
    capsys.readouterr()
    assert run_predict(tiny_pth_path, [photo], out, "--save", "overlay") == 0
    assert "predicted 1 image" in last_summary(capsys)   # made again: the record no longer vouches for it
    assert json.loads((out / "predict_record.json").read_text())["entries"]["a"]["kinds"]["overlay"]


def test_a_record_that_is_not_a_regular_file_is_one_line(tmp_path, tiny_pth_path, capsys):
    photo, out = tmp_path / "a.png", tmp_path / "out"
    cv2.imwrite(str(photo), picture(4, 40, 64))
    (out / "predict_record.json").mkdir(parents=True)
    result = run_in_process(lambda argv: run_predict(tiny_pth_path, [photo], out, "--save", "overlay"), [], capsys)
    assert_user_error(result, "predict_record.json")
