"""Helpers for tests and parity checks: checkpoints in the official file format, with random weights.

An official Cityscapes checkpoint is saved from a training wrapper that holds the model and the loss:
every model key sits behind `model.`, the loss's class weights appear as `loss.criterion.weight`,
some files wrap the dict as {"state_dict": ...}, and older ones name the aux head `last_layer`.
"""
from __future__ import annotations

import os

import torch

from hrnetseg.model.network import build_model, init_random_weights

LOSS_WEIGHT_KEY = "loss.criterion.weight"
MODEL_PREFIX = "model."


def official_state_dict(preset: str = "w48_ocr", seed: int = 0, legacy_last_layer: bool = False) -> dict:
    """Our seeded random-weight model's state dict, keyed as an official checkpoint stores it."""
    model = init_random_weights(build_model(preset), seed)
    state = {}
    for key, value in model.state_dict().items():
        if legacy_last_layer and key.startswith("aux_head."):
            key = "last_layer." + key[len("aux_head."):]
        state[MODEL_PREFIX + key] = value.detach().clone()
    # Per-class loss weights (made-up values near 1): not model weights, loaders must drop them.
    state[LOSS_WEIGHT_KEY] = torch.linspace(0.8, 1.2, model.config.num_classes)
    return state


def write_official_checkpoint(path, preset: str = "w48_ocr", seed: int = 0, wrapped: bool = False,
                              legacy_last_layer: bool = False) -> str:
    """Write an official-format checkpoint of `preset` with init_random_weights(seed); return the path.

    wrapped=True stores {"state_dict": ...}; legacy_last_layer=True names aux_head `last_layer`.
    """
    state = official_state_dict(preset, seed, legacy_last_layer)
    torch.save({"state_dict": state} if wrapped else state, os.fspath(path))
    return os.fspath(path)
