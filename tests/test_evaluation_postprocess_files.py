"""HRNet_postprocess.py and its files under hostile input: output dtypes, damaged labels and outputs, files that are
not regular files, a preprocess folder given as outputs, result files and picture folders of one name, outputs held
by another run. Each case: a correct result, a stated note, or one line with exit 2, and never a numpy warning
before it."""
from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest

from hrnetseg.data import cityscapes
from hrnetseg.evaluation import model_outputs, postprocess
from hrnetseg.evaluation.postprocess import evaluate_folder
from hrnetseg.util.errors import UserError
from hrnetseg.util.locks import lock_path_for

from helpers import (
    SAMPLE_HEIGHT,
    SAMPLE_IMAGES,
    SAMPLE_WIDTH,
    assert_user_error,
    cut_label_short,
    load_script,
    lock_held_elsewhere,
    output_ids,
    quiet,
    run_in_process,
    run_script,
    strict,
    write_manifest_by_hand,
)

SCRIPT = "HRNet_postprocess.py"
SHAPE = (19, 32, 64)          # the outputs for the 128 x 256 sample labels
F32, F16 = 19 * 32 * 64 * 4, 19 * 32 * 64 * 2
F32, F16 = 19 * 32 * 64 * 4, 19 * 32 * 64 * 2


def evaluate(res, data, **kwargs):
    """evaluate_folder, quiet and strict; the notes it gives on stderr come back in kwargs['notes']."""
    notes = kwargs.pop("notes", [])
    with strict():
        return postprocess.evaluate_folder(str(res), str(data), workers=1, log=quiet, warn=notes.append, **kwargs)


def refused(match, res, data, **kwargs):
    with pytest.raises(UserError, match=match) as caught:
        evaluate(res, data, **kwargs)
    return str(caught.value)


def _labels_copy(gt: Path, dest: Path) -> Path:
    """A private copy of the sample gtFine/val folder (labels only: cheap), to damage."""
    copy = dest / "cityscapes" / "gtFine" / "val"
    shutil.copytree(str(gt), str(copy))
    return copy


def _outputs_copy(sample_results_path: Path, dest: Path, convert=None) -> Path:
    dest.mkdir(parents=True)
    for path in sample_results_path.glob("*.bin"):
        if convert is None:
            shutil.copy(str(path), str(dest / path.name))
        else:
            convert(np.fromfile(str(path), np.float32).reshape(SHAPE)).tofile(str(dest / path.name))
    return dest


@pytest.fixture(scope="module")
def reference(sample_results_path, gt) -> dict:
    return evaluate(sample_results_path, gt)


@pytest.fixture(scope="module")
def half(tmp_path_factory, sample_results_path) -> Path:
    """The sample outputs as float16 (an .om built with fp16 outputs). Shared: copy before changing."""
    return _outputs_copy(sample_results_path, tmp_path_factory.mktemp("half") / "bs1",
                         lambda array: array.astype(np.float16))


@pytest.fixture(scope="module")
def half_reference(tmp_path_factory, sample_results_path, gt) -> dict:
    """The result for `half`: its values, widened to float32 files."""
    widened = _outputs_copy(sample_results_path, tmp_path_factory.mktemp("widened") / "bs1",
                            lambda array: array.astype(np.float16).astype(np.float32))
    return evaluate(widened, gt)


# ------------------------------------------------------------------------------- the dtype rule

SOURCES = ("its NPY header", "--output_dtype", "the runner summary s.json")


def sources(header=None, flag=None, summary=None):
    return list(zip(SOURCES, (header, flag, summary)))


def test_dtype_rule_known_sources_win_in_order_and_must_agree():
    resolve = model_outputs.resolve_output_dtype
    assert resolve("o.npy", F16, SHAPE, sources(header="float16")) == ("float16", "its NPY header")
    assert resolve("o.bin", F16, SHAPE, sources(flag="float16", summary="float16")) == ("float16", "--output_dtype")
    assert resolve("o.bin", F16, SHAPE, sources(summary="float16")) == ("float16", "the runner summary s.json")
    assert resolve("o.bin", F32, SHAPE, sources(flag="float32")) == ("float32", "--output_dtype")
    for header, flag, summary in (("float32", "float16", None), (None, "float16", "float32"),
                                  ("float16", None, "float32")):
        with pytest.raises(UserError, match="o.bin .* says float.* but .* says float.*155648 bytes as float32, "
                                            "77824 as float16"):
            resolve("o.bin", F16, SHAPE, sources(header, flag, summary))


