"""Evaluation: benchmark items -> generation (resumable) -> length scores -> files and metrics."""
