"""HRNet_postprocess.py on what ais_bench (Ascend/tools at 9d6da90) writes besides BIN: --outfmt NPY (the batch
axis kept), --outfmt TXT (rows of `%f ` values, lossy) and the device<id>/ shards of `--device 0,1` with their
device<id>_summary.json. A small writer below follows ais_bench's format as its source has it; every case is a
result equal to the BIN one, or one line naming the problem."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from hrnetseg.evaluation import postprocess
from hrnetseg.runner import layout
from hrnetseg.util.errors import UserError

from helpers import (
    SAMPLE_HEIGHT,
    SAMPLE_IMAGES,
    SAMPLE_WIDTH,
    assert_user_error,
    cut_label_short,
    output_ids,
    quiet,
    run_script,
    write_manifest_by_hand,
)

SHAPE = (19, 32, 64)          # the outputs for the 128 x 256 sample labels


def evaluate(res, gt, **kwargs):
    return postprocess.evaluate_folder(str(res), str(gt), workers=1, log=kwargs.pop("log", quiet), warn=quiet,
                                       **kwargs)


def refused(match, res, gt, **kwargs):
    with pytest.raises(UserError, match=match) as caught:
        evaluate(res, gt, **kwargs)
    return str(caught.value)


# --- writing as ais_bench does -------------------------------------------------------------------------

def save_as_ais_bench(array: np.ndarray, path_without_ext: Path, outfmt: str) -> Path:
    """One output of one image as ais_bench saves it: BIN raw C order, NPY with the batch axis, TXT the array
    reshaped to (-1, last axis), each value `%f` and a space, a newline after each row."""
    batched = array.reshape((1,) + array.shape)
    path = Path("{}.{}".format(path_without_ext, outfmt.lower()))
    if outfmt == "BIN":
        batched.tofile(str(path))
    elif outfmt == "NPY":
        np.save(str(path), batched)
    else:
        rows = batched.reshape(-1, batched.shape[-1])
        path.write_text("".join("".join("%f " % value for value in row) + "\n" for row in rows))
    return path


def ais_bench_run(outputs: dict, res: Path, outfmt: str = "BIN", devices=None) -> Path:
    """res (OUTPUT/DIRNAME) as ais_bench leaves it: outputs {id: [aux, main]}; with devices (e.g. [0, 1]) the ids in
    natural order cut into contiguous parts of ceil(n / devices), each in res/device<id>/ with
    res/device<id>_summary.json beside it."""
    ids = sorted(outputs)
    if devices is None:
        parts = [(res, ids)]
    else:
        size = math.ceil(len(ids) / len(devices))
        parts = [(res / "device{}".format(d), ids[i * size:(i + 1) * size]) for i, d in enumerate(devices)]
    for folder, part in parts:
        folder.mkdir(parents=True)
        summary = {"filesinfo": {}, "args": ["ais_bench"], "throughput": 10.0, "pid": 1}
        for number, sid in enumerate(part):
            written = [str(save_as_ais_bench(array, folder / "{}_{}".format(sid, index), outfmt))
                       for index, array in enumerate(outputs[sid])]
            summary["filesinfo"][str(number)] = {"infiles": ["prep/{}.bin".format(sid)], "outfiles": written}
        Path(str(folder) + "_summary.json").write_text(json.dumps(summary))
    return res


@pytest.fixture(scope="module")
def logits(sample_results_path) -> dict:
    """{id: [aux, main]} float32 19 x 32 x 64 arrays: the sample outputs."""
    ids = output_ids(sample_results_path)
    return {sid: [np.fromfile(str(sample_results_path / "{}_{}.bin".format(sid, k)), np.float32).reshape(SHAPE)
                  for k in (0, 1)] for sid in ids}


@pytest.fixture(scope="module")
def reference(sample_results_path, gt) -> dict:
    return evaluate(sample_results_path, gt)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, logits) -> Path:
    """The sample outputs as ais_bench --outfmt TXT on two devices. Shared: copy before changing."""
    return ais_bench_run(logits, tmp_path_factory.mktemp("txt") / "bs1", "TXT", devices=[0, 1])


# --- the formats and the shards -----------------------------------------------------------------------

@pytest.mark.parametrize("outfmt", ["BIN", "NPY"])
def test_device_shards_are_one_set_equal_to_a_single_device_run(outfmt, logits, gt, reference, tmp_path):
    res = ais_bench_run(logits, tmp_path / "bs1", outfmt, devices=[0, 1])
    assert sorted(os.listdir(str(res))) == ["device0", "device0_summary.json", "device1", "device1_summary.json"]
    assert len(list((res / "device0").glob("*_1.*"))) == 2 and len(list((res / "device1").glob("*_1.*"))) == 1
    messages = []
    result = evaluate(res, gt, log=messages.append)
    assert result == reference and result["images"] == SAMPLE_IMAGES
    assert "device folders device0, device1 of one multi-device run" in messages[0]
    # the folder above (results/) finds bs1 and its shards too, as it finds a one-device bs1
    assert evaluate(tmp_path, gt) == reference


def test_txt_outputs_give_the_confusion_matrix_of_their_six_decimals(logits, gt, text_run, tmp_path):
    rounded = {sid: [np.round(a.astype(np.float64), 6).astype(np.float32) for a in arrays]
               for sid, arrays in logits.items()}
    expected = evaluate(ais_bench_run(rounded, tmp_path / "bs1", "BIN"), gt)
    result = evaluate(text_run, gt)
    assert result["confusion_matrix"] == expected["confusion_matrix"] and result["images"] == SAMPLE_IMAGES
    aux = evaluate(text_run, gt, output_index=0)
    assert aux["confusion_matrix"] == evaluate(tmp_path / "bs1", gt, output_index=0)["confusion_matrix"]


def test_the_cli_reads_txt_shards(text_run, gt, tmp_path):
    result = run_script(["HRNet_postprocess.py", "--res_path", text_run, "--data_path", gt,
                         "--save_path", tmp_path / "r.json"])
    assert result.returncode == 0, result.stderr
    assert "<id>_1.txt: main" in result.stdout and "lossy" in result.stderr
    assert json.loads((tmp_path / "r.json").read_text())["images"] == SAMPLE_IMAGES


def test_each_shard_reads_its_own_summary_for_the_dtype(logits, gt, tmp_path):
    """A float16 run: the runner's device<id>_summary.json says so for the files of that device."""
    half = {sid: [a.astype(np.float16) for a in arrays] for sid, arrays in logits.items()}
    res = ais_bench_run(half, tmp_path / "bs1", "BIN", devices=[0, 1])
    widened = {sid: [a.astype(np.float32) for a in arrays] for sid, arrays in half.items()}
    expected = evaluate(ais_bench_run(widened, tmp_path / "wide", "BIN"), gt)
    for device in (0, 1):
        path = res / "device{}_summary.json".format(device)
        path.write_text(json.dumps(dict(json.loads(path.read_text()), output_dtype="float16")))
    assert evaluate(res, gt) == expected
    path = res / "device1_summary.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), output_dtype="float32")))
    refused("device1.* has .* bytes of data, not .* as float32", res, gt)
    path.write_text('{"output_dtype": ' * 100000 + '"float16"' + "}" * 100000)
    refused("runner summary .*device1_summary.json nests arrays or objects deeper than 100 levels", res, gt)


