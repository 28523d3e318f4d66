"""HRNet_postprocess.py: pairing by id, namings, exact mIoU (cityscapesScripts, the ModelZoo scripts' method),
pictures, shards, errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from hrnetseg.bench.reference import reference_postprocess
from hrnetseg.data import cityscapes
from hrnetseg.evaluation import metrics, model_outputs, postprocess, upsample_argmax, worst_images
from hrnetseg.util.errors import UserError

from helpers import SAMPLE_IMAGES, assert_user_error, output_ids, quiet, run_in_process, run_script

SCRIPT = "HRNet_postprocess.py"


def _gt_dir(root: Path) -> Path:
    return root / "cityscapes" / "gtFine" / "val"


def _copy_outputs(res: Path, dest: Path, rename=lambda sid, index: "{}_{}.bin".format(sid, index),
                  ids=None, indices=(0, 1)) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for sid in ids or output_ids(res):
        for index in indices:
            shutil.copy(str(res / "{}_{}.bin".format(sid, index)), str(dest / rename(sid, index)))
    return dest


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, sample_data_root, sample_results_path) -> dict:
    """One CLI run over the ais_bench-named outputs with every output option."""
    out = tmp_path_factory.mktemp("post")
    paths = {"json": out / "result.json", "vis": out / "vis", "pred": out / "pred", "npz": out / "all.npz"}
    result = run_script([SCRIPT, "--res_path", sample_results_path, "--data_path", _gt_dir(sample_data_root),
                         "--save_path", paths["json"], "--save_vis", paths["vis"], "--save_pred", paths["pred"],
                         "--save_confusion", paths["npz"]])
    assert result.returncode == 0, result.stderr
    paths["stdout"] = result.stdout
    paths["result"] = json.loads(paths["json"].read_text())
    return paths


def test_result_json_layout(cli_run):
    result = cli_run["result"]
    assert result["title"] == "overall statistical evaluation"
    assert len(result["value"]["Iou_array"]) == 19
    assert set(result) >= {"mIoU", "per_class", "pixel_accuracy", "mean_accuracy", "images", "skipped",
                           "confusion_matrix"}
    assert result["images"] == SAMPLE_IMAGES and result["skipped"] == []
    assert list(result["per_class"]) == list(cityscapes.CLASS_NAMES)
    assert 0 < result["mIoU"] < 1 and result["mIoU"] == result["value"]["mean_Iou"]
    assert "ais_bench naming" in cli_run["stdout"] and "main" in cli_run["stdout"]
    assert "mIoU" in cli_run["stdout"] and "sidewalk" in cli_run["stdout"]


def test_miou_equals_cityscapes_scripts(cli_run, sample_data_root):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    labels = cityscapes.find_labels(str(_gt_dir(sample_data_root)))
    preds = [str(cli_run["pred"] / (sid + "_labelIds.png")) for sid in sorted(labels)]
    official.args.evalInstLevelScore = False
    official.args.quiet = True
    official.args.JSONOutput = False
    theirs = official.evaluateImgLists(preds, [labels[sid] for sid in sorted(labels)], official.args)
    assert abs(theirs["averageScoreClasses"] - cli_run["result"]["mIoU"]) <= 1e-6
    for name, value in cli_run["result"]["per_class"].items():
        assert abs(theirs["classScores"][name] - value) <= 1e-12


def test_equals_the_reference_method(cli_run, sample_data_root, sample_results_path):
    """The ModelZoo scripts' postprocess, restated in hrnetseg.baselines, gives the same matrix and mean."""
    reference = reference_postprocess(str(sample_results_path), str(_gt_dir(sample_data_root)))
    assert reference["confusion_matrix"] == cli_run["result"]["confusion_matrix"]
    assert abs(reference["value"]["mean_Iou"] - cli_run["result"]["mIoU"]) <= 1e-6


