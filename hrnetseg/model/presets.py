"""The model variants by name, for the command lines that must not import torch to list them.

Their configuration tables live in `hrnetseg.model.network.PRESETS` (a test keeps the two in step).
Valid Python 3.7, standard library only.
"""
from __future__ import annotations

PRESET_NAMES = ("w48_ocr", "tiny_ocr")   # HRNetV2-W48 + OCR (the Cityscapes model); a small one for tests
DEFAULT_PRESET = "w48_ocr"
# what the exported model (and an .om made from it) takes: normalized float32, or raw RGB uint8 normalized inside
MODEL_INPUT_DTYPES = ("float32", "uint8")
