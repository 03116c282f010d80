"""Benchmark items: each is {"id", "prompt", "length"} plus optional fields ("type", "language")."""

from __future__ import annotations

from lw.data import toy


def toy_ruler_items(bench_cfg) -> list[dict]:
    """The toy analog of LongWrite-Ruler: each requested length x topic x sample."""
    items = []
    for length in bench_cfg.lengths:
        for topic in bench_cfg.topics:
            for k in range(bench_cfg.samples_per_prompt):
                items.append({"id": f"{length}-{topic}-{k}", "length": int(length), "language": "en",
                              "prompt": toy.PROMPT_TEMPLATES[0].format(n=length, topic=topic)})
    return items


def load_items(bench_cfg) -> list[dict]:
    if bench_cfg.kind == "toy_ruler":
        items = toy_ruler_items(bench_cfg)
    else:
        raise ValueError(f"unknown benchmark kind {bench_cfg.kind!r}")
    return items[: bench_cfg.limit] if bench_cfg.limit else items
