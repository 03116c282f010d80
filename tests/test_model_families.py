"""The real model families on CPU: golden prompts of every chat format (training, the official
LongWriter inference formats, the chat models' own templates), the stop-token set, a GLM-style model
that ends its turn with <|user|>, the sampling presets, and the bad inputs of each (docs/models.md)."""

import json
import os

import pytest
import torch
from omegaconf import OmegaConf
from transformers import GenerationConfig as TransformersGenerationConfig

from lw.config import GenerationConfig, ModelConfig, TinyModelConfig
from lw.errors import UserError
from lw.eval.generate import HfBackend, generate
from lw.models import build_model, build_tokenizer
from lw.models.chat_format import get_chat_format
from lw.models.stops import stop_token_ids, strip_end_of_turn
from lw.models.tiny import tiny_tokenizer

from helpers import compose_lw, run_lw
from test_bad_inputs import user_error

PROMPT = "Write a 12-word note about rivers."
LLAMA_SYSTEM = ("<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
                "Today Date: 26 Jul 2024\n\n<|eot_id|>")
# (format, tokenizer family, the generation prompt as text)
GOLDEN = [
    ("glm4", "word", "[gMASK]<sop><|user|>\nWrite a 12-word note about rivers.<|assistant|>\n"),
    ("llama3_1", "word", "<s>[INST]Write a 12-word note about rivers.[/INST]"),
    ("longwriter_glm4", "glm4_chat", "[gMASK]<sop><|user|>\nWrite a 12-word note about rivers.<|assistant|>"),
    ("longwriter_llama3_1", "llama3_1_instruct", "<|begin_of_text|>[INST]Write a 12-word note about rivers.[/INST]"),
    ("native", "glm4_chat", "[gMASK]<sop><|user|>\nWrite a 12-word note about rivers.<|assistant|>"),
    ("native", "llama3_1_instruct", "<|begin_of_text|>" + LLAMA_SYSTEM + "<|start_header_id|>user<|end_header_id|>"
     "\n\nWrite a 12-word note about rivers.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
]


@pytest.fixture(scope="module")
def tokenizers():
    cache = os.environ["LW_CACHE"]
    return {family: tiny_tokenizer(cache, family) for family in ("word", "glm4_chat", "llama3_1_instruct")}


@pytest.mark.parametrize("name,family,text", GOLDEN, ids=[f"{n}-{f}" for n, f, _ in GOLDEN])
def test_golden_generation_prompts(name, family, text, tokenizers):
    tokenizer, chat_format = tokenizers[family], get_chat_format(name)
    assert chat_format.prompt_text(tokenizer, PROMPT) == text
    ids = chat_format.prompt_ids(tokenizer, PROMPT)
    if family != "word":  # byte-level BPE: the ids decode back to exactly the text
        assert tokenizer.decode(ids) == text
    else:
        assert tokenizer.convert_ids_to_tokens(ids)[:3] in (["[gMASK]", "<sop>", "<|user|>"], ["<s>", "[INST]", "Write"])


def test_official_glm4_prompt_is_the_training_prompt_less_the_newline(tokenizers):
    """build_chat_input ends at <|assistant|>: the newline training put after it is left to the model,
    and the newline before the prompt is its own token, as build_chat_input encodes it."""
    tokenizer = tokenizers["glm4_chat"]
    official = get_chat_format("longwriter_glm4").prompt_ids(tokenizer, PROMPT)
    newline = tokenizer.encode("\n", add_special_tokens=False)
    user, assistant = tokenizer.convert_tokens_to_ids(["<|user|>", "<|assistant|>"])
    assert official[2:3 + len(newline)] == [user, *newline] and official[-1] == assistant
    assert official == get_chat_format("native").prompt_ids(tokenizer, PROMPT)


def test_official_llama_prompt_has_one_bos(tokenizers):
    tokenizer = tokenizers["llama3_1_instruct"]
    ids = get_chat_format("longwriter_llama3_1").prompt_ids(tokenizer, PROMPT)
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    assert ids == [tokenizer.bos_token_id] + tokenizer(f"[INST]{PROMPT}[/INST]", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", ["longwriter_glm4", "longwriter_llama3_1", "native"])
def test_inference_formats_refuse_to_train(name, tokenizers):
    conversation = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": "the river ."}]
    with pytest.raises(UserError, match=f"model.chat_format={name} is an inference format"):
        get_chat_format(name).tokenize(tokenizers["glm4_chat"], conversation)


def test_stop_ids_are_the_union_and_a_missing_one_is_named(tokenizers):
    glm = tokenizers["glm4_chat"]
    user, observation, eos = glm.convert_tokens_to_ids(["<|user|>", "<|observation|>", "<|endoftext|>"])
    assert stop_token_ids(glm) == [eos]  # the EOS alone: what lw stopped on before
    assert stop_token_ids(glm, chat_format=get_chat_format("longwriter_glm4")) == sorted([eos, user, observation])
    llama = tokenizers["llama3_1_instruct"]
    ids = stop_token_ids(llama, ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"], get_chat_format("native"),
                         TransformersGenerationConfig(eos_token_id=[0, 5]))
    assert ids == sorted(set(llama.convert_tokens_to_ids(["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"]) + [0, 5]))
    with pytest.raises(UserError, match=r"model.stop_tokens: '<\|eot_id\|>' is not a token"):
        stop_token_ids(glm, ["<|eot_id|>"])


def test_openai_answers_lose_a_trailing_end_of_turn_marker():
    assert strip_end_of_turn("the river runs .<|eot_id|>\n", ["<|eot_id|>", "<|user|>"]) == "the river runs ."
    assert strip_end_of_turn("a <|user|> b", ["<|user|>"]) == "a <|user|> b"
    # An OpenAI-compatible server may return two markers, each one of the chat format's stops.
    markers = ["<|user|>", "<|observation|>"]
    assert strip_end_of_turn("the river runs .<|user|>\n<|observation|>", markers) == "the river runs ."
    assert strip_end_of_turn("the river runs .<|observation|><|user|> ", markers) == "the river runs ."


@pytest.fixture(scope="module")
def glm_chat_model(tokenizers):
    """A tiny GLM whose LM head always prefers <|user|>, then "river": as a GLM-4 chat model ends its turn."""
    model_cfg = OmegaConf.structured(ModelConfig(
        name="tiny", chat_format="longwriter_glm4", dtype="float32",
        stop_tokens=["<|endoftext|>", "<|user|>", "<|observation|>"],
        tiny=TinyModelConfig(architecture="glm", family="glm4_chat", hidden_size=32, num_heads=2,
                             intermediate_size=64)))
    tokenizer = build_tokenizer(model_cfg, os.environ["LW_CACHE"])
    model = build_model(model_cfg, tokenizer, seed=0)
    head = torch.nn.Linear(model.config.hidden_size, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-10.0)
        head.bias[tokenizer.convert_tokens_to_ids("<|user|>")] = 10.0
        head.bias[tokenizer.encode(" river", add_special_tokens=False)[0]] = 5.0
    model.lm_head = head
    return model_cfg, tokenizer, model


def test_a_glm_chat_model_stops_at_user_and_nothing_special_is_saved(tmp_path, glm_chat_model):
    model_cfg, tokenizer, model = glm_chat_model
    gen_cfg = OmegaConf.structured(GenerationConfig(temperature=0.0, max_new_tokens=40, batch_size=2,
                                                    batching="static"))
    backend = HfBackend(model, tokenizer, model_cfg.chat_format, gen_cfg, stop_tokens=model_cfg.stop_tokens)
    config = backend.generation_config()
    config.min_new_tokens = 3  # the stop ids are masked for 3 tokens: "river" x 3, then <|user|>
    backend.generation_config = lambda: config
    user = tokenizer.convert_tokens_to_ids("<|user|>")
    # Without the stop set (the tokenizer's EOS only) nothing would end the turn before max_new_tokens.
    assert user not in stop_token_ids(tokenizer) and user in backend.stop_ids
    out = tmp_path / "predictions.jsonl"
    generate(backend, [{"id": str(i), "prompt": f"{PROMPT} {i}"} for i in range(3)], out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    word = tokenizer.decode(tokenizer.encode(" river", add_special_tokens=False)[:1])
    assert [r["response"] for r in rows] == [(word * 3).strip()] * 3
    assert not any(token in out.read_text() for token in ["<|", "[gMASK]", "<sop>"])


def test_continuous_batching_stops_at_user_too(tmp_path, glm_chat_model):
    """The engine has no min_new_tokens: the rigged model ends its turn at once, and the run takes a
    couple of forward steps instead of the 40 it would take without <|user|> among the stop ids."""
    model_cfg, tokenizer, model = glm_chat_model
    gen_cfg = OmegaConf.structured(GenerationConfig(temperature=0.0, max_new_tokens=40, batch_size=2))
    backend = HfBackend(model, tokenizer, model_cfg.chat_format, gen_cfg, stop_tokens=model_cfg.stop_tokens)
    steps = []
    handle = model.register_forward_hook(lambda *_: steps.append(1))
    try:
        generate(backend, [{"id": str(i), "prompt": f"{PROMPT} {i}"} for i in range(3)], tmp_path / "p.jsonl")
    finally:
        handle.remove()
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["response"] for r in rows] == ["", "", ""]
    assert 1 <= len(steps) < 10


def test_sampling_presets_land_in_generation_per_model():
    official = {"longwriter_glm4_9b": (0.5, 0.8, 50), "glm4_9b_chat": (0.5, 0.8, 50),
                "longwriter_llama3_1_8b": (0.5, 0.9, 50), "llama3_1_8b_instruct": (0.5, 0.9, 50)}
    for model, values in official.items():
        gen = compose_lw(f"model={model}", "sampling=official").generation
        assert (gen.temperature, gen.top_p, gen.top_k, gen.max_new_tokens) == (*values, 32768), model
        family = "official_glm4" if "glm" in model else "official_llama3_1"
        named = compose_lw(f"model={model}", f"sampling={family}").generation
        assert (named.temperature, named.top_p, named.top_k) == values
    gen = compose_lw("model=longwriter_glm4_9b").generation  # the default stays lw's own, top_k the backend's
    assert (gen.temperature, gen.top_p, gen.top_k, gen.max_new_tokens) == (0.5, 1.0, 50, 32768)
    assert compose_lw("generation=openai").generation.top_k is None  # the OpenAI API refuses top_k
    gen = compose_lw("sampling=official_vllm", "generation=vllm").generation
    assert (gen.temperature, gen.top_p, gen.top_k, gen.max_new_tokens) == (0.5, 0.8, 50, 32768)


def test_model_configs_plan_offline_and_name_their_formats():
    from lw.models.stops import token_id  # noqa: F401  (the one resolver the configs' stop tokens go through)

    for model, fmt in [("longwriter_glm4_9b", "longwriter_glm4"), ("longwriter_llama3_1_8b", "longwriter_llama3_1"),
                       ("glm4_9b_chat", "native"), ("llama3_1_8b_instruct", "native")]:
        cfg = compose_lw(f"model={model}")
        assert cfg.model.chat_format == fmt and get_chat_format(fmt).trainable is False
        assert cfg.model.stop_tokens and cfg.model.arch.num_hidden_layers in (32, 40)


# --- through python -m lw ----------------------------------------------------------------------------

@pytest.mark.slow
def test_bad_model_inputs_are_one_line(tmp_path, tiny_model):
    base = ("task=eval", f"model.path={tiny_model}", "eval.toy_ruler.lengths=[12]", "eval.toy_ruler.topics=[rivers]",
            "generation.max_new_tokens=2", "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    line = user_error(run_lw(*base, "model.chat_format=native", cwd=tmp_path, check=False))
    assert "model.chat_format=native" in line and "has no chat template" in line
    line = user_error(run_lw(*base, 'model.stop_tokens=["<|eot_id|>"]', cwd=tmp_path, check=False))
    assert "model.stop_tokens: '<|eot_id|>' is not a token" in line
    line = user_error(run_lw("task=prepare", "model.chat_format=longwriter_llama3_1", "data.toy.num_samples=8",
                             "logger=none", f"hydra.run.dir={tmp_path / 'prep'}", cwd=tmp_path, check=False))
    assert "model.chat_format=longwriter_llama3_1 is an inference format" in line


@pytest.mark.slow
def test_a_trained_model_saves_its_stop_ids(tmp_path):
    run_lw("experiment=smoke", "model.chat_format=glm4", "trainer.args.max_steps=1", "data.toy.num_samples=16",
           "eval.toy_ruler.lengths=[12]", "eval.toy_ruler.samples_per_prompt=1", "generation.max_new_tokens=2",
           "logger=none", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=600)
    model = tmp_path / "run" / "model"
    tokenizer = tiny_tokenizer(os.environ["LW_CACHE"])
    saved = json.loads((model / "generation_config.json").read_text())["eos_token_id"]
    assert sorted(saved) == sorted(tokenizer.convert_tokens_to_ids(["</s>", "<|user|>"]))
    assert json.loads((model / "tokenizer_config.json").read_text()).get("chat_template") or \
        (model / "chat_template.jinja").exists()