def test_pictures(cli_run, sample_data_root, sample_results_path):
    for sid in output_ids(sample_results_path):
        pred = cv2.imread(str(cli_run["pred"] / (sid + "_labelIds.png")), cv2.IMREAD_UNCHANGED)
        logits = np.fromfile(str(sample_results_path / (sid + "_1.bin")), np.float32).reshape(19, 32, 64)
        train_ids = upsample_argmax.logits_to_labels(logits, 128, 256)
        assert np.array_equal(pred, cityscapes.TRAIN_TO_ID[train_ids])
        color = cv2.imread(str(cli_run["vis"] / (sid + "_color.png")), cv2.IMREAD_COLOR)[:, :, ::-1]
        assert np.array_equal(color, cityscapes.TRAIN_PALETTE[train_ids])
        overlay = cv2.imread(str(cli_run["vis"] / (sid + "_overlay.png")), cv2.IMREAD_COLOR)
        assert overlay.shape == (128, 256, 3)


@pytest.mark.parametrize("variant", ["benchmark", "npy", "label_stem", "parent_folder", "cityscapes_root"])
def test_other_namings_and_places_give_the_same_result(variant, cli_run, sample_data_root, sample_results_path,
                                                       tmp_path):
    res, data = tmp_path / "bs1", _gt_dir(sample_data_root)
    if variant == "benchmark":
        _copy_outputs(sample_results_path, res, lambda sid, index: "{}_{}.bin".format(sid, index + 1))
    elif variant == "npy":
        res.mkdir()
        for sid in output_ids(sample_results_path):
            for index in (0, 1):
                array = np.fromfile(str(sample_results_path / "{}_{}.bin".format(sid, index)), np.float32)
                np.save(str(res / "{}_{}.npy".format(sid, index)), array.reshape(1, 19, 32, 64))
    elif variant == "label_stem":  # bins named after the label file, as the ModelZoo scripts' preprocess did
        _copy_outputs(sample_results_path, res, lambda sid, index: "{}_gtFine_labelIds_{}.bin".format(sid, index))
    elif variant == "parent_folder":
        _copy_outputs(sample_results_path, res)
        res = tmp_path
    else:
        _copy_outputs(sample_results_path, res)
        data = sample_data_root / "cityscapes"
    messages = []
    result = postprocess.evaluate_folder(str(res), str(data), workers=1, log=messages.append)
    assert result == cli_run["result"]
    if variant == "benchmark":
        assert "benchmark naming (<id>_2.bin: main)" in messages[0]
    if variant == "npy":
        assert ".npy" in messages[0]


def test_aux_output_and_single_output_models(cli_run, sample_data_root, sample_results_path, tmp_path):
    data = str(_gt_dir(sample_data_root))
    messages = []
    aux = postprocess.evaluate_folder(str(sample_results_path), data, output_index=0, workers=1,
                                      log=messages.append)
    assert "aux" in messages[0] and aux["confusion_matrix"] != cli_run["result"]["confusion_matrix"]
    only = _copy_outputs(sample_results_path, tmp_path / "one", lambda sid, index: "{}_0.bin".format(sid),
                         indices=(1,))
    messages, warnings = [], []
    single = postprocess.evaluate_folder(str(only), data, workers=1, log=messages.append, warn=warnings.append)
    assert single == cli_run["result"]  # evaluated, but said to be the aux head's: ais_bench names it _0
    assert messages[0].endswith(": evaluating output 0, the AUX head (no main output _1 files found)")
    assert len(warnings) == 1 and "only the auxiliary head's outputs" in warnings[0]
    warnings = []
    postprocess.evaluate_folder(str(only), data, output_index=0, workers=1, log=quiet, warn=warnings.append)
    assert warnings == []  # asked for on purpose
    with pytest.raises(UserError, match="no output 1"):
        postprocess.evaluate_folder(str(only), data, output_index=1, log=quiet)
    with pytest.raises(UserError, match="no output 2"):
        postprocess.evaluate_folder(str(sample_results_path), data, output_index=2, log=quiet)


