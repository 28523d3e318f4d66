"""scripts/demo.sh end to end: the whole pipeline, small, on the CPU."""
from __future__ import annotations

from helpers import TINY_PRESET, assert_user_error, bash, table_rows


def test_demo_runs_the_whole_pipeline_small(tools, tmp_path):
    _, env, _ = tools
    out = tmp_path / "demo"
    result = bash("demo.sh", "--preset", TINY_PRESET, "--height", 64, "--width", 128, "--output_dir", out,
                  "--device", "cpu", env=dict(env, HRNETSEG_VENV="none"))
    assert result.returncode == 0, result.stderr
    assert [r[:3] for r in table_rows(result.stdout)] == [["1", "onnxruntime", "cpu"], ["4", "onnxruntime", "cpu"]]
    assert "meaningless" in result.stdout and "random weights" in result.stderr
    assert "argmax agreement" in result.stdout
    assert (out / "hrnet.onnx").exists() and (out / "result_bs1.json").exists() and (out / "result_bs4.json").exists()


def test_demo_refuses_an_output_dir_that_is_a_file(tools, tmp_path):
    _, env, _ = tools
    (tmp_path / "a_file").write_text("")
    result = bash("demo.sh", "--output_dir", tmp_path / "a_file", env=dict(env, HRNETSEG_VENV="none"))
    assert_user_error(result, "--output_dir", "not a folder")
