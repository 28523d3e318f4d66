"""python -m hrnetseg.predict: images of any size, folders, videos, the --save kinds, reruns, and bad inputs.

A small base size (64) and crop size (32,48): scales 0.5, 1.0 and 1.5 run the whole-image and the sliding-window
branches. The pictures are checked against the prediction made directly through hrnetseg.evaluation.multiscale from the
reference transform, not against stored results: with a stand-in model whose classes follow the colours (many
classes per picture, so a flipped, shifted or transposed picture would show) and with the tiny model through
torch and ONNX Runtime.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from hrnetseg.data import cityscapes
from hrnetseg.evaluation.multiscale import main_output_runner
from hrnetseg.prediction import cli as predict
from hrnetseg.util.errors import UserError

from helpers import (
    TINY_HEIGHT,
    TINY_PRESET,
    TINY_WIDTH,
    assert_user_error,
    lock_held_elsewhere,
    run_in_process,
    run_script,
)
from media_helpers import (
    SMALL,
    VIDEO,
    by_colour,
    direct_prediction,
    picture,
    read,
    run_predict,
    video_frames,
    write_video,
)

SCALES = ["--scales", "0.5,1.0,1.5"]
ODD = (37, 53)          # a JPEG of odd size: scaled to 44x64, 22x32 and 66x96 (windows of 32x48, the last shifted)


def cv2():
    import cv2 as module

    return module


@pytest.fixture(scope="module")
def by_torch(tiny_pth_path):
    """direct_prediction with the tiny model's checkpoint through the torch backend."""
    from hrnetseg.backends import load_backend

    run_main = main_output_runner(load_backend("torch", str(tiny_pth_path), device="cpu", preset=TINY_PRESET))
    return lambda bgr, scales=(1.0,), flip=False: direct_prediction(run_main, bgr, scales, flip)


def check_kinds(photo, stem_path, train_ids):
    """Every kind's picture is the prediction drawn as its kind says."""
    palette_bgr = cityscapes.TRAIN_PALETTE[:, ::-1]
    np.testing.assert_array_equal(read(str(stem_path) + "_trainIds.png"), train_ids)
    np.testing.assert_array_equal(read(str(stem_path) + "_labelIds.png"), cityscapes.TRAIN_TO_ID[train_ids])
    color = read(str(stem_path) + "_color.png")
    np.testing.assert_array_equal(color, palette_bgr[train_ids])
    overlay = read(str(stem_path) + "_overlay.png")
    np.testing.assert_array_equal(overlay, cv2().addWeighted(photo, 0.5, color, 0.5, 0))


def test_png_jpeg_of_odd_size_and_a_folder_every_kind(tmp_path, tiny_pth_path, colour_model, capsys):
    top = tmp_path / "photos"
    (top / "day" / "rain").mkdir(parents=True)
    png = top / "frankfurt_000000_000294_leftImg8bit.png"
    jpeg = top / "day" / "rain" / "odd.jpg"
    cv2().imwrite(str(png), picture(1, TINY_HEIGHT, TINY_WIDTH))
    cv2().imwrite(str(jpeg), picture(2, *ODD))
    (top / "notes.txt").write_text("not a picture: ignored in a folder")
    out = tmp_path / "out"
    assert run_predict(tiny_pth_path, [top], out, "--save", "labelIds,trainIds,color,overlay", *SCALES) == 0

    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert made == sorted(["day/rain/odd_{}.png".format(k) for k in ("color", "labelIds", "overlay", "trainIds")] +
                          ["frankfurt_000000_000294_{}.png".format(k)
                           for k in ("color", "labelIds", "overlay", "trainIds")] + ["predict_record.json"])
    for source, stem in ((png, out / "frankfurt_000000_000294"), (jpeg, out / "day" / "rain" / "odd")):
        photo = read(source, cv2().IMREAD_COLOR)
        train_ids = by_colour(photo, (0.5, 1.0, 1.5))
        assert train_ids.shape == photo.shape[:2] and len(np.unique(train_ids)) >= 4   # a telling picture
        check_kinds(photo, stem, train_ids)
    printed = capsys.readouterr().out
    assert "predicted 2 images and 0 video frames" in printed and "wrote 8 files under {}".format(out) in printed
    assert "scales 0.5,1,1.5, base size 64, crop size 32x48" in printed
    assert not (tmp_path / "out.lock").exists()


