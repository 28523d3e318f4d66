"""One command for the speed of every stage on this machine (issue 5), with ratios against the baselines.

    python -m hrnetseg.bench [--stages pre,infer,post] [--height 1024 --width 2048] [--images 8]
                             [--cases onnxruntime:fp32:1,torch:fp32:1,torch:bf16:1] [--repeats 3] [--warmup 1]

- pre / post: our preprocess and postprocess against the seed's methods restated (hrnetseg.baselines), on
  the same synthetic data (hrnetseg.bench_data), ms/image, ratio, peak memory.
- infer: images/s and latency per backend:precision:batch case against ONNX Runtime fp32 on the plain export
  (the baseline, run first and last to show drift), the relative error of both outputs against fp32
  PyTorch on the same input, load and first-call (compile) time, peak memory.

Every measurement runs in its own child process (`python -m hrnetseg.bench --_child JOB.json`): peak
memory (VmHWM) is per case and no case inherits another's caches, threads or allocator state. Prints the
tables and appends them, with the machine and the exact command, to BENCHMARKS.md (--no_record: don't).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import bench_data
from .cli import UserError, add_alias_flags, nonnegative_int, positive_int, run_cli
from .files import check_output_file, make_output_folder, require_file, write_text_atomic
from .presets import DEFAULT_PRESET, PRESET_NAMES

STAGES = ("pre", "infer", "post")
BASELINE_SPEC = "onnxruntime:fp32:1"
# Cheap defaults (1024x2048 on 2 cores: ~13 s, ~6.5 s, ~15 s and ~7.5 s per image), the recommended CPU setting second.
DEFAULT_CASES = ("onnxruntime:fp32:1", "openvino:bf16:1", "torch:fp32:1", "torch:bf16:1")
SECTION = "## One-command benchmark (issue 5)"
CHILD_FLAG = "--_child"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1024.0 * 1024.0


CASE_OPTIONS = ("compile",)   # optional 4th field: torch:bf16:1:compile -> load_backend(..., compile=True)


@dataclass(frozen=True)
class Case:
    backend: str
    precision: str
    batch: int
    options: Tuple[str, ...] = ()

    @property
    def spec(self) -> str:
        return ":".join([self.backend, self.precision, str(self.batch)] + list(self.options))

    @property
    def label(self) -> str:
        return " ".join([self.backend, self.precision, "bs{}".format(self.batch)] + list(self.options))


def parse_case(text: str) -> Case:
    from .backends import BACKENDS, PRECISIONS

    parts = [p.strip() for p in text.split(":")]
    if len(parts) < 3:
        raise UserError("--cases: {!r} is not backend:precision:batch[:compile] (like torch:bf16:1)".format(text))
    backend, precision, batch = parts[:3]
    if backend not in BACKENDS:
        raise UserError("--cases {!r}: unknown backend {!r}; choose one of {}".format(text, backend, ", ".join(BACKENDS)))
    if precision not in PRECISIONS:
        raise UserError("--cases {!r}: unknown precision {!r}; choose one of {}".format(
            text, precision, ", ".join(PRECISIONS)))
    try:
        size = positive_int(batch)
    except argparse.ArgumentTypeError:
        raise UserError("--cases {!r}: the batch size must be a positive integer, not {!r}".format(text, batch))
    bad = [o for o in parts[3:] if o not in CASE_OPTIONS]
    if bad:
        raise UserError("--cases {!r}: unknown option {!r}; options: {}".format(text, bad[0], ", ".join(CASE_OPTIONS)))
    return Case(backend, precision, size, tuple(sorted(set(parts[3:]))))


def parse_cases(text: str) -> List[Case]:
    cases = []
    for part in text.split(","):
        if part.strip():
            case = parse_case(part.strip())
            if case not in cases:
                cases.append(case)
    if not cases:
        raise UserError("--cases is empty; give backend:precision:batch items, e.g. {}".format(",".join(DEFAULT_CASES)))
    return cases


def parse_stages(text: str) -> List[str]:
    stages = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise UserError("--stages takes a comma-separated subset of {}, not {!r}".format(",".join(STAGES), text))
    return [s for s in STAGES if s in stages]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hrnetseg.bench", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of pre,infer,post (default all)")
    parser.add_argument("--height", type=positive_int, default=1024, help="image height (default 1024)")
    parser.add_argument("--width", type=positive_int, default=2048, help="image width (default 2048)")
    parser.add_argument("--images", type=positive_int, default=8, help="data images for pre/post (default 8)")
    parser.add_argument("--preset", choices=PRESET_NAMES, default=DEFAULT_PRESET,
                        help="model variant (default {}; tiny_ocr for tests)".format(DEFAULT_PRESET))
    parser.add_argument("--pth", default=None,
                        help="official checkpoint (default: random weights, seed 0: speeds hold, errors are on random weights)")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help="comma-separated backend:precision:batch[:compile] inference cases (default {}); the baseline {} "
                             "always runs first and last".format(",".join(DEFAULT_CASES), BASELINE_SPEC))
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="timed runs per inference case, rounds per pre/post method (default 3; min and median reported)")
    parser.add_argument("--warmup", type=nonnegative_int, default=1,
                        help="untimed runs before timing, in every child (default 1; the first call, a torch.compile "
                             "included, is reported on its own)")
    parser.add_argument("--device", default="cpu", help="inference device: cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--workers", type=positive_int, default=None, help="our pre/post workers (default: all cores)")
    parser.add_argument("--workdir", default=None,
                        help="keep data, checkpoint, export and outputs here and reuse them (default: a temporary folder)")
    parser.add_argument("--no_record", action="store_true", help="print only; do not append to BENCHMARKS.md")
    parser.add_argument("--benchmarks_md", default=os.path.join(REPO, "BENCHMARKS.md"),
                        help="the file the tables are appended to (default: BENCHMARKS.md in the repository root)")
    add_alias_flags(parser)
    return parser


# ------------------------------------------------------------------------------------------- child side

def _proc_status_mib(field: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0   # kB
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss where /proc is missing)."""
    value = _proc_status_mib("VmHWM")
    if value is None:   # pragma: no cover - not Linux
        import resource

        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)
    return value


