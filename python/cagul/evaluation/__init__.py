"""Evaluation runners: :mod:`cagul.evaluation.diagnostics` (the demo's and ``cagul eval``'s
per-split generation / likelihood diagnostics)."""
