"""Reading the official checkpoints strictly, so a wrong or truncated file is refused, not exported.

Official files come from a training wrapper: keys behind `model.`, a `loss.criterion.weight` entry,
sometimes wrapped as {"state_dict": ...}, older ones naming the aux head `last_layer`.
"""
from __future__ import annotations

import os
import pickle
import warnings
from typing import Dict, List, Mapping, Optional

import numpy as np
import torch
from torch import nn

from hrnetseg.util.errors import UserError, exception_line, one_line
from hrnetseg.util.files import require_file
from hrnetseg.util.numerics import nonfinite_counts

SHOW_KEYS = 3
TORCH_REASON_LIMIT = 160   # characters of torch's own reason in a one-line refusal
# Lines of torch's weights_only refusal that are advice, not the reason (one suggests weights_only=False).
TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation", "(")


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """torch.load with weights_only=True, unwrapped to a flat {name: tensor} dict."""
    require_file(path, "checkpoint")
    if os.path.getsize(path) == 0:
        raise UserError("{} is not a PyTorch checkpoint (an empty file)".format(path))
    if not has_checkpoint_header(path):
        raise UserError("{} is not a readable PyTorch checkpoint (another format: neither a zip archive nor a "
                        "pickle, as torch.save writes them)".format(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError("{} is not a tensors-only PyTorch checkpoint (refused by weights_only loading: {}); it "
                        "holds Python objects, and unpickling those could run code from the file"
                        .format(path, unpickler_reason(exc)))
    except Exception as exc:  # any parse failure of a foreign, truncated or garbled file
        raise UserError("{} is not a readable PyTorch checkpoint (truncated or another format: {})"
                        .format(path, torch_error_line(exc)))
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        found = "an empty {}".format(type(obj).__name__) if isinstance(obj, Mapping) else type(obj).__name__
        raise UserError("{} holds no state dict (found {})".format(path, found))
    not_names = [repr(k) for k in obj if not isinstance(k, str)]
    if not_names:
        raise UserError("{} is not a state dict: its keys must be names, found {}".format(path, name_some(not_names)))
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise UserError("{} is not a state dict: {} ({})".format(
            path, "1 entry is not a tensor" if len(not_tensors) == 1 else
            "{} entries are not tensors".format(len(not_tensors)), name_some(not_tensors)))
    return dict(obj)


# What torch.load reads: a zip archive (torch >= 1.6), a pickle of protocol 2 or later (older torch.save, as the
# official torch 1.1 checkpoints), or the tar files of torch < 0.4 ("ustar" at offset 257).
ZIP_MAGIC, PICKLE_PROTO, TAR_MAGIC, TAR_MAGIC_AT = b"PK\x03\x04", b"\x80", b"ustar", 257


def has_checkpoint_header(path: str) -> bool:
    """Whether the file starts as torch.save writes it; without this an ONNX file or random bytes reach the
    weights_only unpickler, whose refusal would call them Python objects."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(TAR_MAGIC_AT + len(TAR_MAGIC))
    except OSError as exc:
        raise UserError("cannot read checkpoint {}: {}".format(path, exc.strerror or exc))
    return (head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_PROTO)
            or head[TAR_MAGIC_AT:TAR_MAGIC_AT + len(TAR_MAGIC)] == TAR_MAGIC)


def unpickler_reason(exc: BaseException) -> str:
    """The weights_only unpickler's own reason (e.g. "Unsupported global: GLOBAL posix.system ..."), without
    torch's advice around it, which suggests weights_only=False: exactly what must not happen here."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines()]
    reasons = [line for line in lines if line and not line.startswith(TORCH_ADVICE)]
    return first_sentence(reasons[0])[:TORCH_REASON_LIMIT] if reasons else torch_error_line(exc)


def torch_error_line(exc: BaseException) -> str:
    """cli.exception_line cut to the first sentence of the error's first line: torch's zip reader goes on with
    "This is an internal miniz error. If you are seeing this error, there is a high ...", which cut at a
    length read as a broken message."""
    lines = str(exc).strip().splitlines()
    sentence = one_line(first_sentence(lines[0])) if lines else ""
    return sentence[:TORCH_REASON_LIMIT] or exception_line(exc, TORCH_REASON_LIMIT)


def first_sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".")


def official_to_model_keys(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Strip `model.`/`module.` prefixes, drop `loss.*`, rename `last_layer` to `aux_head`.

    Two entries that become one key (`model.conv1.weight` and `conv1.weight`, `last_layer.*` and
    `aux_head.*`) are refused: whichever came last would win, and which one is right cannot be told.
    """
    out: Dict[str, torch.Tensor] = {}
    source: Dict[str, str] = {}
    for original, value in state.items():
        key = original
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith("loss."):
            continue
        if key.startswith("last_layer."):
            key = "aux_head." + key[len("last_layer."):]
        if key in source:
            raise UserError("checkpoint entries {} and {} both name the model's {}: which one holds the weights "
                            "cannot be told".format(source[key], original, key))
        source[key] = original
        out[key] = value
    return out


def name_some(keys: List[str]) -> str:
    shown = ", ".join(keys[:SHOW_KEYS])
    return shown + (", ..." if len(keys) > SHOW_KEYS else "")


def check_checkpoint_fits_preset(model: nn.Module, state: Mapping[str, torch.Tensor], preset: str = "") -> None:
    """Refuse a checkpoint with missing, unexpected or mis-shaped keys, naming them."""
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    misshaped = ["{} {} != {}".format(k, tuple(v.shape), tuple(expected[k].shape))
                 for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            problems.append("{} {} key{} ({})".format(len(keys), label, "" if len(keys) == 1 else "s",
                                                      name_some(keys)))
    if problems:
        target = "preset {}".format(preset) if preset else "the model"
        raise UserError("checkpoint does not fit {}: {}".format(target, "; ".join(problems)))


def value_problem(key: str, value: torch.Tensor, expected: torch.Tensor) -> Optional[str]:
    """Why `value` cannot stand in for the model's tensor `expected`, in words; None when it can.

    load_state_dict copies with a cast, so an int32 or bool tensor in a float32 parameter loads without a
    word (truncated weights, mostly zeros), a float64 1e300 becomes inf, and NaN loads as NaN: the export
    would then compare a broken model with itself. A sparse, quantized or meta tensor does not load at all.
    """
    if value.layout != torch.strided or value.is_quantized or value.is_meta:
        kind = "quantized" if value.is_quantized else "meta" if value.is_meta else str(value.layout).split(".")[-1]
        return "is a {} tensor, not a plain one".format(kind)
    if not expected.is_floating_point():   # num_batches_tracked: a counter, unused in eval mode
        if value.is_floating_point() or value.is_complex():
            return "holds {} values where the model has an {} counter".format(dtype_name(value), dtype_name(expected))
        return None
    if not value.is_floating_point():
        return "holds {} values where the model has {} parameters".format(dtype_name(value), dtype_name(expected))
    as_loaded = value.detach().to(expected.dtype).numpy()   # numpy: ~100x less overhead per small tensor
    if not np.isfinite(as_loaded).all():
        if bool(torch.isfinite(value).all()):
            return "holds values beyond the {} range (largest magnitude {:.3g})".format(
                dtype_name(expected), float(value.abs().max()))
        return "holds {}".format(nonfinite_counts(as_loaded))
    if key.endswith("running_var") and (as_loaded < 0).any():
        return "holds negative variances (smallest {:.3g}): BatchNorm would output NaN".format(float(value.min()))
    return None


def dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).replace("torch.", "")


def check_values(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Refuse tensors that would load as wrong numbers (see value_problem), naming the first and counting the rest."""
    expected = model.state_dict()
    problems = []
    for key, value in state.items():
        problem = value_problem(key, value, expected[key])
        if problem:
            problems.append((key, problem))
    if problems:
        key, problem = problems[0]
        more = ""
        if len(problems) > 1:
            more = "; {} more unusable tensor{} ({})".format(len(problems) - 1, "" if len(problems) == 2 else "s",
                                                            name_some([k for k, _ in problems[1:]]))
        raise UserError("checkpoint tensor {} {}{}".format(key, problem, more))


def load_checkpoint(model: nn.Module, path: str, preset: str = "") -> nn.Module:
    """Load an official-format checkpoint into `model` strictly; raise UserError if it does not fit."""
    state = official_to_model_keys(read_state_dict(path))
    check_checkpoint_fits_preset(model, state, preset)
    check_values(model, state)
    full = dict(state)
    for key, value in model.state_dict().items():
        full.setdefault(key, value)   # only num_batches_tracked can be absent after the fit check
    model.load_state_dict(full, strict=True)
    return model
