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

The per-token NLL comes from one of two places, and one weighting (`weighted_loss`) takes either:
TRL's fused LM head (the trainer's default, `trainer.fused_lm_head: true`), which projects the last
hidden states through the output layer in tiles of 4,096 tokens x 32,768 vocabulary entries and
returns each position's log-probability of its label without ever holding the (tokens x vocabulary)
logits; or the full logits (`lm_loss`, `trainer.fused_lm_head: false`), which at 32k tokens and
GLM-4's 151,552-entry vocabulary cost about 46 GiB a rank with their fp32 copy and log-softmax.
"""

from __future__ import annotations

from enum import StrEnum

import torch
import torch.nn.functional as F

from lw.errors import UserError


class LossWeighting(StrEnum):
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


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each position's fp32 NLL of its next label ([batch, time - 1]) from full (batch x time x
    vocabulary) logits: the plain path, which holds the logits, their fp32 copy and the log-softmax."""
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:].clamp(min=0), reduction="none")


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, **weighting) -> torch.Tensor:
    """`weighted_loss` from full logits."""
    return weighted_loss(token_nll(logits, labels), labels, **weighting)


def weighted_loss(nll: torch.Tensor, labels: torch.Tensor, *, weighting="token_mean", eos_token_id: int | None = None,
                  eos_weight: float = 1.0, num_items_in_batch: int | torch.Tensor | None = None,
                  position_ids: torch.Tensor | None = None, pack_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over the items of this batch of their mean (weighted) next-token NLL, divided by
    `num_items_in_batch` (the global count), or by this batch's item count when it is None.

    `nll` ([batch, time - 1], fp32) is each position's NLL of its next label, labels[:, 1:]: from
    full logits (`lm_loss`) or from the negated log-probabilities of TRL's fused LM head, which
    never builds the logits (lw/train/sft.py). Positions without a target are ignored."""
    weighting = _weighting(weighting)
    targets = labels[:, 1:]
    nll = nll.float()
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
