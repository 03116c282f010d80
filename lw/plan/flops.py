"""Model FLOPs of training, for throughput plans and MFU (no imports beyond the standard library).

Conventions (forward + backward, the backward pass counted as twice the forward; activation
recomputation is not counted, as MFU does not count it):
- matrix multiplies: 6 FLOPs per parameter per token (2 forward, 4 backward). The input embedding
  is a lookup and does not count; a tied output layer reuses it as a matrix multiply and does.
- attention: each (query, key) pair a causal mask lets through costs, per layer and head of width
  d, 2d FLOPs for its score (QK^T) and 2d for weighting its value (AV): 4 x n_h x d per layer
  forward, 12 x L x n_h x d forward + backward. A sample of l tokens has l(l+1)/2 such pairs (each
  token sees itself and those before it); a pack of samples has the sum over its samples, since a
  padding-free pack's samples do not attend to each other. What an sdpa kernel spends on the pairs
  its mask hides is waste, not model FLOPs (lw/plan/attention.py prices it separately).
"""

from __future__ import annotations

from collections.abc import Iterable


def matmul_flops_per_token(hf_config, total_params: int, embedding_params: int) -> float:
    """6 x the parameters that take part in matrix multiplies."""
    matmul_params = total_params - embedding_params  # the input embedding is a lookup
    if getattr(hf_config, "tie_word_embeddings", False):
        matmul_params += embedding_params  # the tied output layer is a matrix multiply
    return float(6 * matmul_params)


def attention_flops_per_pair(hf_config) -> float:
    """Forward + backward FLOPs of one causal (query, key) pair over all layers and heads."""
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    return float(3 * 4 * hf_config.num_hidden_layers * heads * head_dim)


def causal_pairs(sample_lengths: Iterable) -> int:
    """(query, key) pairs of causal attention within each sample: sum of l(l+1)/2. Takes the sample
    lengths of one pack ([l1, l2, ...]) or of a batch of packs ([[l1, l2], [l3], ...])."""
    total = 0
    for n in sample_lengths:
        if isinstance(n, Iterable):
            total += causal_pairs(n)
        else:
            total += int(n) * (int(n) + 1) // 2
    return total


def _tokens(sample_lengths: Iterable) -> int:
    return sum(_tokens(n) if isinstance(n, Iterable) else int(n) for n in sample_lengths)


def train_flops(hf_config, total_params: int, embedding_params: int, sample_lengths: Iterable) -> float:
    """Forward + backward FLOPs of training on a pack (or a batch of packs) of samples with these
    lengths: every token through the matrix multiplies, attention within each sample only."""
    lengths = list(sample_lengths)
    return (matmul_flops_per_token(hf_config, total_params, embedding_params) * _tokens(lengths)
            + attention_flops_per_pair(hf_config) * causal_pairs(lengths))


def train_flops_per_token(hf_config, total_params: int, embedding_params: int, seq_len: int) -> float:
    """Forward + backward FLOPs per token of one sample of `seq_len` tokens (0: matrix multiplies only)."""
    if seq_len == 0:
        return matmul_flops_per_token(hf_config, total_params, embedding_params)
    return train_flops(hf_config, total_params, embedding_params, [seq_len]) / seq_len
