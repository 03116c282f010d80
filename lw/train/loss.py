"""Causal-LM loss with a heavier end-of-sequence token.

A model writes long only if it learns *when* to stop; in a long answer the single EOS token is
one target among thousands, so a small model learns it late or never (MINIATURE.md weights it x5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_lm_loss(logits: torch.Tensor, labels: torch.Tensor, eos_token_id: int, eos_weight: float,
                     num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """Sum of weighted next-token NLLs divided by the number of target tokens.

    `num_items_in_batch` is the target-token count of the whole accumulated (and, with
    `average_tokens_across_devices`, data-parallel) batch, as `transformers.Trainer` passes it,
    so the result is a token mean over the global batch, not a mean of per-step means.
    """
    targets = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets.clamp(min=0), reduction="none")
    mask = targets != -100
    weights = mask.float() + (eos_weight - 1.0) * (mask & (targets == eos_token_id)).float()
    denominator = mask.sum() if num_items_in_batch is None else num_items_in_batch
    return (nll * weights).sum() / torch.as_tensor(denominator, device=nll.device).clamp(min=1)
