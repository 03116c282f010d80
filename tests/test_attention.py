"""Attention on padding-free packs: which implementation a run takes (`model.attn_implementation`),
and that every implementation that runs here keeps packed samples apart, in logits and in loss."""

import pytest
import torch
from omegaconf import OmegaConf

from lw.config import ModelConfig, TinyModelConfig
from lw.data.packing import PackCollator
from lw.errors import UserError
from lw.models import attention_implementation, build_model, flash_attention_installed, use_attention
from lw.models.tiny import tiny_tokenizer
from lw.train.loss import WEIGHTINGS, lm_loss

from helpers import compose_lw, run_lw
from test_bad_inputs import user_error


def model_config(choice="auto", architecture="llama"):
    return OmegaConf.structured(ModelConfig(name="tiny", chat_format="llama3_1", dtype="float32",
                                            attn_implementation=choice, tiny=TinyModelConfig(architecture=architecture)))


# ------------------------------------------------------------------------------------ resolution

@pytest.mark.parametrize("device, packing, training, flash, expected", [
    ("cuda", True, True, False, "flex_attention"),
    ("cuda", True, True, True, "flash_attention_2"),
    ("cuda", False, True, True, "sdpa"),  # no packing: sdpa's causal kernel costs what the samples cost
    ("cuda", False, False, True, "sdpa"),  # generation
    ("cpu", True, True, False, "sdpa"),  # flex attention has no backward pass on CPU
    ("cpu", False, False, False, "sdpa"),
])
def test_auto_takes_a_per_sample_implementation_for_packs_on_a_gpu_only(monkeypatch, device, packing, training,
                                                                        flash, expected):
    monkeypatch.setattr("lw.models.attention.flash_attention_installed", lambda: flash)
    assert attention_implementation(model_config("auto"), device, packing=packing, training=training) == expected
    assert attention_implementation(model_config(None), device, packing=packing, training=training) == expected


@pytest.mark.parametrize("choice", ["sdpa", "eager", "flex_attention"])
def test_an_explicit_choice_that_runs_is_kept(choice):
    assert attention_implementation(model_config(choice), "cuda", packing=True, training=True) == choice
    assert attention_implementation(model_config(choice), "cpu", packing=False, training=False) == choice


@pytest.mark.parametrize("choice, device, training, message", [
    ("flex_attention", "cpu", True, r"flex_attention: PyTorch's flex attention has no backward pass on CPU.*pick sdpa"),
    ("flash_attention_2", "cpu", False, r"flash_attention_2: flash attention runs on CUDA GPUs only; pick sdpa"),
    ("spda", "cuda", True, r"model.attn_implementation=spda is not an attention implementation: pick auto, sdpa"),
])
def test_an_explicit_choice_that_cannot_run_is_refused_in_one_line(choice, device, training, message):
    with pytest.raises(UserError, match=message) as err:
        attention_implementation(model_config(choice), device, packing=True, training=training)
    assert "\n" not in str(err.value)


def test_flash_attention_without_its_package_is_refused(monkeypatch):
    monkeypatch.setattr("lw.models.attention.flash_attention_installed", lambda: False)
    with pytest.raises(UserError, match="flash-attn package is not installed.*pick auto"):
        attention_implementation(model_config("flash_attention_2"), "cuda", packing=True, training=True)


@pytest.mark.slow
def test_flex_attention_for_training_on_cpu_fails_at_start(tmp_path):
    line = user_error(run_lw("model.attn_implementation=flex_attention", "logger=none", cwd=tmp_path, check=False))
    assert line.startswith("lw: error: model.attn_implementation=flex_attention: PyTorch's flex attention has no "
                           "backward pass on CPU")
    assert not list(tmp_path.rglob("train.jsonl"))  # at start: no data was read


def test_training_on_packs_switches_the_model_built_for_generation(monkeypatch, tmp_path):
    """The pipeline builds the model as for generation (sdpa); the trainer gives it the packed
    implementation of its device: flex_attention on a GPU (faked here), sdpa without packs."""
    from datasets import Dataset

    from lw.train.sft import build_trainer

    monkeypatch.setattr("lw.models.attention.flash_attention_installed", lambda: False)
    cfg = compose_lw("data.pack_length=64", f"cache_dir={tmp_path / 'cache'}")
    tokenizer = tiny_tokenizer(tmp_path / "cache")
    model = build_model(cfg.model, tokenizer)
    assert model.config._attn_implementation == "sdpa"
    packs = Dataset.from_dict({"input_ids": [[5, 6, 7]], "completion_mask": [[0, 1, 1]], "seq_lengths": [[3]]})
    monkeypatch.setattr("lw.train.sft.local_device", lambda use_cpu=False: "cuda")
    build_trainer(cfg, model, tokenizer, packs, tmp_path / "run", "none")
    assert model.config._attn_implementation == "flex_attention"
    rows = Dataset.from_dict({"input_ids": [[5, 6, 7]], "completion_mask": [[0, 1, 1]]})
    build_trainer(cfg, model, tokenizer, rows, tmp_path / "run", "none")
    assert model.config._attn_implementation == "sdpa"
    # The distributed worker builds its model for packed training on its own device at once.
    monkeypatch.setattr("lw.models.loading.local_device", lambda use_cpu=False: "cuda")
    assert build_model(cfg.model, tokenizer, packing=True, training=True).config._attn_implementation == "flex_attention"


# ------------------------------------------------------------------------------ packed = separate

# Two packs in one padding-free row, as the collator joins a micro-batch of two. Over 128 tokens,
# so flex attention's 128-token blocks hold whole samples, parts of samples and nothing to skip.
PACKS = [[150, 40, 10], [70, 30]]
EOS_WEIGHT = 5.0


