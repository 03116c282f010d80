"""Training data: sources -> checks -> output-length filter -> (mix) -> tokenization -> packing.

The SFT set is built in lw/data/sft.py; its names are re-exported here for the code that imports
them from `lw.data`. Importing lw.data loads neither datasets nor torch.
"""

from lw.data import toy
from lw.data.settings import check_settings, max_length_of
from lw.data.sft import build_sft_dataset, filter_by_output_words, load_samples, packing_stats

__all__ = ["build_sft_dataset", "check_settings", "filter_by_output_words", "load_samples", "max_length_of",
           "packing_stats", "toy"]
