"""Evaluation of a driving LLM on the validation or test split: answers -> parameter sets -> closed loop ->
report (docs/evaluation.md)."""