def test_workers_do_not_change_the_result(cli_run, sample_data_root, sample_results_path):
    result = postprocess.evaluate_folder(str(sample_results_path), str(_gt_dir(sample_data_root)), workers=2,
                                         log=quiet)
    assert result == cli_run["result"]


def test_missing_output_is_an_error_unless_allowed(sample_data_root, sample_results_path, tmp_path):
    ids = output_ids(sample_results_path)
    res = _copy_outputs(sample_results_path, tmp_path / "bs1", ids=ids[1:])
    out = tmp_path / "result.json"
    args = [SCRIPT, "--res_path", res, "--data_path", _gt_dir(sample_data_root), "--save_path", out]
    assert_user_error(run_script(args), "1 of 3 labels have no output", ids[0], "--allow_missing")
    assert not out.exists()
    allowed = run_script(args + ["--allow_missing"])
    assert allowed.returncode == 0, allowed.stderr
    assert "skipping 1 labels without output" in allowed.stdout
    result = json.loads(out.read_text())
    assert result["images"] == 2 and result["skipped"] == [ids[0]]
    assert result["confusion_matrix"] == postprocess.evaluate_folder(
        str(res), str(_gt_dir(sample_data_root)), allow_missing=True, log=quiet)["confusion_matrix"]


def test_pairs_by_id_not_by_order(sample_data_root, sample_results_path, tmp_path):
    """An extra output sorting first must not shift the pairs (it is reported and ignored)."""
    res = _copy_outputs(sample_results_path, tmp_path / "bs1")
    for index in (0, 1):
        shutil.copy(str(res / "{}_{}.bin".format(output_ids(res)[0], index)),
                    str(res / "aachen_000000_000019_{}.bin".format(
            index)))
    messages = []
    result = postprocess.evaluate_folder(str(res), str(_gt_dir(sample_data_root)), log=messages.append)
    reference = postprocess.evaluate_folder(str(sample_results_path), str(_gt_dir(sample_data_root)), log=quiet)
    assert result == reference
    assert any("ignoring 1 outputs without label: aachen_000000_000019" in m for m in messages)


def test_wrong_size_output_is_named_and_nothing_is_written(sample_data_root, sample_results_path, tmp_path):
    res = _copy_outputs(sample_results_path, tmp_path / "bs1")
    bad = res / "{}_1.bin".format(output_ids(res)[1])
    bad.write_bytes(bad.read_bytes()[:-4])
    out, vis = tmp_path / "result.json", tmp_path / "vis"
    result = run_script([SCRIPT, "--res_path", res, "--data_path", _gt_dir(sample_data_root), "--save_path", out,
                         "--save_vis", vis, "--save_confusion", tmp_path / "c.npz"])
    assert_user_error(result, str(bad), "expected 155648")
    assert not out.exists() and not (tmp_path / "c.npz").exists() and not vis.exists()


