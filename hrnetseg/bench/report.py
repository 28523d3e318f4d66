"""What the benchmark prints and records: progress notes, the two tables, the block's heading lines, and the
block's place in BENCHMARKS.md."""
from __future__ import annotations

import datetime
import os
import shlex
import subprocess
import sys
from typing import Dict, Optional, Sequence, Tuple

from hrnetseg.bench import REPO
from hrnetseg.bench.machine import machine_line
from hrnetseg.util.files import write_text_atomic

SECTION = "## One-command benchmark"
SECTION_INTRO = "Blocks appended by `python -m hrnetseg.bench` (hrnetseg/bench/), newest last."
STEP_NAMES = {"pre": "preprocess", "post": "postprocess"}


def progress_note(text: str) -> None:
    """One line of progress on stderr (the tables go to stdout)."""
    print("[bench] " + text, file=sys.stderr, flush=True)


def three_figures(value: float) -> str:
    """Three significant figures without an exponent."""
    if value != value:
        return "n/a"
    if abs(value) >= 100:
        return "{:.0f}".format(value)
    if abs(value) >= 10:
        return "{:.1f}".format(value)
    return "{:.3g}".format(value)


def load_change(load: Tuple[float, float]) -> str:
    """The 1-minute load average before and after a measurement, as "1.75 -> 1.95"."""
    return "{:.2f} -> {:.2f}".format(load[0], load[1])


def _calibration_cell(result: dict) -> str:
    """An int8 case's calibration time (made in this run), or where its model came from."""
    int8 = result.get("calibration")
    if not int8 or "error" in int8:
        return "-"
    return three_figures(int8["calibration_s"]) if int8["calibration_s"] is not None else int8["how"]


def _miou_cells(result: dict) -> Tuple[str, str]:
    """mIoU in percent and its change against the baseline in points ("-" when not measured)."""
    miou = result.get("miou")
    if miou is None:
        return "-", "-"
    if "error" in miou:
        return "failed: " + miou["error"].replace("|", "/"), "-"
    value = "n/a" if miou["miou"] is None else "{:.2f}".format(100.0 * miou["miou"])
    delta = miou.get("delta_points")
    if result["tag"]:
        return value, "0 (baseline)"
    return value, "-" if delta is None else "{:+.2f}".format(delta)


def int8_sentence(infer: dict, height: int, width: int) -> str:
    """How the int8 cases' model was made (the calibration set, its time) or that it was given."""
    int8 = infer.get("int8")
    if not int8:
        return ""
    if "error" in int8:
        return " int8: the calibration failed ({}).".format(int8["error"])
    if int8["how"] == "given":
        return " int8: the quantised model given ({}; its calibration data unknown).".format(
            os.path.basename(int8["path"]))
    size = tuple(infer.get("calibration_size") or (height, width))
    what = ("the plain export" if size == (height, width) else
            "a --dynamic_hw export of the same weights (--calibration_size)")
    return (" int8: {} quantised (hrnetseg.model.quantize) with {} calibration scene(s) of "
            "`sample_data --seed {}` at {}x{}, none of them a timed or held-out scene; {}."
            .format(what, infer["calibration_images"], infer["calibration_set"], size[0], size[1],
                    "calibration {} s, apart from the timed runs".format(three_figures(int8["calibration_s"]))
                    if int8["calibration_s"] is not None else "the model calibrated by an earlier run in the workdir"))


def miou_sentence(infer: dict, height: int, width: int) -> str:
    if not infer.get("miou_scenes"):
        return " mIoU: not measured (--miou_scenes N with trained weights, --pth)."
    return (" mIoU: {} held-out scene(s) of `sample_data --seed {}` (models/README.md's) at {}x{}, the case's "
            "backend on each, main output (output2) upsampled and argmaxed (logits_to_labels), our confusion "
            "matrix; change against the baseline in points.".format(infer["miou_scenes"], infer["held_out_set"],
                                                                   height, width))


