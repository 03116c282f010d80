"""Packing tokenized samples into rows of `data.pack_length` tokens, best fit decreasing.

TRL's `pack_dataset(strategy="bfd")` does the binning. Two of its habits would lose data, so they
are ruled out here: it packs each `map` batch (1,000 rows) on its own, leaving a part-filled pack
per batch (so the whole set goes in as one batch), and it truncates sequences longer than the pack
without a word (so over-long samples are dropped or truncated, and counted, before packing). The
packs are then checked to hold every sequence exactly once.

Each pack keeps `seq_lengths`, from which the collator restarts position ids per sequence; with
no attention mask and no cache, transformers then keeps packed sequences from attending to each
other (tests/test_packing.py and, per attention implementation, tests/test_attention.py check the
logits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow.compute as pc
import torch
from datasets import Dataset
from trl import pack_dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from lw.data.tokenization import arrow_column, row_lengths


def pack(dataset: Dataset, pack_length: int) -> Dataset:
    """Rows of at most `pack_length` tokens (input_ids, completion_mask, seq_lengths)."""
    lengths = row_lengths(dataset)
    if len(lengths) == 0:
        raise ValueError("nothing to pack: no sample is left")
    if lengths.max() > pack_length or lengths.min() == 0:
        raise ValueError(f"sequences to pack must hold 1 to {pack_length} tokens, got {lengths.min()} to "
                         f"{lengths.max()}: drop or truncate over-long samples first (data.overlong)")
    packed = pack_dataset(dataset.select_columns(["input_ids", "completion_mask"]), pack_length, strategy="bfd",
                          map_kwargs={"batch_size": None, "desc": f"packing to {pack_length} tokens"})
    packed_lengths = pc.list_flatten(arrow_column(packed, "seq_lengths")).to_numpy(zero_copy_only=False)
    if len(packed_lengths) != len(lengths) or not np.array_equal(np.sort(packed_lengths), np.sort(lengths)):
        raise RuntimeError(f"packing lost samples: {len(lengths)} sequences in, {len(packed_lengths)} packed")
    return packed


def packing_summary(pack_lengths: Sequence[int], slot_length: int) -> dict:
    """Tokens that train against the tokens the rows reserve (each row holds `slot_length`)."""
    real = int(np.sum(pack_lengths))
    slots = len(pack_lengths) * slot_length
    return {"packs": len(pack_lengths), "real_tokens": real, "slot_tokens": slots,
            "efficiency": round(real / slots, 6) if slots else 0.0}


def next_fit_pack_lengths(lengths: Sequence[int], pack_length: int) -> list[int]:
    """The packs of the official packer (for comparison): fill in order until the next sample does
    not fit, then open a new pack. (The official script also drops its last pack; this keeps it.)"""
    packs: list[int] = []
    current = 0
    for n in lengths:
        if n > pack_length:
            raise ValueError(f"a sequence of {n} tokens does not fit a pack of {pack_length}")
        if current + n > pack_length:
            packs.append(current)
            current = 0
        current += n
    if current:
        packs.append(current)
    return packs


@dataclass
class PackCollator(DataCollatorForLanguageModeling):
    """TRL's padding-free collator (all packs of a batch in one row, position ids restarting per
    sequence), which also says which pack each token came from, for `loss_weighting=pack_mean`."""

    padding_free: bool = True

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        lengths = torch.tensor([len(example["input_ids"]) for example in examples])
        pack_ids = torch.repeat_interleave(torch.arange(len(examples)), lengths)
        width = batch["input_ids"].shape[1]
        batch["pack_ids"] = torch.nn.functional.pad(pack_ids, (0, width - len(pack_ids)), value=-1)[None]
        return batch