def test_each_shard_holds_its_labels_to_the_images_its_summary_names(logits, gt, tmp_path, monkeypatch):
    # ais_bench's summaries name the input files as it was given them (prep/<id>.bin, from where it ran); the
    # preprocess manifest there gives the images' size, which a label a row short does not have (its output
    # would fit it: a quarter of the size, rounded up)
    monkeypatch.chdir(tmp_path)
    write_manifest_by_hand(tmp_path / "prep", sorted(logits), SAMPLE_HEIGHT, SAMPLE_WIDTH)
    res = ais_bench_run(logits, tmp_path / "out" / "bs1", devices=[0, 1])
    labels = tmp_path / "labels"
    for label in gt.glob("*/*.png"):   # labels only: no photo beside them to tell the size
        (labels / label.parent.name).mkdir(parents=True, exist_ok=True)
        (labels / label.parent.name / label.name).write_bytes(label.read_bytes())
    last = sorted(logits)[-1]   # in device1/
    short = cut_label_short(next(labels.glob("*/{}_*.png".format(last))))
    message = refused("is {}x{} but the image its output was made from".format(SAMPLE_HEIGHT - 1, SAMPLE_WIDTH),
                      res, labels)
    assert message.startswith("label {}".format(short)) and "(prep/manifest.json) is {}x{}".format(
        SAMPLE_HEIGHT, SAMPLE_WIDTH) in message