def test_unreadable_label_mid_run_leaves_nothing(sample_data_root, sample_results_path, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(str(sample_data_root), str(data))
    labels = cityscapes.find_labels(str(_gt_dir(data)))
    broken = labels[sorted(labels)[2]]
    Path(broken).write_bytes(Path(broken).read_bytes()[:100])  # the header reads, the pixels do not
    out, vis, pred = tmp_path / "result.json", tmp_path / "vis", tmp_path / "pred"
    result = run_script([SCRIPT, "--res_path", sample_results_path, "--data_path", _gt_dir(data), "--save_path", out,
                         "--save_vis", vis, "--save_pred", pred, "--workers", "1"])
    assert_user_error(result, "label {} cannot be decoded".format(broken))
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr
    assert not out.exists() and not vis.exists() and not pred.exists()  # the folders it made went too


def test_nan_output_is_named(sample_data_root, sample_results_path, tmp_path):
    res = _copy_outputs(sample_results_path, tmp_path / "bs1")
    bad = res / "{}_1.bin".format(output_ids(res)[0])
    array = np.fromfile(str(bad), np.float32)
    array[100] = np.nan
    array.tofile(str(bad))
    assert_user_error(run_script([SCRIPT, "--res_path", res, "--data_path", _gt_dir(sample_data_root)]),
                      str(bad), "NaN")


def test_folder_errors(sample_data_root, sample_results_path, tmp_path, capsys):
    """The first refusal runs the real command line; the rest run the script's main() under run_cli here."""
    import HRNet_postprocess

    def refused(*args):
        return run_in_process(HRNet_postprocess.main, args, capsys)

    gt = _gt_dir(sample_data_root)
    assert_user_error(run_script([SCRIPT, "--res_path", tmp_path / "none", "--data_path", gt]), "not found")
    (tmp_path / "empty").mkdir()
    assert_user_error(refused("--res_path", tmp_path / "empty", "--data_path", gt), "no model outputs")
    mixed = _copy_outputs(sample_results_path, tmp_path / "mixed")
    np.save(str(mixed / "x_1.npy"), np.zeros(3, np.float32))
    assert_user_error(refused("--res_path", mixed, "--data_path", gt), "mixes .bin and .npy")
    other = _copy_outputs(sample_results_path, tmp_path / "other", lambda sid, index: "zz{}_{}.bin".format(sid, index))
    assert_user_error(refused("--res_path", other, "--data_path", gt), "no output in")
    assert_user_error(refused("--res_path", sample_results_path, "--data_path", tmp_path / "empty"),
                      "no labels found")
    assert_user_error(refused("--res_path", sample_results_path, "--data_path", gt, "--save_path",
                              tmp_path / "no" / "result.json"), "does not exist")


def test_output_index_is_digits_only(capsys):
    """int() reads "1_0" as 10 and Arabic-Indic digits as digits."""
    import HRNet_postprocess

    parser = HRNet_postprocess.build_parser()
    required = ["--res_path", "r", "--data_path", "d"]
    for text in ("1_0", "\u0663", " 1", "1\n", "-1", ""):
        with pytest.raises(SystemExit):
            parser.parse_args(required + ["--output_index", text])
        assert "expected an output number 0, 1, ..., got {!r}".format(text) in capsys.readouterr().err
    assert parser.parse_args(required + ["--output_index", "0"]).output_index == 0


def test_shards_merge_into_the_same_result(cli_run, sample_data_root, sample_results_path, tmp_path):
    ids = output_ids(sample_results_path)
    gt = _gt_dir(sample_data_root)
    shards = []
    for name, part in (("a", ids[:2]), ("b", ids[2:])):
        res = _copy_outputs(sample_results_path, tmp_path / name, ids=part)
        shards.append(tmp_path / (name + ".npz"))
        result = run_script([SCRIPT, "--res_path", res, "--data_path", gt, "--allow_missing", "--save_confusion",
                             shards[-1]])
        assert result.returncode == 0, result.stderr
    merged = tmp_path / "merged.json"
    result = run_script(["-m", "hrnetseg.metrics", "merge"] + shards + ["--save_path", merged])
    assert result.returncode == 0, result.stderr
    assert json.loads(merged.read_text()) == cli_run["result"]
    assert metrics.ConfusionMatrix.load(str(cli_run["npz"])).compute() == cli_run["result"]


def test_process_workers_give_the_same_counts(cli_run, sample_data_root, sample_results_path):
    """More than THREADS_UP_TO workers run as processes: tasks and results must travel between them."""
    from hrnetseg.util.workers import parallel_results

    outputs = model_outputs.find_outputs(str(sample_results_path))
    pairs, _, _ = postprocess.pair_outputs(outputs, 1, cityscapes.find_labels(str(_gt_dir(sample_data_root))))
    total = np.zeros((19, 19), np.int64)
    with parallel_results(postprocess._evaluate_task, [(p, None, None) for p in pairs], 2, "t",
                          processes=True) as results:
        for result in results:
            assert result[0] == "ok"
            total += result[2]
    assert total.tolist() == cli_run["result"]["confusion_matrix"]


def test_report_and_the_worst_images_in_the_result(sample_data_root, sample_results_path, tmp_path):
    """--report writes the HTML page, --report_worst N puts the N worst images' ids and scores into the result
    (lowest per-image mIoU first, the figures of each image's own confusion matrix)."""
    from hrnetseg.evaluation import worst_images

    gt = _gt_dir(sample_data_root)
    page, out = tmp_path / "report.html", tmp_path / "result.json"
    result = run_script([SCRIPT, "--res_path", sample_results_path, "--data_path", gt, "--save_path", out,
                         "--report", page, "--report_worst", "2"])
    assert result.returncode == 0, result.stderr
    assert "report: {}".format(page) in result.stdout
    worst = json.loads(out.read_text())["worst_images"]
    outputs = model_outputs.find_outputs(str(sample_results_path))
    pairs, _, _ = postprocess.pair_outputs(outputs, 1, cityscapes.find_labels(str(gt)))
    scored = sorted((worst_images.image_scores(metrics.confusion(*postprocess.predicted_labels(pair))), pair.id)
                    for pair in pairs)
    assert worst == [{"id": sid, "mIoU": s.miou, "pixel_accuracy": s.pixel_accuracy} for s, sid in scored[:2]]
    html = page.read_text()
    assert "The 2 worst images" in html and html.count('src="data:image/png;base64,') == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "result.json"]   # no temporaries left
    # without --report_worst (and --report) the result has no list: the layout of today's result.json
    assert "worst_images" not in postprocess.evaluate_folder(str(sample_results_path), str(gt), log=quiet)


