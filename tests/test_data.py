"""Training data: sources, bad input, output-length caps, mixes, tokenization, task=prepare."""

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from lw.config import DataConfig, LwConfig, ModelConfig, TinyModelConfig
from lw.data import build_sft_dataset, filter_by_output_words, load_samples, max_length_of, toy
from lw.data.sources import BadSample, mix_sizes
from lw.data.tokenization import tokenize_messages
from lw.models.chat_format import get_chat_format
from lw.models.tiny import tiny_tokenizer
from lw.words import count_words

from helpers import run_lw


def conversation(prompt="Write about rivers in 10 words.", answer="the quiet river carries the bank ."):
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def write_lines(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def data_config(**fields):
    return OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "test", **fields})


def samples_of(data_cfg, seed=0):
    stats = Counter()
    return list(load_samples(data_cfg, seed, stats)), stats


GOOD = conversation()
BAD_ROWS = {
    "malformed_json": ('{"messages": [', "<line>"),
    "missing_messages": ({"prompt": "hi"}, "messages"),
    "unknown_role": ({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]},
                     "messages[1].role"),
    "empty_content": ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " \u200b"}]},
                      "messages[1].content"),
    "no_assistant_turn": ({"messages": [{"role": "user", "content": "hi"}]}, "messages"),
    "bad_turn_order": ({"messages": [{"role": "assistant", "content": "yo"}, {"role": "user", "content": "hi"}]},
                       "messages[0].role"),
}


@pytest.mark.parametrize("reason", sorted(BAD_ROWS))
def test_bad_row_is_an_error_naming_file_line_and_field(tmp_path, reason):
    row, field = BAD_ROWS[reason]
    path = write_lines(tmp_path / "train.jsonl", [GOOD, GOOD, row, GOOD])
    with pytest.raises(BadSample) as error:
        samples_of(data_config(source="messages", path=str(path)))
    assert error.value.reason == reason
    assert f"{path}:3: field '{field}'" in str(error.value)


def test_bad_rows_are_dropped_and_counted_when_configured(tmp_path):
    rows = [GOOD] + [row for row, _ in BAD_ROWS.values()] + [GOOD, ""]  # a blank line is not a row
    path = write_lines(tmp_path / "train.jsonl", rows)
    samples, stats = samples_of(data_config(source="messages", path=str(path), on_bad_sample="drop"))
    assert samples == [GOOD, GOOD]
    assert stats == Counter({"sequences_in": 2 + len(BAD_ROWS), **{f"dropped_{r}": 1 for r in BAD_ROWS}})


def test_answers_lose_zero_width_characters_before_counting(tmp_path):
    zero_width = "\u200b\u200c\u200d\u2060\ufeff"
    answer = f"the{zero_width} quiet\u200briver ."  # "quiet\u200briver" counts as 2 words before cleaning
    prompt = f"Write\u200b about rivers{zero_width}."
    path = write_lines(tmp_path / "train.jsonl", [conversation(prompt, answer)])
    samples, _ = samples_of(data_config(source="messages", path=str(path), max_output_words=2))
    assert samples[0]["messages"][1]["content"] == "the quietriver ."
    assert count_words(samples[0]["messages"][1]["content"]) == 2
    assert samples[0]["messages"][0]["content"] == prompt  # prompts are left as they are


def test_output_word_caps_use_the_benchmark_counter(tmp_path):
    rows = [conversation(answer="one two three"), conversation(answer="一二三四五"),  # 5 CJK characters: 5 words
            conversation(answer="a b c d e f g"), conversation(answer="x1 y2 ok")]  # digits touch: 1 word
    path = write_lines(tmp_path / "train.jsonl", rows)
    samples, stats = samples_of(data_config(source="messages", path=str(path), max_output_words=5,
                                            min_output_words=2))
    assert [s["messages"][1]["content"] for s in samples] == ["one two three", "一二三四五"]
    assert stats["dropped_over_max_output_words"] == 1 and stats["dropped_under_min_output_words"] == 1


def answers(*words_per_turn):
    """A conversation with one assistant turn of n words per argument."""
    messages = []
    for n in words_per_turn:
        messages += [{"role": "user", "content": "Write."}, {"role": "assistant", "content": " ".join(["word"] * n)}]
    return {"messages": messages}