def test_a_video_gives_an_overlay_video_and_per_frame_pngs(tmp_path, tiny_pth_path, colour_model, capsys):
    clip = tmp_path / "dashcam.mp4"
    write_video(clip)
    out = tmp_path / "out"
    assert run_predict(tiny_pth_path, [clip], out, "--save", "overlay,labelIds") == 0

    source, fps = video_frames(clip)
    written, written_fps = video_frames(out / "dashcam_overlay.mp4")
    assert len(written) == len(source) == VIDEO[0] and written_fps == pytest.approx(fps) == VIDEO[1]
    assert written[0].shape == source[0].shape
    names = sorted(p.name for p in (out / "dashcam").iterdir())
    assert names == ["dashcam_{:06d}_labelIds.png".format(i) for i in range(VIDEO[0])]   # no overlay PNGs
    for index, frame in enumerate(source):
        train_ids = by_colour(frame)
        np.testing.assert_array_equal(read(out / "dashcam" / names[index]), cityscapes.TRAIN_TO_ID[train_ids])
    # the video's frames are the overlays (mp4v is lossy: close, not equal)
    overlay = cv2().addWeighted(source[2], 0.5, cityscapes.TRAIN_PALETTE[:, ::-1][by_colour(source[2])], 0.5, 0)
    assert np.abs(written[2].astype(int) - overlay).mean() < 8
    assert not [p for p in out.rglob(".*")]   # no temporaries left
    video_inode = os.stat(out / "dashcam_overlay.mp4").st_ino
    capsys.readouterr()
    assert run_predict(tiny_pth_path, [clip], out, "--save", "overlay,labelIds") == 0   # a rerun: all there
    assert "predicted 0 images and 0 video frames" in capsys.readouterr().out
    assert os.stat(out / "dashcam_overlay.mp4").st_ino == video_inode


def test_a_failing_video_leaves_no_video_and_no_temporary(tmp_path, tiny_pth_path, colour_model, monkeypatch):
    from hrnetseg.prediction import per_input

    clip = tmp_path / "clip.mp4"
    write_video(clip)
    calls = []

    def failing(bgr, run_main, tta):
        calls.append(1)
        if len(calls) == 3:
            raise UserError("the model failed on frame 3")
        return np.zeros(bgr.shape[:2], np.uint8)

    monkeypatch.setattr(per_input, "predict_picture", failing)
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="frame 3"):
        run_predict(tiny_pth_path, [clip], tmp_path / "out")
    assert os.listdir(tmp_path / "out") == []   # no video, no temporary folder


def test_rerun_keeps_what_exists_unless_overwrite(tmp_path, tiny_pth_path, colour_model, capsys):
    image = tmp_path / "a.png"
    cv2().imwrite(str(image), picture(3, *ODD))
    out = tmp_path / "out"
    kinds = ("--save", "color,labelIds")
    assert run_predict(tiny_pth_path, [image], out, *kinds) == 0
    color, label = out / "a_color.png", out / "a_labelIds.png"
    first = {p: os.stat(p).st_ino for p in (color, label)}
    capsys.readouterr()

    assert run_predict(tiny_pth_path, [image], out, *kinds) == 0
    printed = capsys.readouterr().out
    assert "predicted 0 images" in printed and "left alone 1 input whose outputs are up to date" in printed
    assert {p: os.stat(p).st_ino for p in first} == first

    label.unlink()   # one kind missing: only it is written again
    assert run_predict(tiny_pth_path, [image], out, *kinds) == 0
    assert "wrote 1 file " in capsys.readouterr().out
    assert os.stat(color).st_ino == first[color] and label.exists()

    assert run_predict(tiny_pth_path, [image], out, *kinds, "--overwrite") == 0
    assert "wrote 2 files" in capsys.readouterr().out
    assert os.stat(color).st_ino != first[color]   # replaced by a rename: written again, atomically


