"""python -m hrnetseg.predict's inputs (hrnetseg.prediction.inputs): every name given or found either gets its
outputs or is named with the reason; symbolic links are followed, loops caught; two inputs never share an output;
names that are not UTF-8 work; a picture above the pixel budget is refused from its header."""
from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pytest

from hrnetseg.data import videos
from hrnetseg.prediction import cli as predict
from hrnetseg.util.errors import UserError

from helpers import run_in_process
from media_helpers import picture, png_declaring, read, run_predict, write_video


@pytest.fixture
def no_model(monkeypatch):
    """predict.main must refuse before it loads a model."""
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(predict, "load_backend", load)


def test_two_inputs_that_would_share_an_output_are_refused_naming_both(tmp_path, tiny_pth_path, no_model):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    cv2.imwrite(str(tmp_path / "a" / "x.png"), picture(1, 40, 64))
    cv2.imwrite(str(tmp_path / "b" / "x.jpg"), picture(2, 40, 64))
    with pytest.raises(UserError, match=r"a/x\.png and .*b/x\.jpg would both be written as x_\*"):
        run_predict(tiny_pth_path, [tmp_path / "a" / "x.png", tmp_path / "b" / "x.jpg"], tmp_path / "out")
    # a video's frames and a picture in a sub-folder of the same name
    top = tmp_path / "photos"
    (top / "clip").mkdir(parents=True)
    write_video(top / "clip.mp4", frames=2)
    cv2.imwrite(str(top / "clip" / "clip_000001.png"), picture(3, 40, 64))
    with pytest.raises(UserError, match=r"clip\.mp4 and .*clip_000001\.png would both be written as "
                                        r".*out/clip/clip_000001_labelIds\.png"):
        run_predict(tiny_pth_path, [top], tmp_path / "out", "--save", "labelIds")
    assert not (tmp_path / "out").exists()


def test_links_are_followed_loops_named_and_a_second_name_said(tmp_path, tiny_pth_path, colour_model, capsys):
    elsewhere, top = tmp_path / "elsewhere", tmp_path / "photos"
    elsewhere.mkdir()
    top.mkdir()
    cv2.imwrite(str(elsewhere / "far.png"), picture(4, 40, 64))
    cv2.imwrite(str(top / "near.png"), picture(5, 40, 64))
    os.symlink("near.png", str(top / "again.png"))          # a second name for near.png (sorted first)
    os.symlink("../elsewhere", str(top / "linked"))         # a folder through a link
    os.symlink("../elsewhere", str(top / "linked2"))        # the same folder again
    os.symlink("../photos", str(elsewhere / "back"))        # photos/linked/back -> photos: a loop
    out = tmp_path / "out"
    flags = ["--pth", tiny_pth_path, "--output", out, "--base_size", "64", "--save", "trainIds", "--input", top]
    result = run_in_process(predict.main, flags, capsys)
    loop = "cannot use {}: is a symbolic link loop (back to {})".format(top / "linked" / "back", top)
    assert result.returncode == 2 and result.stderr.splitlines()[-1].endswith(
        "error: " + loop + "; --skip_bad skips such inputs"), result.stderr
    assert not out.exists()

    result = run_in_process(predict.main, flags + [top / "near.png", "--skip_bad"], capsys)
    assert result.returncode == 0, result.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "again_trainIds.png", "linked/far_trainIds.png"]
    again = "predict: {} is {} again: predicted once, as {}"
    assert result.stderr.splitlines() == [
        again.format(top / "near.png", top / "again.png", top / "again.png"),
        again.format(top / "linked2", top / "linked", top / "linked"),
        again.format(top / "near.png", top / "again.png", top / "again.png"),
        "predict: skipping {}: is a symbolic link loop (back to {})".format(top / "linked" / "back", top)], \
        result.stderr
    assert "skipped 1 unreadable input: {} (is a symbolic link loop".format(top / "linked" / "back") in result.stdout


def test_names_that_are_not_utf8_are_predicted(tmp_path, tiny_pth_path, colour_model, capsys):
    clip, photo = tmp_path / os.fsdecode(b"clip\xff.mp4"), tmp_path / os.fsdecode(b"photo\xfe.png")
    write_video(tmp_path / "plain.mp4", frames=2)
    os.rename(str(tmp_path / "plain.mp4"), str(clip))
    with open(str(photo), "wb") as fh:
        fh.write(cv2.imencode(".png", picture(6, 40, 64))[1].tobytes())
    out = tmp_path / "out"
    assert run_predict(tiny_pth_path, [clip, photo], out, "--save", "overlay,trainIds") == 0
    # read back as the tools read (OpenCV's binding would crash on the name itself)
    assert len(list(videos.frames(str(out / os.fsdecode(b"clip\xff_overlay.mp4"))))) == 2
    assert sorted(os.listdir(str(out / os.fsdecode(b"clip\xff")))) == [
        os.fsdecode(b"clip\xff_00000%d_trainIds.png" % index) for index in range(2)]
    trained = cv2.imdecode(np.fromfile(str(out / os.fsdecode(b"photo\xfe_trainIds.png")), np.uint8),
                           cv2.IMREAD_UNCHANGED)
    assert trained.shape == (40, 64)
    capsys.readouterr()
    assert run_predict(tiny_pth_path, [clip, photo], out, "--save", "overlay,trainIds") == 0   # all up to date
    assert "predicted 0 images and 0 video frames" in capsys.readouterr().out


def test_a_picture_declaring_more_pixels_than_the_budget_is_refused_before_the_model_loads(tmp_path, tiny_pth_path,
                                                                                          no_model, capsys):
    big = png_declaring(tmp_path / "big.png", 8000, 12000)
    began = time.perf_counter()
    result = run_in_process(predict.main, ["--pth", tiny_pth_path, "--input", big, "--output", tmp_path / "out"],
                            capsys)
    assert time.perf_counter() - began < 2
    assert result.returncode == 2 and [line.split(": error: ")[1] for line in result.stderr.splitlines()] == [
        "cannot use {}: declares 8000x12000 pixels (96.0 Mpx), above the limit of 50.0 Mpx "
        "(--max_pixels raises it); --skip_bad skips such inputs".format(big)]
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), picture(7, 40, 64))
    result = run_in_process(predict.main, ["--pth", tiny_pth_path, "--input", small, "--output", tmp_path / "out",
                                           "--max_pixels", "2000"], capsys)
    assert result.returncode == 2 and "declares 40x64 pixels (0.0 Mpx), above the limit of 0.0 Mpx" in result.stderr
    assert read(small).shape == (40, 64, 3) and not (tmp_path / "out").exists()
