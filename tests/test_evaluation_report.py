"""The HTML report (hrnetseg.evaluation.report): per-image scores, the bounded list of the worst images and when
their pictures are made, the page's contents (self-contained, escaped), damaged results, and the page in a real
headless browser (Debian's chromium, installed here when missing): it loads without console errors, its script
runs, and its screenshot shows the bars, the heat map and the worst images' pictures.

The tools' --report flags are tested with each tool (test_evaluation_cli.py, test_evaluation_postprocess*.py,
test_atlas_acc_perf.py, test_scripts_eval_acc_perf.py)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from hrnetseg.data import cityscapes
from hrnetseg.evaluation import postprocess, report, worst_images
from hrnetseg.evaluation.metrics import confusion
from hrnetseg.util.errors import UserError

from helpers import SAMPLE_IMAGES, quiet

CHROMIUM = "/usr/bin/chromium"
# Headless, as root (no sandbox), and silent on the network: no updates, sync or QUIC. The page must need nothing.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0", "--window-size=1200,1600"]


def diagonal_counts(miou_like: float, pixels: int = 1000) -> np.ndarray:
    """19 x 19 counts of an image with two classes present whose per-image mIoU rises with `miou_like` (0..1)."""
    counts = np.zeros((19, 19), dtype=np.int64)
    right = int(round(pixels * miou_like))
    counts[0, 0], counts[0, 1], counts[1, 1] = right, pixels - right, pixels
    return counts


# --- scores and the worst images ------------------------------------------------------------------------------

def test_per_image_scores_count_the_classes_of_the_image_only():
    gt = np.array([[0, 0, 1, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 7]], dtype=np.uint8)
    scores = worst_images.image_scores(confusion(pred, gt))
    # road: 1 right of 2 (IoU 1/2); sidewalk: 1 right, 1 false positive (IoU 1/2); the ignored pixel counts nowhere
    assert scores.miou == pytest.approx(0.5) and scores.pixel_accuracy == pytest.approx(2 / 3)
    assert worst_images.image_scores(confusion(pred, np.full_like(gt, 255))) == (None, None)


def test_the_worst_list_keeps_the_n_lowest_and_makes_pictures_only_for_them(monkeypatch):
    made = []
    monkeypatch.setattr(worst_images, "image_pictures", lambda photo, gt, pred: made.append(1) or {"errors": b"png"})
    monkeypatch.setattr(worst_images, "read_photo", lambda path: None)
    worst = worst_images.WorstImages(3)
    dummy = np.zeros((1, 1), dtype=np.uint8)
    rng = np.random.default_rng(0)
    shares = rng.permutation(40) / 40.0
    for index, share in enumerate(shares):
        worst.consider("img{:02d}".format(index), diagonal_counts(share), None, dummy, dummy)
    entries = worst.entries()
    lowest = sorted(range(40), key=lambda i: shares[i])[:3]
    assert [entry.id for entry in entries] == ["img{:02d}".format(i) for i in lowest]
    assert [entry.miou for entry in entries] == sorted(entry.miou for entry in entries)
    assert all(entry.pictures == {"errors": b"png"} for entry in entries) and worst.scored == 40
    assert len(made) < 15   # pictures for the images that could enter the list, not for every image
    assert not worst.wants(entries[-1].miou + 1e-9) and worst.wants(entries[-1].miou) and not worst.wants(None)
    assert worst.as_json()[0] == {"id": entries[0].id, "mIoU": entries[0].miou,
                                  "pixel_accuracy": entries[0].pixel_accuracy}

    made.clear()
    best_first = worst_images.WorstImages(2)
    for index in range(10):   # each image better than the last: after the first two, no picture is made
        best_first.consider("b{}".format(index), diagonal_counts(1 - index / 10.0), None, dummy, dummy)
    assert len(made) == 2 + 8 and [e.id for e in best_first.entries()] == ["b9", "b8"]
    made.clear()
    worst_first = worst_images.WorstImages(2)
    for index in range(10):
        worst_first.consider("w{}".format(index), diagonal_counts(index / 10.0), None, dummy, dummy)
    assert len(made) == 2 and [e.id for e in worst_first.entries()] == ["w0", "w1"]


def test_ties_and_images_without_evaluated_pixels():
    worst = worst_images.WorstImages(2)
    for image_id in ("c", "a", "b"):
        worst.offer(image_id, worst_images.Scores(0.5, 0.9))
    worst.offer("empty", worst_images.Scores(None, None))
    assert [entry.id for entry in worst.entries()] == ["a", "b"] and worst.scored == 4
    assert worst_images.WorstImages(0).wants(0.0) is False


def test_pictures_are_downscaled_and_mark_the_errors():
    import cv2

    gt = np.zeros((100, 1024), dtype=np.uint8)
    gt[:, 512:] = 13   # car
    gt[:10] = cityscapes.IGNORE
    pred = gt.copy()
    pred[50:, :] = 0   # the car's lower half called road
    pred[:10] = 0
    photo = np.full((100, 1024, 3), 200, dtype=np.uint8)
    pictures = worst_images.image_pictures(photo, gt, pred)
    assert list(pictures) == list(worst_images.PICTURE_NAMES)
    decoded = {name: cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR) for name, png in pictures.items()}
    assert all(image.shape == (25, 256, 3) for image in decoded.values())
    errors = decoded["errors"]
    # 4 x 4 pixels each: row r shows rows 4r..4r+3, column c columns 4c..4c+3
    assert tuple(errors[5, 50]) == (140, 140, 140)                 # right: the photo in grey, dimmed
    assert tuple(errors[20, 200]) == worst_images.WRONG_BGR              # car called road
    assert tuple(errors[0, 10]) == worst_images.IGNORED_BGR              # ignored
    assert tuple(decoded["ground truth"][20, 250]) == tuple(int(v) for v in cityscapes.TRAIN_PALETTE[13][::-1])
    assert tuple(decoded["prediction"][20, 250]) == tuple(int(v) for v in cityscapes.TRAIN_PALETTE[0][::-1])
    # a photo of another size is left out (the other pictures stay); a narrow image keeps its size
    assert "image" not in worst_images.image_pictures(photo[:50], gt, pred)
    small = worst_images.image_pictures(None, gt[:, :100], pred[:, :100])
    assert cv2.imdecode(np.frombuffer(small["prediction"], np.uint8), cv2.IMREAD_COLOR).shape == (100, 100, 3)


# --- the page -------------------------------------------------------------------------------------------------

def small_result(per_class=None) -> dict:
    from hrnetseg.evaluation.metrics import scores

    matrix = np.diag(np.arange(1, 20) * 100).astype(np.int64)
    matrix[0, 1] = 50
    matrix[18, 18] = 0     # bicycle absent from the ground truth
    return scores(matrix, 2)


def test_the_page_is_self_contained_and_escapes_what_it_shows():
    hostile = '<img src="https://example.invalid/x.png" onerror="alert(1)">'
    worst = [worst_images.Worst(hostile, 0.25, 0.5, {"errors": b"\x89PNG-ish"})]
    page = report.render(small_result(), title="t <b>", details=[("data", hostile)], worst=worst, worst_limit=6,
                         table=(("batch", "fps"), [("1", hostile)]), table_note="n")
    assert hostile not in page and "onerror=\"alert" not in page           # only ever escaped
    assert not re.search(r"https?://", page.replace(report._text(hostile), "")), "the page itself names no URL"
    assert not re.search(r"<script[^>]*\bsrc\s*=", page) and not re.search(r"<link\b", page, re.I)
    assert "@import" not in page and "url(http" not in page
    assert page.count('class="bar-row"') == 19 and page.count('<rect class="cell') == 361
    assert "bicycle: not in the ground truth nor the prediction" in page and "1 absent: bicycle" in page
    assert "no pixels of this class in the ground truth" in page          # bicycle's heat map row
    assert 'src="data:image/png;base64,' in page and "no photo beside the label" in page
    assert "<title>t &lt;b&gt;</title>" in page


def test_a_run_without_worst_images_says_why_or_shows_no_section():
    result = small_result()
    assert 'id="worst"' not in report.run_page(result, "t", [], None)
    assert 'id="worst"' not in report.run_page(result, "t", [], worst_images.WorstImages(0))
    assert "not per image" in report.run_page(result, "t", [], None, worst_note="one matrix per batch, not per image")


@pytest.mark.parametrize("change, match", [
    (lambda r: r.pop("confusion_matrix"), "has no 'confusion_matrix'"),
    (lambda r: r.update(confusion_matrix=r["confusion_matrix"][:3]), "is not 19 x 19"),
    (lambda r: r["confusion_matrix"][2].__setitem__(2, -1), "negative count"),
    (lambda r: r["confusion_matrix"][2].__setitem__(2, "7"), "not a list whose items are each an integer"),
    (lambda r: r.update(mIoU=81.6), "'mIoU' holds 81.6, not a fraction"),
    (lambda r: r["per_class"].update(road=True), "'per_class' holds True"),
    (lambda r: r.update(worst_images=[{"id": 3, "mIoU": 0.1}]), "'id' is 3, not a string"),
    (lambda r: r.update(worst_images=["a"]), "holds 'a', not an object"),
])
def test_damaged_results_are_one_line_errors(change, match):
    result = json.loads(json.dumps(small_result()))
    change(result)
    with pytest.raises(UserError, match=re.escape(match)):
        report.check_result(result, "result", "r.json")


# --- in a real browser ------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when it is missing (a fresh CI machine); skipped only when that
    install fails."""
    if not os.path.exists(CHROMIUM):
        if not shutil.which("apt-get") or os.geteuid() != 0:
            pytest.skip("no {} and no apt-get as root to install it".format(CHROMIUM))
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=900)
            if done.returncode != 0:
                pytest.skip("could not install chromium ({} exit {}): {}".format(
                    " ".join(command), done.returncode, done.stdout.strip().splitlines()[-1:]))
    return CHROMIUM


