"""A second hostile sweep over the deploy tools: the export and its checkpoint reader, the ONNX graph tools,
the runner (python3 -m hrnetseg.infer), the streaming evaluator and the benchmark's flags.

Each case was a wrong number with exit code 0, a traceback, a hang at the end of a long run, or a misleading
message; each is now a one-line refusal before any work. All run in-process on tiny hand-made inputs.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

import HRNet_pth2onnx as pth2onnx
from helpers import TINY_HEIGHT, TINY_WIDTH, run_infer
from hrnetseg.evaluation import cli as evaluate, streaming
from hrnetseg.graph import structure as onnx_graph
from hrnetseg.backends import batching
from hrnetseg.bench.__main__ import main as bench_main
from hrnetseg.bench.jobs import CHILD_FLAG
from hrnetseg.model.checkpoint import official_to_model_keys, read_state_dict
from hrnetseg.util.errors import UserError


# --- checkpoint ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("first,second,key", [
    ("model.conv1.weight", "conv1.weight", "conv1.weight"),                    # with and without the prefix
    ("model.aux_head.0.weight", "model.last_layer.0.weight", "aux_head.0.weight"),   # the old and the new name
])
def test_two_checkpoint_entries_for_one_weight_are_refused(first, second, key):
    """Unrefused, whichever came last would win: zeros under `conv1.weight` would replace the real weights, exit 0."""
    state = {first: torch.ones(2), second: torch.zeros(2), "loss.criterion.weight": torch.ones(19)}
    with pytest.raises(UserError, match="checkpoint entries {} and {} both name the model's {}".format(
            first, second, key).replace(".", r"\.")):
        official_to_model_keys(state)
    assert list(official_to_model_keys({first: torch.ones(2)})) == [key]


@pytest.mark.parametrize("content", [b"\x08\x06\x12\x07pytorch", bytes(range(1, 256)), b"weights\n"],
                         ids=["onnx", "binary", "text"])
def test_files_torch_save_never_writes_are_not_called_python_objects(tmp_path, content):
    """An ONNX file or random bytes reached the weights_only unpickler, whose refusal ("Unsupported operand")
    was reported as a checkpoint holding Python objects that could run code."""
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        read_state_dict(str(path))
    assert "not a readable PyTorch checkpoint (another format" in str(info.value)
    assert "Python objects" not in str(info.value)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy pickle"])
def test_both_formats_torch_save_writes_still_load(tmp_path, zip_format):
    """The header check refuses other formats only: the official torch 1.1 files are legacy pickles."""
    path = tmp_path / "m.pth"
    torch.save({"model.conv1.weight": torch.ones(2)}, str(path), _use_new_zipfile_serialization=zip_format)
    assert torch.equal(read_state_dict(str(path))["model.conv1.weight"], torch.ones(2))


def test_a_truncated_checkpoint_gets_the_readers_first_sentence(tmp_path):
    """torch's zip reader adds advice that the 160-character cut left as "... there is a high)"."""
    path = tmp_path / "cut.pth"
    torch.save({"model.conv1.weight": torch.zeros(64, 3, 3, 3)}, str(path))
    path.write_bytes(path.read_bytes()[:1000])   # the zip directory at the end is gone
    with pytest.raises(UserError) as info:
        read_state_dict(str(path))
    assert str(info.value).endswith("(truncated or another format: PytorchStreamReader failed reading zip archive: "
                                    "failed finding central directory)"), str(info.value)


# --- the export's flags ----------------------------------------------------------------------------------------

def test_batch_flag_takes_dynamic_in_any_case_and_says_so_when_refused(capsys):
    parser = pth2onnx.build_parser()
    assert parser.parse_args(["--random_weights", "0", "--batch", "Dynamic"]).batch is None
    assert parser.parse_args(["--random_weights", "0", "--batch", "4"]).batch == 4
    with pytest.raises(SystemExit):
        parser.parse_args(["--random_weights", "0", "--batch", "dynamc"])
    assert "--batch: expected 'dynamic' or a positive integer, got 'dynamc'" in capsys.readouterr().err


# --- ONNX graph tools ------------------------------------------------------------------------------------------

def graph_with_names(first: str, second: str, resize_names=("up", "up2")):
    """x -> Resize -> Resize -> Relu (output y1), Sigmoid (output y2); the output producers named first, second."""
    inits = [helper.make_tensor("roi", TensorProto.FLOAT, [0], []),
             helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])]
    nodes = [helper.make_node("Resize", ["x", "roi", "scales"], ["a"], name=resize_names[0], mode="linear"),
             helper.make_node("Resize", ["a", "roi", "scales"], ["b"], name=resize_names[1], mode="linear"),
             helper.make_node("Relu", ["b"], ["y1"], name=first),
             helper.make_node("Sigmoid", ["b"], ["y2"], name=second)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 8, 8]) for n in ("y1", "y2")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], outputs, inits)).graph


