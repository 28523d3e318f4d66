"""The verdicts of --backend auto's checks, kept so a check runs once per model, candidate and machine.

One JSON file per verdict under $HRNETSEG_CACHE_DIR, else $XDG_CACHE_HOME/hrnetseg, else ~/.cache/hrnetseg
(backend-verdicts/<digest of the key>.json). The key holds what the verdict depends on: the model file (real
path, size, mtime_ns), the candidate, the device kind, the CPU flags (a digest), the package versions, the
bounds, and for a .pth its preset and input type; the file repeats the key, so a file of another key (a
collision, a copy) is foreign.

The cache is never trusted: a file that cannot be read (hrnetseg.util.structured: damaged, empty, not a regular
file, wrong types), a foreign key, a figure that is NaN or out of range, or a "passed" that its own figures do
not bear out, counts as no verdict: the check runs again and the file is rewritten. Writes are atomic
(hrnetseg.util.files), one file per key, so concurrent runs at worst write the same verdict twice. A cache
that cannot be written costs a note on stderr, never the run.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from typing import FrozenSet, Optional, Tuple

from hrnetseg.util.errors import UserError
from hrnetseg.util.files import remove_quietly, remove_stale_temporaries, write_text_atomic
from hrnetseg.util.structured import read_json, require_keys

CACHE_ENV = "HRNETSEG_CACHE_DIR"
FOLDER = "backend-verdicts"
SCHEME = 2   # raised when what a check does changes (2: the probe is a sample_scenes scene): older verdicts are foreign
DISTRIBUTIONS = {"numpy": ("numpy",), "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
                 "openvino": ("openvino",), "torch": ("torch",), "onnx": ("onnx",)}


def cache_root(override: Optional[str] = None) -> str:
    if override:
        return override
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hrnetseg")


def package_versions() -> dict:
    """The installed versions of the packages a verdict depends on (None: not installed), without importing them."""
    from importlib import metadata

    versions = {}
    for module, names in DISTRIBUTIONS.items():
        versions[module] = None
        for name in names:
            try:
                versions[module] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def verdict_key(model: str, candidate, device: str, flags: FrozenSet[str], family: str, preset: str,
                input_dtype: str, bounds: Tuple[Optional[float], Optional[float]]) -> dict:
    info = os.stat(model)
    return {"scheme": SCHEME, "model": os.path.realpath(model), "model_size": int(info.st_size),
            "model_mtime_ns": int(info.st_mtime_ns), "backend": candidate.backend, "precision": candidate.precision,
            "device": device, "cpu_flags": hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16],
            "versions": package_versions(), "bounds": list(bounds),
            "preset": preset if family == "pth" else None, "input_dtype": input_dtype if family == "pth" else None}


def _finite_in(value, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and low <= value <= high


def trustworthy(data: dict, key: dict, bounds: Tuple[Optional[float], Optional[float]]) -> bool:
    """Whether a read verdict is one this run may use: its key, sane figures, a "passed" its figures bear out."""
    if data.get("key") != key:
        return False
    error, agreement = data.get("rel_error"), data.get("agreement")
    max_error, min_agreement = bounds
    if max_error is None:   # int8: ran and finite, no figures
        return error is None and agreement is None
    if not (_finite_in(error, 0.0, math.inf) and _finite_in(agreement, 0.0, 1.0)):
        return not data["passed"] and error is None and agreement is None   # a candidate that failed to run
    if data["passed"]:
        return error <= max_error and agreement >= min_agreement
    return True


class VerdictCache(object):
    def __init__(self, root: Optional[str] = None) -> None:
        self.folder = os.path.join(cache_root(root), FOLDER)

    def path(self, key: dict) -> str:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:32]
        return os.path.join(self.folder, digest + ".json")

    def get(self, key: dict, bounds) -> Optional[dict]:
        """The kept verdict for `key`, or None (none kept, or one not to be trusted)."""
        path = self.path(key)
        if not os.path.lexists(path) or os.path.islink(path):   # a link could lead to any file: never followed
            return None
        try:
            data = require_keys(read_json(path, "cached backend verdict"), {"key": dict, "passed": bool,
                                                                           "reason": str},
                                "cached backend verdict", path,
                                optional={"rel_error": (float, type(None)), "agreement": (float, type(None))})
        except UserError:
            return None
        return data if trustworthy(data, key, bounds) else None

    def put(self, key: dict, verdict: dict) -> None:
        """Keep `verdict` (atomically); a cache that cannot be written is said on stderr, the run goes on."""
        path = self.path(key)
        try:
            os.makedirs(self.folder, exist_ok=True)
            remove_stale_temporaries(self.folder, "*.json")
            if os.path.islink(path):   # never written through: it could lead anywhere
                remove_quietly(path)
            write_text_atomic(path, json.dumps(dict(verdict, key=key), indent=1, allow_nan=False) + "\n")
        except (OSError, UserError, ValueError) as exc:
            print("note: the backend check's verdict is not kept ({}): it runs again next time".format(
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__), file=sys.stderr, flush=True)
