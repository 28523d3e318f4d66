"""Videos in and out (hrnetseg.data.videos) and pictures written (hrnetseg.data.pictures): odd sizes kept exactly,
names OpenCV must not be given, files read back before they are renamed into place."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from hrnetseg.data import pictures, videos
from hrnetseg.util.errors import UserError

ODD = (57, 101)   # height, width


def frames_of(height: int, width: int, count: int = 3):
    rng = np.random.default_rng(height * width)
    small = rng.integers(0, 256, (count, 3, 4, 3), dtype=np.uint8)
    return [cv2.resize(picture, (width, height), interpolation=cv2.INTER_LINEAR) for picture in small]


def test_an_odd_sized_video_is_written_at_exactly_its_size(tmp_path):
    """OpenCV's FFmpeg writers round odd sides down; such a video is written as Motion JPEG in .avi instead."""
    assert videos.video_suffix(48, 80) == ".mp4" and videos.video_suffix(*ODD) == ".avi"
    with pytest.raises(UserError, match=r"a 57x101 video is written as \.avi"):
        with videos.atomic_video(str(tmp_path / "odd.mp4"), 5.0, *ODD):
            pass
    path = tmp_path / "odd.avi"
    with videos.atomic_video(str(path), 5.0, *ODD) as sink:
        for frame in frames_of(*ODD):
            sink.write(frame)
    info, reason = videos.probe(str(path))
    assert reason == "" and (info.frames, info.height, info.width) == (3, 57, 101) and info.fps == 5.0
    read = list(videos.frames(str(path)))
    assert len(read) == 3 and all(frame.shape == (57, 101, 3) for frame in read)
    assert np.abs(read[1].astype(int) - frames_of(*ODD)[1]).mean() < 4   # Motion JPEG: close, not equal
    assert videos.check_video_file(str(path), 3, *ODD) is None
    assert videos.check_video_file(str(path), 4, *ODD) == "decodes 3 frames, not 4"
    assert videos.check_video_file(str(path), 3, 56, 100) == "is 57x101, not 56x100"
    assert sorted(os.listdir(tmp_path)) == ["odd.avi"]   # no temporary folder left


def test_names_that_are_not_utf8_reach_opencv_through_a_plain_link(tmp_path, capfd):
    """OpenCV's Python binding crashes the process on such a name: it is given a link in a private folder, and
    messages keep the real name."""
    name = os.fsdecode(b"clip\xff.avi")
    path = str(tmp_path / name)
    with videos.atomic_video(path, 4.0, *ODD) as sink:
        for frame in frames_of(*ODD, count=2):
            sink.write(frame)
    assert os.listdir(tmp_path) == [name]
    info, reason = videos.probe(path)
    assert reason == "" and (info.frames, info.height, info.width) == (2, 57, 101)
    assert len(list(videos.frames(path))) == 2 and videos.check_video_file(path, 2, *ODD) is None
    with videos.opencv_name(path) as plain:
        assert plain != path and plain.isascii() and os.path.samefile(plain, path)
    assert not os.path.lexists(plain)   # the link is gone, the video stays
    (tmp_path / "text.avi").write_text("not a video")
    os.rename(str(tmp_path / "text.avi"), str(tmp_path / os.fsdecode(b"text\xfe.avi")))
    assert videos.probe(str(tmp_path / os.fsdecode(b"text\xfe.avi")))[1].startswith("cannot be opened as a video")
    assert capfd.readouterr().err == ""


def test_a_picture_that_does_not_read_back_is_never_renamed_into_place(tmp_path, monkeypatch):
    image = frames_of(*ODD)[0]
    pictures.write_png(str(tmp_path / "good.png"), image)
    assert np.array_equal(cv2.imread(str(tmp_path / "good.png"), cv2.IMREAD_UNCHANGED), image)
    monkeypatch.setattr(pictures, "png_matches", lambda path, image: False)   # as if the disk had lost the write
    with pytest.raises(UserError, match="bad.png: the file written does not decode back") as error:
        pictures.write_png(str(tmp_path / "bad.png"), image)
    assert error.value.exit_code == 1
    assert sorted(os.listdir(tmp_path)) == ["good.png"]
