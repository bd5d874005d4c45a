"""Held-out evaluation of a driving LLM: answers -> parameter sets -> closed loop -> report."""
