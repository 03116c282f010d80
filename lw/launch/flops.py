"""Model FLOPs per trained token, for throughput plans and MFU (no imports beyond the standard library)."""

from __future__ import annotations


def train_flops_per_token(hf_config, total_params: int, embedding_params: int, seq_len: int) -> float:
    """Forward + backward FLOPs per token as MFU counts them (activation recomputation not counted):
    6 x (parameters in matrix multiplies) + 6 x L x s x n_h x d for causal self-attention over s tokens
    (QK^T and AV: 2 x 2 x (s/2) x n_h x d per layer forward, x3 with the backward pass)."""
    matmul_params = total_params - embedding_params  # the input embedding is a lookup
    if getattr(hf_config, "tie_word_embeddings", False):
        matmul_params += embedding_params  # the tied output layer is a matrix multiply
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    attention = 6 * hf_config.num_hidden_layers * seq_len * heads * head_dim
    return float(6 * matmul_params + attention)