def _child_prepare(job: dict) -> dict:
    """Checkpoint (random weights unless --pth), the fp32 PyTorch reference on row 0, the plain export."""
    import torch

    from .export import export_onnx, load_model
    from .testing import write_official_checkpoint

    result = {}
    pth = job["pth"]
    if not os.path.isfile(pth):
        began = time.perf_counter()
        write_official_checkpoint(pth + ".tmp", job["preset"], seed=0)
        os.replace(pth + ".tmp", pth)
        result["checkpoint_s"] = time.perf_counter() - began
    model = load_model(job["preset"], pth=pth)
    image = torch.from_numpy(np.load(job["row0"]))[None]
    began = time.perf_counter()
    with torch.no_grad():
        reference = model(image)
    result["reference_s"] = time.perf_counter() - began
    for k, out in enumerate(reference):
        np.save(os.path.join(job["folder"], "reference_{}.npy".format(k)), out[0].numpy())
    began = time.perf_counter()
    report = export_onnx(model, job["onnx"], job["height"], job["width"], batch=None)
    result["export_s"] = time.perf_counter() - began
    result["export_errors"] = {name: rel for name, (_, rel) in report.errors.items()}
    return result


def _child_infer(job: dict) -> dict:
    from .backends import load_backend

    extra = {"compile": True} if "compile" in job["options"] else {}   # only when asked: older load_backend lacks it
    began = time.perf_counter()
    backend = load_backend(job["backend"], job["model"], device=job["device"], precision=job["precision"],
                           preset=job["preset"], **extra)
    load_s = time.perf_counter() - began
    if np.dtype(backend.input.dtype) != np.float32:
        raise UserError("{} takes {} input; the benchmark feeds float32".format(job["model"], backend.input.dtype))
    batch = np.ascontiguousarray(np.stack([np.load(path) for path in job["rows"]]))
    warmup_s, times_ms = [], []
    for _ in range(job["warmup"]):
        began = time.perf_counter()
        backend.run(batch)
        warmup_s.append(time.perf_counter() - began)
    outputs = None
    for _ in range(job["repeats"]):
        began = time.perf_counter()
        outputs = backend.run(batch)
        times_ms.append((time.perf_counter() - began) * 1000.0)
    for k, out in enumerate(outputs):
        np.save("{}_{}.npy".format(job["out_prefix"], k), np.asarray(out[0], dtype=np.float32))
    return {"device": backend.device, "load_s": load_s, "warmup_s": warmup_s, "times_ms": times_ms,
            "outputs": len(outputs)}