def test_dtype_rule_size_must_fit_the_known_dtype():
    # float16 data as large as the float32 output (e.g. twice the values): with the dtype known, refused
    with pytest.raises(UserError, match="o.bin has 155648 bytes of data, not 77824 as float16 \\(--output_dtype "
                                        "says so\\).*it fits float32"):
        model_outputs.resolve_output_dtype("o.bin", F32, SHAPE, sources(flag="float16"))
    with pytest.raises(UserError, match="not 155648 as float32 \\(the runner summary s.json says so\\)"):
        model_outputs.resolve_output_dtype("o.bin", F16, SHAPE, sources(summary="float32"))


def test_dtype_rule_when_nothing_is_known_float32_then_float16_by_size():
    resolve = model_outputs.resolve_output_dtype
    assert resolve("o.bin", F32, SHAPE, sources()) == ("float32", model_outputs.DEFAULT)
    assert resolve("o.bin", F16, SHAPE, sources()) == ("float16", model_outputs.BY_SIZE)
    for size in (0, F32 - 4, F16 + 2, 2 * F32):
        with pytest.raises(UserError, match="o.bin has {} bytes of data, expected 155648 \\(float32\\) or 77824 "
                                            "\\(float16\\)".format(size)):
            resolve("o.bin", size, SHAPE, sources())


# ------------------------------------------------------------------------------- dtypes end to end

def test_float16_outputs_by_flag_by_summary_and_by_size(half, gt, half_reference, tmp_path):
    reference = half_reference
    notes = []
    assert evaluate(half, gt, notes=notes) == reference
    assert notes == ["note: reading 3 outputs as float16 by their size (pass --output_dtype to be explicit)"]
    notes = []
    assert evaluate(half, gt, output_dtype="float16", notes=notes) == reference and notes == []
    refused("has 77824 bytes of data, not 155648 as float32 \\(--output_dtype says so\\)", half, gt,
            output_dtype="float32")
    res = _outputs_copy(half, tmp_path / "results" / "bs1")
    summary = tmp_path / "results" / "bs1_summary.json"     # what `hrnetseg.runner.cli --output_dirname bs1` writes
    summary.write_text(json.dumps({"backend": "onnxruntime", "output_dtype": "float16"}))
    notes = []
    assert evaluate(res, gt, notes=notes) == reference and notes == []
    assert evaluate(tmp_path / "results", gt) == reference   # the one subfolder holding outputs, same summary
    (tmp_path / "latest").symlink_to(res)
    notes = []
    assert evaluate(tmp_path / "latest", gt, notes=notes) == reference and notes == []   # found through the link
    refused("--output_dtype says float32 but the runner summary {} says float16".format(summary), res, gt,
            output_dtype="float32")
    summary.write_text(json.dumps({"throughput": 5.0}))      # ais_bench's summary: no dtype, nothing known
    assert evaluate(res, gt, output_dtype="float16") == reference
    for text, match in (("[1", "runner summary .* is not JSON .*; repair or remove it"),
                        ("[1]", "holds an array where an object belongs"),
                        ('{"output_dtype": "int8"}', "output_dtype 'int8'"), ("\xff", "is not UTF-8 text")):
        summary.write_bytes(text.encode("latin-1"))
        refused(match, res, gt)
    summary.unlink()
    os.mkfifo(str(summary))
    refused("runner summary {} is a FIFO".format(summary), res, gt)


def test_float16_data_of_float32_size_is_refused_once_the_dtype_is_known(gt, sample_results_path, tmp_path):
    """Read as float32 it gave a wrong mIoU with exit 0; told float16 (flag or summary), it is refused."""
    res = _outputs_copy(sample_results_path, tmp_path / "res" / "bs1",
                        lambda array: np.concatenate([array, array], axis=2).astype(np.float16))
    refused("has 155648 bytes of data, not 77824 as float16 \\(--output_dtype says so\\).*it fits float32", res, gt,
            output_dtype="float16")
    (tmp_path / "res" / "bs1_summary.json").write_text('{"output_dtype": "float16"}')
    refused("not 77824 as float16 \\(the runner summary", res, gt)


