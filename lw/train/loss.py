"""Causal-LM loss with a choice of weighting, and a heavier end-of-sequence token.

Weightings (`trainer.loss_weighting`); an *item* is what weighs the same:
- token_mean: every target token of the global batch: a 20k-token answer packed with fifty short
  ones keeps its 20k shares of the gradient.
- sequence_mean: every sequence (a conversation; in a pack, the stretch between position-id
  restarts). LongAlign's weighting, which the LongWriter training README points to for packing.
- pack_mean: every pack (row): the mean over its target tokens, then the mean over packs.
- pack_sequences_over_30: what the released LongWriter training code computes with --pack_loss
  (docs/science.md section 4 has file and line): each pack's mean over its target tokens, times
  the number of its sequences that have target tokens, divided by 30 (PACK_SEQUENCES_DIVISOR);
  then the mean over packs, as DeepSpeed's mean over ranks and accumulation steps gives with the
  official one pack per micro-batch. Items are packs, so it is exact across gradient accumulation
  and ranks like pack_mean.

The loss of a micro-batch is the sum of its items' losses divided by the number of items in the
whole global batch (all gradient-accumulation micro-batches and, with
`average_tokens_across_devices`, all data-parallel ranks), which the trainer counts up front as
`num_items_in_batch`. Summed over micro-batches and ranks, that is the exact mean over the global
batch, not a mean of per-step means.

A model writes long only if it learns *when* to stop; in a long answer the single EOS token is
one target among thousands, so a small model learns it late or never (docs/miniature.md weights it x5).
Its weight multiplies its token's loss inside whichever mean is chosen.
"""

from __future__ import annotations

from enum import Enum

import torch
import torch.nn.functional as F

from lw.config import option_name
from lw.errors import UserError


class LossWeighting(str, Enum):
    """`trainer.loss_weighting` of trainer=sft (the weightings above)."""

    token_mean = "token_mean"
    sequence_mean = "sequence_mean"
    pack_mean = "pack_mean"
    pack_sequences_over_30 = "pack_sequences_over_30"


WEIGHTINGS = tuple(w.value for w in LossWeighting)
# The released training code's fixed divisor: DataCollatorForLMPackDataset sets a pack's loss
# weight to (sum of its per-sequence weights) / 30 (THUDM/LongWriter train/main.py line 68).
PACK_SEQUENCES_DIVISOR = 30
_PACK_ITEMS = ("pack_mean", "pack_sequences_over_30")


def _weighting(weighting) -> str:
    weighting = option_name(weighting)
    if weighting not in WEIGHTINGS:
        raise UserError(f"loss weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    return weighting


def item_ids(labels: torch.Tensor, weighting, position_ids: torch.Tensor | None = None,
             pack_ids: torch.Tensor | None = None) -> torch.Tensor:
    """For every position of `labels` ([batch, time]), the index of the item it belongs to.

    Sequences start where position ids restart at 0 (packed rows) or at each row; packs are the
    collator's `pack_ids` (padding-free rows hold several packs) or the rows.
    """
    weighting = _weighting(weighting)
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)
    if weighting == "token_mean":
        return torch.arange(labels.numel(), device=labels.device).view_as(labels)
    if weighting in _PACK_ITEMS:
        return rows if pack_ids is None else pack_ids.to(labels.device).expand_as(labels)
    if position_ids is None:
        return rows
    starts = position_ids.to(labels.device).expand_as(labels) == 0
    return (starts.flatten().cumsum(0) - 1).view_as(labels)


def count_items(labels: torch.Tensor, weighting, position_ids: torch.Tensor | None = None,
                pack_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Items with at least one target token (targets are labels[:, 1:] != -100, as the loss shifts)."""
    targets = labels[:, 1:] != -100
    ids = item_ids(labels, weighting, position_ids, pack_ids)[:, 1:][targets]
    return torch.unique(ids).numel() * torch.ones((), dtype=torch.long, device=labels.device)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, *, weighting="token_mean", eos_token_id: int | None = None,
            eos_weight: float = 1.0, num_items_in_batch: int | torch.Tensor | None = None,
            position_ids: torch.Tensor | None = None, pack_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over the items of this batch of their mean (weighted) next-token NLL, divided by
    `num_items_in_batch` (the global count), or by this batch's item count when it is None."""
    weighting = _weighting(weighting)
    targets = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets.clamp(min=0), reduction="none")
    mask = targets != -100
    weights = mask.float()
    if eos_token_id is not None and eos_weight != 1.0:
        weights = weights + (eos_weight - 1.0) * (mask & (targets == eos_token_id)).float()
    token_losses = (nll * weights)[mask]
    if weighting == "token_mean":
        item_losses = token_losses
        local_items = mask.sum()
    else:
        ids = item_ids(labels, weighting, position_ids, pack_ids)[:, 1:][mask]
        _, ids = torch.unique(ids, return_inverse=True)  # 0..n-1 over the items holding targets
        sums = torch.zeros(int(ids.max()) + 1 if ids.numel() else 0, device=nll.device).index_add(0, ids, token_losses)
        counts = torch.zeros_like(sums).index_add(0, ids, torch.ones_like(token_losses))
        item_losses = sums / counts
        if weighting == "pack_sequences_over_30":
            item_losses = item_losses * _sequences_per_item(labels, mask, ids, position_ids) / PACK_SEQUENCES_DIVISOR
        local_items = torch.tensor(len(sums), device=nll.device)
    denominator = local_items if num_items_in_batch is None else num_items_in_batch
    return item_losses.sum() / torch.as_tensor(denominator, device=nll.device).clamp(min=1)


def _sequences_per_item(labels: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor,
                        position_ids: torch.Tensor | None) -> torch.Tensor:
    """For each item (pack) of `ids` (0..n-1 over the target positions), how many sequences hold a
    target in it; a sequence without target tokens is not counted, as in the official weights."""
    sequences = item_ids(labels, "sequence_mean", position_ids)[:, 1:][mask]
    pairs = torch.unique(torch.stack([ids, sequences]), dim=1)
    return torch.bincount(pairs[0], minlength=int(ids.max()) + 1 if ids.numel() else 0).to(torch.float32)