def test_out_nodes_refuses_names_atc_cannot_tell_apart():
    """atc --out_nodes names nodes: a shared name, or one holding its ';' separator, picks the wrong node."""
    assert onnx_graph.output_producers(graph_with_names("aux", "main")) == ["aux:0", "main:0"]
    with pytest.raises(UserError, match="graph output y2 is named up, a name 2 nodes share"):
        onnx_graph.output_producers(graph_with_names("aux", "up", resize_names=("up", "up2")))
    with pytest.raises(UserError, match="graph output y1 is named 'aux;main:0': atc --out_nodes separates"):
        onnx_graph.output_producers(graph_with_names("aux;main:0", "main"))


def test_graph_commands_take_the_hyphenated_spelling_too():
    assert onnx_graph.build_parser().parse_args(["out-nodes", "m.onnx"]).command == "out_nodes"


def test_select_refuses_a_resize_name_two_nodes_share():
    """Unrefused, only the last of the two would change, silently."""
    graph = graph_with_names("aux", "main", resize_names=("up", "up"))
    with pytest.raises(UserError, match="2 Resize nodes are named up: --select cannot tell them apart"):
        onnx_graph.select_resize_nodes(graph, "up")
    assert len(onnx_graph.select_resize_nodes(graph, "all")) == 2


# --- the runner ------------------------------------------------------------------------------------------------

@pytest.fixture
def prep(tmp_path, tiny_prep_path):
    """A copy of the tiny preprocess folder with one stale bin beside the listed ones (a rerun with --limit)."""
    folder = tmp_path / "prep"
    shutil.copytree(str(tiny_prep_path), str(folder))
    ids = json.loads((folder / "manifest.json").read_text())["ids"]
    shutil.copy(str(folder / "{}.bin".format(ids[0])), str(folder / "stale_000000_000000.bin"))
    return folder, ids


def test_input_files_must_be_listed_bins_of_their_folder(tmp_path, tiny_onnx_path, prep, stub):  # noqa: F811
    """x.txt ran the x.bin beside it (named x in the outputs); a bin the manifest does not list ran too."""
    folder, ids = prep
    (folder / "{}.txt".format(ids[0])).write_bytes(b"not model input")
    for name, fragment in (("{}.txt".format(ids[0]), "is not a .bin file of a preprocess folder"),
                           ("manifest.json", "is not a .bin file of a preprocess folder"),
                           ("stale_000000_000000.bin", "is not listed in .*manifest \\(a stale or foreign file\\)")):
        with pytest.raises(UserError, match=fragment):
            run_infer(tiny_onnx_path, folder / name, tmp_path / "out")
    assert not stub.loaded and not (tmp_path / "out").exists()


def test_outputs_of_an_earlier_run_that_would_stay_are_refused(tmp_path, tiny_onnx_path, prep, stub):  # noqa: F811
    """A rerun on fewer images (or fewer outputs) left the earlier run's files under the new summary: the
    postprocess evaluated both runs' outputs as one, exit 0. The earlier summary stays when refused."""
    folder, ids = prep
    out = tmp_path / "out"
    run_infer(tiny_onnx_path, folder, out)
    summary = (out / "bs_summary.json").read_text()
    with pytest.raises(UserError, match=r"bs holds {} output files that this run would not replace \(e\.g\. "
                                        r"{}_0\.bin\)".format(2 * len(ids) - 2, ids[1])):
        run_infer(tiny_onnx_path, folder / "{}.bin".format(ids[0]), out)
    with pytest.raises(UserError, match="bs holds {} output files".format(len(ids))):
        run_infer(tiny_onnx_path, folder, out, "--output_indices", "1")
    assert (out / "bs_summary.json").read_text() == summary and len(list((out / "bs").iterdir())) == 2 * len(ids)
    run_infer(tiny_onnx_path, folder, out)                        # the same run again replaces every file
    assert json.loads((out / "bs_summary.json").read_text())["images"] == len(ids)


def test_a_batch_too_large_for_memory_is_one_line():
    with pytest.raises(UserError, match=r"not enough memory for a batch of 10000000000000 x 3x{}x{} float32 "
                                        r"\(.* GB\): choose a smaller --batchsize".format(TINY_HEIGHT, TINY_WIDTH)):
        batching.pad_batch([], 10 ** 13, (3, TINY_HEIGHT, TINY_WIDTH), np.float32)


def test_an_empty_output_name_is_refused(tmp_path, tiny_onnx_path, tiny_prep_path, stub):  # noqa: F811
    with pytest.raises(UserError, match="--output is an empty name"):
        run_infer(tiny_onnx_path, tiny_prep_path, "")
    assert not stub.loaded


# --- the streaming evaluator -------------------------------------------------------------------------------------

