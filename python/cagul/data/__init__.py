"""Data for CAGUL: the sample format and its collator (:mod:`cagul.data.samples`), the
benchmark format and the synthetic benchmark reader (:mod:`cagul.data.benchmark`), the
MLLMU-Bench and FIUBench readers (:mod:`cagul.data.mllmu`, :mod:`cagul.data.fiubench`) and
one entry point for all formats (:func:`load_dataset`)."""

from .fiubench import load_fiubench
from .formats import FORMATS, detect_format, load_dataset
from .mllmu import load_mllmu
from .samples import REQUIRED_KEYS, VLMCollator, load_image, load_jsonl, validate_sample

__all__ = [
    "FORMATS",
    "REQUIRED_KEYS",
    "VLMCollator",
    "detect_format",
    "load_dataset",
    "load_fiubench",
    "load_image",
    "load_jsonl",
    "load_mllmu",
    "validate_sample",
]