def colour_share(pixels: np.ndarray, rgb, tolerance: int = 3) -> float:
    return float(np.mean(np.all(np.abs(pixels.astype(int) - np.array(rgb)) <= tolerance, axis=-1)))


def test_the_report_in_a_headless_browser(chromium, sample_data_root, sample_results_path, tmp_path):
    """One browser launch: the page loads with no console message at all (its script logs nothing; an error, a
    blocked request or a missing resource would log one), its script ran to the end (data-report-ready), and the
    screenshot shows the bars in their colour, the heat map's red scale and the worst images' label colours where
    the page says they are."""
    from PIL import Image

    page = tmp_path / "report.html"
    postprocess.evaluate_folder(str(sample_results_path), str(sample_data_root / "cityscapes"), workers=1,
                                report=str(page), report_worst=2, log=quiet)
    text = page.read_text()
    assert not re.search(r"https?://", text) and "<link" not in text and not re.search(r"<script[^>]*src", text)
    shot = tmp_path / "report.png"
    done = subprocess.run([chromium] + CHROMIUM_FLAGS + ["--user-data-dir={}".format(tmp_path / "profile"),
                                                         "--screenshot={}".format(shot), "--dump-dom",
                                                         page.as_uri()],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    if os.environ.get("HRNETSEG_KEEP_REPORT"):   # to look at it: HRNETSEG_KEEP_REPORT=/tmp/somewhere
        keep = os.environ["HRNETSEG_KEEP_REPORT"]
        os.makedirs(keep, exist_ok=True)
        shutil.copy(str(shot), keep)
        shutil.copy(str(page), keep)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    ready = re.search(r'data-report-ready="([^"]*)"', done.stdout)
    assert ready and ready.group(1) == "ok: 19 bars, 361 cells, 8 pictures", done.stdout[:500]
    layout = json.loads(re.search(r'data-layout="([^"]*)"', done.stdout).group(1).replace("&quot;", '"'))
    pixels = np.asarray(Image.open(str(shot)).convert("RGB"))
    assert pixels.shape == (1600, 1200, 3) and pixels.std() > 20           # not blank

    def region(name):
        left, top, width, height = layout[name]
        assert width > 100 and height > 100, layout
        return pixels[top:top + height, left:left + width]

    bar_rgb = tuple(int(report.BAR_COLOUR[i:i + 2], 16) for i in (1, 3, 5))
    assert colour_share(region("bars"), bar_rgb) > 0.05
    assert colour_share(region("heatmap"), bar_rgb) == 0
    heat = region("heatmap").astype(int)    # the grid is about half of it, the labels and the scale the rest
    assert np.mean(heat[..., 0] - heat[..., 2] > 60) > 0.03                             # the scale's warm colours
    assert np.mean((heat[..., 0] > 100) & (heat[..., 1] < 60) & (heat[..., 2] < 60)) > 0.01   # dark red: diagonal
    left, top, width, _ = layout["worst"]
    visible = pixels[top:, left:left + width]   # the screenshot ends at the window's bottom
    assert visible.shape[0] > 250, layout
    road = tuple(int(v) for v in cityscapes.TRAIN_PALETTE[0])
    assert colour_share(visible, road, 0) > 0.01       # the ground truth and prediction pictures
    assert colour_share(visible, tuple(worst_images.WRONG_BGR[::-1]), 0) > 0.0005     # the error map's wrong pixels
    assert SAMPLE_IMAGES == 3 and "The 2 worst images" in text
