"""Loss weighting (token_mean, sequence_mean, pack_mean) with EOS weighting, computed by hand."""

import json
import math

import pytest
import torch
from conftest import compose_lw

from lw.data import build_sft_dataset, toy
from lw.models import build_model
from lw.models.tiny import tiny_tokenizer
from lw.train.loss import count_items, lm_loss
from lw.train.sft import build_trainer

EOS = 3
V = 5


def nll(logits_row, target):
    """-log softmax(logits_row)[target], by hand."""
    values = [float(x) for x in logits_row]
    return math.log(sum(math.exp(v) for v in values)) - values[target]


def hand_loss(logits, labels, groups, weighting, eos_weight=1.0):
    """The weighted loss from its definition: `groups[r][t]` names the sequence and pack of token t of row r."""
    terms = []  # (weighted nll, sequence, pack) per target
    for r in range(len(labels)):
        for t in range(1, len(labels[r])):
            if labels[r][t] != -100:
                w = eos_weight if labels[r][t] == EOS else 1.0
                terms.append((w * nll(logits[r][t - 1], labels[r][t]), *groups[r][t]))
    if weighting == "token_mean":
        return sum(x for x, _, _ in terms) / len(terms)
    key = 1 if weighting == "sequence_mean" else 2
    items = {}
    for term in terms:
        items.setdefault(term[key], []).append(term[0])
    return sum(sum(v) / len(v) for v in items.values()) / len(items)


# Two packs as two rows: pack 0 holds sequences a (4 tokens) and b (3), pack 1 holds c (5) and padding.
LABELS = [[-100, 4, 2, EOS, -100, 1, EOS],
          [-100, -100, 0, 4, EOS, -100, -100]]
POSITIONS = [[0, 1, 2, 3, 0, 1, 2],
             [0, 1, 2, 3, 4, 0, 0]]
GROUPS = [[("a", 0)] * 4 + [("b", 0)] * 3,
          [("c", 1)] * 5 + [("pad", 1)] * 2]