def test_output_word_caps_keep_their_boundary_and_drop_one_word_past_it():
    kept = Counter()
    samples = [answers(n) for n in (2, 3, 5, 6)]  # min 3, max 5: 2 under, 3 and 5 on the boundaries, 6 over
    out = list(filter_by_output_words(samples, 3, 5, kept))
    assert [count_words(s["messages"][1]["content"]) for s in out] == [3, 5]
    assert kept == {"dropped_under_min_output_words": 1, "dropped_over_max_output_words": 1}


def test_output_word_caps_apply_to_every_assistant_turn():
    stats = Counter()
    samples = [answers(9, 4), answers(4, 9), answers(1, 4), answers(4, 4, 1), answers(3, 5, 4)]
    out = list(filter_by_output_words(samples, 3, 5, stats))
    assert out == [answers(3, 5, 4)]  # an earlier turn over the cap (or under the floor) drops the sample too
    assert stats == {"dropped_over_max_output_words": 2, "dropped_under_min_output_words": 2}


def test_multi_turn_sharegpt_and_a_trailing_question(tmp_path):
    row = {"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
                             {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"},
                             {"from": "human", "value": "never answered"}]}
    path = write_lines(tmp_path / "train.jsonl", [row])
    samples, stats = samples_of(data_config(source="messages", path=str(path)))
    assert samples == [{"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                                     {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]}]
    assert stats["trailing_user_turns_removed"] == 1
    bad = write_lines(tmp_path / "bad.jsonl", [{"conversations": [{"from": "human", "value": "q"},
                                                                   {"from": "system", "value": "s"}]}])
    with pytest.raises(BadSample, match=r"bad.jsonl:1: field 'conversations\[1\].from'"):
        samples_of(data_config(source="messages", path=str(bad)))


def test_parquet_and_hub_loading_read_the_same_samples(tmp_path):
    rows = [conversation(answer=f"answer number {w}") for w in ("one", "two", "three")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    from_parquet, _ = samples_of(data_config(source="messages", path=str(tmp_path / "train.parquet")))
    # datasets.load_dataset(hub_id, split=...) is the hub code path; a local dataset folder stands in for the hub.
    hub = tmp_path / "hub_dataset"
    hub.mkdir()
    write_lines(hub / "train.jsonl", rows)
    from_hub, _ = samples_of(data_config(source="messages", hub_id=str(hub), split="train"))
    assert from_parquet == from_hub == rows
    with pytest.raises(ValueError, match="set path"):
        samples_of(data_config(source="messages"))


def test_mix_sizes_by_count_ratio_and_whole():
    def spec(count=None, ratio=None):
        return OmegaConf.create({"count": count, "ratio": ratio})

    available = {"long": 60, "general": 1000}
    assert mix_sizes(available, {"long": spec(), "general": spec(count=100)}) == {"long": 60, "general": 100}
    # LongWriter-6k whole, general data as 75% of the mix: 60 / 0.25 = 240 in all.
    assert mix_sizes(available, {"long": spec(), "general": spec(ratio=0.75)}) == {"long": 60, "general": 180}
    # Only ratios: as large as the scarcest source allows.
    assert mix_sizes(available, {"long": spec(ratio=0.5), "general": spec(ratio=0.5)}) == {"long": 60, "general": 60}
    with pytest.raises(ValueError, match="data.mix.general.count=2000"):
        mix_sizes(available, {"long": spec(), "general": spec(count=2000)})
    with pytest.raises(ValueError, match="sum to 0.9"):
        mix_sizes(available, {"long": spec(ratio=0.4), "general": spec(ratio=0.5)})
    with pytest.raises(ValueError, match="needs 1140"):
        mix_sizes(available, {"long": spec(count=60), "general": spec(ratio=0.95)})


def test_mix_is_seeded_and_counts_what_it_leaves_out(tmp_path):
    long_rows = [conversation(answer=f"long {'word ' * 30}{i}") for i in range(4)]
    general_rows = [conversation(answer=f"general answer {i}") for i in range(20)]
    mix = {"longwriter6k": {"path": str(write_lines(tmp_path / "long.jsonl", long_rows))},
           "general": {"path": str(write_lines(tmp_path / "general.jsonl", general_rows)), "count": 6}}
    cfg = data_config(source="mix", mix=mix)
    samples, stats = samples_of(cfg, seed=0)
    assert samples[:4] == long_rows and len(samples) == 10
    assert all(s in general_rows for s in samples[4:])
    assert samples == samples_of(cfg, seed=0)[0] and samples != samples_of(cfg, seed=1)[0]
    assert stats["dropped_not_in_mix"] == 14 and stats["sequences_in"] == 24
    capped, stats = samples_of(data_config(source="mix", mix=mix, max_output_words=10))  # the cap drops the long ones
    assert len(capped) == 6 and stats["dropped_over_max_output_words"] == 4


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_tokenization_is_cached_by_content_and_counts_overlong(tmp_path, tokenizer):
    rows = [conversation(answer="the river " * n + ".") for n in (2, 10, 40)]
    path = write_lines(tmp_path / "train.jsonl", rows)
    chat_format = get_chat_format("llama3_1")
    lengths = [len(chat_format.tokenize(tokenizer, r["messages"])[0]) for r in rows]
    cache = tmp_path / "cache"
    max_length = lengths[1]  # the third sample is over-long
    dropped, stats = tokenize_messages(path, chat_format, tokenizer, max_length, "drop", cache)
    assert [len(ids) for ids in dropped["input_ids"]] == lengths[:2] and stats == {"dropped_overlong": 1}
    truncated, stats = tokenize_messages(path, chat_format, tokenizer, max_length, "truncate", cache)
    full = chat_format.tokenize(tokenizer, rows[2]["messages"])
    assert truncated[2]["input_ids"] == full[0][:max_length]
    assert truncated[2]["completion_mask"] == full[1][:max_length]
    assert stats == {"truncated_overlong": 1, "dropped_overlong_no_target": 0}
    # A prompt alone longer than max_length leaves no target: dropped even when truncating.
    nothing, stats = tokenize_messages(path, chat_format, tokenizer, 5, "truncate", cache)
    assert len(nothing) == 0 and stats == {"truncated_overlong": 0, "dropped_overlong_no_target": 3}
    assert len(list((cache / "tokenized").glob("*/lw_stats.json"))) == 2
    # Same content, same settings: read back from the cache, even from a copy of the file.
    copy = write_lines(tmp_path / "copy.jsonl", rows)
    again, _ = tokenize_messages(copy, chat_format, tokenizer, max_length, "drop", cache)
    assert again.cache_files[0]["filename"] == dropped.cache_files[0]["filename"]
    write_lines(path, rows + [conversation()])  # new content: tokenized anew
    more, _ = tokenize_messages(path, chat_format, tokenizer, max_length, "drop", cache)
    assert len(more) == 3 and len(list((cache / "tokenized").glob("*/lw_stats.json"))) == 3
    assert not list((cache / "tokenized").glob("*.work")) and not list((cache / "tokenized").glob("*.tmp"))


def test_tokenization_in_two_processes_gives_the_same_rows(tmp_path, tokenizer):
    path = write_lines(tmp_path / "train.jsonl", toy.generate(40, 10, 60, ["rivers"], seed=0))
    chat_format = get_chat_format("glm4")
    one, _ = tokenize_messages(path, chat_format, tokenizer, 1024, "drop", tmp_path / "a", num_proc=1)
    two, _ = tokenize_messages(path, chat_format, tokenizer, 1024, "drop", tmp_path / "b", num_proc=2)
    assert one["input_ids"] == two["input_ids"] and one["completion_mask"] == two["completion_mask"]


def lw_config(tmp_path, **data_fields):
    cfg = OmegaConf.structured(LwConfig)
    cfg.model = ModelConfig(name="tiny", chat_format="llama3_1", dtype="float32", tiny=TinyModelConfig())
    cfg.data = data_config(**data_fields)
    cfg.cache_dir = str(tmp_path / "cache")
    return cfg


def test_every_sample_read_is_trained_on_or_dropped_for_a_reason(tmp_path, tokenizer):
    rows = list(toy.generate(30, 10, 200, ["rivers", "music"], seed=1))
    rows += [conversation(answer="the river " + "5 " * 400 + "."),  # 2 words, 400+ tokens (digits are no words)
             '{"broken', {"messages": []}]
    path = write_lines(tmp_path / "train.jsonl", rows)
    # 3 of 33 samples dropped unasked (broken, empty, over-long): under a share of 0.1 the run goes on.
    cfg = lw_config(tmp_path, source="messages", path=str(path), on_bad_sample="drop", max_output_words=150,
                    max_length=300, pack_length=512, max_drop_share=0.1)
    dataset, stats = build_sft_dataset(cfg, tokenizer, tmp_path)
    written = json.loads((tmp_path / "packing_stats.json").read_text())
    assert written["sequences_in"] == 33
    assert written["sequences_dropped"] == {
        "malformed_json": 1, "missing_messages": 1, "overlong": 1,
        "over_max_output_words": sum(count_words(r["messages"][1]["content"]) > 150 for r in rows[:30])}
    assert written["sequences_packed"] + sum(written["sequences_dropped"].values()) == 33
    assert sum(len(s) for s in dataset["seq_lengths"]) == written["sequences_packed"] == stats["sequences_packed"]
    assert written["real_tokens"] == sum(len(ids) for ids in dataset["input_ids"])
    assert written["slot_tokens"] == 512 * len(dataset) == 512 * written["packs"]
    assert written["efficiency"] == pytest.approx(written["real_tokens"] / written["slot_tokens"], abs=1e-6)


def test_pack_length_below_max_length_fails_before_any_work(tmp_path, tokenizer):
    cfg = lw_config(tmp_path, source="messages", path="unused.jsonl", max_length=1024, pack_length=512)
    with pytest.raises(ValueError, match="exceeds data.pack_length"):
        build_sft_dataset(cfg, tokenizer, tmp_path)


@pytest.mark.slow
def test_prepare_through_the_entry_point(tmp_path, tokenizer):
    rows = list(toy.generate(60, 10, 300, ["rivers", "trains"], seed=2)) + ['{"messages": [}']
    path = write_lines(tmp_path / "train.jsonl", rows)
    run_dir = tmp_path / "prepared"
    run_lw("task=prepare", "data=jsonl", f"data.path={path}", "data.pack_length=1024", "data.on_bad_sample=drop",
           "data.max_drop_share=0.02", "model=tiny", "logger=none", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    stats = json.loads((run_dir / "packing_stats.json").read_text())
    assert list(stats) == ["sequences_in", "sequences_packed", "sequences_dropped", "packs", "real_tokens",
                           "slot_tokens", "efficiency", "seconds"]
    assert stats["sequences_in"] == 61 and stats["sequences_packed"] == 60
    assert stats["sequences_dropped"] == {"malformed_json": 1}
    chat_format = get_chat_format("llama3_1")
    tokens = sum(len(chat_format.tokenize(tokenizer, r["messages"])[0]) for r in rows[:60])
    assert stats["real_tokens"] == tokens and stats["packs"] == -(-tokens // 1024)  # BFD reaches the bound here
    assert stats["efficiency"] > 0.9 and stats["seconds"] > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data/packs"] == stats["packs"]

    # The same file with the default on_bad_sample=error: the user sees where the bad line is.
    result = run_lw("task=prepare", "data=jsonl", f"data.path={path}", "logger=none",
                    f"hydra.run.dir={tmp_path / 'failed'}", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert f"{path}:61: field '<line>': not valid JSON" in result.stderr



def compose_data(*overrides):
    from helpers import compose_lw

    return compose_lw(*overrides).data


def test_paper_data_configs_read_local_copies(tmp_path):
    long_rows = [conversation(answer="long " * 3000 + "end")]
    general_rows = [conversation(answer=f"general answer {'word ' * 100 * i}") for i in range(8)]
    long_path = write_lines(tmp_path / "long.jsonl", long_rows)
    general_path = write_lines(tmp_path / "general.jsonl", general_rows)

    data = compose_data("data=longwriter6k", f"data.path={long_path}")
    assert data.hub_id == "THUDM/LongWriter-6k" and data.pack_length == max_length_of(data) == 32768
    assert data.max_length is None  # it follows pack_length
    assert samples_of(data)[0] == long_rows

    data = compose_data("data=longwriter_mix", f"data.mix.longwriter6k.path={long_path}",
                        f"data.mix.general.path={general_path}", "data.mix.general.count=3")
    assert samples_of(data)[0][0] == long_rows[0] and len(samples_of(data)[0]) == 4

    for cap in (500, 1000, 2000):
        data = compose_data(f"data=general_cap{cap}", f"data.path={general_path}")
        assert data.max_output_words == cap and data.hub_id == compose_data("data=general").hub_id
        kept = [s["messages"][1]["content"] for s in samples_of(data)[0]]
        assert kept == [r["messages"][1]["content"] for r in general_rows
                        if count_words(r["messages"][1]["content"]) <= cap]