def test_npy_header_wins_and_must_agree(gt, half_reference, sample_results_path, tmp_path):
    reference = half_reference
    res = tmp_path / "npy"
    res.mkdir()
    for path in sample_results_path.glob("*.bin"):
        array = np.fromfile(str(path), np.float32).reshape((1,) + SHAPE).astype(np.float16)
        np.save(str(res / (path.name[:-4] + ".npy")), array)
    notes = []
    assert evaluate(res, gt, notes=notes) == reference and notes == []
    assert evaluate(res, gt, output_dtype="float16") == reference
    refused("its NPY header says float16 but --output_dtype says float32", res, gt, output_dtype="float32")
    (tmp_path / "npy_summary.json").write_text('{"output_dtype": "float32"}')
    refused("its NPY header says float16 but the runner summary .* says float32", res, gt)


def test_sizes_that_disagree_within_a_folder_are_refused(half, gt, sample_results_path, tmp_path):
    res = _outputs_copy(half, tmp_path / "bs1")
    first = output_ids(res)[0]
    for index in (0, 1):
        shutil.copy(str(sample_results_path / "{}_{}.bin".format(first, index)), str(res))
    refused("outputs differ in size: .*{}_1.bin has float32's size".format(first), res, gt)
    refused("{}_1.bin has 155648 bytes of data, not 77824 as float16".format(first), res, gt,
            output_dtype="float16")   # told the dtype, the odd one out is named


def test_non_finite_values_are_named_for_what_they_mean(half, gt, sample_results_path, tmp_path):
    res = _outputs_copy(half, tmp_path / "half")
    bad = res / "{}_1.bin".format(output_ids(res)[1])
    values = np.fromfile(str(bad), np.uint16)
    values[::7] = 0x7E00                                     # float16 NaN: not float16 logits after all
    values.tofile(str(bad))
    refused("output {}: its size matched float16 19x32x64 but the values are not float16 logits .*"
            "--output_dtype".format(bad), res, gt)
    full = _outputs_copy(sample_results_path, tmp_path / "full")
    bad = full / "{}_1.bin".format(output_ids(full)[0])
    array = np.fromfile(str(bad), np.float32)
    array[5] = -np.inf                                       # -inf in a class that is not the max: no warning
    array.tofile(str(bad))
    refused("output {} holds NaN/inf values \\(read as float32, the default\\)".format(bad), full, gt)


def test_the_runner_summary_is_found_beside_a_symlinked_output_folder(tmp_path):
    """ais_bench and the runner write OUT/DIRNAME_summary.json beside the name they were given, also when
    OUT/DIRNAME is a link to a folder elsewhere; a --res_path that links to OUT/DIRNAME finds it too."""
    from hrnetseg.evaluation.model_outputs import summary_output_dtype

    store = tmp_path / "store" / "x"
    store.mkdir(parents=True)
    (tmp_path / "o3").mkdir()
    (tmp_path / "o3" / "bs1").symlink_to(store)
    (tmp_path / "o3" / "bs1_summary.json").write_text(json.dumps({"output_dtype": "float16"}))
    assert summary_output_dtype(str(tmp_path / "o3" / "bs1")) == ("float16", str(tmp_path / "o3" / "bs1_summary.json"))
    real = tmp_path / "results" / "bs4"
    real.mkdir(parents=True)
    (tmp_path / "results" / "bs4_summary.json").write_text(json.dumps({"output_dtype": "float32"}))
    (tmp_path / "latest").symlink_to(real)
    assert summary_output_dtype(str(tmp_path / "latest")) == ("float32", str(tmp_path / "results" / "bs4_summary.json"))


# ------------------------------------------------------------------------------- outputs

