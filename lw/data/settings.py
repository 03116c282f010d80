"""The data settings that depend on each other, resolved and checked in one place."""

from __future__ import annotations

from lw.errors import UserError

# Tokens per sample when neither data.max_length nor data.pack_length is set.
DEFAULT_MAX_LENGTH = 1024


def max_length_of(data_cfg) -> int:
    """data.max_length, or when it is null the pack length (a sample may fill a whole pack), else 1024.

    Every reader of the setting goes through here: a fixed default beside a long pack length
    silently dropped exactly the long answers a long-output study is about.
    """
    if data_cfg.max_length is not None:
        return data_cfg.max_length
    return data_cfg.pack_length if data_cfg.pack_length is not None else DEFAULT_MAX_LENGTH


def check_settings(data_cfg) -> None:
    """Fail before any work on settings that cannot go together."""
    if data_cfg.pack_length is not None and max_length_of(data_cfg) > data_cfg.pack_length:
        raise UserError(f"data.max_length ({data_cfg.max_length}) exceeds data.pack_length "
                        f"({data_cfg.pack_length}): a sample must fit a pack")
    if not 0 <= data_cfg.max_drop_share <= 1:
        raise UserError(f"data.max_drop_share={data_cfg.max_drop_share:g} must lie in [0, 1]: the share of the "
                        "samples read that may be dropped before the run stops (1: never stop)")
