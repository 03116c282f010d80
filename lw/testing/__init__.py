"""Helpers for the project's tests and benchmarks, never used by a run.

- `openai_server`: a loopback OpenAI-compatible HTTP server (POST /v1/chat/completions on 127.0.0.1)
  with scripted replies, standing in for a judge or an API model;
- `hf_serve`: `transformers serve` on loopback serving a local model directory: a real
  OpenAI-compatible server that no one here wrote;
- `benchmark_files`: benchmark-shaped files (LongBench-Write, LongWrite-Ruler, a judge template) for
  a clone that does not have the official ones.
"""