def test_damaged_and_odd_output_files(gt, sample_results_path, tmp_path):
    ids = output_ids(sample_results_path)
    cases = {
        "empty": lambda res: (res / "{}_1.bin".format(ids[0])).write_bytes(b""),
        "fifo": lambda res: (os.remove(str(res / "{}_1.bin".format(ids[0]))),
                             os.mkfifo(str(res / "{}_1.bin".format(ids[0])))),
        "loop": lambda res: (os.remove(str(res / "{}_1.bin".format(ids[0]))),
                             (res / "{}_1.bin".format(ids[0])).symlink_to(res / "{}_1.bin".format(ids[0]))),
        "twice": lambda res: shutil.copy(str(res / "{}_1.bin".format(ids[0])), str(res / "{}_01.bin".format(ids[0]))),
        "mixed naming": lambda res: [os.rename(str(res / "{}_{}.bin".format(ids[0], i)),
                                               str(res / "{}_{}.bin".format(ids[0], i + 1))) for i in (1, 0)],
        "half a run": lambda res: os.remove(str(res / "{}_1.bin".format(ids[2]))),
    }
    expected = {"empty": "has 0 bytes of data, expected 155648", "fifo": "is a FIFO, not a regular file",
                "loop": "is a symbolic link loop", "twice": "two files for output 1 of {}".format(ids[0]),
                "mixed naming": "mixes output sets: .*{} has _1, _2".format(ids[0]),
                "half a run": "mixes output sets"}
    for name, damage in cases.items():
        res = _outputs_copy(sample_results_path, tmp_path / name.replace(" ", "_"))
        damage(res)
        refused(expected[name], res, gt)
    loop = tmp_path / "loop_res"
    loop.symlink_to(loop)
    refused("result folder {} is a symbolic link loop".format(loop), loop, gt)


@pytest.mark.parametrize("array,match", [
    (np.array([{"evil": 1}], dtype=object), "holds object values"),
    (np.zeros((32, 64), np.float32), "is float32 32x64, expected 19x32x64"),
    (np.zeros((2,) + SHAPE, np.float32), "is float32 2x19x32x64"),
    (np.zeros(SHAPE, np.float64), "holds float64 values"),
    (np.zeros(SHAPE, np.int32), "holds int32 values"),
    (None, "is truncated"),
    ("npz", "not an .npy file"),
])
def test_hostile_npy_outputs(array, match, gt, sample_results_path, tmp_path):
    res = tmp_path / "npy"
    res.mkdir()
    for path in sample_results_path.glob("*.bin"):
        np.save(str(res / (path.name[:-4] + ".npy")), np.fromfile(str(path), np.float32).reshape(SHAPE))
    bad = res / "{}_1.npy".format(output_ids(sample_results_path)[0])
    if array is None:
        bad.write_bytes(bad.read_bytes()[:-10])
    elif isinstance(array, str):
        np.savez(str(bad), x=np.zeros(SHAPE, np.float32))
        os.replace(str(bad) + ".npz", str(bad))
    else:
        np.save(str(bad), array, allow_pickle=True)
    refused("output {}.* {}".format(bad, match), res, gt)


def test_a_preprocess_folder_as_res_path_is_named_for_what_it_is(tiny_prep_path, tiny_data_root, tmp_path):
    """Its bins read as outputs (frankfurt_000000_000294.bin: output 294 of frankfurt_000000): the message was
    'mixes output sets'."""
    labels = str(tiny_data_root / "cityscapes" / "gtFine" / "val")
    with pytest.raises(UserError, match="prep_dataset is a preprocess folder .*not model outputs"):
        evaluate_folder(str(tiny_prep_path), labels, log=quiet, warn=quiet)
    shutil.copytree(str(tiny_prep_path), str(tmp_path / "prep"))       # beside it, never taken for the outputs
    with pytest.raises(UserError, match="no model outputs in"):
        evaluate_folder(str(tmp_path), labels, log=quiet, warn=quiet)


# ------------------------------------------------------------------------------- labels and photos

def _write_label(path: Path, label: np.ndarray) -> None:
    assert cv2.imwrite(str(path), label)


