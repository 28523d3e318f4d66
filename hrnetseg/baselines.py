"""Moved to hrnetseg.bench.reference (seed_preprocess / seed_postprocess are its reference_preprocess /
reference_postprocess)."""
from .bench.reference import reference_postprocess as seed_postprocess, reference_preprocess as seed_preprocess

__all__ = ["seed_postprocess", "seed_preprocess"]