def _child_data_step(job: dict) -> dict:
    """One method of one data step: `warmup` untimed runs, then one timed run (a round)."""
    once = bench_data.preprocess_once if job["job"] == "pre" else bench_data.postprocess_once
    args = (job["data"], job["work"]) if job["job"] == "pre" else (job["res"], job["labels"])
    for _ in range(job["warmup"]):
        once(job["method"], *args, job["workers"])
    seconds, value = once(job["method"], *args, job["workers"])
    result = {"seconds": seconds}
    if job["job"] == "post":
        result["value"] = value
    return result


CHILD_JOBS = {"prepare": _child_prepare, "infer": _child_infer, "pre": _child_data_step, "post": _child_data_step}


def child_main(job_path: str) -> int:
    require_file(job_path, "benchmark job")   # never open a FIFO: the child would wait for ever
    try:
        with open(job_path) as fh:
            job = json.load(fh)
        job_kind = CHILD_JOBS[job["job"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError("{} is not a benchmark job the parent wrote ({})".format(job_path, exc))
    result = job_kind(job)
    result["peak_rss_mib"] = peak_rss_mib()
    write_text_atomic(job["result"], json.dumps(result))
    return 0


# ------------------------------------------------------------------------------------------ parent side

class Runner:
    """Starts one child per measurement; returns its result with the load average around it, or its error."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.count = 0

    def __call__(self, job: dict) -> dict:
        self.count += 1
        stem = os.path.join(self.workdir, "jobs", "{:03d}-{}".format(self.count, job["job"]))
        os.makedirs(os.path.dirname(stem), exist_ok=True)
        job = dict(job, result=stem + ".result.json")
        with open(stem + ".json", "w") as fh:
            json.dump(job, fh)
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("HRNETSEG_PROGRESS", "0")
        before = _load1()
        proc = subprocess.run([sys.executable, "-m", "hrnetseg.bench", CHILD_FLAG, stem + ".json"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        after = _load1()
        if proc.returncode != 0 or not os.path.isfile(job["result"]):
            lines = [line.strip() for line in (proc.stderr or "").splitlines() if line.strip()]
            error = lines[-1].split(": error: ", 1)[-1] if lines else "exit code {}".format(proc.returncode)
            return {"error": error, "load": (before, after)}
        with open(job["result"]) as fh:
            result = json.load(fh)
        result["load"] = (before, after)
        return result


def _load1() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):   # pragma: no cover
        return float("nan")


def _say(text: str) -> None:
    print("[bench] " + text, file=sys.stderr, flush=True)


def num(value: float) -> str:
    """Three significant figures without an exponent."""
    if value != value:
        return "n/a"
    if abs(value) >= 100:
        return "{:.0f}".format(value)
    if abs(value) >= 10:
        return "{:.1f}".format(value)
    return "{:.3g}".format(value)


def input_rows(workdir: str, count: int, height: int, width: int) -> List[str]:
    """Model inputs: row i is synthetic scene i (as sample_data draws it), through our float32 transform."""
    from .preprocess import convert
    from .sample_data import scene_labels, scene_photo

    folder = os.path.join(workdir, "inputs_{}x{}".format(height, width))
    os.makedirs(folder, exist_ok=True)
    paths = []
    for index in range(count):
        path = os.path.join(folder, "row{}.npy".format(index))
        if not os.path.isfile(path):
            rng = np.random.RandomState([0, index])
            np.save(path + ".tmp.npy", convert(scene_photo(scene_labels(height, width, rng), rng), "float32", "BGR"))
            os.replace(path + ".tmp.npy", path)
        paths.append(path)
    return paths


def _weights_tag(pth: Optional[str]) -> str:
    if pth is None:
        return "random0"
    stat = os.stat(pth)
    key = "{}|{}|{}".format(os.path.abspath(pth), stat.st_size, stat.st_mtime_ns)
    return hashlib.sha1(key.encode()).hexdigest()[:10]


def prepare_model(args, run: Runner, workdir: str, row0: str) -> dict:
    """The plain export and the fp32 reference, made by a child once per (preset, size, weights) and kept."""
    folder = os.path.join(workdir, "model_{}_{}x{}_{}".format(args.preset, args.height, args.width,
                                                              _weights_tag(args.pth)))
    os.makedirs(folder, exist_ok=True)
    done = os.path.join(folder, "prepared.json")
    pth = os.path.abspath(args.pth) if args.pth else os.path.join(workdir, "{}_random_seed0.pth".format(args.preset))
    paths = {"folder": folder, "onnx": os.path.join(folder, "plain.onnx"), "pth": pth,
             "reference": [os.path.join(folder, "reference_{}.npy".format(k)) for k in range(2)]}
    if os.path.isfile(done):
        with open(done) as fh:
            return dict(json.load(fh), cached=True, **paths)
    _say("exporting {} at {}x{} and computing the fp32 PyTorch reference (once per workdir)".format(
        args.preset, args.height, args.width))
    result = run({"job": "prepare", "preset": args.preset, "pth": pth, "row0": row0, "folder": folder,
                  "onnx": paths["onnx"], "height": args.height, "width": args.width})
    if "error" in result:
        raise UserError("export / reference failed: {}".format(result["error"]))
    write_text_atomic(done, json.dumps(result))
    return dict(result, cached=False, **paths)


def infer_stage(args, cases: Sequence[Case], run: Runner, workdir: str) -> dict:
    from .export import relative_error

    baseline = parse_case(BASELINE_SPEC)
    others = [c for c in cases if c != baseline]
    order = [(baseline, "first")] + [(c, "") for c in others] + ([(baseline, "last")] if others else [])
    rows = input_rows(workdir, max(c.batch for c in [baseline] + others), args.height, args.width)
    model = prepare_model(args, run, workdir, rows[0])
    references = [np.load(path) for path in model["reference"]]
    results = []
    for index, (case, tag) in enumerate(order):
        _say("inference {}{} ...".format(case.label, " (baseline, {})".format(tag) if tag else ""))
        out_prefix = os.path.join(workdir, "outputs", "{:02d}_{}".format(index, case.spec.replace(":", "_")))
        os.makedirs(os.path.dirname(out_prefix), exist_ok=True)
        result = run({"job": "infer", "backend": case.backend, "precision": case.precision, "options": case.options,
                      "preset": args.preset,
                      "model": model["pth"] if case.backend == "torch" else model["onnx"], "device": args.device,
                      "rows": rows[:case.batch], "warmup": args.warmup, "repeats": args.repeats,
                      "out_prefix": out_prefix})
        result.update(case=case, tag=tag)
        if "error" not in result:
            times = np.asarray(result["times_ms"])
            result["min_ms"], result["median_ms"] = float(times.min()), float(np.median(times))
            result["images_per_s"] = 1000.0 * case.batch / result["median_ms"]
            result["errors"] = [relative_error(np.load("{}_{}.npy".format(out_prefix, k)), ref)
                                for k, ref in enumerate(references)]
            _say("  {} ms/batch median, {} images/s".format(num(result["median_ms"]), num(result["images_per_s"])))
        else:
            _say("  failed: " + result["error"])
        results.append(result)
    base_times = [t for r in results if r["case"] == baseline and "error" not in r for t in r["times_ms"]]
    base_ips = 1000.0 * baseline.batch / float(np.median(base_times)) if base_times else float("nan")
    for result in results:
        if "error" not in result:
            result["ratio"] = result["images_per_s"] / base_ips
    return {"results": results, "baseline_images_per_s": base_ips, "model": model}


def data_stage(args, stages: Sequence[str], run: Runner, workdir: str) -> Dict[str, dict]:
    """Pre/postprocess, seed's method and ours each in its own child per round, alternating which goes first."""
    root = os.path.join(workdir, "data_{}_{}x{}".format(args.images, args.height, args.width))
    os.makedirs(root, exist_ok=True)
    paths = bench_data.make_data(root, args.images, args.height, args.width)
    bench_data._warm(root)
    out = {}
    for stage in stages:
        rounds = {"seed": [], "ours": []}
        for index in range(args.repeats):
            for method in (("ours", "seed") if index % 2 else ("seed", "ours")):
                _say("{} {}, round {} ...".format(stage, method, index + 1))
                job = {"job": stage, "method": method, "warmup": args.warmup, "workers": args.workers}
                job.update({"data": paths["data"], "work": root} if stage == "pre" else
                           {"res": paths["res"], "labels": paths["labels"]})
                rounds[method].append(run(job))
        out[stage] = summarize_data_stage(stage, rounds, args.images, root)
    return out


def summarize_data_stage(stage: str, rounds: Dict[str, List[dict]], images: int, root: str) -> dict:
    summary = {"methods": {}}
    for method, runs in rounds.items():
        errors = [r["error"] for r in runs if "error" in r]
        if errors:
            summary["methods"][method] = {"error": errors[0], "load": runs[0]["load"]}
            continue
        ms = np.asarray([1000.0 * r["seconds"] / images for r in runs])
        summary["methods"][method] = {
            "min_ms": float(ms.min()), "median_ms": float(np.median(ms)),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "load": (runs[0]["load"][0], runs[-1]["load"][1])}   # before its first round, after its last
    seed, ours = summary["methods"]["seed"], summary["methods"]["ours"]
    if "error" in seed or "error" in ours:
        summary["check"] = "not compared (a method failed)"
    elif stage == "pre":
        summary["ok"] = bench_data.same_preprocess_bins(root)
        summary["check"] = "float32 bins identical: {}".format(summary["ok"])
    else:
        cmp = bench_data.compare_postprocess(rounds["seed"][-1]["value"], rounds["ours"][-1]["value"])
        summary["check"] = "mIoU seed {:.6f} / ours {:.6f}, same confusion: {}".format(
            cmp["seed_mean_Iou"], cmp["ours_mIoU"], cmp["same_confusion"])
        summary["ok"] = cmp["same_confusion"] and cmp["abs_diff"] <= 1e-6
    if "error" not in seed and "error" not in ours:
        summary["ratio_min"] = seed["min_ms"] / ours["min_ms"]
        summary["ratio_median"] = seed["median_ms"] / ours["median_ms"]
    return summary


# ------------------------------------------------------------------------------------------------ output

def _loads(load) -> str:
    return "{:.2f} -> {:.2f}".format(load[0], load[1])


def format_infer(args, infer: dict) -> str:
    model = infer["model"]
    weights = "checkpoint {}".format(os.path.basename(args.pth)) if args.pth else \
        "random weights (seed 0): speeds hold, errors are on random weights"
    exported = "reused from the workdir" if model.get("cached") else "export {} s".format(num(model["export_s"]))
    lines = ["**Inference**, {} at {}x{}, {}; input: synthetic scene(s) through our float32 transform; "
             "{} timed run(s) per case after {} warm-up; baseline ONNX Runtime fp32 on the plain export ({}), run "
             "first and last, pooled: {} images/s. Errors: ||out - ref|| / ||ref|| of row 0 against fp32 PyTorch "
             "(eager) on the same input. Peak RSS: the whole child process (interpreter, libraries, model, input)."
             .format(args.preset, args.height, args.width, weights, args.repeats, args.warmup, exported,
                     num(infer["baseline_images_per_s"])),
             "",
             "| case | device | images/s | ms/batch min | ms/batch median | speed vs baseline | rel. err output1 / output2 "
             "| load s | first call s | peak RSS MiB | load avg before -> after |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in infer["results"]:
        label = r["case"].label + (" (baseline, {})".format(r["tag"]) if r["tag"] else "")
        if "error" in r:
            lines.append("| {} | failed: {} | | | | | | | | | {} |".format(label, r["error"].replace("|", "/"),
                                                                            _loads(r["load"])))
            continue
        lines.append("| {} | {} | {} | {} | {} | {}x | {:.1e} / {:.1e} | {} | {} | {} | {} |".format(
            label, r["device"], num(r["images_per_s"]), num(r["min_ms"]), num(r["median_ms"]), num(r["ratio"]),
            r["errors"][0], r["errors"][1], num(r["load_s"]), num(r["warmup_s"][0]) if r["warmup_s"] else "-",
            num(r["peak_rss_mib"]), _loads(r["load"])))
    return "\n".join(lines)


def format_data(args, data: Dict[str, dict]) -> str:
    names = {"pre": "preprocess", "post": "postprocess"}
    outputs = " (postprocess: model-like 19x{}x{} float32 outputs)".format(-(-args.height // 4), -(-args.width // 4)) \
        if "post" in data else ""
    lines = ["**Data steps**, {} synthetic images of {}x{}{}; {} round(s) per method, each method in its own child "
             "process per round after {} untimed warm-up run(s), alternating which goes first; seed's method restated "
             "from NOTES.md in one process, ours with {} workers. Timed: the whole step (listing, reading, computing, "
             "writing) / images. Peak RSS: the whole child process."
             .format(args.images, args.height, args.width, outputs, args.repeats, args.warmup,
                     args.workers or "default (all cores)"),
             "",
             "| step | method | ms/image min | ms/image median | speed vs seed (min / median) | peak RSS MiB | check "
             "| load avg before -> after |",
             "|---|---|---|---|---|---|---|---|"]
    for stage, summary in data.items():
        for method in ("seed", "ours"):
            m = summary["methods"][method]
            if "error" in m:
                lines.append("| {} | {} | failed: {} | | | | | {} |".format(names[stage], method,
                                                                          m["error"].replace("|", "/"), _loads(m["load"])))
                continue
            if method == "seed":
                ratio, check = "1 (baseline)", ""
            else:
                ratio = "{:.1f}x / {:.1f}x".format(summary["ratio_min"], summary["ratio_median"]) \
                    if "ratio_min" in summary else ""
                check = summary["check"]
            lines.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
                names[stage], method, num(m["min_ms"]), num(m["median_ms"]), ratio, num(m["peak_rss_mib"]), check,
                _loads(m["load"])))
    return "\n".join(lines)


def machine_line() -> str:
    import importlib

    cpu = bench_data.machine().split(", Python")[0] + cpu_features()
    try:
        ram = "{:.1f} GiB RAM".format(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024.0 ** 3)
    except (AttributeError, ValueError, OSError):   # pragma: no cover
        ram = "RAM n/a"
    versions = ["Python " + platform.python_version(), "numpy " + np.__version__]
    gpu = "no GPU"
    for name in ("torch", "onnxruntime", "openvino"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        versions.append("{} {}".format(name, getattr(module, "__version__", "?")))
        if name == "torch" and module.cuda.is_available():
            gpu = "GPU " + module.cuda.get_device_name(0)
    return "{}, {}, {}; {}; {}".format(cpu, ram, gpu, platform.platform(terse=True), ", ".join(versions))


def cpu_features() -> str:
    """The matrix-relevant instruction sets the CPU reports (Linux), e.g. " (avx512f, avx512_bf16)"."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return ""
    found = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16") if f in flags]
    return " ({})".format(", ".join(found)) if found else ""


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


def record(path: str, block: str) -> None:
    """Append the block at the end of the issue-5 section of BENCHMARKS.md (the section is made if missing)."""
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    lines = text.splitlines()
    if SECTION not in lines:
        lines += ["", SECTION, "", "Blocks appended by `python -m hrnetseg.bench` (hrnetseg/bench.py), newest last."]
    start = lines.index(SECTION)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    lines[end:end] = [""] + block.splitlines() + ([""] if end < len(lines) else [])
    write_text_atomic(path, "\n".join(lines).lstrip("\n") + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [CHILD_FLAG]:
        if len(argv) != 2:
            raise UserError("{} takes one JOB.json (the benchmark starts its measurements with it)".format(CHILD_FLAG))
        return child_main(argv[1])
    args = build_parser().parse_args(argv)
    stages = parse_stages(args.stages)
    cases = parse_cases(args.cases)
    if args.pth is not None:
        require_file(args.pth, "checkpoint")
    from .backends import parse_device

    parse_device(args.device)   # a bad --device is one line now, not a failed row per case after the export
    if not args.no_record:   # before the benchmark: a folder, FIFO or device here would fail (or hang) at its end
        check_output_file(args.benchmarks_md, "--benchmarks_md")
    own = args.workdir is None
    if args.workdir == "":
        raise UserError("--workdir is an empty name: give a folder (or leave it out for a temporary one)")
    if not own and os.path.lexists(args.workdir) and not os.path.isdir(args.workdir):
        make_output_folder(args.workdir, "--workdir")   # its one-line "exists and is ..., not a folder"
    workdir = tempfile.mkdtemp(prefix="hrnetseg-bench-") if own else os.path.abspath(args.workdir)
    make_output_folder(workdir, "--workdir")
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = bench_data.load_average()
    try:
        run = Runner(workdir)
        parts, ok = [], True
        data_stages = [s for s in stages if s != "infer"]
        data = data_stage(args, data_stages, run, workdir) if data_stages else {}
        if "infer" in stages:
            infer = infer_stage(args, cases, run, workdir)
            parts.append(format_infer(args, infer))
            ok = ok and all("error" not in r for r in infer["results"])
        if data:
            parts.append(format_data(args, data))
            ok = ok and all(s.get("ok", False) for s in data.values())
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    header = ["### {} UTC".format(started.strftime("%Y-%m-%d %H:%M")), "",
              "Command: `{}` ({})".format(command_line(argv), code_version()), "",
              "Machine: {}. {} at the start, {} at the end.".format(machine_line(), load_start.capitalize(),
                                                                      bench_data.load_average())]
    block = "\n\n".join(["\n".join(header)] + parts)
    print(block)
    if not args.no_record:
        record(args.benchmarks_md, block)
        print("\n[bench] appended to {}".format(args.benchmarks_md), file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    run_cli(main)