def test_labels_that_are_not_labelids_are_refused(gt, sample_results_path, tmp_path):
    data = _labels_copy(gt, tmp_path / "data")
    labels = cityscapes.find_labels(str(data))
    target = Path(labels[sorted(labels)[1]])
    original = cv2.imread(str(target), cv2.IMREAD_UNCHANGED)
    unknown = original.copy()
    unknown[5, 7] = 200                                        # shifted the mIoU silently before
    cases = [(unknown, "holds the value 200, which is not a Cityscapes label id \\(0-33; cityscapesScripts: "
                       "'Unknown label with id 200'\\)"),
             (cityscapes.ID_TO_TRAIN[original], "holds the value 255"),          # a trainIds PNG
             (original.astype(np.uint16), "is not a labelIds image \\(8-bit, one channel\\)"),
             (np.dstack([original] * 3), "is not a labelIds image"),
             (original[:100], "has 155648 bytes of data, expected 121600 \\(float32\\)")]   # another size
    for label, match in cases:
        _write_label(target, label)
        refused("{}.*{}".format(target, match) if "bytes" not in match else match, sample_results_path, data)
    for damage, match in ((b"", "cannot be decoded"), (None, "cannot be decoded")):
        target.write_bytes(damage if damage is not None else cv2.imencode(".png", original)[1].tobytes()[:300])
        refused("label {} {}".format(target, match), sample_results_path, data)
    _write_label(target, cityscapes.ID_TO_TRAIN[original])
    with pytest.raises(UserError, match="value 255"):          # evaluate.py's streaming path reads labels here too
        cityscapes.read_train_ids(str(target))


def test_a_label_of_another_size_than_its_image_is_refused(sample_data_root, sample_results_path, tmp_path, capsys):
    # a row short, the label still fits its output (a quarter of the size, rounded up): scored, the prediction
    # would be stretched onto the label's grid; only the image's size tells
    data = tmp_path / "data"
    shutil.copytree(str(sample_data_root), str(data))
    gt_dir = data / "cityscapes" / "gtFine" / "val"
    label = cut_label_short(sorted(gt_dir.glob("*/*" + cityscapes.LABEL_SUFFIX))[0])
    short, full = "{}x{}".format(SAMPLE_HEIGHT - 1, SAMPLE_WIDTH), "{}x{}".format(SAMPLE_HEIGHT, SAMPLE_WIDTH)
    postprocess_main = load_script(SCRIPT).main
    # held to its photo beside it
    result = run_in_process(postprocess_main, ["--res_path", sample_results_path, "--data_path", gt_dir], capsys)
    assert_user_error(result, "label {} is {} but its image ".format(label, short), "leftImg8bit.png is " + full)
    # held to the images the outputs were made from: the preprocess folder's manifest, given; no photos needed
    labels_only = _labels_copy(gt_dir, tmp_path / "labels_only")
    prep = write_manifest_by_hand(tmp_path / "prep", output_ids(sample_results_path), SAMPLE_HEIGHT, SAMPLE_WIDTH)
    result = run_in_process(postprocess_main, ["--res_path", sample_results_path, "--data_path", labels_only,
                                               "--prep_path", prep], capsys)
    assert_user_error(result, "{} is {} but the image its output was made from ({}) is {}".format(
        label.name, short, prep / "manifest.json", full))
    # ... or the one the runner's summary names as its input
    res = _outputs_copy(sample_results_path, tmp_path / "res" / "bs1")
    Path(str(res) + "_summary.json").write_text(json.dumps({"input": str(prep)}))
    refused("is {} but the image its output was made from".format(short), res, labels_only)
    # nothing tells the image's size: scored, with a note saying that a label this close would pass
    notes = []
    assert evaluate(sample_results_path, labels_only, notes=notes)["images"] == SAMPLE_IMAGES
    assert notes == ["note: the size of the images behind {} of {} outputs is not known (no --prep_path, no runner "
                     "summary naming the preprocess folder, no leftImg8bit photo beside the labels, e.g. {}): their "
                     "labels are held to the outputs' size only, which a label up to 3 pixels off passes".format(
                         SAMPLE_IMAGES, SAMPLE_IMAGES, sorted(labels_only.glob("*/*.png"))[0])]


