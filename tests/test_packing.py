"""Best-fit-decreasing packing: no sample lost, and packed sequences never see each other."""

import math

import pytest
import torch
from datasets import Dataset
from omegaconf import OmegaConf

from lw.config import ModelConfig, TinyModelConfig
from lw.data.packing import PackCollator, next_fit_pack_lengths, pack, packing_summary
from lw.models import build_model
from lw.models.chat_format import get_chat_format
from lw.models.tiny import tiny_tokenizer


def sequences(lengths):
    """Distinct token ids per sequence, and masks that differ per sequence, so any mix-up shows."""
    rows = {"input_ids": [], "completion_mask": []}
    for i, n in enumerate(lengths):
        rows["input_ids"].append([1000 * i + t for t in range(n)])
        rows["completion_mask"].append([(i + t) % 2 for t in range(n)])
    return Dataset.from_dict(rows)


def unpack(packed):
    out = []
    for row in packed:
        start = 0
        for n in row["seq_lengths"]:
            out.append((row["input_ids"][start:start + n], row["completion_mask"][start:start + n]))
            start += n
        assert start == len(row["input_ids"])
    return out


def test_every_sequence_lands_in_exactly_one_pack_intact():
    lengths = [9, 1, 5, 7, 3, 10, 2, 2, 8, 4, 6, 1]
    dataset = sequences(lengths)
    packed = pack(dataset, 10)
    assert sorted(unpack(packed)) == sorted(zip(dataset["input_ids"], dataset["completion_mask"]))
    assert all(len(row) <= 10 for row in packed["input_ids"])
    assert len(packed) == math.ceil(sum(lengths) / 10)  # 58 tokens: 6 packs, the least possible


def test_best_fit_decreasing_beats_next_fit_on_a_known_case():
    lengths = [6, 5, 4, 3, 2]
    # BFD: [6, 4] and [5, 3, 2]. Next fit in order: [6], [5, 4], [3, 2].
    assert sorted(map(sorted, pack(sequences(lengths), 10)["seq_lengths"])) == [[2, 3, 5], [4, 6]]
    assert next_fit_pack_lengths(lengths, 10) == [6, 9, 5]


def test_the_whole_set_is_packed_at_once_not_per_batch():
    # TRL's packer alone packs each map batch of 1,000 rows apart: 3 part-filled packs here instead of 1.
    packed = pack(sequences([3] * 2500), 10)
    assert len(packed) == math.ceil(2500 / 3)  # 834: three per pack, one pack with the last one


def test_overlong_or_empty_sequences_are_refused_not_truncated():
    with pytest.raises(ValueError, match="data.overlong"):
        pack(sequences([4, 11]), 10)
    with pytest.raises(ValueError, match="1 to 10 tokens"):
        pack(sequences([4, 0]), 10)


def test_packing_summary_and_next_fit():
    assert packing_summary([10, 8, 6], 10) == {"packs": 3, "real_tokens": 24, "slot_tokens": 30, "efficiency": 0.8}
    assert next_fit_pack_lengths([4, 4, 4, 10, 1], 10) == [8, 4, 10, 1]
    with pytest.raises(ValueError):
        next_fit_pack_lengths([11], 10)


def test_collator_restarts_positions_per_sequence_and_marks_packs():
    examples = [{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, 6, 7, -100, 9], "seq_lengths": [3, 2]},
                {"input_ids": [1, 2, 3], "labels": [1, 2, 3], "seq_lengths": [3]}]
    batch = PackCollator(pad_token_id=0)(examples)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 1, 2, 3]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert batch["pack_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 1, 1]]
    # No token learns from the sequence before it: every sequence's first label is masked.
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, 2, 3]]
    assert "attention_mask" not in batch


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize("architecture", ["llama", "glm"])
def test_packed_logits_equal_separate_forwards(architecture, tokenizer):
    model_cfg = OmegaConf.structured(ModelConfig(name="tiny", chat_format="glm4", dtype="float32",
                                                 tiny=TinyModelConfig(architecture=architecture)))
    model = build_model(model_cfg, tokenizer, seed=0).eval()
    chat_format = get_chat_format("glm4")
    conversations = [[{"role": "user", "content": f"Write about {topic} in {n} words."},
                      {"role": "assistant", "content": " ".join(["the", "old", topic, "."] * (n // 4))}]
                     for topic, n in (("rivers", 20), ("music", 8), ("trains", 40), ("gardens", 12))]
    tokenized = [chat_format.tokenize(tokenizer, c) for c in conversations]
    lengths = [len(ids) for ids, _ in tokenized]
    packed = pack(Dataset.from_dict({"input_ids": [ids for ids, _ in tokenized],
                                     "completion_mask": [m for _, m in tokenized]}), max(lengths) + 20)
    assert len(packed) < len(conversations)  # some pack holds several sequences
    examples = [{"input_ids": row["input_ids"], "labels": row["input_ids"], "seq_lengths": row["seq_lengths"]}
                for row in packed]
    batch = PackCollator(pad_token_id=tokenizer.pad_token_id)(examples)
    with torch.no_grad():
        packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                              use_cache=False).logits[0]
        # With the (default) cache on, transformers does not split the row: sequences see each other.
        cached_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        separate = {tuple(ids): model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
                    for ids, _ in tokenized}
    order = [ids for ids, _ in unpack(packed)]
    expected = torch.cat([separate[tuple(ids)] for ids in order])
    assert packed_logits.shape == expected.shape
    torch.testing.assert_close(packed_logits, expected, atol=1e-5, rtol=1e-4)
    assert (cached_logits - expected).abs().max() > 1e-2


@pytest.mark.slow
def test_training_on_packs_through_the_entry_point(tmp_path):
    """`lw` with data.pack_length trains on packs: an epoch is the packs, not the samples."""
    import json

    from lw.data import toy
    from lw.tracking import read_offline_run

    from helpers import run_lw

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in toy.generate(40, 10, 60, ["rivers"], seed=0)))
    run_dir = tmp_path / "run"
    run_lw("experiment=smoke", "data=jsonl", f"data.path={path}", "data.max_length=128", "data.pack_length=128",
           "trainer.loss_weighting=sequence_mean", "trainer.args.max_steps=2", "trainer.args.logging_steps=1",
           "trainer.args.per_device_train_batch_size=2", "eval.toy_ruler.lengths=[12]",
           "eval.toy_ruler.samples_per_prompt=1", "generation.max_new_tokens=8", f"hydra.run.dir={run_dir}",
           cwd=tmp_path)
    stats = json.loads((run_dir / "packing_stats.json").read_text())
    assert stats["sequences_packed"] == 40 and stats["packs"] < 40
    logged = read_offline_run(next((run_dir / "wandb").glob("offline-run-*")))
    epochs = [step["train/epoch"] for step in logged["history"] if "train/loss" in step]
    assert epochs == pytest.approx([1 / math.ceil(stats["packs"] / 2), 2 / math.ceil(stats["packs"] / 2)])
    assert logged["summary"]["data/packs"] == stats["packs"]
    assert (run_dir / "model" / "config.json").exists()


def test_trl_packing_options_are_refused_with_data_pack_length():
    from lw.train.sft import sft_config

    from helpers import compose_lw

    def compose_with(*overrides):
        return compose_lw("data.pack_length=2048", *overrides)

    with pytest.raises(ValueError, match="data.pack_length"):
        sft_config(compose_with("+trainer.args.packing=true"), "unused", "none")
    assert sft_config(compose_with(), "unused", "none").max_length == 2048  # rows are packs of data.pack_length
