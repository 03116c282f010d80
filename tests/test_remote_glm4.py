"""Remote-code GLM-4 checkpoints (THUDM's `model_type: chatglm` format) load as transformers' native
GLM with a fast tokenizer built from their tokenizer.model: a tiny checkpoint in that format, written
here from config fields and weight names (no remote .py files), through lw (docs/models.md)."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from transformers import GlmConfig, GlmForCausalLM

from lw.config import GenerationConfig, ModelConfig
from lw.errors import UserError
from lw.eval.generate import HfBackend, generate
from lw.models import build_model, build_tokenizer
from lw.models.chat_format import get_chat_format
from lw.models.chatglm import native_checkpoint
from lw.models.glm4_tokenizer import SPECIAL_TOKENS
from lw.testing.remote_glm4 import write_remote_glm4

from helpers import compose_lw, run_lw
from test_bad_inputs import user_error

PROMPT = "Write a 12-word note about rivers."
# The official build_chat_input ids ([gMASK] <sop> <|user|>, encode("\n"), encode(prompt), <|assistant|>)
# of the test's tokenizer.model, read once from THUDM's ChatGLM4Tokenizer with tiktoken outside the
# repository (docs/models.md, "Checked against the remote code"); 398 ranks, so [gMASK] is 400.
OFFICIAL_IDS = {
    PROMPT: [400, 402, 405, 10, 375, 258, 32, 272, 45, 362, 359, 388, 370, 46, 406],
    "写一篇关于河流的短文，500字。": [400, 402, 405, 10, 397, 239, 188, 140, 53, 48, 48, 229, 173, 151, 290, 406],
    # a special token's spelling in a message is text (tiktoken's disallowed_special=()); "\n" apart
    "Write <|user|> twice.": [400, 402, 405, 10, 375, 32, 60, 124, 117, 115, 101, 114, 124, 62, 256, 119, 105, 99,
                              101, 46, 406],
    "\n\nfoo bar": [400, 402, 405, 10, 10, 10, 102, 111, 111, 32, 98, 97, 114, 406],
}
# The official training data of one exchange (train/pre_tokenize_glm4.py: build_single_message per turn, EOS).
OFFICIAL_TRAINING_IDS = [400, 402, 405, 10, 375, 258, 32, 272, 45, 362, 359, 388, 370, 46, 406, 10, 299, 369, 287,
                         285, 268, 289, 46, 398]


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    return write_remote_glm4(tmp_path_factory.mktemp("remote") / "glm4")


def model_cfg(path, chat_format="longwriter_glm4"):
    return OmegaConf.structured(ModelConfig(name="remote", path=str(path), chat_format=chat_format, dtype="float32",
                                            stop_tokens=["<|endoftext|>", "<|user|>", "<|observation|>"]))


@pytest.fixture(scope="module")
def loaded(remote):
    cfg = model_cfg(remote)
    tokenizer = build_tokenizer(cfg, os.environ["LW_CACHE"])
    return cfg, tokenizer, build_model(cfg, tokenizer, cache_dir=os.environ["LW_CACHE"]).eval()


def native_from_same_tensors(remote) -> GlmForCausalLM:
    """GlmForCausalLM of the remote config's shapes, its parameters copied one by one from the remote tensors."""
    raw = json.loads((remote / "config.json").read_text())
    heads, groups, d = raw["num_attention_heads"], raw["multi_query_group_num"], raw["kv_channels"]
    config = GlmConfig(vocab_size=raw["padded_vocab_size"], hidden_size=raw["hidden_size"],
                       intermediate_size=raw["ffn_hidden_size"], num_hidden_layers=raw["num_layers"],
                       num_attention_heads=heads, num_key_value_heads=groups, head_dim=d,
                       rms_norm_eps=raw["layernorm_epsilon"], max_position_embeddings=raw["seq_length"],
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * raw["rope_ratio"],
                                        "partial_rotary_factor": 0.5},
                       pad_token_id=raw["pad_token_id"], eos_token_id=raw["eos_token_id"])
    model = GlmForCausalLM(config).eval()
    tensors = load_file(remote / "model.safetensors")
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(tensors["transformer.embedding.word_embeddings.weight"])
        model.model.norm.weight.copy_(tensors["transformer.encoder.final_layernorm.weight"])
        model.lm_head.weight.copy_(tensors["transformer.output_layer.weight"])
        for i, layer in enumerate(model.model.layers):
            def t(name, i=i):
                return tensors[f"transformer.encoder.layers.{i}.{name}"]
            layer.input_layernorm.weight.copy_(t("input_layernorm.weight"))
            layer.post_attention_layernorm.weight.copy_(t("post_attention_layernorm.weight"))
            for kind in ("weight", "bias"):
                fused = t(f"self_attention.query_key_value.{kind}")
                getattr(layer.self_attn.q_proj, kind).copy_(fused[: heads * d])
                getattr(layer.self_attn.k_proj, kind).copy_(fused[heads * d: (heads + groups) * d])
                getattr(layer.self_attn.v_proj, kind).copy_(fused[(heads + groups) * d:])
            layer.self_attn.o_proj.weight.copy_(t("self_attention.dense.weight"))
            layer.mlp.gate_up_proj.weight.copy_(t("mlp.dense_h_to_4h.weight"))
            layer.mlp.down_proj.weight.copy_(t("mlp.dense_4h_to_h.weight"))
    return model


