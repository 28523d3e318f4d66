"""--backend auto (predict and evaluate): the fastest backend and precision this machine has verified for a model.

The candidates, fastest expected first, come from facts, never from a guess at run time:

| model | device | candidates (in order) | checked before first use |
|---|---|---|---|
| ONNX, float | CPU | openvino bf16 (avx512_bf16 or amx_bf16), onnxruntime fp32 (else openvino fp32) | bf16 |
| ONNX, float | GPU | onnxruntime fp32 (CUDA provider) | - |
| ONNX, int8-quantised | CPU | openvino int8, onnxruntime int8 | int8 |
| .pth | CPU | torch bf16 (avx512_bf16 or amx_bf16), torch fp32 | bf16 |
| .pth | GPU | torch fp16, torch fp32 | fp16 |

The order is BENCHMARKS.md's "CPU reduced precision" measurement: OpenVINO bf16 runs about 2x ONNX Runtime fp32
on AVX-512 BF16 CPUs at ~6e-3 relative error; torch with bf16 weights beats torch fp32, not OpenVINO.

A reduced-precision candidate is used only after it passed a check on THIS machine: it and the reference path
(onnxruntime fp32 for ONNX, torch fp32 for .pth) run one seeded, image-like probe input (probe.py), and its main
output must stay within the bounds of VERIFY_BOUNDS:

| precision | relative error of the main output, max | argmax agreement of the upsampled labels, min |
|---|---|---|
| bf16 | 1e-2 | 99% |
| fp16 | 1e-2 | 99% |
| int8 | - (no float reference in the file: it is what the user quantised) | - (it must run, outputs finite) |

The verdict, passed or failed, is kept (verdicts.py) per model file, candidate, device, CPU flags and package
versions, so the check runs once; a candidate that fails is skipped and the next one tried. fp32 paths need no
check. Stand-ins for tests: cpu_flags= (or HRNETSEG_CPU_FLAGS="avx512f avx512_bf16"), `importable`,
open_backend=, cache_dir= (or HRNETSEG_CACHE_DIR).

--precision P with --backend auto: auto picks only among the candidates that run P (P = fp32: the fp32 paths).
With --ray the driver resolves once and the workers are sent the resolved backend and precision.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable, FrozenSet, Iterable, List, Optional, Tuple

from hrnetseg.backends import PRECISIONS, backend_for_model, load_backend, parse_device, visible_gpu_count
from hrnetseg.util.errors import UserError
from hrnetseg.util.processes import cpu_flags_reported

AUTO = "auto"
CPU_FLAGS_ENV = "HRNETSEG_CPU_FLAGS"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")   # the CPU runs bf16 dot products natively: OpenVINO bf16 pays off
# precision -> (max relative error of the main output, min argmax agreement); None: no float reference to compare
VERIFY_BOUNDS = {"bf16": (1e-2, 0.99), "fp16": (1e-2, 0.99), "int8": (None, None)}


@dataclass(frozen=True)
class Candidate:
    backend: str
    precision: str

    def __str__(self) -> str:
        return "{} {}".format(self.backend, self.precision)

    @property
    def needs_check(self) -> bool:
        return self.precision in VERIFY_BOUNDS


@dataclass
class Choice:
    """What runs (backend, precision, device kind) and why, in words for the first line."""
    backend: str
    precision: str
    device: str                          # "cpu" or "gpu" (the backend resolves which GPU)
    why: str
    by_auto: bool = True
    refused: List[str] = field(default_factory=list)   # "openvino bf16: rel error 2.1e-02 > 1e-02", ...

    def first_line(self) -> str:
        return "backend: {} {} on {} ({})".format(self.backend, self.precision, self.device, self.why)

    def record(self) -> dict:
        """The result's "backend" entry."""
        return {"backend": self.backend, "precision": self.precision, "device": self.device,
                "chosen_by": "--backend auto" if self.by_auto else "--backend", "why": self.why}


# ------------------------------------------------------------------------------------------------- facts

def cpu_flags(override: Optional[Iterable[str]] = None) -> FrozenSet[str]:
    """The CPU's feature flags: `override`, else HRNETSEG_CPU_FLAGS (a stand-in set, spaces or commas), else the
    first "flags" line of /proc/cpuinfo (empty where there is none)."""
    if override is not None:
        return frozenset(override)
    text = os.environ.get(CPU_FLAGS_ENV)
    if text is not None:
        return frozenset(text.replace(",", " ").split())
    return cpu_flags_reported() or frozenset()