def bad_inputs(folder):
    """name -> a file that cannot be predicted, made in folder."""
    good = cv2().imencode(".png", picture(4, TINY_HEIGHT, TINY_WIDTH))[1].tobytes()
    folder.mkdir(exist_ok=True)
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "text.jpg").write_text("not an image")
    (folder / "video.mp4").write_text("not a video")
    os.mkfifo(str(folder / "fifo.png"))
    return {"empty": (folder / "empty.png", "is empty"),
            "truncated": (folder / "truncated.png", "cannot be decoded"),
            "not an image": (folder / "text.jpg", "cannot be decoded"),
            "not a video": (folder / "video.mp4", "cannot be opened as a video"),
            "fifo": (folder / "fifo.png", "is a FIFO, not a regular file"),
            "missing": (folder / "missing.png", "not found")}


@pytest.mark.parametrize("case", ["empty", "truncated", "not an image", "not a video", "fifo", "missing"])
def test_a_bad_input_stops_the_run(tmp_path, tiny_pth_path, case):
    path, reason = bad_inputs(tmp_path / "bad")[case]
    good = tmp_path / "good.png"
    cv2().imwrite(str(good), picture(5, TINY_HEIGHT, TINY_WIDTH))
    with pytest.raises(UserError) as error:
        run_predict(tiny_pth_path, [path, good], tmp_path / "out")
    assert str(error.value).startswith("cannot use {}: {}".format(path, reason))
    assert str(error.value).endswith("--skip_bad skips such inputs")
    assert not (tmp_path / "out" / "good_overlay.png").exists()


def test_bad_inputs_as_a_user_sees_them(tmp_path, tiny_pth_path, capsys):
    bad = bad_inputs(tmp_path / "bad")
    flags = ["-m", "hrnetseg.predict", "--pth", tiny_pth_path, "--output", tmp_path / "out", "--input"]
    result = run_script(flags + [bad["fifo"][0], bad["not a video"][0], bad["empty"][0], "--skip_bad"])
    assert_user_error(result, "nothing to predict: none of the 3 inputs can be read", "fifo.png", "FIFO")
    # one line per skipped input and the error; FFmpeg's own complaints about the video are not printed
    skipped = result.stderr.splitlines()[:-1]
    assert len(skipped) == 3, result.stderr
    for line, case in zip(skipped, ("fifo", "not a video", "empty")):
        assert line.startswith("predict: skipping {}: {}".format(*bad[case])), result.stderr

    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(UserError, match="notes.txt: is not an image .* or a video"):
        run_predict(tiny_pth_path, [notes], tmp_path / "out")
    with pytest.raises(SystemExit):
        predict.build_parser().parse_args(["--pth", "m.pth", "--input", "x", "--output", "y", "--save", "color,depth"])
    assert "unknown kind 'depth': choose from labelIds,trainIds,color,overlay" in capsys.readouterr().err


def test_skip_bad_predicts_the_rest_and_lists_the_bad_ones(tmp_path, tiny_pth_path, colour_model, capsys):
    bad = bad_inputs(tmp_path / "photos")
    good = tmp_path / "photos" / "sub" / "good.png"
    good.parent.mkdir()
    cv2().imwrite(str(good), picture(6, TINY_HEIGHT, TINY_WIDTH))
    missing = bad["missing"][0]
    assert run_predict(tiny_pth_path, [tmp_path / "photos", missing], tmp_path / "out", "--skip_bad") == 0
    assert (tmp_path / "out" / "sub" / "good_overlay.png").is_file()
    captured = capsys.readouterr()
    listed = [line for line in captured.out.splitlines() if line.startswith("skipped 6 unreadable inputs: ")]
    assert len(listed) == 1, captured.out
    for case in ("empty", "truncated", "not an image", "not a video", "fifo", "missing"):
        path, reason = bad[case]
        assert "{} ({}".format(path, reason) in listed[0]
        assert "predict: skipping {}: {}".format(path, reason) in captured.err
    assert "predicted 1 image and 0 video frames" in captured.out


