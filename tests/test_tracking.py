import pytest

from lw.tracking import Tracker, redact, start_tracker


def test_redact_hides_secret_values_at_any_depth():
    config = {"judge": {"api_key": "sk-123", "base_url": "http://x"}, "hf_token": "hf_abc",
              "list": [{"password": "p"}], "tokenizer": {"path": "t"}, "max_tokens": 5, "pad_token": "<pad>", "WANDB_API_KEY": "k", "no_secret": None}
    out = redact(config)
    assert out["judge"] == {"api_key": "<redacted>", "base_url": "http://x"}
    assert out["hf_token"] == "<redacted>" and out["list"] == [{"password": "<redacted>"}]
    assert "sk-123" not in str(out) and "hf_abc" not in str(out)
    assert out["max_tokens"] == 5
    assert out["no_secret"] is None
    assert out["pad_token"] == "<pad>" and out["WANDB_API_KEY"] == "<redacted>"


@pytest.mark.parametrize("key", ["credentials", "credential", "password", "passwd", "hf_token", "hub_token",
                                 "access_token", "auth_token", "bearer_token", "api_token", "token", "secret",
                                 "client_secret", "apikey", "API_KEY", "openai_api_key"])
def test_redact_hides_every_secret_looking_key(key):
    assert redact({"a": {key: "s3cr3t"}}) == {"a": {key: "<redacted>"}}


@pytest.mark.parametrize("key", ["max_tokens", "pad_token", "eos_token", "tokenizer", "api_key_env", "tokens",
                                 "secret_env", "password_file_env"])
def test_redact_keeps_keys_that_only_look_alike(key):
    assert redact({key: "v"}) == {key: "v"}


def test_only_rank_zero_tracks(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "1")

    class Cfg:
        kind = "wandb"

    assert type(start_tracker(Cfg, {}, tmp_path, "n", "g")) is Tracker