def importable(module: str) -> bool:
    """Whether `module` can be imported here (found, not imported: torch takes seconds)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def model_family(model: str) -> str:
    """"onnx" or "pth" by the file's suffix (backend_for_model's one-line refusals for .om and others)."""
    return "onnx" if backend_for_model(model) == "onnxruntime" else "pth"


def is_int8_model(model: str) -> bool:
    from hrnetseg.graph.quantized import is_quantized

    return is_quantized(model)


def device_kind(device: Optional[str], family: str) -> str:
    """"gpu" or "cpu": --device cpu / cuda[:N] / N as given; by default a GPU when the family's GPU backend sees
    one (onnxruntime's CUDA provider for ONNX, torch for a .pth), else the CPU."""
    kind, _ = parse_device(device)
    if kind != "auto":
        return "gpu" if kind == "cuda" else "cpu"
    backend = "onnxruntime" if family == "onnx" else "torch"
    return "gpu" if importable(backend) and visible_gpu_count(backend) > 0 else "cpu"


def candidates(family: str, device: str, flags: FrozenSet[str], int8: bool = False
               ) -> Tuple[List[Candidate], List[str]]:
    """(the candidates, fastest expected first; why the faster paths not listed are missing)."""
    have = {name: importable(name) for name in ("onnxruntime", "openvino", "torch")}
    bf16_cpu = any(flag in flags for flag in BF16_FLAGS)
    found: List[Candidate] = []
    missing: List[str] = []
    if family == "pth":
        if not have["torch"]:
            return [], ["a .pth runs on torch, which is not installed (pip install torch)"]
        if device == "gpu":
            return [Candidate("torch", "fp16"), Candidate("torch", "fp32")], []
        if bf16_cpu:
            found.append(Candidate("torch", "bf16"))
        else:
            missing.append("no bf16 path: this CPU has neither {}".format(" nor ".join(BF16_FLAGS)))
        return found + [Candidate("torch", "fp32")], missing
    if int8:
        if device == "gpu":
            missing.append("the int8 backends run on the CPU")
        if have["openvino"] and device == "cpu":
            found.append(Candidate("openvino", "int8"))
        if have["onnxruntime"]:
            found.append(Candidate("onnxruntime", "int8"))
        return found, missing
    if device == "gpu":
        return ([Candidate("onnxruntime", "fp32")] if have["onnxruntime"] else []), []
    if not have["openvino"]:
        missing.append("no openvino bf16: OpenVINO is not installed (pip install openvino)")
    elif not bf16_cpu:
        missing.append("no openvino bf16: this CPU has neither {}".format(" nor ".join(BF16_FLAGS)))
    else:
        found.append(Candidate("openvino", "bf16"))
    if have["onnxruntime"]:
        found.append(Candidate("onnxruntime", "fp32"))
    elif have["openvino"]:
        found.append(Candidate("openvino", "fp32"))
    return found, missing


def reference_for(family: str) -> Candidate:
    if family == "pth":
        return Candidate("torch", "fp32")
    return Candidate("onnxruntime" if importable("onnxruntime") else "openvino", "fp32")


# ------------------------------------------------------------------------------------------------- the choice

def explicit_choice(backend: Optional[str], precision: Optional[str], model: str) -> Choice:
    """--backend NAME (or none: the model file's default, as the runner takes it), as before auto."""
    kind = backend if backend not in (None, AUTO) else backend_for_model(model)
    return Choice(kind, precision or "fp32", "as asked", "--backend {}".format(kind), by_auto=False)


def resolve(model: str, device: Optional[str] = None, precision: Optional[str] = None, *, preset: str = "w48_ocr",
            input_dtype: str = "float32", threads: Optional[int] = None,
            flags: Optional[Iterable[str]] = None, cache_dir: Optional[str] = None,
            open_backend: Optional[Callable] = None) -> Choice:
    """The fastest candidate for `model` on `device` that this machine has verified (precision: only candidates
    that run it). Runs the check of a reduced-precision candidate not yet verified here (and keeps the verdict);
    a one-line UserError when no candidate fits. open_backend: load_backend, or a stand-in."""
    from hrnetseg.backends import verdicts
    from hrnetseg.backends.probe import check_candidate

    family = model_family(model)
    where = device_kind(device, family)
    cpu = cpu_flags(flags)
    int8 = family == "onnx" and is_int8_model(model)
    found, missing = candidates(family, where, cpu, int8)
    if precision is not None:
        runs_it = [c for c in found if c.precision == precision]
        if not runs_it:
            raise UserError("--backend auto --precision {}: no backend here runs this {} model at {} on the {} "
                            "(candidates: {}){}".format(precision, "int8" if int8 else family, precision, where,
                                                        ", ".join(map(str, found)) or "none",
                                                        "; " + "; ".join(missing) if missing else ""))
        found = runs_it
    if not found:
        raise UserError("--backend auto: no backend here runs {} on the {}{}".format(
            model, where, ": " + "; ".join(missing) if missing else ""))
    reference = reference_for(family)
    cache = verdicts.VerdictCache(cache_dir)
    settings = dict(preset=preset, input_dtype=input_dtype, threads=threads, device=device)
    refused: List[str] = []
    probe_state: dict = {}
    for candidate in found:
        if not candidate.needs_check:
            return Choice(candidate.backend, candidate.precision, where, _why_plain(candidate, reference, refused,
                                                                                   missing, found), refused=refused)
        key = verdicts.verdict_key(model, candidate, where, cpu, family, preset, input_dtype,
                                   VERIFY_BOUNDS[candidate.precision])
        verdict = cache.get(key, VERIFY_BOUNDS[candidate.precision])
        if verdict is None:
            verdict = check_candidate(model, candidate, reference, settings, open_backend or load_backend, probe_state,
                                      VERIFY_BOUNDS[candidate.precision])
            cache.put(key, verdict)
        if verdict["passed"]:
            return Choice(candidate.backend, candidate.precision, where,
                          _why_verified(candidate, reference, verdict, found), refused=refused)
        refused.append("{}: {}".format(candidate, verdict["reason"]))
    raise UserError("--backend auto: every candidate for {} failed its check here ({}); pass --backend to run "
                    "one anyway".format(model, "; ".join(refused)))


def _reference_hint(found: List[Candidate], chosen: Candidate) -> str:
    plain = next((c for c in found if not c.needs_check and c != chosen), None)
    return "; --backend {} for the reference path".format(plain.backend) if plain else ""


def _why_verified(candidate: Candidate, reference: Candidate, verdict: dict, found: List[Candidate]) -> str:
    if verdict.get("rel_error") is None:
        check = "it ran here and its outputs are finite (an int8 model has no float reference to compare)"
    else:
        bound, agreement = VERIFY_BOUNDS[candidate.precision]
        check = "rel error {:.1e} <= {:.0e}, labels {:.2f}% alike (>= {:g}%) against {}".format(
            verdict["rel_error"], bound, 100.0 * verdict["agreement"], 100.0 * agreement, reference)
    return "auto: fastest verified here, {}{}".format(check, _reference_hint(found, candidate))


def _why_plain(candidate: Candidate, reference: Candidate, refused: List[str], missing: List[str],
               found: List[Candidate]) -> str:
    what = "the reference path" if candidate == reference else "the fastest path here"
    notes = ["{} refused here".format(text) for text in refused] + missing
    return "auto: {}{}".format(what, "; " + "; ".join(notes) if notes else "")


def choose(args, model: str, input_dtype: str = "float32", threads: Optional[int] = None) -> Choice:
    """The tools' entry: --backend auto resolved (printing nothing), or the explicit --backend as before.
    args: the parsed backend flags (backend, device, precision, preset)."""
    if args.backend != AUTO:
        return explicit_choice(args.backend, args.precision, model)
    return resolve(model, args.device, args.precision, preset=args.preset, input_dtype=input_dtype, threads=threads)


def main(argv=None) -> int:
    """python -m hrnetseg.backends.auto MODEL: what --backend auto picks here (checking it if need be), for the
    shell scripts: the first line on stderr, "BACKEND PRECISION" on stdout."""
    import sys

    from hrnetseg.model.presets import DEFAULT_PRESET, PRESET_NAMES
    from hrnetseg.util.cli import ArgumentParser

    parser = ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("model", help="the .onnx or .pth file")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or N (default: a GPU if usable)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="only candidates that run it")
    parser.add_argument("--preset", choices=PRESET_NAMES, default=DEFAULT_PRESET, help="the variant of a .pth")
    args = parser.parse_args(argv)
    from hrnetseg.backends import check_model_file

    check_model_file(args.model)
    choice = resolve(args.model, args.device, args.precision, preset=args.preset)
    print(choice.first_line(), file=sys.stderr, flush=True)
    print("{} {}".format(choice.backend, choice.precision))
    return 0


if __name__ == "__main__":
    import sys

    from hrnetseg.util.cli import run_cli

    run_cli(main, sys.argv[1:])
