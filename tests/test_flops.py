"""Training FLOPs (lw/plan/flops.py) by hand: attention within each sample, causal pairs only,
a tied output layer counted as a matrix multiply; and the planner's use of them."""

from types import SimpleNamespace

from lw.plan.flops import (
    attention_flops_per_pair,
    causal_pairs,
    matmul_flops_per_token,
    train_flops,
    train_flops_per_token,
)

# 2 layers of 4 heads of width 16; 1,000 parameters of which 100 are the input embedding.
UNTIED = SimpleNamespace(num_hidden_layers=2, num_attention_heads=4, head_dim=16, hidden_size=64,
                         tie_word_embeddings=False)
TIED = SimpleNamespace(**{**vars(UNTIED), "tie_word_embeddings": True})


def test_causal_pairs_of_a_pack_and_of_a_batch_of_packs():
    # A sample of l tokens: each token sees itself and those before it, 1 + 2 + ... + l = l(l+1)/2.
    assert causal_pairs([1]) == 1 and causal_pairs([3]) == 6 and causal_pairs([3, 5]) == 6 + 15
    assert causal_pairs([[3, 5], [2]]) == 6 + 15 + 3  # packs of a batch: still per sample
    assert causal_pairs([8]) == 36 < 64  # the causal half (with the diagonal), not the square


def test_train_flops_of_packs_by_hand():
    # matrix multiplies: 6 x (1,000 - 100) per token; a pair: 3 (fwd+bwd) x 4 x 16 x 4 heads x 2 layers = 1,536.
    assert matmul_flops_per_token(UNTIED, 1000, 100) == 6 * 900
    assert attention_flops_per_pair(UNTIED) == 1536
    assert train_flops(UNTIED, 1000, 100, [[3, 5], [2]]) == 5400 * 10 + 1536 * 24
    # One pack of 3 + 5 costs less attention than one sample of 8 (no pairs across samples).
    assert train_flops(UNTIED, 1000, 100, [3, 5]) == 5400 * 8 + 1536 * 21 < train_flops(UNTIED, 1000, 100, [8])
    assert train_flops_per_token(UNTIED, 1000, 100, 4) == (5400 * 4 + 1536 * 10) / 4
    assert train_flops_per_token(UNTIED, 1000, 100, 0) == 5400


def test_a_tied_output_layer_is_a_matrix_multiply():
    # Tied: the embedding's 100 parameters are looked up on the way in and multiplied on the way out.
    assert matmul_flops_per_token(TIED, 1000, 100) == 6 * 1000
    assert train_flops(TIED, 1000, 100, [3, 5]) == 6000 * 8 + 1536 * 21


def test_head_width_from_the_hidden_size_when_the_config_has_none():
    config = SimpleNamespace(num_hidden_layers=3, num_attention_heads=8, head_dim=None, hidden_size=256)
    assert attention_flops_per_pair(config) == 12 * 3 * 8 * 32
