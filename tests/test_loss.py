"""Loss weighting (token_mean, sequence_mean, pack_mean, pack_sequences_over_30) with EOS weighting,
computed by hand."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lw.data import build_sft_dataset, toy
from lw.errors import UserError
from lw.launch.topology import free_port
from lw.models import build_model
from lw.models.tiny import tiny_tokenizer
from lw.train.loss import PACK_SEQUENCES_DIVISOR, WEIGHTINGS, count_items, lm_loss
from lw.train.sft import build_trainer

from helpers import REPO, compose_lw

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
    means = {k: sum(v) / len(v) for k, v in items.items()}
    if weighting == "pack_sequences_over_30":  # sequences holding targets: padding "pad" has none
        means = {p: m * len({s for _, s, q in terms if q == p}) / 30 for p, m in means.items()}
    return sum(means.values()) / len(means)


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


@pytest.mark.parametrize("weighting", WEIGHTINGS)
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
    losses = {w: lm_loss(logits, labels, weighting=w, position_ids=positions).item() for w in WEIGHTINGS}
    assert len({round(v, 6) for v in losses.values()}) == 4
    assert [count_items(labels, w, positions).item() for w in WEIGHTINGS] == [8, 3, 2, 2]
    # Without position ids each row is one sequence.
    assert count_items(labels, "sequence_mean").item() == 2


@pytest.mark.parametrize("weighting", WEIGHTINGS)
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
    if weighting not in ("pack_mean", "pack_sequences_over_30"):  # one pack per micro-batch: these are
        # means of micro-batch means
        assert sum(per_step) / 2 != pytest.approx(expected, rel=1e-3)


def test_pack_sequences_over_30_is_the_released_codes_loss_over_two_micro_batches():
    """The released code's steps, one pack per micro-batch and gradient accumulation 2, against lw's
    accumulated total and its gradient: per pack, weights of 1/(its targets) on each sequence's
    targets (sort_and_group.py lines 66-69) summed and divided by 30 (main.py line 68), times
    CrossEntropyLoss's mean over the pack's targets (modeling_*.py pack_loss branch); then the mean
    over the accumulated micro-batches (DeepSpeed's loss scaling)."""
    logits = torch.randn(2, 7, V, generator=torch.Generator().manual_seed(1), requires_grad=True)
    labels, positions = torch.tensor(LABELS), torch.tensor(POSITIONS)
    official = []
    for row in range(2):
        ce = torch.nn.CrossEntropyLoss(ignore_index=-100)(logits[row, :-1], labels[row, 1:])
        starts = [t for t, p in enumerate(POSITIONS[row]) if p == 0] + [7]
        weights = 0.0
        for a, b in zip(starts, starts[1:]):
            targets = sum(1 for x in LABELS[row][a:b] if x != -100)
            weights += targets * (1 / targets) if targets else 0.0  # no targets: weight 0
        official.append(ce * weights / 30)
    expected = sum(official) / 2
    total = count_items(labels, "pack_sequences_over_30", positions)
    assert total.item() == 2 and PACK_SEQUENCES_DIVISOR == 30
    lw_total = sum(lm_loss(logits[i:i + 1], labels[i:i + 1], weighting="pack_sequences_over_30",
                           num_items_in_batch=total, position_ids=positions[i:i + 1]) for i in range(2))
    assert lw_total.item() == pytest.approx(expected.item(), rel=1e-6)
    # By hand from the numbers: pack 0 holds sequences a and b (2/30), pack 1 holds c and a target-less tail (1/30).
    ce0 = sum(nll(logits[0, t - 1].tolist(), LABELS[0][t]) for t in range(1, 7) if LABELS[0][t] != -100) / 5
    ce1 = sum(nll(logits[1, t - 1].tolist(), LABELS[1][t]) for t in range(1, 7) if LABELS[1][t] != -100) / 3
    assert lw_total.item() == pytest.approx((ce0 * 2 / 30 + ce1 * 1 / 30) / 2, rel=1e-6)
    want = torch.autograd.grad(expected, logits)[0]
    got = torch.autograd.grad(lw_total, logits)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# Through the real trainer: 2 micro-batches of 2 packs each, gradient accumulation 2.

@pytest.fixture(scope="module")
def packed_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packed")
    path = tmp / "train.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in toy.generate(14, 10, 40, ["rivers", "music"], seed=3)))
    tokenizer = tiny_tokenizer(tmp / "cache")
    return tmp, path, tokenizer


def packed_config(path, cache, weighting, eos_weight):
    """Packs of 64 tokens, 2 packs per micro-batch, gradient accumulation 2 (also for dp_loss_worker.py)."""
    return compose_lw("data=jsonl", f"data.path={path}", "data.max_length=64", "data.pack_length=64",
                      f"trainer.loss_weighting={weighting}", f"trainer.eos_loss_weight={eos_weight}",
                      "trainer.args.per_device_train_batch_size=2", "trainer.args.gradient_accumulation_steps=2",
                      f"cache_dir={cache}")


def sequences_of(batch):
    """(input_ids, labels, pack) of every sequence in a padding-free batch, from its position-id restarts."""
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    positions, packs = batch["position_ids"][0].tolist(), batch["pack_ids"][0].tolist()
    starts = [t for t, p in enumerate(positions) if p == 0] + [len(ids)]
    return [(ids[s:e], labels[s:e], packs[s]) for s, e in zip(starts, starts[1:]) if packs[s] >= 0]


def loss_by_hand(model, batches, eos_token_id, weighting, eos_weight):
    """(loss, items) of one optimizer step over padding-free micro-batches, from the weighting's
    definition: every sequence through the model on its own. Differentiable, for gradient checks."""
    terms = []  # (weighted nll, sequence, pack)
    for step, batch in enumerate(batches):
        for n, (ids, labels, pack) in enumerate(sequences_of(batch)):
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids]), use_cache=False).logits[0], -1)
            for t in range(1, len(ids)):
                if labels[t] != -100:
                    w = eos_weight if labels[t] == eos_token_id else 1.0
                    terms.append((-w * logp[t - 1, labels[t]], (step, n), (step, pack)))
    key = {"token_mean": None, "sequence_mean": 1, "pack_mean": 2, "pack_sequences_over_30": 2}[weighting]
    if key is None:
        return sum(x for x, _, _ in terms) / len(terms), len(terms)
    groups = {}
    for term in terms:
        groups.setdefault(term[key], []).append(term[0])
    means = {k: sum(v) / len(v) for k, v in groups.items()}
    if weighting == "pack_sequences_over_30":
        means = {p: m * len({s for _, s, q in terms if q == p}) / 30 for p, m in means.items()}
    return sum(means.values()) / len(groups), len(groups)


