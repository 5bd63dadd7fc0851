"""Evaluation: protocol runners reproducing the official evaluation of MLLMU-Bench
(:mod:`.mllmu`), FIUBench (:mod:`.fiubench`) and the synthetic demo benchmark
(:mod:`.synthetic`) on any VLM-like model, with the metric definitions of
:mod:`cagul.metrics`; and :mod:`.diagnostics`, the per-split generation / likelihood
diagnostics of ``cagul eval`` without ``--protocol``."""
