"""Protocol runners: the official evaluation of MLLMU-Bench (:mod:`.mllmu`), FIUBench
(:mod:`.fiubench`) and the synthetic demo benchmark (:mod:`.synthetic`) on any VLM-like
model, with the metric definitions of :mod:`cagul.metrics`."""
