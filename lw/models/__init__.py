"""Models and tokenizers: the real hub models and the tiny CPU stand-in, one code path.

Loading lives in lw/models/loading.py, the choice of attention implementation in
lw/models/attention.py; their names are re-exported here for the code that imports them from
`lw.models`.
"""

from lw.models.attention import attention_implementation, flash_attention_installed, local_device, use_attention
from lw.models.loading import (
    DTYPES,
    apply_config_overrides,
    build_model,
    build_tokenizer,
    checkpoint_config,
    load_pretrained,
    model_config,
    parameter_counts,
)

__all__ = ["DTYPES", "apply_config_overrides", "attention_implementation", "build_model", "build_tokenizer",
           "checkpoint_config", "flash_attention_installed", "load_pretrained", "local_device", "model_config",
           "parameter_counts", "use_attention"]