def test_a_fixed_size_model_that_cannot_take_a_needed_size_is_refused_first(tmp_path, tiny_onnx_path, capsys):
    scene, odd, out = tmp_path / "scene.png", tmp_path / "odd.jpg", tmp_path / "out"
    cv2().imwrite(str(scene), picture(7, TINY_HEIGHT, TINY_WIDTH))
    cv2().imwrite(str(odd), picture(8, *ODD))
    flags = ["--onnx", str(tiny_onnx_path), "--output", str(out), "--base_size", str(TINY_WIDTH)]
    with pytest.raises(UserError, match=r"takes float32 \?x3x64x128 but these scales need a 89x128 input"):
        predict.main(flags + ["--input", str(scene), str(odd)])
    assert not out.exists()   # made by the run, removed as it failed before writing anything
    # the size it was exported at, at scale 1.0: runs
    assert predict.main(flags + ["--input", str(scene), "--save", "trainIds"]) == 0
    assert read(out / "scene_trainIds.png").shape == (TINY_HEIGHT, TINY_WIDTH)
    assert "onnxruntime on cpu" in capsys.readouterr().out


def test_scales_and_sizes_beyond_the_memory_are_refused_first(tmp_path, tiny_onnx_path, capsys, monkeypatch):
    from hrnetseg.evaluation import multiscale

    monkeypatch.setattr(multiscale, "available_memory", lambda: 8 * 10 ** 9)
    scene, out = tmp_path / "scene.png", tmp_path / "out"
    cv2().imwrite(str(scene), picture(7, TINY_HEIGHT, TINY_WIDTH))
    flags = ["--onnx", tiny_onnx_path, "--input", scene, "--output", out]
    began = time.perf_counter()
    result = run_in_process(predict.main, flags + ["--base_size", "100000"], capsys)
    assert time.perf_counter() - began < 1.0   # from the header: nothing decoded, no model loaded
    assert_user_error(result, "base size 100000", "need about ", "for a {}x{} image".format(TINY_HEIGHT, TINY_WIDTH),
                      "but 8.0 GB is available")
    assert not out.exists()
    result = run_in_process(predict.main, flags + ["--scales", "0.5,40"], capsys)
    assert result.returncode == 2 and "--scales" in result.stderr and "(0, 8]" in result.stderr


def test_outputs_that_would_share_a_name_and_the_output_inside_an_input_folder(tmp_path, tiny_pth_path, colour_model):
    top = tmp_path / "photos"
    top.mkdir()
    cv2().imwrite(str(top / "a.png"), picture(9, TINY_HEIGHT, TINY_WIDTH))
    cv2().imwrite(str(top / "a.jpg"), picture(9, TINY_HEIGHT, TINY_WIDTH))
    with pytest.raises(UserError, match=r"a\.jpg and .*a\.png would both be written as a_"):
        run_predict(tiny_pth_path, [top], tmp_path / "out")
    (top / "a.jpg").unlink()
    with pytest.raises(UserError, match="is the input folder"):
        run_predict(tiny_pth_path, [top], top)
    cv2().imwrite(str(top / "b_overlay.png"), picture(9, TINY_HEIGHT, TINY_WIDTH))
    cv2().imwrite(str(tmp_path / "b.png"), picture(9, TINY_HEIGHT, TINY_WIDTH))
    with pytest.raises(UserError, match="the output .*b_overlay.png is the input of this run"):
        run_predict(tiny_pth_path, [top / "b_overlay.png", tmp_path / "b.png"], top)
    (top / "b_overlay.png").unlink()
    for _ in range(2):   # the outputs inside the input folder are not taken as inputs on the rerun
        assert run_predict(tiny_pth_path, [top], top / "predictions") == 0
    assert sorted(p.name for p in (top / "predictions").iterdir()) == ["a_overlay.png", "predict_record.json"]