def test_forked_workers_make_pictures_only_for_images_that_could_be_among_the_worst(sample_data_root,
                                                                                      sample_results_path):
    """The worst list's bound lives in memory the forked workers inherit: a bound the parent lowers before the
    pool starts keeps every worker from making pictures; an open list gets every image's pictures."""
    from hrnetseg.util.workers import parallel_results

    outputs = model_outputs.find_outputs(str(sample_results_path))
    pairs, _, _ = postprocess.pair_outputs(outputs, 1, cityscapes.find_labels(str(_gt_dir(sample_data_root))),
                                           want_images=True)
    for full, expected in ((True, None), (False, list(worst_images.PICTURE_NAMES))):
        worst = worst_images.WorstImages(1, shared=True)
        if full:
            worst.offer("perfectly_wrong", worst_images.Scores(0.0, 0.0))   # no image can rank below it
        postprocess._worst_in_progress = worst
        try:
            with parallel_results(postprocess._evaluate_task, [(p, None, None) for p in pairs], 2, "t",
                                  processes=True) as results:
                pictures = [result[5] for result in results]
        finally:
            postprocess._worst_in_progress = None
        assert [sorted(p) if p else p for p in pictures] == [sorted(expected) if expected else None] * len(pairs)


def test_float16_outputs(sample_data_root, sample_results_path, tmp_path):
    """fp16 outputs (an .om built with fp16 outputs) are read as such and evaluated in float32."""
    half, widened = tmp_path / "half", tmp_path / "widened"
    half.mkdir()
    widened.mkdir()
    for sid in output_ids(sample_results_path):
        for index in (0, 1):
            name = "{}_{}.bin".format(sid, index)
            values = np.fromfile(str(sample_results_path / name), np.float32).astype(np.float16)
            values.tofile(str(half / name))
            values.astype(np.float32).tofile(str(widened / name))
    data = str(_gt_dir(sample_data_root))
    assert postprocess.evaluate_folder(str(half), data, log=quiet) == \
        postprocess.evaluate_folder(str(widened), data, log=quiet)