def test_a_label_that_is_a_fifo_is_never_opened(gt, sample_results_path, reference, tmp_path):
    data = _labels_copy(gt, tmp_path / "data")
    labels = cityscapes.find_labels(str(data))
    fifo = Path(labels[sorted(labels)[0]])
    fifo.unlink()
    os.mkfifo(str(fifo))
    refused("label {} is a FIFO, not a regular file; --allow_missing leaves it out".format(fifo),
            sample_results_path, data)
    messages = []
    with strict():
        result = postprocess.evaluate_folder(str(sample_results_path), str(data), allow_missing=True, workers=1,
                                             log=messages.append)
    assert result["images"] == SAMPLE_IMAGES - 1 and result["skipped"] == [sorted(labels)[0]]
    assert any(m.startswith("skipping 1 labels that are not regular files (--allow_missing): {} is a FIFO".format(
        fifo)) for m in messages)
    assert not any("without label" in m for m in messages)


def test_photos_that_cannot_be_read_only_lose_their_overlay(sample_data_root, sample_results_path, gt, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(str(sample_data_root), str(data))
    photos = sorted((data / "cityscapes" / "leftImg8bit" / "val").glob("*/*.png"))
    photos[0].write_bytes(b"")
    photos[1].write_bytes(photos[1].read_bytes()[:500])
    vis = tmp_path / "vis"
    result = run_script([SCRIPT, "--res_path", sample_results_path, "--data_path",
                         data / "cityscapes" / "gtFine" / "val",
                         "--save_vis", vis])
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.strip()]
    # the empty photo's header tells no size either: its label is held to its output's size only, and said so
    assert len(notes) == 2 and notes[0].startswith("note: the size of the images behind 1 of 3 outputs is not known")
    assert notes[1].startswith("note: --save_vis wrote no overlay for 2 of 3 images (photo "), notes
    assert "cannot be decoded" in notes[1]
    assert len(list(vis.glob("*_color.png"))) == 3 and len(list(vis.glob("*_overlay.png"))) == 1


# ------------------------------------------------------------------------------- result files and locks

def test_outputs_that_are_not_regular_files_are_refused_before_any_work(gt, sample_results_path, tmp_path):
    fifo, sock, pred = tmp_path / "fifo.json", tmp_path / "sock.json", tmp_path / "pred"
    os.mkfifo(str(fifo))
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock))
    server.close()
    for flag, path, match in (("save_path", fifo, "it is a FIFO"), ("save_confusion", sock, "it is a socket"),
                              ("save_vis", fifo, "exists and is a FIFO, not a folder")):
        refused("--{} {}.*{}".format(flag, path, match), sample_results_path, gt, save_pred=str(pred),
                **{flag: str(path)})
        assert not pred.exists()                           # refused before any work
    refused("--save_path .*r.json and --save_confusion .*r.json are the same file", sample_results_path, gt,
            save_path=str(tmp_path / "r.json"), save_confusion=str(tmp_path / "r.json"))
    res = _outputs_copy(sample_results_path, tmp_path / "bs1")
    output = res / "{}_1.bin".format(output_ids(res)[0])
    refused("--save_confusion {} is a model output of this run".format(output), res, gt, save_confusion=str(output))
    assert output.stat().st_size == F32
    split = run_script([SCRIPT, "--res_path", sample_results_path, "--data_path", gt.parents[1], "--split", "../val"])
    assert_user_error(split, "--split", "plain name")


def test_a_result_file_and_a_picture_folder_of_one_name_are_refused_before_any_work(sample_results_path,
                                                                                    sample_data_root, tmp_path):
    labels = str(sample_data_root / "cityscapes" / "gtFine" / "val")
    same = str(tmp_path / "same")
    for files, folders in (({"save_path": same}, {"save_vis": same}),
                           ({"save_confusion": same}, {"save_pred": same + os.sep})):
        with pytest.raises(UserError, match="are the same path .*one is a file, the other a folder"):
            evaluate_folder(str(sample_results_path), labels, log=quiet, warn=quiet, **files, **folders)
        assert not os.path.lexists(same)
    for flag in ("save_vis", "save_pred"):
        with pytest.raises(UserError, match="--{} is empty: give a folder name".format(flag)):
            evaluate_folder(str(sample_results_path), labels, log=quiet, warn=quiet, **{flag: ""})


