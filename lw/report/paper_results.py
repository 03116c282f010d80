"""The paper's reported LongBench-Write numbers, the one place `lw-compare` takes them from.

Source: Bai et al., "LongWriter: Unleashing 10,000+ Word Generation from Long Context LLMs"
(arXiv 2408.07055, ICLR 2025), the LongBench-Write results table. Only numbers with a source at
hand are here; every other cell stays blank in the comparison (the per-subset scores, and any
number for LongWriter-8B, were not found in a copy of the table that could be read).

The released checkpoints map to the paper's names by the official README (THUDM/LongWriter
README.md line 34): THUDM/LongWriter-glm4-9b is the paper's "LongWriter-9B-DPO",
THUDM/LongWriter-llama3.1-8b its "LongWriter-8B".
"""

from __future__ import annotations

SOURCE = "arXiv 2408.07055, LongBench-Write results table"

# The paper's model name -> {(subset, metric): value}; subset "overall" or a lw.eval.benchmarks.SUBSETS name.
REPORTED: dict[str, dict[tuple[str, str], float]] = {
    "LongWriter-9B-DPO": {("overall", "S"): 84.0},
    "LongWriter-9B": {("overall", "S"): 80.5, ("overall", "S_l"): 78.6, ("overall", "S_q"): 82.3},
    "LongWriter-8B": {},
    "GLM-4-9B-chat": {("overall", "S"): 68.3},
    "Llama-3.1-8B-Instruct": {("overall", "S"): 60.3, ("overall", "S_l"): 50.0, ("overall", "S_q"): 70.6},
}

# lw's model config names (conf/model/) -> the paper's names.
PAPER_NAME = {
    "longwriter_glm4_9b": "LongWriter-9B-DPO",
    "longwriter_llama3_1_8b": "LongWriter-8B",
    "glm4_9b_chat": "GLM-4-9B-chat",
    "llama3_1_8b_instruct": "Llama-3.1-8B-Instruct",
}


def reported(model_name: str) -> tuple[str, dict[tuple[str, str], float]] | None:
    """(the paper's name, its reported numbers) for one of lw's model configs, or None."""
    paper = PAPER_NAME.get(model_name)
    return (paper, REPORTED.get(paper, {})) if paper else None
