"""Continuous batching in generation=hf (lw.eval.continuous) on the tiny model: the engine's greedy
tokens equal plain `generate`, answers are saved as they end, a resumed sampled run equals an
uninterrupted one, and a request the KV cache cannot hold is refused before any work."""

import json
import os

import pytest
import torch
from omegaconf import OmegaConf, ValidationError

from lw.config import GenerationConfig, ModelConfig, TinyModelConfig
from lw.errors import UserError
from lw.eval.continuous import Memory, Request, generate_continuous, mix32
from lw.eval.generate import HfBackend, generate, hf_generation_config
from lw.models import build_model, build_tokenizer


@pytest.fixture(scope="module")
def tiny():
    model_cfg = OmegaConf.structured(ModelConfig(name="tiny", chat_format="llama3_1", dtype="float32",
                                                 tiny=TinyModelConfig()))
    tokenizer = build_tokenizer(model_cfg, os.environ["LW_CACHE"])
    return model_cfg, tokenizer, build_model(model_cfg, tokenizer, seed=0)


def items(n, words=(3, 40, 9, 25, 1, 14)):
    return [{"id": f"q{i}", "prompt": "Write about rivers " + "and lakes " * words[i % len(words)], "length": 50}
            for i in range(n)]


def gen_cfg(**kw):
    return OmegaConf.structured(GenerationConfig(**{**dict(max_new_tokens=10, batch_size=3, temperature=0.0), **kw}))


def test_greedy_tokens_equal_generate_per_request_for_mixed_lengths(tiny):
    _, tokenizer, model = tiny
    prompts = [tokenizer.encode("rivers " * n) for n in (1, 30, 7, 12)]
    lengths = [17, 3, 9, 12]
    stop = [tokenizer.eos_token_id]
    expected = []
    for ids, n in zip(prompts, lengths):
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n, eos_token_id=stop,
                             pad_token_id=tokenizer.pad_token_id)
        expected.append(out[0, len(ids):].tolist())
    requests = [Request(f"r{i}", ids, n) for i, (ids, n) in enumerate(zip(prompts, lengths))]
    got, order = {}, []

    def finished(request, ids):
        got[request.id] = ids
        order.append(request.id)

    config = hf_generation_config(gen_cfg(), stop, tokenizer.pad_token_id)
    memory = Memory(concurrency=4, block_size=16, max_batch_tokens=64)
    assert generate_continuous(model, requests, config, memory, 0, finished) == []
    assert [got[f"r{i}"] for i in range(4)] == expected
    assert order[0] == "r1"  # 3 tokens: saved first though queued second


def test_answers_are_saved_as_they_end_and_greedy_matches_static_batches(tmp_path, tiny):
    model_cfg, tokenizer, model = tiny
    # A context of 96 tokens caps each item's max_new_tokens by its own prompt: the long prompts end first.
    short_context = build_model(OmegaConf.merge(model_cfg, {"tiny": {"max_position_embeddings": 96}}), tokenizer,
                                seed=0)
    backend = HfBackend(short_context, tokenizer, model_cfg.chat_format, gen_cfg(max_new_tokens=64), seed=0)
    rows = generate(backend, items(6), tmp_path / "continuous.jsonl")
    saved = [json.loads(line)["id"] for line in (tmp_path / "continuous.jsonl").read_text().splitlines()]
    assert sorted(saved) == sorted(r["id"] for r in rows) and saved != [r["id"] for r in rows]
    assert saved[0] == "q1"  # the longest prompt, so the fewest new tokens
    static = HfBackend(model, tokenizer, model_cfg.chat_format, gen_cfg(batching="static"), seed=0)
    continuous = HfBackend(model, tokenizer, model_cfg.chat_format, gen_cfg(), seed=0)
    assert generate(continuous, items(6), tmp_path / "c.jsonl") == generate(static, items(6), tmp_path / "s.jsonl")


def test_a_resumed_sampled_run_equals_an_uninterrupted_one(tmp_path, tiny):
    model_cfg, tokenizer, model = tiny
    cfg = gen_cfg(temperature=1.0, max_new_tokens=8)
    backend = HfBackend(model, tokenizer, model_cfg.chat_format, cfg, seed=0)
    whole = generate(backend, items(6), tmp_path / "whole.jsonl")
    partial = tmp_path / "resumed.jsonl"
    generate(backend, [items(6)[i] for i in (1, 4)], partial)  # killed after two items, not the first two
    assert generate(backend, items(6), partial) == whole
    one_at_a_time = HfBackend(model, tokenizer, model_cfg.chat_format, gen_cfg(temperature=1.0, max_new_tokens=8,
                                                                              batch_size=1), seed=0)
    assert generate(one_at_a_time, items(6), tmp_path / "alone.jsonl") == whole
    other_seed = HfBackend(model, tokenizer, model_cfg.chat_format, cfg, seed=1)
    assert generate(other_seed, items(6), tmp_path / "other.jsonl") != whole  # sampling, not greedy


def test_seeded_sampling_follows_the_warped_distribution(tiny):
    """The per-request Gumbel-max draw samples softmax(scores / temperature): a frequency check."""
    from lw.eval.continuous import SeededSampling

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    sampler = SeededSampling({})
    draws = torch.tensor([int(sampler(logits, torch.tensor([mix32(k) >> 1], dtype=torch.int32)).argmax())
                          for k in range(4000)])
    frequencies = torch.bincount(draws, minlength=4).float() / len(draws)
    assert torch.allclose(frequencies, logits.softmax(-1)[0], atol=0.03)


def test_a_request_the_kv_cache_cannot_hold_is_a_user_error(tiny):
    model_cfg, tokenizer, model = tiny
    backend = HfBackend(model, tokenizer, model_cfg.chat_format,
                        gen_cfg(max_new_tokens=64, kv_cache_blocks=2, kv_block_size=16), seed=0)
    with pytest.raises(UserError, match=r"id q\d needs \d+ prompt \+ 64 new tokens but the KV cache holds 32 tokens"):
        backend.generate(items(2), lambda item, text: None)
    with pytest.raises(ValidationError, match=r"Invalid value 'dynamic', expected one of \[continuous, static\]"):
        gen_cfg(batching="dynamic")  # generation.batching is typed: refused when the config is composed

