"""Data for CAGUL: the sample format and its collator (:mod:`cagul.data.samples`); the
synthetic benchmark generator and the MLLMU-Bench / FIUBench loaders will live here too."""

from .samples import REQUIRED_KEYS, VLMCollator, load_image, load_jsonl, validate_sample

__all__ = ["REQUIRED_KEYS", "VLMCollator", "load_image", "load_jsonl", "validate_sample"]
