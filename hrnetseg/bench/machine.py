"""What the machine is and how loaded it is, for the benchmark's block; the peak memory of a child process."""
from __future__ import annotations

import os
import platform
import sys
from typing import Optional

import numpy as np

from hrnetseg.util.processes import cpu_cores, cpu_flags_reported


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

        per_mib = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0   # ru_maxrss: bytes on macOS, else KiB
        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mib
    return value


def one_minute_load() -> float:
    """The 1-minute load average (NaN where the system has none): the noise around one measurement."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):   # pragma: no cover
        return float("nan")


def load_average_text() -> str:
    """The 1, 5 and 15-minute load averages, as "load average 1.33 1.64 2.17"."""
    try:
        return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except (AttributeError, OSError):  # pragma: no cover
        return "load average n/a"


def cpu_description() -> str:
    """The CPU's model name (Linux; the platform's name elsewhere) and the number of cores this process may use."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "{}, {} cores".format(model, cpu_cores())


# The instruction sets CPU inference speed turns on: int8 dot products (VNNI, AMX-INT8), bf16 (AVX512-BF16,
# AMX-BF16), fp16; a block without them explains why an int8 or bf16 case is no faster than fp32.
INFERENCE_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16")


def cpu_features() -> str:
    """The inference-relevant instruction sets the CPU reports (Linux): INFERENCE_FLAGS and every amx_* flag,
    e.g. " (avx2, avx512f, avx512_vnni, avx512_bf16)"; "(none of ...)" where it reports none of them."""
    flags = cpu_flags_reported()
    if flags is None:
        return ""
    found = [f for f in INFERENCE_FLAGS if f in flags] + sorted(f for f in flags if f.startswith("amx_"))
    return " ({})".format(", ".join(found)) if found else " (no avx2, avx512, amx)"


def machine_line() -> str:
    """CPU, RAM, GPU, operating system and the versions of Python and the inference libraries."""
    import importlib

    cpu = cpu_description() + cpu_features()
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
