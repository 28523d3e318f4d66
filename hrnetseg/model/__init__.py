"""The network and everything that makes or reads its weights: HRNetV2 + OCR (network), presets, reading
the official checkpoint (checkpoint), export to ONNX (export), seeded random weights in the official format
(random_weights). Needs torch (presets alone does not).
"""