def format_infer(infer: dict, preset: str, pth: Optional[str], height: int, width: int, repeats: int,
                 warmup: int) -> str:
    model = infer["model"]
    weights = "checkpoint {}".format(os.path.basename(pth)) if pth else \
        "random weights (seed 0): speeds hold, errors are on random weights"
    exported = "reused from the workdir" if model.get("cached") else \
        "export {} s".format(three_figures(model["export_s"]))
    lines = ["**Inference**, {} at {}x{}, {}; input: synthetic scene(s) through our float32 transform; "
             "{} timed run(s) per case after {} warm-up; baseline ONNX Runtime fp32 on the plain export ({}), run "
             "first and last, pooled: {} images/s. Errors: ||out - ref|| / ||ref|| of row 0 against fp32 PyTorch "
             "(eager) on the same input. Peak RSS: the whole child process (interpreter, libraries, model, input)."
             "{}{}"
             .format(preset, height, width, weights, repeats, warmup, exported,
                     three_figures(infer["baseline_images_per_s"]), int8_sentence(infer, height, width),
                     miou_sentence(infer, height, width)),
             "",
             "| case | device | images/s | ms/batch min | ms/batch median | speed vs baseline "
             "| rel. err output1 / output2 | mIoU % | mIoU change, points | load s | calibration s | first call s "
             "| peak RSS MiB | load avg before -> after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in infer["results"]:
        label = r["case"].label + (" (baseline, {})".format(r["tag"]) if r["tag"] else "")
        if "error" in r:
            lines.append("| {} | failed: {} | | | | | | | | | | | | {} |".format(
                label, r["error"].replace("|", "/"), load_change(r["load"])))
            continue
        miou, delta = _miou_cells(r)
        lines.append("| {} | {} | {} | {} | {} | {}x | {:.1e} / {:.1e} | {} | {} | {} | {} | {} | {} | {} |".format(
            label, r["device"], three_figures(r["images_per_s"]), three_figures(r["min_ms"]),
            three_figures(r["median_ms"]), three_figures(r["ratio"]), r["errors"][0], r["errors"][1], miou, delta,
            three_figures(r["load_s"]), _calibration_cell(r),
            three_figures(r["warmup_s"][0]) if r["warmup_s"] else "-",
            three_figures(r["peak_rss_mib"]), load_change(r["load"])))
    return "\n".join(lines)


def format_data(data: Dict[str, dict], images: int, height: int, width: int, repeats: int, warmup: int,
                workers: Optional[int]) -> str:
    """The data steps' table: per step the baseline method's row, then the other's with its ratio and check."""
    outputs = " (postprocess: model-like 19x{}x{} float32 outputs)".format(-(-height // 4), -(-width // 4)) \
        if "post" in data else ""
    lines = ["**Data steps**, {} synthetic images of {}x{}{}; {} round(s) per method, each method in its own child "
             "process per round after {} untimed warm-up run(s), alternating which goes first; the reference method "
             "(the ModelZoo scripts' step, restated) in one process, ours with {} workers. Timed: the whole step "
             "(listing, reading, computing, writing) / images. Peak RSS: the whole child process."
             .format(images, height, width, outputs, repeats, warmup, workers or "default (all cores)"),
             "",
             "| step | method | ms/image min | ms/image median | speed vs reference (min / median) | peak RSS MiB "
             "| check | load avg before -> after |",
             "|---|---|---|---|---|---|---|---|"]
    for stage, summary in data.items():
        for method, m in summary["methods"].items():
            if "error" in m:
                lines.append("| {} | {} | failed: {} | | | | | {} |".format(
                    STEP_NAMES[stage], method, m["error"].replace("|", "/"), load_change(m["load"])))
                continue
            if method == summary["baseline"]:
                ratio, check = "1 (baseline)", ""
            else:
                ratio = "{:.1f}x / {:.1f}x".format(summary["ratio_min"], summary["ratio_median"]) \
                    if "ratio_min" in summary else ""
                check = summary["check"]
            lines.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
                STEP_NAMES[stage], method, three_figures(m["min_ms"]), three_figures(m["median_ms"]), ratio,
                three_figures(m["peak_rss_mib"]), check, load_change(m["load"])))
    return "\n".join(lines)


def code_version() -> str:
    """The commit the code came from, and whether tracked files differ from it (others' uncommitted edits)."""
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, universal_newlines=True, timeout=10)
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "code: not a git checkout"
    if head.returncode != 0:
        return "code: not a git checkout"
    changed = [line[3:] for line in dirty.stdout.splitlines() if line.strip()]
    return "code: git {}{}".format(head.stdout.strip(), " with uncommitted changes to {}".format(", ".join(changed))
                                   if changed else "")


def command_line(argv: Sequence[str]) -> str:
    return " ".join(["python -m hrnetseg.bench"] + [shlex.quote(a) for a in argv])


def block_heading(started: datetime.datetime, argv: Sequence[str], load_start: str, load_end: str) -> str:
    """The block's first lines: when (UTC), the exact command and commit, the machine and its load."""
    return "\n".join(["### {} UTC".format(started.strftime("%Y-%m-%d %H:%M")), "",
                      "Command: `{}` ({})".format(command_line(argv), code_version()), "",
                      "Machine: {}. {} at the start, {} at the end.".format(machine_line(), load_start.capitalize(),
                                                                              load_end)])


def _is_section_heading(line: str) -> bool:
    # Earlier versions wrote the heading with a note in parentheses after it; new blocks go on under it.
    return line == SECTION or (line.startswith(SECTION + " (") and line.endswith(")"))


def record(path: str, block: str) -> None:
    """Append the block at the end of the benchmark's section of BENCHMARKS.md (the section is made if missing)."""
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    lines = text.splitlines()
    if not any(_is_section_heading(line) for line in lines):
        lines += ["", SECTION, "", SECTION_INTRO]
    start = next(i for i, line in enumerate(lines) if _is_section_heading(line))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    lines[end:end] = [""] + block.splitlines() + ([""] if end < len(lines) else [])
    write_text_atomic(path, "\n".join(lines).lstrip("\n") + "\n")