def forward_implementations() -> list[str]:
    """Every implementation that runs forward on this machine."""
    found = ["eager", "sdpa", "flex_attention"]
    if torch.cuda.is_available() and flash_attention_installed():
        found.append("flash_attention_2")
    return found


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def samples(tokenizer):
    """(input_ids, labels) per sample: a prompt without targets, an answer ending in EOS."""
    generator = torch.Generator().manual_seed(0)
    found = []
    for pack in PACKS:
        for n in pack:
            ids = torch.randint(20, len(tokenizer), (n,), generator=generator)
            ids[-1] = tokenizer.eos_token_id
            labels = ids.clone()
            labels[: n // 3] = -100
            found.append((ids.tolist(), labels.tolist()))
    return found


@pytest.fixture(scope="module")
def batch(samples, tokenizer):
    examples, i = [], 0
    for pack in PACKS:
        rows = samples[i:i + len(pack)]
        examples.append({"input_ids": sum((ids for ids, _ in rows), []), "labels": sum((lab for _, lab in rows), []),
                         "seq_lengths": pack})
        i += len(pack)
    return PackCollator(pad_token_id=tokenizer.pad_token_id)(examples)


@pytest.fixture(scope="module", params=["llama", "glm"])
def model(request, tokenizer):
    return build_model(model_config("eager", request.param), tokenizer, seed=0).eval()


def packed_forward(model, batch):
    """The model on the packed row with everything the collator gives it, as the trainer calls it."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "pack_ids")}
    return model(**inputs, use_cache=False).logits


def separate_logits(model, samples):
    use_attention(model, "eager")  # the plainest reference: softmax(QK^T) over one sample at a time
    return torch.cat([model(input_ids=torch.tensor([ids]), use_cache=False).logits[0] for ids, _ in samples])


def loss_per_sample(model, samples, weighting):
    """The weighted loss from its definition, every sample through the model on its own: token_mean over all
    targets, sequence_mean over samples, pack_mean over packs (each the mean of its own targets),
    pack_sequences_over_30 over packs (each pack's mean times its number of samples / 30)."""
    use_attention(model, "eager")
    terms = []  # (weighted nll, sample, pack)
    packs = [p for p, pack in enumerate(PACKS) for _ in pack]
    for s, (ids, labels) in enumerate(samples):
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float(), -1)
        for t in range(1, len(ids)):
            if labels[t] != -100:
                w = EOS_WEIGHT if labels[t] == model.config.eos_token_id else 1.0
                terms.append((-w * logp[t - 1, labels[t]], s, packs[s]))
    if weighting == "token_mean":
        return torch.stack([x for x, _, _ in terms]).mean()
    key = 1 if weighting == "sequence_mean" else 2
    groups: dict = {}
    for term in terms:
        groups.setdefault(term[key], []).append(term[0])
    means = {k: torch.stack(v).mean() for k, v in groups.items()}
    if weighting == "pack_sequences_over_30":  # each pack's mean times its sequences (with targets) / 30
        means = {p: m * len({s for _, s, q in terms if q == p}) / 30 for p, m in means.items()}
    return torch.stack(list(means.values())).mean()


@pytest.mark.parametrize("implementation", forward_implementations())
def test_packed_logits_equal_separate_forwards(model, samples, batch, implementation):
    with torch.no_grad():
        expected = separate_logits(model, samples)
        use_attention(model, implementation)
        packed = packed_forward(model, batch)[0]
    assert model.config._attn_implementation == implementation
    torch.testing.assert_close(packed, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("implementation", forward_implementations())
def test_packed_loss_equals_the_per_sample_loss_for_every_weighting(model, samples, batch, implementation):
    with torch.no_grad():
        expected = {w: loss_per_sample(model, samples, w).item() for w in WEIGHTINGS}
        use_attention(model, implementation)
        logits = packed_forward(model, batch)
    for weighting, value in expected.items():
        got = lm_loss(logits, batch["labels"], weighting=weighting, eos_token_id=model.config.eos_token_id,
                      eos_weight=EOS_WEIGHT, position_ids=batch["position_ids"], pack_ids=batch["pack_ids"])
        assert got.item() == pytest.approx(value, rel=1e-5), weighting
    assert len({round(v, 5) for v in expected.values()}) == 4  # the weightings differ on this mix


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])  # flex attention trains on GPUs only
def test_packed_gradients_equal_the_per_sample_gradients(model, samples, batch, implementation):
    model.zero_grad()
    loss_per_sample(model, samples, "sequence_mean").backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    use_attention(model, implementation)
    lm_loss(packed_forward(model, batch), batch["labels"], weighting="sequence_mean",
            eos_token_id=model.config.eos_token_id, eos_weight=EOS_WEIGHT, position_ids=batch["position_ids"],
            pack_ids=batch["pack_ids"]).backward()
    for got, want in zip((p.grad for p in model.parameters()), expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)
    model.zero_grad()


def test_the_benchmark_packs_its_rows_as_the_collator_does():
    """benchmarks/packed_attention.py builds its rows with torch alone (the GPU image lacks datasets
    and trl); they must be what PackCollator gives the model."""
    import importlib.util

    from helpers import REPO

    spec = importlib.util.spec_from_file_location("packed_attention", REPO / "benchmarks" / "packed_attention.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    lengths = benchmark.length_mix(4096, seed=0)
    assert sum(lengths) == 4096 and max(lengths) <= 2048 and sum(n < 2048 // 4 for n in lengths) >= 3
    ours = benchmark.packed_batch(lengths, vocab=500, seed=0)
    collated = PackCollator(pad_token_id=0)([{"input_ids": ours["input_ids"][0].tolist(), "seq_lengths": lengths}])
    for key, value in ours.items():  # the collator adds pack_ids (lw's loss) and seq_idx (linear attention)
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(collated[key])), key
