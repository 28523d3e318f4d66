"""scripts/demo.sh end to end: the whole pipeline, small, on the CPU."""
from __future__ import annotations

from helpers import REPO, TINY_PRESET, assert_user_error, bash, table_rows


def test_demo_runs_the_whole_pipeline_small(tools, tmp_path):
    """The default: the reference model on held-out scenes, its report, then the timing-only rows (here of the
    tiny preset, as W48 would be slow to export in a test)."""
    _, env, _ = tools
    out = tmp_path / "demo"
    # a CPU with bf16 as far as --backend auto knows: OpenVINO bf16 is checked for real (on a CPU without it,
    # OpenVINO runs fp32, so the check refuses it and auto keeps ONNX Runtime fp32)
    result = bash("demo.sh", "--height", 64, "--width", 128, "--output_dir", out, "--device", "cpu",
                  "--timing_preset", TINY_PRESET, env=dict(env, HRNETSEG_VENV="none", HRNETSEG_CPU_FLAGS="avx512_bf16"))
    assert result.returncode == 0, result.stderr
    paths = [[cell.strip() for cell in line.strip("|").split("|")] for line in result.stdout.splitlines()
             if line.startswith(("| runner default |", "| --backend auto |"))]
    assert [row[:3] for row in paths][0] == ["runner default", "onnxruntime fp32", "cpu"], paths
    assert paths[1][0] == "--backend auto" and paths[1][1] in ("openvino bf16", "onnxruntime fp32"), paths
    assert all(row[4].endswith("%") for row in paths)
    assert (out / "auto" / "report.html").exists() == (paths[1][1] == "openvino bf16")
    auto_run = [["1", "openvino", "cpu"]] if paths[1][1] == "openvino bf16" else []   # its own table's row
    rows = table_rows(result.stdout)
    assert [r[:3] for r in rows] == [["1", "onnxruntime", "cpu"], ["4", "onnxruntime", "cpu"]] + auto_run + \
        [["1", "onnxruntime", "cpu"], ["4", "onnxruntime", "cpu"]]
    assert all(r[4].endswith("%") for r in rows[:2 + len(auto_run)]), rows
    assert [r[4] for r in rows[-2:]] == ["n/a (random weights)"] * 2
    assert ("reference model trained on synthetic scenes (models/README.md); the official checkpoint gives 81.6% on "
            "Cityscapes val") in result.stdout
    assert "random weights (timing only)" in result.stdout and "meaningless" not in result.stdout
    assert "HTML report of the mIoU run: {}".format(out / "report.html") in result.stdout
    assert (out / "report.html").stat().st_size > 0
    assert "--pth {}".format(REPO / "models" / "reference_tiny_ocr.pth") in result.stderr
    assert "argmax agreement" in result.stdout
    assert (out / "hrnet.onnx").exists() and (out / "result_bs1.json").exists() and (out / "result_bs4.json").exists()
    assert (out / "timing" / "hrnet.onnx").exists()


def test_demo_with_another_preset_and_no_pth_uses_random_weights(tools, tmp_path):
    """--preset other than the reference model's, without --pth: the old random-weights chain, said so; no
    timing rows (the table's own are those of the random weights)."""
    _, env, _ = tools
    out = tmp_path / "demo"
    result = bash("demo.sh", "--preset", TINY_PRESET, "--height", 64, "--width", 128, "--output_dir", out,
                  "--device", "cpu", "--datasets_path", _scenes(tmp_path), env=dict(env, HRNETSEG_VENV="none"))
    assert result.returncode == 0, result.stderr
    assert [r[:3] for r in table_rows(result.stdout)] == [["1", "onnxruntime", "cpu"], ["4", "onnxruntime", "cpu"]]
    assert "meaningless" in result.stdout and "random weights" in result.stderr
    assert "reference model" not in result.stdout and "timing only" not in result.stdout


def _scenes(tmp_path):
    from hrnetseg.data.sample_scenes import generate

    generate(str(tmp_path / "data"), n=4, height=64, width=128, seed=0)
    return tmp_path / "data"


def test_demo_refuses_an_output_dir_that_is_a_file(tools, tmp_path):
    _, env, _ = tools
    (tmp_path / "a_file").write_text("")
    result = bash("demo.sh", "--output_dir", tmp_path / "a_file", env=dict(env, HRNETSEG_VENV="none"))
    assert_user_error(result, "--output_dir", "not a folder")
