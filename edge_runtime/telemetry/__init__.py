"""Telemetry: latency statistics, process memory, JSON-lines logs and run summaries (torch-free)."""

from .memory import process_memory
from .stats import latency_summary
from .writer import JsonlWriter, json_line, write_json_atomic

__all__ = ["latency_summary", "process_memory", "JsonlWriter", "json_line", "write_json_atomic"]
