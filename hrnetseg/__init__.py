"""HRNetV2-W48 + OCR on Cityscapes: export, deploy and evaluate.

Kept import-light on purpose: the Atlas-side steps import this package in a Python that has no torch.
"""

__version__ = "0.1.0"
