"""python -m hrnetseg.bench: one command, every stage, ratios against the baselines, appended to BENCHMARKS.md;
bad flags refused before the benchmark runs."""
from __future__ import annotations

import os
import re
import shutil

import pytest

from hrnetseg.bench import report
from hrnetseg.bench.__main__ import main as bench_main
from hrnetseg.bench.cases import BASELINE_SPEC, DEFAULT_CASES, parse_case, parse_cases
from hrnetseg.bench.jobs import CHILD_FLAG
from hrnetseg.util.errors import UserError

from helpers import TINY_HEIGHT, TINY_PRESET, TINY_WIDTH, assert_user_error, run_in_process

BENCH = ["-m", "hrnetseg.bench"]
TINY = ["--preset", TINY_PRESET, "--height", TINY_HEIGHT, "--width", TINY_WIDTH, "--images", "2", "--repeats", "1"]


def table(text: str, first_header: str) -> list:
    """The rows of the markdown table whose header starts with `first_header`, as lists of cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| " + first_header + " |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def ratio(cell: str) -> float:
    value = float(re.match(r"([0-9.]+)x", cell).group(1))
    assert value > 0, cell
    return value


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from helpers import run_script

    tmp = tmp_path_factory.mktemp("bench")
    md = tmp / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n{}\n\nIntro.\n\n## Later section\n\nKept.\n".format(report.SECTION))
    args = TINY + ["--cases", "onnxruntime:fp32:1,torch:fp32:2", "--benchmarks_md", md, "--workdir", tmp / "work"]
    result = run_script(BENCH + args, timeout=300)
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result, md, args


def test_inference_table(tiny_run):
    result, _, _ = tiny_run
    rows = table(result.stdout, "case")
    assert [r[0] for r in rows] == ["onnxruntime fp32 bs1 (baseline, first)", "torch fp32 bs2",
                                    "onnxruntime fp32 bs1 (baseline, last)"]
    for row in rows:
        assert row[1] == "cpu"
        images_per_s, min_ms, median_ms = float(row[2]), float(row[3]), float(row[4])
        assert images_per_s > 0 and 0 < min_ms <= median_ms
        ratio(row[5])
        errors = [float(v) for v in row[6].split(" / ")]
        assert len(errors) == 2 and all(e < 1e-5 for e in errors)   # fp32 everywhere: equal to the reference
        assert row[7:9] == ["-", "-"] and row[10] == "-"            # no mIoU (random weights), no calibration
        assert float(row[12]) > 50                                  # peak RSS of the child, MiB
    torch_row = rows[1]
    assert abs(float(torch_row[2]) - 2000.0 / float(torch_row[4])) <= 0.01 * float(torch_row[2])   # batch / median


def test_data_table(tiny_run):
    result, _, _ = tiny_run
    rows = table(result.stdout, "step")
    assert [(r[0], r[1]) for r in rows] == [("preprocess", "reference"), ("preprocess", "ours"),
                                            ("postprocess", "reference"), ("postprocess", "ours")]
    for row in rows:
        assert 0 < float(row[2]) <= float(row[3]) and float(row[5]) > 0
    for row in (rows[1], rows[3]):
        assert all(ratio(part) for part in row[4].split(" / "))
    assert "float32 bins identical: True" in rows[1][6]
    assert "same confusion: True" in rows[3][6]


def test_recorded_in_its_section(tiny_run):
    result, md, args = tiny_run
    text = md.read_text()
    section, later = text.index(report.SECTION), text.index("## Later section")
    command = "python -m hrnetseg.bench " + " ".join(str(a) for a in args)
    assert section < text.index(command) < later        # appended at the end of its own section
    assert text.index("Intro.") < text.index("| case |") < text.index("| step |") < later
    assert "Machine: " in text and "cores" in text and "torch " in text and "onnxruntime " in text
    assert text.endswith("Kept.\n")
    assert result.stdout.strip() in text


def test_stage_selection_and_no_record(tmp_path, capsys):
    """The bench's main() under run_cli in this process (its children are still processes of their own)."""
    md = tmp_path / "B.md"
    result = run_in_process(bench_main, TINY + ["--stages", "pre", "--benchmarks_md", md, "--no_record"], capsys)
    assert result.returncode == 0, result.stderr
    assert "| case |" not in result.stdout
    assert [(r[0], r[1]) for r in table(result.stdout, "step")] == [("preprocess", "reference"), ("preprocess", "ours")]
    assert not md.exists()


def test_record_creates_the_section(tmp_path):
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n")
    report.record(str(md), "### block one")
    report.record(str(md), "### block two")
    text = md.read_text()
    assert text.index("# Benchmarks") < text.index(report.SECTION) < text.index("block one") < text.index("block two")


def test_record_finds_the_section_under_an_older_heading(tmp_path):
    """Earlier versions wrote the section's heading with a note in parentheses: blocks go on under it."""
    md = tmp_path / "B.md"
    older = report.SECTION + " (an older note)"
    md.write_text("# Benchmarks\n\n{}\n\n### old block\n\n## Later section\n".format(older))
    report.record(str(md), "### new block")
    text = md.read_text()
    assert text.count(report.SECTION) == 1
    assert text.index(older) < text.index("old block") < text.index("new block") < text.index("## Later section")


def test_failed_case_is_a_row_not_a_crash(run, tmp_path, tiny_run):
    _, _, args = tiny_run
    work = tmp_path / "work"     # a copy of tiny_run's workdir: its export and reference are reused, not made again
    shutil.copytree(str(args[args.index("--workdir") + 1]), str(work))
    result = run(BENCH + TINY + ["--stages", "infer", "--cases", "torch:fp16:1", "--device", "cpu", "--no_record",
                                 "--workdir", work], timeout=120)
    assert result.returncode == 1, result.stderr
    rows = table(result.stdout, "case")
    assert rows[1][0] == "torch fp16 bs1" and rows[1][1].startswith("failed: ") and "GPU" in rows[1][1]
    assert rows[0][1] == "cpu" and rows[2][1] == "cpu"


@pytest.mark.parametrize("flags,fragment", [
    (["--cases", "torch:fp32"], "backend:precision:batch"),
    (["--cases", "tensorrt:fp16:1"], "unknown backend"),
    (["--cases", "torch:int4:1"], "unknown precision"),
    (["--cases", "torch:fp32:0"], "positive integer"),
    (["--cases", "torch:fp32:1:fast"], "unknown option"),
    (["--cases", ","], "empty"),
    (["--stages", "pre,train"], "--stages"),
    (["--pth", "missing.pth"], "checkpoint not found"),
    (["--preset", "w99"], "--preset"),
    (["--warmup", "-1"], "--warmup"),
])
def test_bad_flags_one_line_exit_2(run, tmp_path, capsys, flags, fragment):
    args = flags + ["--workdir", tmp_path / "w", "--no_record"]
    if flags == ["--cases",
                 "torch:fp32"]:   # the real command line once; the bench's main() in this process for the rest
        result = run(BENCH + args, timeout=60)
    else:
        result = run_in_process(bench_main, args, capsys)
    assert_user_error(result, fragment)
    assert result.stdout == "" and not (tmp_path / "w").exists()


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


def test_case_spec_round_trip():
    case = parse_case("torch:bf16:4:compile")
    assert (case.backend, case.precision, case.batch, case.options) == ("torch", "bf16", 4, ("compile",))
    assert parse_case(case.spec) == case and case.label == "torch bf16 bs4 compile"
    assert [c.spec for c in parse_cases(",".join(DEFAULT_CASES))] == list(DEFAULT_CASES)
    assert DEFAULT_CASES[0] == BASELINE_SPEC