def test_a_report_path_that_cannot_be_written_is_one_line_before_any_work(gt, sample_results_path, tmp_path,
                                                                         capsys):
    main = load_script(SCRIPT).main
    vis = tmp_path / "vis"
    common = ["--res_path", sample_results_path, "--data_path", gt, "--save_vis", vis]
    for report, fragment in ((tmp_path / "no_folder" / "r.html", "folder {} does not exist".format(
                                 tmp_path / "no_folder")),
                             (tmp_path, "it is a folder; give a file name"),
                             (vis, "--report and --save_vis are the same path"),
                             (tmp_path / "r.json", "--save_path {} and --report {} are the same file".format(
                                 tmp_path / "r.json", tmp_path / "r.json"))):
        result = run_in_process(main, common + ["--save_path", tmp_path / "r.json", "--report", report], capsys)
        assert_user_error(result, "--report", fragment)
        assert sorted(p.name for p in tmp_path.iterdir()) == []       # nothing written, no folder made
    result = run_in_process(main, common + ["--report_worst", "101"], capsys)
    assert result.returncode == 2 and "expected an integer from 0 to 100, got '101'" in result.stderr


def test_a_second_run_on_the_same_result_stops_at_once(gt, sample_results_path, tmp_path):
    out = tmp_path / "result.json"
    with lock_held_elsewhere(out, kill=True) as pid:
        result = run_script([SCRIPT, "--res_path", sample_results_path, "--data_path", gt, "--save_path", out])
        assert_user_error(result, "{} is being written by another run (PID {})".format(out, pid))
        merge = run_script(["-m", "hrnetseg.metrics", "merge", tmp_path / "none.npz", "--save_path", out])
        assert_user_error(merge, "another run (PID {})".format(pid))
    assert not out.exists()
    evaluate(sample_results_path, gt, save_path=str(out), save_vis=str(tmp_path / "vis"))
    assert out.exists() and not os.path.exists(lock_path_for(str(out)))
    assert not os.path.exists(lock_path_for(str(tmp_path / "vis")))


def test_no_result_or_picture_replaces_an_input_or_a_lock(gt, sample_results_path, tmp_path):
    """--save_path pointed at a label PNG replaced the label. A label, a photo (through a --save_vis picture that
    links to it), the runner summary and the lock of a picture folder are each refused before anything is
    written, naming both roles."""
    res = _outputs_copy(sample_results_path, tmp_path / "bs1")
    labels = _labels_copy(gt, tmp_path)
    label = sorted(labels.rglob("*_gtFine_labelIds.png"))[0]
    sample_id = label.name[:-len("_gtFine_labelIds.png")]
    before = {path: path.read_bytes() for path in (label, *res.iterdir())}
    summary = Path(str(res) + "_summary.json")
    summary.write_text(json.dumps({"output_dtype": "float32"}))
    vis = tmp_path / "vis"
    vis.mkdir()
    os.symlink(str(label), str(vis / (sample_id + "_color.png")))
    for match, kwargs in (
            ("--save_path {} is a label of this run".format(label), dict(save_path=str(label))),
            ("a --save_vis picture {} is a label of this run \\({}\\)".format(vis / (sample_id + "_color.png"), label),
             dict(save_vis=str(vis))),
            ("--save_confusion {} is a runner summary of this run".format(summary), dict(save_confusion=str(summary))),
            ("--save_path {} is the lock file of --save_pred".format(lock_path_for(str(tmp_path / "pred"))),
             dict(save_pred=str(tmp_path / "pred"), save_path=lock_path_for(str(tmp_path / "pred")))),
            ("--report {} is a label of this run".format(label), dict(report=str(label))),
            ("--report {} is a model output of this run".format(res / (sample_id + "_1.bin")),
             dict(report=str(res / (sample_id + "_1.bin")), report_worst=2))):
        refused(match, res, labels.parents[1], **kwargs)
    assert all(path.read_bytes() == data for path, data in before.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bs1", "bs1_summary.json", "cityscapes", "vis"]
    result = run_script([SCRIPT, "--res_path", res, "--data_path", labels, "--save_path", label])
    assert_user_error(result, "--save_path {} is a label of this run".format(label))
    assert label.read_bytes() == before[label]