def test_a_remote_checkpoint_loads_as_native_glm_with_the_same_logits(remote, loaded):
    _, tokenizer, model = loaded
    assert type(model).__name__ == "GlmForCausalLM" and model.config.rope_parameters["rope_theta"] == 5e6
    ids = torch.tensor([OFFICIAL_IDS[PROMPT] + list(range(60))])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, native_from_same_tensors(remote)(input_ids=ids).logits)
    converted = tokenizer.name_or_path
    converted_config = json.loads((Path(converted) / "config.json").read_text())
    assert "auto_map" not in converted_config
    assert converted_config["model_type"] == "glm"


def test_the_tokenizer_gives_the_official_prompt_ids_and_its_specials_follow_the_vocabulary(loaded):
    _, tokenizer, _ = loaded
    first = OFFICIAL_IDS[PROMPT][0] - 2  # [gMASK] is the third special token
    assert tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(first, first + len(SPECIAL_TOKENS)))
    for prompt, official in OFFICIAL_IDS.items():
        assert get_chat_format("longwriter_glm4").prompt_ids(tokenizer, prompt) == official
        if "<|" not in prompt and not prompt.startswith("\n"):  # a server renders text, then tokenizes it whole
            assert tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                 tokenize=True, return_dict=False) == official
        # the training format writes the newline after <|assistant|> itself
        assert get_chat_format("glm4").prompt_ids(tokenizer, prompt) == official + tokenizer.encode("\n")
        assert tokenizer.decode(official, skip_special_tokens=True) == "\n" + prompt
    ids, mask = get_chat_format("glm4").tokenize(tokenizer, [{"role": "user", "content": PROMPT},
                                                            {"role": "assistant", "content": "The river runs to the sea."}])
    assert ids == OFFICIAL_TRAINING_IDS and mask == [0] * 16 + [1] * 8  # the answer and its EOS


@pytest.mark.parametrize("batching", ["static", "continuous"])
def test_it_stops_at_user_and_nothing_special_reaches_the_predictions(batching, loaded, tmp_path):
    cfg, tokenizer, model = loaded
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():  # rigged: <|user|> first, then " river" while the stop ids are masked
        head.weight.zero_()
        head.bias.fill_(-10.0)
        head.bias[tokenizer.convert_tokens_to_ids("<|user|>")] = 10.0
        head.bias[tokenizer.encode(" river", add_special_tokens=False)[0]] = 5.0
    original, model.lm_head = model.lm_head, head
    try:
        gen_cfg = OmegaConf.structured(GenerationConfig(temperature=0.0, max_new_tokens=40, batch_size=2,
                                                        batching=batching))
        backend = HfBackend(model, tokenizer, cfg.chat_format, gen_cfg, stop_tokens=cfg.stop_tokens)
        if batching == "static":
            config = backend.generation_config()
            config.min_new_tokens = 2
            backend.generation_config = lambda: config
        out = tmp_path / "predictions.jsonl"
        generate(backend, [{"id": str(i), "prompt": f"{PROMPT} {i}"} for i in range(3)], out)
    finally:
        model.lm_head = original
    word = tokenizer.decode(tokenizer.encode(" river", add_special_tokens=False)[:1])
    expected = (word * 2).strip() if batching == "static" else ""
    assert [json.loads(line)["response"] for line in out.read_text().splitlines()] == [expected] * 3
    assert not any(token in out.read_text() for token in ["<|", "[gMASK]", "<sop>"])