def test_evaluate_never_writes_its_result_over_the_model(tmp_path, tiny_onnx_path):
    """--save_path hrnet.onnx replaced the model with the result JSON, exit 0."""
    model = tmp_path / "hrnet.onnx"
    shutil.copy(str(tiny_onnx_path), str(model))
    os.symlink(model.name, str(tmp_path / "link.json"))
    nowhere = str(tmp_path / "no_data")          # refused before the data set is looked at
    for flag, path in (("--save_path", model), ("--save_confusion", tmp_path / "link.json")):
        with pytest.raises(UserError, match="{} {} is the model file itself".format(flag, path)):
            evaluate.main(["--datasets_path", nowhere, "--onnx", str(model), flag, str(path)])
    assert model.read_bytes() == tiny_onnx_path.read_bytes()


def test_evaluate_says_what_a_model_path_is(tmp_path, tiny_data_root):
    """A FIFO, a folder or a link loop given as the model was 'model not found' (and the FIFO never opened)."""
    os.mkfifo(str(tmp_path / "fifo.onnx"))
    (tmp_path / "folder.onnx").mkdir()
    os.symlink("loop.onnx", str(tmp_path / "loop.onnx"))
    for name, what in (("fifo.onnx", "is a FIFO, not a regular file"), ("folder.onnx", "is a folder, not a regular"),
                       ("loop.onnx", "is a symbolic link loop")):
        with pytest.raises(UserError, match="model {} {}".format(tmp_path / name, what)):
            evaluate.main(["--datasets_path", str(tiny_data_root), "--onnx", str(tmp_path / name)])


def test_an_empty_onnx_file_is_not_an_onnx_model_for_the_runner_backends(tmp_path):
    from hrnetseg.backends import load_backend

    (tmp_path / "empty.onnx").write_bytes(b"")
    for kind in ("onnxruntime", "openvino"):
        with pytest.raises(UserError, match="empty.onnx is not an ONNX model \\(an empty file\\)"):
            load_backend(kind, str(tmp_path / "empty.onnx"), device="cpu")


def test_an_empty_model_name_is_one_line(tmp_path, tiny_prep_path, stub):  # noqa: F811
    """evaluate --onnx '' was a traceback (the empty name taken for no model at all)."""
    for flag in ("--onnx", "--pth"):
        with pytest.raises(UserError, match="{} is an empty name: give the model file".format(flag)):
            evaluate.main(["--datasets_path", str(tmp_path), flag, ""])
    with pytest.raises(UserError, match="--model is an empty name"):
        run_infer("", tiny_prep_path)
    assert not stub.loaded


def test_evaluate_test_hook_value_that_is_not_a_count_is_one_line(tmp_path, tiny_onnx_path, monkeypatch):
    monkeypatch.setenv(streaming.INTERRUPT_AFTER_ENV, "two")
    with pytest.raises(UserError, match="HRNETSEG_TEST_INTERRUPT_AFTER='two': expected a number of images"):
        evaluate.main(["--datasets_path", str(tmp_path), "--onnx", str(tiny_onnx_path)])


# --- the benchmark's flags -------------------------------------------------------------------------------------

def test_bench_flags_refused_before_the_benchmark_runs(tmp_path):
    """A FIFO as --benchmarks_md hung, and a folder failed with a traceback, after the whole benchmark; a file
    as --workdir and a superscript batch size were tracebacks; a folder as --pth was 'not found'."""
    os.mkfifo(str(tmp_path / "fifo.md"))
    (tmp_path / "file").write_text("x")
    cases = [(["--benchmarks_md", str(tmp_path / "fifo.md")], "cannot write --benchmarks_md .*fifo.md: it is a FIFO"),
             (["--benchmarks_md", str(tmp_path)], "cannot write --benchmarks_md .*: it is a folder"),
             (["--workdir", str(tmp_path / "file"), "--no_record"], "--workdir .*file exists and is a file"),
             (["--workdir", "", "--no_record"], "--workdir is an empty name"),
             (["--pth", str(tmp_path), "--no_record"], "checkpoint .* is a folder, not a regular file"),
             (["--cases", "torch:fp32:\u00b2", "--no_record"], "the batch size must be a positive integer"),
             (["--device", "gpu-1", "--no_record"], "--device must be cpu, cuda")]
    for flags, fragment in cases:
        with pytest.raises(UserError, match=fragment):
            bench_main(flags + ["--stages", "infer", "--preset", "tiny_ocr"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.md", "file"]


def test_bench_child_flag_without_a_job_file_is_one_line(tmp_path):
    """The internal --_child flag: a traceback without its argument, a wait for ever on a FIFO."""
    os.mkfifo(str(tmp_path / "job.json"))
    (tmp_path / "other.json").write_text('{"job": "train"}')
    for argv, fragment in (([], "takes one JOB.json"), ([str(tmp_path / "job.json")], "is a FIFO"),
                           ([str(tmp_path / "other.json")], "is not a benchmark job the parent wrote")):
        with pytest.raises(UserError, match=fragment):
            bench_main([CHILD_FLAG] + argv)
