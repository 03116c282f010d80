"""Samples the data steps drop or cut are said out loud: data.max_length follows data.pack_length,
every drop is logged with its count and setting, and drops nobody asked for stop the run past
data.max_drop_share."""

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lw.config import DataConfig, LwConfig, ModelConfig, TinyModelConfig
from lw.data import build_sft_dataset, max_length_of
from lw.data.drops import drop_table
from lw.data.preference import build_preference_dataset
from lw.errors import UserError
from lw.models.chat_format import get_chat_format
from lw.models.tiny import tiny_tokenizer

from helpers import compose_lw, run_lw

SHORT = 20  # short samples in each file
LONG_WORDS = 1500  # one word is one token of the tiny tokenizer: over 1024 tokens, under 2048


def conversation(answer: str, prompt: str = "Write about rivers.") -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def write_lines(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def long_file(tmp_path_factory, tokenizer) -> Path:
    """20 short answers and one of about 1,500 tokens."""
    rows = [conversation(f"the quiet river carries the bank {'. ' * (i % 5)}") for i in range(SHORT)]
    rows.append(conversation(" ".join(["river"] * LONG_WORDS)))
    length = len(get_chat_format("llama3_1").tokenize(tokenizer, rows[-1]["messages"])[0])
    assert 1024 < length < 2048, length
    return write_lines(tmp_path_factory.mktemp("data") / "train.jsonl", rows)


def prepare(path: Path, run_dir: Path, *overrides: str, check: bool = True):
    return run_lw("task=prepare", "data=jsonl", f"data.path={path}", "model=tiny", "logger=none",
                  f"hydra.run.dir={run_dir}", *overrides, cwd=run_dir.parent, check=check)


def printed_table(stdout: str) -> dict[str, list[str]]:
    """The rows of the table task=prepare prints: label -> [count, share]."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == ["data", "samples", "share"])
    rows = {}
    for line in lines[start + 1:]:
        if not line or line.startswith(("[", "lw:")):  # a log line or lw's last word: the table is over
            break
        *label, count, share = line.split()
        rows[" ".join(label)] = [count, share]
    return rows


@pytest.mark.slow
def test_max_length_follows_pack_length_and_prepare_prints_what_it_kept(long_file, tmp_path):
    # The long sample fits a pack of 2048: with max_length left at a fixed 1024 it was dropped.
    result = prepare(long_file, tmp_path / "packed", "data.pack_length=2048")
    stats = json.loads((tmp_path / "packed" / "packing_stats.json").read_text())
    assert stats["sequences_in"] == stats["sequences_packed"] == SHORT + 1
    assert stats["sequences_dropped"] == {}
    assert printed_table(result.stdout) == {"read": ["21", "100%"], "kept": ["21", "100%"]}
    assert "WARNING" not in result.stdout + result.stderr


@pytest.mark.slow
def test_over_the_drop_share_lw_stops_naming_the_count_and_the_setting(long_file, tmp_path):
    result = prepare(long_file, tmp_path / "stopped", "data.pack_length=2048", "data.max_length=1024", check=False)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lw: error: data: 1 of 21 samples (4.76%) were dropped, more than data.max_drop_share=0.01")
    assert "1 longer than data.max_length=1024 tokens" in last and last.endswith("set data.max_drop_share=1 to go on")
    assert not (tmp_path / "stopped" / "packing_stats.json").exists()  # stopped before packing


@pytest.mark.slow
def test_an_explicit_max_length_wins_and_max_drop_share_1_goes_on_with_a_warning(long_file, tmp_path):
    result = prepare(long_file, tmp_path / "allowed", "data.pack_length=2048", "data.max_length=1024",
                     "data.max_drop_share=1")
    stats = json.loads((tmp_path / "allowed" / "packing_stats.json").read_text())
    assert stats["sequences_dropped"] == {"overlong": 1} and stats["sequences_packed"] == SHORT
    output = result.stdout + result.stderr
    assert ("[WARNING] - data: 1 of 21 samples (4.76%) are longer than data.max_length=1024 tokens "
            "(data.overlong=drop) and were dropped; raise data.max_length or set data.overlong=truncate") in output
    assert printed_table(result.stdout) == {"read": ["21", "100%"], "kept": ["20", "95.2%"],
                                            "dropped: overlong": ["1", "4.76%"]}


def sft_config(tmp_path, path, **data_fields):
    cfg = OmegaConf.structured(LwConfig)
    cfg.model = ModelConfig(name="tiny", chat_format="llama3_1", dtype="float32", tiny=TinyModelConfig())
    cfg.data = OmegaConf.merge(OmegaConf.structured(DataConfig),
                               {"name": "test", "source": "messages", "path": str(path), **data_fields})
    cfg.cache_dir = str(tmp_path / "cache")
    return cfg


def test_drops_asked_for_never_count_toward_the_share(long_file, tmp_path, tokenizer, caplog):
    # max_output_words=100 drops the long answer: 1 of 21 dropped as asked, over a share of 0.01, and the run goes on.
    caplog.set_level(logging.INFO, logger="lw.data.drops")
    _, stats = build_sft_dataset(sft_config(tmp_path, long_file, max_output_words=100), tokenizer, tmp_path / "run")
    assert stats["dropped_over_max_output_words"] == 1 and stats["sequences_packed"] == SHORT
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "data: 1 of 21 samples (4.76%) have an answer over data.max_output_words=100 words and were "
                 "dropped, as asked")]
    assert "dropped: over_max_output_words (asked for)" in drop_table(stats)


def test_bad_samples_count_per_reason_and_max_drop_share_is_a_share(tmp_path, tokenizer, caplog):
    rows = [conversation(f"the river {'. ' * (i % 3)}") for i in range(97)] + ['{"broken', '{"too', {"messages": []}]
    path = write_lines(tmp_path / "train.jsonl", rows)
    with pytest.raises(UserError) as error:
        build_sft_dataset(sft_config(tmp_path, path, on_bad_sample="drop"), tokenizer, tmp_path / "run")
    message = str(error.value)
    assert message.startswith("data: 3 of 100 samples (3%) were dropped, more than data.max_drop_share=0.01: ")
    assert "2 bad (malformed_json, data.on_bad_sample=drop)" in message
    assert "1 bad (missing_messages, data.on_bad_sample=drop)" in message and "\n" not in message
    caplog.clear()
    _, stats = build_sft_dataset(sft_config(tmp_path, path, on_bad_sample="drop", max_drop_share=0.03), tokenizer,
                                 tmp_path / "run")  # 3 of 100 is not more than 0.03
    assert stats["sequences_packed"] == 97
    assert [r.getMessage().split(" are ")[0] for r in caplog.records] == [
        "data: 2 of 100 samples (2%)", "data: 1 of 100 samples (1%)"]
    for share in (-0.1, 1.5):
        with pytest.raises(UserError, match=rf"data.max_drop_share={share:g} must lie in \[0, 1\]"):
            build_sft_dataset(sft_config(tmp_path, path, max_drop_share=share), tokenizer, tmp_path / "run")


def test_truncation_is_a_warning_and_a_sample_left_without_target_a_drop(tmp_path, tokenizer, caplog):
    prompt = " ".join(["rivers"] * 60)
    rows = [conversation("the river .") for _ in range(18)]
    rows += [conversation(" ".join(["river"] * 100)), conversation("the river .", prompt=prompt)]
    path = write_lines(tmp_path / "train.jsonl", rows)
    cfg = sft_config(tmp_path, path, max_length=48, overlong="truncate", max_drop_share=0.05)
    _, stats = build_sft_dataset(cfg, tokenizer, tmp_path / "run")  # 1 dropped of 20: not over 0.05
    assert (stats["truncated_overlong"], stats["dropped_overlong_no_target"], stats["sequences_packed"]) == (1, 1, 19)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "data: 1 of 20 samples (5%) are left with no answer token within data.max_length=48 tokens "
        "(data.overlong=truncate) and were dropped; raise data.max_length",
        "data: 1 of 20 samples (5%) are longer than data.max_length=48 tokens and were cut to it "
        "(data.overlong=truncate): their answers lose their end and EOS; raise data.max_length or set "
        "data.overlong=drop"]
    assert "kept, cut to data.max_length" in drop_table(stats)
    with pytest.raises(UserError, match=r"1 of 20 samples \(5%\) were dropped, more than data.max_drop_share=0.01"):
        build_sft_dataset(sft_config(tmp_path, path, max_length=48, overlong="truncate"), tokenizer, tmp_path / "run")


def test_max_length_is_resolved_in_one_place():
    data = OmegaConf.structured(DataConfig)
    assert data.max_length is None and max_length_of(data) == 1024  # no packing: the documented default
    data.pack_length = 4096
    assert max_length_of(data) == 4096  # a sample may fill a pack
    data.max_length = 512
    assert max_length_of(data) == 512  # set: it wins
    cfg = compose_lw("data=jsonl", "data.pack_length=32768")
    assert max_length_of(cfg.data) == 32768
    from lw.train.sft import sft_config as trl_sft_config

    assert trl_sft_config(compose_lw("data=jsonl"), "unused", "none").max_length == 1024


def write_pairs(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pairs_over_max_length_follow_the_same_rule(tokenizer, tmp_path, caplog):
    short = {"prompt": "Write about rivers.", "chosen": "the quiet river carries the bank .", "rejected": "the river ."}
    long = {**short, "chosen": " ".join(["river"] * 60)}
    path = write_pairs(tmp_path / "pairs.jsonl", [short] * 9 + [long])

    def pairs_config(*overrides):
        return compose_lw("trainer=dpo", "data=pairs", f"data.path={path}", "trainer.init_from=unused",
                          "data.max_length=40", *overrides)

    with pytest.raises(UserError) as error:
        build_preference_dataset(pairs_config(), tokenizer, tmp_path / "run")
    assert str(error.value).startswith("data: 1 of 10 pairs (10%) were dropped, more than data.max_drop_share=0.01: "
                                       "1 longer than data.max_length=40 tokens")
    caplog.clear()
    dataset, stats = build_preference_dataset(pairs_config("data.max_drop_share=0.1"), tokenizer, tmp_path / "run")
    assert len(dataset) == stats["pairs"] == 9 and stats["dropped_over_max_length"] == 1
    assert [r.getMessage() for r in caplog.records] == [
        "data: 1 of 10 pairs (10%) are longer than data.max_length=40 tokens, prompt and the longer answer (pairs "
        "are never truncated) and were dropped; raise data.max_length"]
    table = drop_table(stats).splitlines()
    assert table[0].split() == ["data", "pairs", "share"]
    assert [line.split() for line in table[1:]] == [["read", "10", "100%"], ["kept", "9", "90%"],
                                                    ["dropped:", "over_max_length", "1", "10%"]]