def test_a_hub_id_loads_from_the_hub_cache_offline(remote, tmp_path):
    from huggingface_hub import constants

    repo = constants.HF_HUB_CACHE + "/models--THUDM--tiny-glm4"
    snapshot = f"{repo}/snapshots/{'0' * 40}"
    shutil.copytree(remote, snapshot, dirs_exist_ok=True)
    os.makedirs(f"{repo}/refs", exist_ok=True)
    Path(f"{repo}/refs/main").write_text("0" * 40)
    native = native_checkpoint("THUDM/tiny-glm4", tmp_path / "cache")
    assert json.loads((Path(native) / "config.json").read_text())["architectures"] == ["GlmForCausalLM"]
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def write_variant(remote, path, config=None, tokenizer_model=None, drop=None):
    shutil.copytree(remote, path)
    if config:
        raw = json.loads((path / "config.json").read_text())
        raw.update({k: v for k, v in config.items() if v is not None})
        for k in [k for k, v in config.items() if v is None]:
            raw.pop(k)
        (path / "config.json").write_text(json.dumps(raw))
    if tokenizer_model is not None:
        (path / "tokenizer.model").write_bytes(tokenizer_model)
    if drop:
        tensors = load_file(path / "model.safetensors")
        save_file({k: v for k, v in tensors.items() if k != drop}, path / "model.safetensors")
    return path


BAD = [
    ({"config": {"rope_ratio": None}}, r"config.json: no rope_ratio: lw converts GLM-4 checkpoints"),
    ({"config": {"pre_seq_len": 128}}, r"config.json: pre_seq_len=128 is not GLM-4's \(None\): a ChatGLM2/3 feature"),
    ({"config": {"multi_query_attention": False}}, r"multi_query_attention=False is not GLM-4's"),
    ({"tokenizer_model": b"IQ== 0\nIg== one\n"}, r"tokenizer.model line 2: expected \"<base64 token> <rank>\", got .Ig== one."),
    ({"tokenizer_model": b"\xff\xfe binary"}, r"tokenizer.model: not a GLM-4 tokenizer.model \(not text: a SentencePiece"),
    ({"config": {"padded_vocab_size": 64}}, r"more than padded_vocab_size=64: another vocabulary"),
    ({"drop": "transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"},
     r"the weights lack 1 of the checkpoint's tensors \(first: transformer.encoder.layers.1.mlp.dense_4h_to_h"),
]


@pytest.mark.parametrize("change,message", BAD, ids=[m.split(":")[0][:30] for _, m in BAD])
def test_a_bad_remote_checkpoint_is_named_by_file_and_field(change, message, remote, tmp_path):
    path = write_variant(remote, tmp_path / "bad", **change)
    with pytest.raises(UserError, match=message):
        native_checkpoint(str(path), tmp_path / "cache")


@pytest.mark.slow
def test_a_bad_remote_checkpoint_ends_lw_in_one_line(remote, tmp_path):
    no_weights = tmp_path / "no-weights"
    shutil.copytree(remote, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    line = user_error(run_lw("task=eval", "model=longwriter_glm4_9b", f"model.path={no_weights}", "logger=none",
                             f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False))
    assert f"{no_weights}: no weights (*.safetensors or pytorch_model*.bin)" in line


@pytest.mark.slow
def test_dpo_from_a_remote_checkpoint_saves_a_native_model_that_eval_loads(remote, tmp_path):
    answer = "the quiet river carries the bank . the old stream meets the delta ."
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"{PROMPT} {i}", "chosen": answer, "rejected": "the river ."}) + "\n"
                             for i in range(4)))
    run_lw("trainer=dpo", "model=glm4_9b", f"model.path={remote}", "model.dtype=float32", "data=pairs",
           f"data.path={pairs}", "trainer.args.max_steps=1", "trainer.args.per_device_train_batch_size=2",
           "trainer.args.warmup_steps=0", "eval.toy_ruler.lengths=[12]", "eval.toy_ruler.topics=[rivers]",
           "generation.max_new_tokens=2", "logger=none", f"hydra.run.dir={tmp_path / 'dpo'}", cwd=tmp_path)
    saved = tmp_path / "dpo" / "model"
    config = json.loads((saved / "config.json").read_text())
    assert config["architectures"] == ["GlmForCausalLM"] and "auto_map" not in config
    assert (saved / "tokenizer.json").is_file() and not (saved / "tokenizer.model").exists()
    template = (saved / "chat_template.jinja").read_text() if (saved / "chat_template.jinja").exists() else \
        json.loads((saved / "tokenizer_config.json").read_text())["chat_template"]
    assert template.startswith("[gMASK]<sop>")  # the glm4 format, for a server
    assert json.loads((saved / "generation_config.json").read_text())["eos_token_id"]
    # The run ends by evaluating model/ as task=eval does (lw.eval.run.evaluate loads the saved directory).
    assert "ruler/S_l" in json.loads((tmp_path / "dpo" / "metrics.json").read_text())
    assert (tmp_path / "dpo" / "eval" / "toy_ruler" / "predictions.jsonl").is_file()