def test_overwrite_through_a_symlinked_output_never_replaces_the_model(tmp_path, tiny_pth_path, monkeypatch):
    """predict --overwrite through an output that linked to the model replaced the model being run: an output
    that is the model, or an input, through a symbolic or a hard link, is refused before the model loads."""
    monkeypatch.setattr(predict, "load_backend", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    model, image, out = tmp_path / "hrnet.pth", tmp_path / "a.png", tmp_path / "out"
    model.write_bytes(tiny_pth_path.read_bytes())
    cv2().imwrite(str(image), picture(11, TINY_HEIGHT, TINY_WIDTH))
    out.mkdir()
    os.symlink(str(model), str(out / "a_overlay.png"))
    with pytest.raises(UserError, match="the output {} is the model of this run".format(out / "a_overlay.png")):
        run_predict(model, [image], out, "--overwrite")
    (out / "a_overlay.png").unlink()
    os.link(str(image), str(out / "a_overlay.png"))
    with pytest.raises(UserError, match="the output .*a_overlay.png is the input of this run"):
        run_predict(model, [image], out, "--overwrite")
    assert model.read_bytes() == tiny_pth_path.read_bytes()


def test_a_second_run_into_the_output_is_refused_and_leftovers_are_removed(tmp_path, tiny_pth_path, colour_model):
    image, out = tmp_path / "a.png", tmp_path / "out"
    cv2().imwrite(str(image), picture(10, TINY_HEIGHT, TINY_WIDTH))
    out.mkdir()
    with lock_held_elsewhere(out) as pid:
        with pytest.raises(UserError, match=str(pid)):
            run_predict(tiny_pth_path, [image], out)
    (out / "sub").mkdir()
    dead = 2 ** 22 + 12345   # above Linux's largest PID: no such process
    stale_png = out / "sub" / ".x_overlay.png.{}.abc.tmp".format(dead)
    stale_video = out / ".clip_overlay.mp4.{}.abc.tmp".format(dead)
    stale_png.write_bytes(b"half")
    stale_video.mkdir()
    (stale_video / "clip_overlay.mp4").write_bytes(b"half")
    assert run_predict(tiny_pth_path, [image], out) == 0
    assert not stale_png.exists() and not stale_video.exists() and (out / "a_overlay.png").is_file()
    blocked = tmp_path / "out2" / "a_overlay.png"
    blocked.mkdir(parents=True)   # an existing output that is a folder is never replaced
    with pytest.raises(UserError, match="is a folder, not a regular file"):
        run_predict(tiny_pth_path, [image], tmp_path / "out2")


def test_the_tiny_model_through_torch_and_a_dynamic_hw_onnx_export(tmp_path, tiny_pth_path, by_torch):
    from hrnetseg.model.export import export_onnx, load_model

    model = tmp_path / "any_size.onnx"
    export_onnx(load_model(TINY_PRESET, pth=str(tiny_pth_path)), str(model), TINY_HEIGHT, TINY_WIDTH, batch=None,
                dynamic_hw=True)
    odd, clip, out = tmp_path / "odd.jpg", tmp_path / "clip.avi", tmp_path / "out"
    cv2().imwrite(str(odd), picture(11, *ODD))
    write_video(clip, frames=2)
    assert predict.main(["--onnx", str(model), "--input", str(odd), str(clip), "--output", str(out), *SMALL,
                         "--flip", "--save", "trainIds", "--batchsize", "2"]) == 0
    photo = read(odd, cv2().IMREAD_COLOR)
    want = by_torch(photo, flip=True)
    agree = np.mean(read(out / "odd_trainIds.png") == want)
    assert agree >= 0.999, agree   # ONNX Runtime against torch: the same up to float rounding
    assert run_predict(tiny_pth_path, [odd], tmp_path / "torch", "--flip", "--save", "trainIds") == 0
    np.testing.assert_array_equal(read(tmp_path / "torch" / "odd_trainIds.png"), want)   # --pth: torch itself
    frames, _ = video_frames(out / "clip_overlay.mp4")
    assert len(frames) == 2 and sorted(p.name for p in (out / "clip").iterdir()) == [
        "clip_000000_trainIds.png", "clip_000001_trainIds.png"]


def write_turned_jpeg(path, bgr: np.ndarray) -> None:
    """A JPEG stored as `bgr` whose EXIF orientation (6) says: turn it 90 degrees clockwise to view it."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(str(path), exif=exif.tobytes(), quality=95)


def test_a_phone_photo_turned_by_exif_is_checked_at_the_size_the_model_sees(tmp_path, tiny_onnx_path):
    """The header's size is the stored one; OpenCV decodes the photo turned: the fixed-size check uses that."""
    scene, upright, lying, out = (tmp_path / "scene.png", tmp_path / "upright.jpg", tmp_path / "lying.jpg",
                                  tmp_path / "out")
    cv2().imwrite(str(scene), picture(7, TINY_HEIGHT, TINY_WIDTH))
    write_turned_jpeg(upright, picture(9, TINY_WIDTH, TINY_HEIGHT))   # stored 128x64, seen 64x128
    write_turned_jpeg(lying, picture(10, TINY_HEIGHT, TINY_WIDTH))    # stored 64x128, seen 128x64
    if read(upright, cv2().IMREAD_COLOR).shape[:2] != (TINY_HEIGHT, TINY_WIDTH):
        pytest.skip("this OpenCV does not apply the EXIF orientation")
    flags = ["--onnx", str(tiny_onnx_path), "--output", str(out), "--base_size", str(TINY_WIDTH), "--save", "trainIds"]
    with pytest.raises(UserError, match=r"takes float32 \?x3x64x128 but these scales need a 128x64 input"):
        predict.main(flags + ["--input", str(scene), str(lying)])
    assert not out.exists()   # refused before the scene was predicted
    assert predict.main(flags + ["--input", str(upright)]) == 0
    assert read(out / "upright_trainIds.png").shape == (TINY_HEIGHT, TINY_WIDTH)


def test_a_truncated_video_is_refused_not_cut_short(tmp_path, tiny_pth_path, colour_model, capsys):
    """Frames lost at the end of a video: no shorter overlay video, one line; --skip_bad lists it."""
    whole, cut, out = tmp_path / "whole.avi", tmp_path / "cut.avi", tmp_path / "out"
    writer = cv2().VideoWriter(str(whole), cv2().VideoWriter_fourcc(*"MJPG"), 5.0, (VIDEO[3], VIDEO[2]))
    for index in range(8):
        writer.write(picture(200 + index, VIDEO[2], VIDEO[3]))
    writer.release()
    cut.write_bytes(whole.read_bytes()[:int(whole.stat().st_size * 0.6)])
    decoded = len(video_frames(cut)[0])
    assert 0 < decoded < 8
    with pytest.raises(UserError, match=r"cannot use .*cut.avi: is truncated or damaged: {} of the 8 frames its "
                                        r"header gives decode".format(decoded)):
        run_predict(tiny_pth_path, [cut], out)
    assert not list(out.glob("*.mp4")) and not list(out.glob(".*"))
    assert run_predict(tiny_pth_path, [cut, whole], out, "--skip_bad") == 0
    assert len(video_frames(out / "whole_overlay.mp4")[0]) == 8 and not (out / "cut_overlay.mp4").exists()
    assert "skipped 1 unreadable input: {} (is truncated".format(cut) in capsys.readouterr().out
