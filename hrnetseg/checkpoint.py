"""Reading the official checkpoints strictly, so a wrong or truncated file is refused, not exported.

Official files come from a training wrapper: keys behind `model.`, a `loss.criterion.weight` entry,
sometimes wrapped as {"state_dict": ...}, older ones naming the aux head `last_layer`.
"""
from __future__ import annotations

import pickle
import warnings
from typing import Dict, List, Mapping

import torch
from torch import nn

from .cli import UserError
from .files import require_file

SHOW_KEYS = 3


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """torch.load with weights_only=True, unwrapped to a flat {name: tensor} dict."""
    require_file(path, "checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError("{} is not a tensors-only PyTorch checkpoint (refused by weights_only loading: {})"
                        .format(path, first_line(exc)))
    except Exception as exc:  # any parse failure of a foreign, truncated or garbled file
        raise UserError("{} is not a readable PyTorch checkpoint (truncated or another format: {})"
                        .format(path, first_line(exc)))
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise UserError("{} holds no state dict (found {})".format(path, type(obj).__name__))
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise UserError("{} is not a state dict: {} entries are not tensors ({})".format(
            path, len(not_tensors), name_some(not_tensors)))
    return dict(obj)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def official_to_model_keys(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Strip `model.`/`module.` prefixes, drop `loss.*`, rename `last_layer` to `aux_head`."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith("loss."):
            continue
        if key.startswith("last_layer."):
            key = "aux_head." + key[len("last_layer."):]
        out[key] = value
    return out


def name_some(keys: List[str]) -> str:
    shown = ", ".join(keys[:SHOW_KEYS])
    return shown + (", ..." if len(keys) > SHOW_KEYS else "")


def check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], preset: str = "") -> None:
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


def load_checkpoint(model: nn.Module, path: str, preset: str = "") -> nn.Module:
    """Load an official-format checkpoint into `model` strictly; raise UserError if it does not fit."""
    state = official_to_model_keys(read_state_dict(path))
    check_fits(model, state, preset)
    full = dict(state)
    for key, value in model.state_dict().items():
        full.setdefault(key, value)   # only num_batches_tracked can be absent after check_fits
    model.load_state_dict(full, strict=True)
    return model