@pytest.fixture
def logits():
    return torch.randn(2, 7, V, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("weighting", ["token_mean", "sequence_mean", "pack_mean"])
@pytest.mark.parametrize("eos_weight", [1.0, 5.0])
def test_each_weighting_by_hand(logits, weighting, eos_weight):
    labels, positions = torch.tensor(LABELS), torch.tensor(POSITIONS)
    expected = hand_loss(logits.tolist(), LABELS, GROUPS, weighting, eos_weight)
    got = lm_loss(logits, labels, weighting=weighting, eos_token_id=EOS, eos_weight=eos_weight, position_ids=positions)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # The same two packs flattened into one padding-free row, packs told apart by pack_ids.
    flat = lm_loss(logits.reshape(1, 14, V), labels.reshape(1, 14), weighting=weighting, eos_token_id=EOS,
                   eos_weight=eos_weight, position_ids=positions.reshape(1, 14),
                   pack_ids=torch.tensor([[0] * 7 + [1] * 7]))
    assert flat.item() == pytest.approx(expected, rel=1e-6)


def test_the_weightings_differ_and_count_their_items(logits):
    labels, positions = torch.tensor(LABELS), torch.tensor(POSITIONS)
    losses = {w: lm_loss(logits, labels, weighting=w, position_ids=positions).item()
              for w in ("token_mean", "sequence_mean", "pack_mean")}
    assert len({round(v, 6) for v in losses.values()}) == 3
    assert [count_items(labels, w, positions).item() for w in ("token_mean", "sequence_mean", "pack_mean")] == [8, 3, 2]
    # Without position ids each row is one sequence.
    assert count_items(labels, "sequence_mean").item() == 2


@pytest.mark.parametrize("weighting", ["token_mean", "sequence_mean", "pack_mean"])
def test_gradient_accumulation_sums_to_the_global_mean(logits, weighting):
    """Two micro-batches (one pack each), each divided by the global item count: their sum is the mean over the
    whole batch. The mean of the two micro-batch means is not (the bug the global count avoids)."""
    labels, positions = torch.tensor(LABELS), torch.tensor(POSITIONS)
    expected = hand_loss(logits.tolist(), LABELS, GROUPS, weighting, 5.0)
    total = count_items(labels, weighting, positions)
    parts = [lm_loss(logits[i:i + 1], labels[i:i + 1], weighting=weighting, eos_token_id=EOS, eos_weight=5.0,
                     num_items_in_batch=total, position_ids=positions[i:i + 1]) for i in range(2)]
    assert sum(p.item() for p in parts) == pytest.approx(expected, rel=1e-6)
    per_step = [lm_loss(logits[i:i + 1], labels[i:i + 1], weighting=weighting, eos_token_id=EOS, eos_weight=5.0,
                        position_ids=positions[i:i + 1]).item() for i in range(2)]
    if weighting != "pack_mean":  # one pack per micro-batch: only pack_mean is a mean of micro-batch means
        assert sum(per_step) / 2 != pytest.approx(expected, rel=1e-3)


# ---------------------------------------------------------------------------------------------
# Through the real trainer: 2 micro-batches of 2 packs each, gradient accumulation 2.

@pytest.fixture(scope="module")
def packed_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packed")
    path = tmp / "train.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in toy.generate(14, 10, 40, ["rivers", "music"], seed=3)))
    tokenizer = tiny_tokenizer(tmp / "cache")
    return tmp, path, tokenizer


def sequences_of(batch):
    """(input_ids, labels, pack) of every sequence in a padding-free batch, from its position-id restarts."""
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    positions, packs = batch["position_ids"][0].tolist(), batch["pack_ids"][0].tolist()
    starts = [t for t, p in enumerate(positions) if p == 0] + [len(ids)]
    return [(ids[s:e], labels[s:e], packs[s]) for s, e in zip(starts, starts[1:]) if packs[s] >= 0]


@pytest.mark.parametrize("weighting, eos_weight", [("token_mean", 1.0), ("token_mean", 5.0),
                                                   ("sequence_mean", 5.0), ("pack_mean", 1.0)])
def test_trainer_loss_over_accumulated_micro_batches_by_hand(packed_setup, weighting, eos_weight):
    tmp, path, tokenizer = packed_setup
    cfg = compose_lw("data=jsonl", f"data.path={path}", "data.max_length=64", "data.pack_length=64",
                      f"trainer.loss_weighting={weighting}", f"trainer.eos_loss_weight={eos_weight}",
                      "trainer.args.per_device_train_batch_size=2", "trainer.args.gradient_accumulation_steps=2",
                      f"cache_dir={tmp / 'cache'}")
    dataset, stats = build_sft_dataset(cfg, tokenizer, tmp)
    assert stats["packs"] >= 4 and stats["packs"] < stats["sequences_packed"]
    model = build_model(cfg.model, tokenizer, seed=0)
    trainer = build_trainer(cfg, model, tokenizer, dataset, tmp / weighting, "none")
    batches, num_items = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 2, torch.device("cpu"))
    assert len(batches) == 2 and all(b["pack_ids"].max() == 1 for b in batches)  # two packs per micro-batch

    # By hand: every sequence on its own through the model, then the weighting's definition.
    terms = []  # (weighted nll, sequence, pack)
    with torch.no_grad():
        for step, batch in enumerate(batches):
            for n, (ids, labels, pack) in enumerate(sequences_of(batch)):
                logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
                for t in range(1, len(ids)):
                    if labels[t] != -100:
                        w = eos_weight if labels[t] == tokenizer.eos_token_id else 1.0
                        terms.append((w * nll(logits[t - 1], labels[t]), (step, n), (step, pack)))
    key = {"token_mean": None, "sequence_mean": 1, "pack_mean": 2}[weighting]
    if key is None:
        expected, items = sum(x for x, _, _ in terms) / len(terms), len(terms)
    else:
        groups = {}
        for term in terms:
            groups.setdefault(term[key], []).append(term[0])
        expected, items = sum(sum(v) / len(v) for v in groups.values()) / len(groups), len(groups)
    assert int(num_items) == items

    loss = sum(trainer.training_step(trainer.model, batch, num_items).item() for batch in batches)
    assert loss == pytest.approx(expected, rel=1e-4)
