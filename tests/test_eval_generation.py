"""Generation backends: openai against a real loopback server, hf on the tiny model; both resume."""

import json
import re

import pytest
from omegaconf import OmegaConf

from lw.config import GenerationConfig, ModelConfig, TinyModelConfig
from lw.errors import UserError
from lw.eval.generate import GenerationFailed, HfBackend, OpenAIBackend, VllmBackend, generate
from lw.models import build_model, build_tokenizer
from lw.testing.openai_server import OpenAIServer, Reply, user_text
from lw.words import count_words


def items(n):
    return [{"id": str(i), "prompt": f"Write a {10 * (i + 1)}-word note about rivers.", "length": 10 * (i + 1)}
            for i in range(n)]


def writer(body, attempt):
    """Writes exactly the asked number of words; fails on request for ids marked in the prompt."""
    text = user_text(body)
    if "FLAKY" in text and attempt == 1:
        return Reply(status=429)
    if "BROKEN" in text:
        return Reply(status=500)
    return Reply(" ".join(["river"] * int(re.search(r"(\d+)-word", text).group(1))))


def openai_cfg(server, **kw):
    return OmegaConf.structured(GenerationConfig(**{**dict(
        backend="openai", base_url=server.base_url, model="served-model", api_key_env=None, concurrency=3,
        timeout=5.0, retries=1, max_new_tokens=512), **kw}))


@pytest.mark.slow
def test_openai_backend_generates_appends_and_resumes(tmp_path):
    out = tmp_path / "predictions.jsonl"
    todo = items(6)
    todo[2]["prompt"] += " FLAKY"
    with OpenAIServer(writer) as server:
        backend = OpenAIBackend(openai_cfg(server))
        rows = generate(backend, todo[:4], out)
        assert [r["id"] for r in rows] == ["0", "1", "2", "3"]
        assert [count_words(r["response"]) for r in rows] == [10, 20, 30, 40]
        body = server.requests[0]["body"]
        assert body["model"] == "served-model" and body["temperature"] == 0.5 and body["max_tokens"] == 512
        assert body["messages"] == [{"role": "user", "content": user_text(body)}]
        assert "authorization" not in server.requests[0]["headers"]  # api_key_env=null: no key, not OPENAI_API_KEY
        assert len(server.requests) == 5  # one 429 retried

        # Interrupted while writing: the torn line is dropped and only missing items are requested.
        lines = out.read_text().splitlines(keepends=True)
        out.write_text("".join(lines[:3]) + lines[3][:25])
        torn = json.loads(lines[3])["id"]
        before = server.count()
        rows = generate(backend, todo, out)
        asked = sorted(re.search(r"(\d+)-word", user_text(r["body"])).group(1) for r in server.requests[before:])
        assert asked == sorted([str(10 * (int(torn) + 1)), "50", "60"])
        assert [count_words(r["response"]) for r in rows] == [10, 20, 30, 40, 50, 60]
    saved = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in saved) == [str(i) for i in range(6)]


@pytest.mark.slow
def test_openai_failures_keep_the_finished_and_say_how_to_resume(tmp_path):
    out = tmp_path / "predictions.jsonl"
    todo = items(4)
    todo[1]["prompt"] += " BROKEN"
    with OpenAIServer(writer) as server:
        with pytest.raises(GenerationFailed, match=r"1 of 4 generations failed .* id 1: generation: .*: HTTP 500"
                                                   r".* 3 finished ones are saved"):
            generate(OpenAIBackend(openai_cfg(server)), todo, out)
    assert sorted(json.loads(line)["id"] for line in out.read_text().splitlines()) == ["0", "2", "3"]


def test_openai_backend_needs_a_model_and_its_key(monkeypatch):
    with pytest.raises(ValueError, match="generation.model"):
        OpenAIBackend(OmegaConf.structured(GenerationConfig(backend="openai", base_url="http://127.0.0.1:9/v1")))
    monkeypatch.delenv("LW_TEST_GEN_KEY", raising=False)
    with pytest.raises(ValueError, match="generation.api_key_env names LW_TEST_GEN_KEY"):
        OpenAIBackend(OmegaConf.structured(GenerationConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1",
                                                            api_key_env="LW_TEST_GEN_KEY")))
    with pytest.raises(ValueError, match="generation.base_url is not set"):
        OpenAIBackend(OmegaConf.structured(GenerationConfig(backend="openai", model="m")))


def test_a_predictions_file_from_another_benchmark_is_refused(tmp_path):
    out = tmp_path / "predictions.jsonl"
    out.write_text(json.dumps({"id": "0", "prompt": "something else", "length": 5, "response": "x"}) + "\n")
    with pytest.raises(ValueError, match="different prompt for id 0"):
        generate(None, items(2), out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import os

    model_cfg = OmegaConf.structured(ModelConfig(name="tiny", chat_format="llama3_1", dtype="float32",
                                                 tiny=TinyModelConfig()))
    tokenizer = build_tokenizer(model_cfg, os.environ["LW_CACHE"])
    return model_cfg, tokenizer, build_model(model_cfg, tokenizer, seed=0)


def test_hf_backend_batches_and_resumes_on_the_tiny_model(tmp_path, tiny):
    model_cfg, tokenizer, model = tiny
    gen_cfg = OmegaConf.structured(GenerationConfig(max_new_tokens=6, batch_size=2))
    backend = HfBackend(model, tokenizer, model_cfg.chat_format, gen_cfg, seed=0)
    out = tmp_path / "predictions.jsonl"
    # A run killed after two items, in the middle of writing the third.
    done = [{**item, "response": "already written"} for item in items(2)]
    out.write_text("".join(json.dumps(r) + "\n" for r in done) + '{"id": "2", "prompt": "Wri')
    rows = generate(backend, items(5), out)
    assert [r["response"] for r in rows[:2]] == ["already written"] * 2
    for row in rows[2:]:
        assert row["response"] and row["response"] != "already written"
        assert len(tokenizer.encode(row["response"], add_special_tokens=False)) <= 6
    saved = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in saved] == ["0", "1", "2", "3", "4"]
    assert generate(backend, items(5), out) == rows  # nothing left to generate


def test_a_resumed_hf_run_samples_what_an_uninterrupted_one_does(tmp_path, tiny):
    model_cfg, tokenizer, model = tiny
    gen_cfg = OmegaConf.structured(GenerationConfig(max_new_tokens=8, batch_size=2, temperature=1.0))
    backend = HfBackend(model, tokenizer, model_cfg.chat_format, gen_cfg, seed=0)
    whole = generate(backend, items(6), tmp_path / "whole.jsonl")
    resumed = tmp_path / "resumed.jsonl"
    generate(backend, items(2), resumed)  # killed after its first batch
    assert generate(backend, items(6), resumed) == whole
    other_seed = HfBackend(model, tokenizer, model_cfg.chat_format, gen_cfg, seed=1)
    assert generate(other_seed, items(6), tmp_path / "other.jsonl") != whole  # sampling, not greedy


def test_vllm_backend_without_vllm_says_how_to_get_it(tiny):
    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    model_cfg, tokenizer, _ = tiny
    with pytest.raises(UserError, match=r"`vllm serve` in vLLM's own environment and use generation=vllm_server"):
        VllmBackend("unused", tokenizer, model_cfg, OmegaConf.structured(GenerationConfig(backend="vllm")))