@pytest.mark.parametrize("weighting, eos_weight", [("token_mean", 1.0), ("token_mean", 5.0),
                                                   ("sequence_mean", 5.0), ("pack_mean", 1.0),
                                                   ("pack_sequences_over_30", 1.0)])
def test_trainer_loss_over_accumulated_micro_batches_by_hand(packed_setup, weighting, eos_weight):
    tmp, path, tokenizer = packed_setup
    cfg = packed_config(path, tmp / "cache", weighting, eos_weight)
    dataset, stats = build_sft_dataset(cfg, tokenizer, tmp)
    assert stats["packs"] >= 4 and stats["packs"] < stats["sequences_packed"]
    model = build_model(cfg.model, tokenizer, seed=0)
    trainer = build_trainer(cfg, model, tokenizer, dataset, tmp / weighting, "none")
    batches, num_items = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 2, torch.device("cpu"))
    assert len(batches) == 2 and all(b["pack_ids"].max() == 1 for b in batches)  # two packs per micro-batch

    expected, items = loss_by_hand(model, batches, tokenizer.eos_token_id, weighting, eos_weight)
    assert int(num_items) == items

    loss = sum(trainer.training_step(trainer.model, batch, num_items).item() for batch in batches)
    assert loss == pytest.approx(expected.item(), rel=1e-4)