def test_the_dry_run_plans_a_remote_checkpoint_as_glm(remote):
    from lw.models.loading import model_config

    config = model_config(compose_lw("model=longwriter_glm4_9b", f"model.path={remote}"))
    assert config.model_type == "glm" and config.num_key_value_heads == 2 and config.head_dim == 8


@pytest.mark.slow
def test_a_vllm_server_gets_the_prompt_ids_each_seed_and_the_stop_ids(remote, loaded, tmp_path):
    """generation=vllm_server: what `vllm serve` receives is what generation=vllm would pass to vLLM."""
    from lw.eval.generate import build_backend, item_seed
    from lw.testing.openai_server import OpenAIServer, Reply

    _, tokenizer, _ = loaded
    with OpenAIServer(lambda body, attempt: Reply("the river runs")) as server:
        cfg = compose_lw("task=eval", "model=longwriter_glm4_9b", f"model.path={remote}", "generation=vllm_server",
                         "sampling=official", f"generation.base_url={server.base_url}", "seed=3")
        rows = generate(build_backend(cfg, cfg.model.path), [{"id": "a", "prompt": PROMPT}, {"id": "b", "prompt": PROMPT}],
                        tmp_path / "predictions.jsonl")
        bodies = {r["body"]["seed"]: r["body"] for r in server.requests}
    assert [r["response"] for r in rows] == ["the river runs"] * 2
    assert sorted(bodies) == sorted(item_seed(3, [i]) for i in "ab")
    body = next(iter(bodies.values()))
    stops = sorted(tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|user|>", "<|observation|>"]))
    assert body["prompt"] == OFFICIAL_IDS[PROMPT] and body["model"] == "longwriter_glm4_9b"
    assert (body["temperature"], body["top_p"], body["top_k"], body["max_tokens"]) == (0.5, 0.8, 50, 32768)
    assert sorted(body["stop_token_ids"]) == stops and body["skip_special_tokens"] is True


def test_a_complete_checkpoint_transformers_cannot_load_is_not_called_incomplete(tiny_model, tmp_path):
    from lw.models.pretrained import first_line

    odd = shutil.copytree(tiny_model, tmp_path / "odd")
    raw = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**raw, "model_type": "no_such_model",
                                                 "auto_map": {"AutoConfig": "configuration_odd.OddConfig"}}))
    with pytest.raises(UserError) as caught:
        build_model(model_cfg(odd), None, cache_dir=str(tmp_path / "cache"))
    message = str(caught.value)
    assert "not a complete checkpoint" not in message and "cannot load this checkpoint: " in message
    assert "it is remote code (config.json's auto_map): model.trust_remote_code=true runs it" in message
    reason = message.split("cannot load this checkpoint: ", 1)[1].split("; it is remote code")[0]
    original = first_line(ValueError(reason.removesuffix(" ...")), limit=10_000)
    assert reason.endswith(" ...") or reason == original  # shortened at a space, never mid-word
    long = "word " * 100
    assert first_line(ValueError(long)).endswith("word ...")
    incomplete = shutil.copytree(tiny_model, tmp_path / "incomplete", ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(UserError, match="not a complete checkpoint: no weights in it"):
        build_model(model_cfg(incomplete), None, cache_dir=str(tmp_path / "cache"))


def test_remote_code_that_fails_on_this_transformers_is_named_so(tiny_model, tmp_path):
    odd = shutil.copytree(tiny_model, tmp_path / "odd-remote")
    raw = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**raw, "model_type": "odd",
                                                 "auto_map": {"AutoConfig": "configuration_odd.OddConfig"}}))
    (odd / "configuration_odd.py").write_text(
        "from transformers import PretrainedConfig\n\n\nclass OddConfig(PretrainedConfig):\n"
        "    model_type = 'odd'\n\n    def __init__(self, **kwargs):\n"
        "        super().__init__(**kwargs)\n        self.length = self.max_length\n")
    cfg = OmegaConf.merge(model_cfg(odd), {"trust_remote_code": True})
    with pytest.raises(UserError, match=r"its remote code \(model.trust_remote_code=true\) failed under transformers "
                                        r"5\.\d+\.\d+: AttributeError: 'OddConfig' object has no attribute 'max_length'"):
        build_model(cfg, None, cache_dir=str(tmp_path / "cache"))