def test_device_folders_sort_by_device_number_and_take_ascii_ids_only(tmp_path):
    """device10 after device2 (not between device1 and device2, as a string sort puts it); a file named like a
    device folder, or a name with other digits, is no shard."""
    for name in ("device10", "device2", "device1", "device\u0663", "device"):
        (tmp_path / name).mkdir()
    for name in ("device1_summary.json", "device3"):
        (tmp_path / name).write_text("")
    assert layout.device_folders(str(tmp_path)) == ["device1", "device2", "device10"]
    assert [layout.device_entry(n) for n in ("device10", "device10_summary.json", "device\u0663",
                                             "bs1_summary.json")] == ["device10", "device10", None, None]
    # nor is x_\u0661.bin (another script's 1) output 1 of x
    assert [bool(layout.OUTPUT_NAME.match(n)) for n in ("x_1.bin", "x_\u0661.bin")] == [True, False]


# --- shards that are not one run ----------------------------------------------------------------------

def test_shards_that_are_not_one_run_are_refused(logits, gt, tmp_path):
    res = ais_bench_run(logits, tmp_path / "bs1", "BIN", devices=[0, 1])
    sid = sorted(logits)[0]
    for index in (0, 1):
        os.link(str(res / "device0" / "{}_{}.bin".format(sid, index)), str(res / "device1" / "{}_{}.bin".format(
            sid, index)))
    message = refused("image {} has outputs in both device0 and device1".format(sid), res, gt)
    assert str(res) in message
    for index in (0, 1):
        os.unlink(str(res / "device1" / "{}_{}.bin".format(sid, index)))
    assert evaluate(res, gt)["images"] == SAMPLE_IMAGES
    loose = res / "{}_1.bin".format(sid)
    logits[sid][1].tofile(str(loose))
    refused("mixes device folders of a multi-device run .device0, device1. with loose outputs", res, gt)
    loose.unlink()
    for path in (res / "device1").iterdir():
        path.unlink()
    refused("device1 holds no outputs: a device of that run failed", res, gt)
    (res / "device1").rmdir()
    refused("1 of 3 labels have no output", res, gt)          # only device0's part: never scored as the whole


def mark_run(res: Path, device: int, **keys) -> None:
    """Add keys (the runner's run_id, model_file) to res/device<device>_summary.json, or remove those given None."""
    path = res / "device{}_summary.json".format(device)
    summary = json.loads(path.read_text())
    summary.update(keys)
    path.write_text(json.dumps({key: value for key, value in summary.items() if value is not None}))