# ---------------------------------------------------------------------------------------------
# Two data-parallel ranks (DDP over gloo, torchrun): each rank's loss is over the *global* item
# count, so after DDP averages the gradients they are those of the global mean, whatever the weighting.

DP_SETTINGS = ["token_mean:1.0", "token_mean:5.0", "sequence_mean:5.0", "pack_mean:1.0", "pack_sequences_over_30:1.0"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dp")
    path = tmp / "train.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in toy.generate(24, 10, 40, ["rivers", "music"], seed=5)))
    tiny_tokenizer(tmp / "cache")  # before the ranks start: they would both train it
    # The repository first, so the ranks import this checkout's lw (not an installed one), then tests/.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(free_port()), str(Path(__file__).parent / "dp_loss_worker.py"),
                             str(path), str(tmp / "cache"), str(tmp / "out"), *DP_SETTINGS],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return tmp / "out", tiny_tokenizer(tmp / "cache")


@pytest.mark.slow
@pytest.mark.parametrize("setting", DP_SETTINGS)
def test_two_ranks_step_on_the_global_mean_by_hand_fused_as_full_logits(two_ranks, setting):
    out, tokenizer = two_ranks
    weighting, eos_weight = setting.split(":")
    ranks = [torch.load(out / f"{setting}-fused-rank{r}.pt", weights_only=False) for r in (0, 1)]
    logits = [torch.load(out / f"{setting}-logits-rank{r}.pt", weights_only=False) for r in (0, 1)]
    batches = ranks[0]["batches"] + ranks[1]["batches"]  # the global step: 2 ranks x 2 micro-batches
    assert not torch.equal(ranks[0]["batches"][0]["input_ids"], ranks[1]["batches"][0]["input_ids"])
    assert [r["lw"] for r in ranks] == [str(REPO / "lw" / "__init__.py")] * 2  # this checkout's code ran

    cfg = compose_lw(f"cache_dir={out}")
    model = build_model(cfg.model, tokenizer, seed=0)  # the ranks' initial weights
    expected, items = loss_by_hand(model, batches, tokenizer.eos_token_id, weighting, float(eos_weight))
    expected.backward()

    assert ranks[0]["num_items"] == ranks[1]["num_items"] == items  # counted over both ranks
    # What the Trainer logs: the mean over ranks of each rank's summed micro-batch losses.
    assert sum(sum(r["losses"]) for r in ranks) / 2 == pytest.approx(expected.item(), rel=1e-4)
    for name, param in model.named_parameters():
        for r in ranks:
            torch.testing.assert_close(r["grads"][name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
    # TRL's fused LM head in small tiles against full logits, on the same batches: equal to float32 precision.
    for fused, full in zip(ranks, logits):
        assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(fused["batches"], full["batches"]))
        assert fused["num_items"] == full["num_items"]
        assert fused["losses"] == pytest.approx(full["losses"], rel=1e-6)
        assert fused["grads"].keys() == full["grads"].keys() == dict(model.named_parameters()).keys()
        for name, grad in full["grads"].items():
            torch.testing.assert_close(fused["grads"][name], grad, rtol=1e-5, atol=1e-7, msg=name)


# ---------------------------------------------------------------------------------------------
# TRL's fused LM head against the full logits: the same loss and the same gradient of every
# parameter, in float32, with tiles small enough that one micro-batch spans many of them.

def small_tiles(monkeypatch_or_none=None):
    """TRL's tile sizes forced down to 16 tokens x 48 vocabulary entries (module constants, read
    at call time): a micro-batch of 2 x 64 tokens over the tiny vocabulary is dozens of tiles."""
    import trl.kernels.chunked_logprob as kernel
    import trl.trainer.utils as trl_utils

    for module, name, value in ((kernel, "TOKEN_CHUNK_SIZE", 16), (trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 48)):
        if monkeypatch_or_none is None:
            setattr(module, name, value)
        else:
            monkeypatch_or_none.setattr(module, name, value)


class LargestTensor(TorchDispatchMode):
    """The most elements of any tensor an operation returns while the mode is on (forward and backward)."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def one_step(cfg, tokenizer, dataset, run_dir, fused: bool):
    """(summed micro-batch losses, gradients, micro-batches, largest tensor of the step's operations)
    of one optimizer step's 2 micro-batches."""
    cfg.trainer.fused_lm_head = fused
    model = build_model(cfg.model, tokenizer, seed=0)
    trainer = build_trainer(cfg, model, tokenizer, dataset, run_dir, "none")
    batches, num_items = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 2, torch.device("cpu"))
    with LargestTensor() as seen:
        loss = sum(trainer.training_step(trainer.model, batch, num_items).item() for batch in batches)
    # TRL's token metrics come from the fused head's outputs only: proof of the path taken
    assert bool(trainer._metrics["train"]["entropy"]) == fused
    return loss, {name: p.grad.clone() for name, p in model.named_parameters()}, batches, seen.largest


@pytest.mark.parametrize("weighting, eos_weight, packed", [
    ("token_mean", 1.0, True), ("sequence_mean", 5.0, True), ("pack_mean", 1.0, True),
    ("pack_sequences_over_30", 5.0, True), ("token_mean", 5.0, False)])
def test_fused_lm_head_equals_full_logits(packed_setup, monkeypatch, weighting, eos_weight, packed):
    tmp, path, tokenizer = packed_setup
    small_tiles(monkeypatch)
    cfg = packed_config(path, tmp / "cache", weighting, eos_weight)
    cfg.data.pack_length = 160 if packed else None  # packs of several sequences, or padded rows of one each
    dataset, _ = build_sft_dataset(cfg, tokenizer, tmp)
    plain_loss, plain_grads, batches, plain_largest = one_step(cfg, tokenizer, dataset, tmp / "plain", fused=False)
    fused_loss, fused_grads, _, fused_largest = one_step(cfg, tokenizer, dataset, tmp / "fused", fused=True)
    tokens = batches[0]["input_ids"].numel()
    assert tokens >= 4 * 16 and len(tokenizer) > 4 * 48  # many tiles each way
    # No (tokens x vocabulary) tensor in the fused step: its largest is a weight or the packs' attention mask
    assert fused_largest < (tokens - 2) * len(tokenizer) <= plain_largest
    assert fused_largest <= max(tokens**2, *(p.numel() for p in plain_grads.values()))
    if packed:
        assert "position_ids" in batches[0] and batches[0]["pack_ids"].max() == 1  # padding-free, 2 packs a row
        # more sequences than packs: some pack holds several
        assert sum((b["position_ids"] == 0).sum() for b in batches) > sum(b["pack_ids"].max() + 1 for b in batches)
    else:
        assert (batches[0]["labels"][:, -1] == -100).any()  # padding
    assert fused_loss == pytest.approx(plain_loss, rel=1e-6)
    assert plain_grads.keys() == fused_grads.keys() and all(g.abs().sum() > 0 for g in plain_grads.values())
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_a_head_the_fused_lm_head_cannot_take_is_refused_naming_the_setting(packed_setup):
    """RoBERTa's causal LM head is dense + GELU + norm before its linear decoder, which is all that
    get_output_embeddings gives TRL's fused head: fused, its log-probabilities would be silently
    wrong. The trainer refuses it at start; with full logits it trains."""
    from transformers import RobertaConfig, RobertaForCausalLM

    tmp, path, tokenizer = packed_setup
    cfg = packed_config(path, tmp / "cache", "token_mean", 1.0)
    dataset, _ = build_sft_dataset(cfg, tokenizer, tmp)
    model = RobertaForCausalLM(RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64, is_decoder=True,
                                             pad_token_id=tokenizer.pad_token_id, max_position_embeddings=256))
    with pytest.raises(UserError, match=r"^trainer.fused_lm_head=true: RobertaForCausalLM has an output layer "
                                        r"\(RobertaLMHead\) .* set trainer.fused_lm_head=false"):
        build_trainer(cfg, model, tokenizer, dataset, tmp / "roberta", "none")
    cfg.trainer.fused_lm_head = False
    build_trainer(cfg, model, tokenizer, dataset, tmp / "roberta", "none")
