"""Evaluations: scores of a model on a fixed probe set, with per-item values for paired tests."""