def test_shards_of_different_runs_or_models_are_refused(logits, gt, reference, tmp_path):
    """The runner's device summaries record the run and the model: device folders of two runs (or a model changed
    between them) are one line naming both folders and what differs. ais_bench's record neither: accepted (the
    cases above); a mix of the two is refused."""
    res = ais_bench_run(logits, tmp_path / "bs1", "BIN", devices=[0, 1])
    model = {"path": "/m/hrnet.onnx", "size": 10, "mtime_ns": 1}
    for device in (0, 1):
        mark_run(res, device, run_id="a" * 32, model_file=model)
    assert evaluate(res, gt) == reference
    mark_run(res, 1, run_id="b" * 32)
    message = refused("device folders .*device0 and .*device1 are from different runs", res, gt)
    assert "a" * 32 in message and "b" * 32 in message and str(res / "device0") in message
    mark_run(res, 1, run_id="a" * 32, model_file=dict(model, size=11))
    refused(r"device folders .*device0 and .*device1 ran different models \(model size 10 and 11\)", res, gt)
    mark_run(res, 1, run_id=None, model_file=None)   # ais_bench's summary beside the runner's
    refused("device folders .*device0 and .*device1 are not one run: the summary of the first records run a+, the "
            "other's none", res, gt)
    (res / "device1_summary.json").unlink()
    refused("the other has no summary", res, gt)
    mark_run(res, 0, run_id=None, model_file=None)   # no run recorded anywhere, a summary missing: as before
    assert evaluate(res, gt) == reference


def test_mixed_formats_across_shards_are_refused(logits, gt, tmp_path):
    first = dict(list(sorted(logits.items()))[:2])
    ais_bench_run(first, tmp_path / "bs1", "BIN", devices=[0])
    ais_bench_run(dict(list(sorted(logits.items()))[2:]), tmp_path / "other", "TXT", devices=[1])
    os.rename(str(tmp_path / "other" / "device1"), str(tmp_path / "bs1" / "device1"))
    refused("mixes .bin and .txt outputs", tmp_path / "bs1", gt)


# --- hostile TXT outputs ------------------------------------------------------------------------------

def first_value(word: str):
    """A change that writes word in place of the first value."""
    return lambda text: word + text[text.index(" "):]


def _damaged_text_run(text_run: Path, tmp_path: Path, change) -> Path:
    """A copy of text_run with the main output of its first image changed by change(text) -> text."""
    res = tmp_path / "bs1"
    for folder in ("device0", "device1"):
        (res / folder).mkdir(parents=True)
        for path in (text_run / folder).iterdir():
            os.link(str(path), str(res / folder / path.name))
    first = sorted((res / "device0").glob("*_1.txt"))[0]
    text = first.read_text()
    first.unlink()
    first.write_text(change(text))
    return res


@pytest.mark.parametrize("change, match", [
    (lambda text: "", "holds 0 lines, expected 608 rows of 64 values"),
    (lambda text: text.split("\n", 1)[1], "holds 607 lines, expected 608 rows"),
    (lambda text: text + text.split("\n", 1)[0] + "\n", "holds 609 lines"),
    (lambda text: text.replace(" \n", " 1.000000 \n", 1), "line 1 holds 65 values, expected 608 rows of 64"),
    (lambda text: text.replace(" ", "  ", 1).replace(" \n", "\n", 1), None),
    (first_value("abc "), "holds 'abc', not a number"),
    (first_value("1_0"), "holds '1_0', not a number"),
    (first_value("nan"), "holds NaN/inf values"),
    (first_value("-inf"), "holds NaN/inf values"),
    (first_value("1e999"), "too large for float32"),
    (first_value("1.0.0"), "could not convert"),
], ids=["empty", "row_missing", "row_extra", "value_extra", "spacing", "word", "underscore", "nan", "inf",
        "overflow", "two_points"])
def test_hostile_txt_outputs_are_one_line_errors(change, match, text_run, gt, tmp_path):
    res = _damaged_text_run(text_run, tmp_path, change)
    if match is None:                          # other spacing alone: the same numbers, read as they are
        assert evaluate(res, gt)["images"] == SAMPLE_IMAGES
        return
    message = refused(match, res, gt)
    assert "device0" in message and "\n" not in message


def test_hostile_txt_output_through_the_cli(text_run, gt, tmp_path):
    res = _damaged_text_run(text_run, tmp_path, first_value("nan"))
    result = run_script(["HRNet_postprocess.py", "--res_path", res, "--data_path", gt,
                         "--save_path", tmp_path / "r.json"])
    assert_user_error(result, "holds NaN/inf values")
    assert not (tmp_path / "r.json").exists()
