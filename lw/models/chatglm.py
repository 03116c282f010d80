"""THUDM's remote-code GLM-4 checkpoints (`model_type: chatglm`) as transformers' native GLM.

glm-4-9b, glm-4-9b-chat and LongWriter-glm4-9b exist on the hub only as remote code
(`ChatGLMForConditionalGeneration`, `ChatGLM4Tokenizer`) written for transformers 4.4x, which does not
load on transformers 5. Their network is transformers' `GlmForCausalLM`: the same layers under other
names, the query/key/value projections fused into one. lw converts such a checkpoint once into a
native directory (config.json as `GlmConfig`, the weights renamed and split, the fast tokenizer of
lw.models.glm4_tokenizer, the generation config) in `cache_dir/native/`, and loads that; the remote
code is never run. The converted directory is what `vllm serve` or `transformers serve` take too
(`lw-convert-glm4`). Facts and sources: docs/models.md, "Remote-code GLM-4 checkpoints".
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from filelock import FileLock

from lw.errors import UserError

log = logging.getLogger(__name__)

CONVERSION_VERSION = 1  # part of the cache key: a change to the conversion converts again
# Fields whose value GLM-4's network (and GlmForCausalLM) has; another value is another network.
GLM4_ARCHITECTURE = {"rmsnorm": True, "post_layer_norm": True, "add_bias_linear": False,
                     "apply_residual_connection_post_layernorm": False, "multi_query_attention": True}
REQUIRED = ["padded_vocab_size", "hidden_size", "ffn_hidden_size", "num_layers", "num_attention_heads",
            "multi_query_group_num", "kv_channels", "layernorm_epsilon", "seq_length", "rope_ratio"]
# ChatGLM2/3 features GLM-4 dropped: P-tuning prefixes and quantized weights.
OLDER_GENERATION = {"pre_seq_len": None, "quantization_bit": 0}
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")
# Remote name -> native name; query_key_value is split into q/k/v (split_qkv).
RENAMES = [
    (r"transformer\.embedding\.word_embeddings\.weight", "model.embed_tokens.weight"),
    (r"transformer\.encoder\.final_layernorm\.weight", "model.norm.weight"),
    (r"transformer\.output_layer\.weight", "lm_head.weight"),
    (r"transformer\.encoder\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight",
     r"model.layers.\1.\2.weight"),
    (r"transformer\.encoder\.layers\.(\d+)\.self_attention\.dense\.weight", r"model.layers.\1.self_attn.o_proj.weight"),
    (r"transformer\.encoder\.layers\.(\d+)\.mlp\.dense_h_to_4h\.weight", r"model.layers.\1.mlp.gate_up_proj.weight"),
    (r"transformer\.encoder\.layers\.(\d+)\.mlp\.dense_4h_to_h\.weight", r"model.layers.\1.mlp.down_proj.weight"),
]
QKV = re.compile(r"transformer\.encoder\.layers\.(\d+)\.self_attention\.query_key_value\.(weight|bias)")
DROPPED = re.compile(r"transformer\.rotary_pos_emb\.inv_freq")  # recomputed by the native rotary embedding


def is_chatglm(config: dict) -> bool:
    return config.get("model_type") == "chatglm"


def glm_config(chatglm: dict, source: str):
    """GlmConfig of a GLM-4 chatglm config.json; what is not GLM-4 is refused, naming the field."""
    from transformers import GlmConfig

    where = f"{source}/config.json"
    missing = [f for f in REQUIRED if f not in chatglm]
    if missing:
        raise UserError(f"{where}: no {', '.join(missing)}: lw converts GLM-4 checkpoints (glm-4-9b, "
                        f"glm-4-9b-chat, LongWriter-glm4-9b), whose config.json has them; ChatGLM2/3 and "
                        f"other chatglm generations are not supported (docs/models.md)")
    for field, value in {**GLM4_ARCHITECTURE, **OLDER_GENERATION}.items():
        if chatglm.get(field, value) != value:
            raise UserError(f"{where}: {field}={chatglm[field]!r} is not GLM-4's ({value!r}): a ChatGLM2/3 "
                            f"feature or another network, which lw does not convert (docs/models.md)")
    heads, groups = chatglm["num_attention_heads"], chatglm["multi_query_group_num"]
    if heads % groups:
        raise UserError(f"{where}: num_attention_heads={heads} is not a multiple of multi_query_group_num={groups}")
    eos = chatglm.get("eos_token_id")
    return GlmConfig(
        vocab_size=chatglm["padded_vocab_size"], hidden_size=chatglm["hidden_size"],
        intermediate_size=chatglm["ffn_hidden_size"], num_hidden_layers=chatglm["num_layers"],
        num_attention_heads=heads, num_key_value_heads=groups, head_dim=chatglm["kv_channels"],
        attention_bias=bool(chatglm.get("add_qkv_bias", False)), rms_norm_eps=chatglm["layernorm_epsilon"],
        max_position_embeddings=chatglm["seq_length"], attention_dropout=chatglm.get("attention_dropout", 0.0),
        # The remote rotary embedding: base 10000 x rope_ratio, on the first half of each head's
        # dimensions, in interleaved pairs; GLM's own rotary does the same with partial_rotary_factor 0.5.
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * chatglm["rope_ratio"],
                         "partial_rotary_factor": 0.5},
        tie_word_embeddings=False, pad_token_id=chatglm.get("pad_token_id"),
        eos_token_id=eos if eos is not None else [], dtype=chatglm.get("torch_dtype"),
        architectures=["GlmForCausalLM"])


def native_name(name: str) -> str | None:
    """The native name of a remote weight (None: dropped); a name GLM-4 does not have is refused."""
    if DROPPED.fullmatch(name):
        return None
    for pattern, target in RENAMES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, target, name)
    raise KeyError(name)


def split_qkv(name: str, tensor, config) -> dict:
    """query_key_value's weight or bias as q/k/v: heads x head_dim rows, then kv heads x head_dim twice."""
    layer, kind = QKV.fullmatch(name).groups()
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    if tensor.shape[0] != q + 2 * kv:
        raise ValueError(f"{name} has {tensor.shape[0]} rows, config.json gives {q} + 2 x {kv}")
    parts = tensor.split([q, kv, kv], dim=0)
    return {f"model.layers.{layer}.self_attn.{p}_proj.{kind}": t.contiguous() for p, t in zip("qkv", parts)}


def remote_weight_names(config) -> set[str]:
    """Every weight a GLM-4 checkpoint of `config`'s shapes holds, in the remote model's names."""
    names = {"transformer.embedding.word_embeddings.weight", "transformer.encoder.final_layernorm.weight",
             "transformer.output_layer.weight"}
    per_layer = ["input_layernorm.weight", "post_attention_layernorm.weight", "self_attention.query_key_value.weight",
                 "self_attention.dense.weight", "mlp.dense_h_to_4h.weight", "mlp.dense_4h_to_h.weight"]
    if config.attention_bias:
        per_layer.append("self_attention.query_key_value.bias")
    return names | {f"transformer.encoder.layers.{i}.{n}" for i in range(config.num_hidden_layers) for n in per_layer}


def weight_files(source: Path) -> list[Path]:
    """The checkpoint's weight files: its safetensors, else its PyTorch .bin files."""
    for pattern in WEIGHT_FILES:
        files = sorted(source.glob(pattern))
        if files:
            return files
    return []


def _read(file: Path) -> dict:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(file)
    import torch

    return torch.load(file, map_location="cpu", weights_only=True, mmap=True)


def convert_weights(source: Path, dest: Path, config) -> None:
    """Each weight file of `source` as a native safetensors shard in `dest`, and their index last."""
    from safetensors.torch import save_file

    files = weight_files(source)
    if not files:
        raise UserError(f"{source}: no weights (*.safetensors or pytorch_model*.bin) beside config.json; "
                        f"download the whole checkpoint (`hf download REPO`)")
    weight_map: dict[str, str] = {}
    seen: set[str] = set()
    for number, file in enumerate(files, 1):
        native = {}
        for name, tensor in _read(file).items():
            seen.add(name)
            try:
                if QKV.fullmatch(name):
                    native.update(split_qkv(name, tensor, config))
                elif (target := native_name(name)) is not None:
                    native[target] = tensor.contiguous()
            except (KeyError, ValueError) as err:
                what = f"weight {name!r} is not one of GLM-4's" if isinstance(err, KeyError) else str(err)
                raise UserError(f"{file}: {what}; lw converts GLM-4 checkpoints only (docs/models.md)") from None
        shard = f"model-{number:05d}-of-{len(files):05d}.safetensors"
        save_file(native, dest / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(native, shard))
    missing = sorted(remote_weight_names(config) - seen)
    if missing:
        raise UserError(f"{source}: the weights lack {len(missing)} of the checkpoint's tensors (first: "
                        f"{missing[0]}); the files are incomplete: download the checkpoint again")
    (dest / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def read_config(source: Path) -> dict:
    try:
        return json.loads((source / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{source}/config.json: not readable JSON ({err})") from None


def convert_tokenizer_and_configs(source: Path, dest: Path):
    """config.json, the fast tokenizer and generation_config.json of `source`, native, in `dest`."""
    from transformers import GenerationConfig

    from lw.models.glm4_tokenizer import GLM4_CHAT_TEMPLATE, glm4_tokenizer

    config = glm_config(read_config(source), str(source))
    if not (source / "tokenizer.model").is_file():
        raise UserError(f"{source}: no tokenizer.model (GLM-4's tiktoken-format vocabulary) beside config.json")
    own = _json_or_empty(source / "tokenizer_config.json").get("chat_template")
    tokenizer = glm4_tokenizer(source / "tokenizer.model", own if isinstance(own, str) else GLM4_CHAT_TEMPLATE)
    if len(tokenizer) > config.vocab_size:
        raise UserError(f"{source}/tokenizer.model: {len(tokenizer)} tokens with GLM-4's specials, more than "
                        f"padded_vocab_size={config.vocab_size}: another vocabulary, not GLM-4's")
    if not config.eos_token_id:
        config.eos_token_id = [tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>",
                                                                            "<|observation|>")]
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    generation = (GenerationConfig.from_pretrained(source) if (source / "generation_config.json").is_file()
                  else GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id))
    config.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    generation.save_pretrained(dest)
    return config


def _json_or_empty(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _stat(files) -> list:
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]


def converted_dir(source: Path, cache_dir: str | Path, weights: bool = True) -> Path:
    """The native conversion of the GLM-4 checkpoint in `source`, made once under `cache_dir/native/`:
    config, tokenizer and generation config first, the weights when `weights` (a dry run or a tokenizer
    alone needs none). A change to the source's files makes a new conversion."""
    source = source.resolve()
    described = [CONVERSION_VERSION, str(source),
                 _stat(source / n for n in ("config.json", "tokenizer.model", "tokenizer_config.json",
                                            "generation_config.json"))]
    digest = hashlib.sha256(json.dumps(described).encode()).hexdigest()[:12]
    dest = Path(cache_dir).expanduser() / "native" / f"{source.name}-{digest}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if not (dest / "tokenizer.json").is_file():
            tmp = dest.with_name(dest.name + ".tmp")
            _clear(tmp)
            convert_tokenizer_and_configs(source, tmp)
            tmp.rename(dest)
        marker = dest / "lw-conversion.json"
        sources = _stat(weight_files(source))
        if weights and _json_or_empty(marker).get("weights") != sources:
            from transformers import GlmConfig

            log.info("converting %s to transformers' GlmForCausalLM in %s (once)", source, dest)
            marker.unlink(missing_ok=True)
            for old in dest.glob("model-*.safetensors"):
                old.unlink()
            convert_weights(source, dest, GlmConfig.from_pretrained(dest))
            marker.write_text(json.dumps({"source": str(source), "weights": sources}))
    return dest


def _clear(path: Path) -> None:
    import shutil

    if path.exists():
        shutil.rmtree(path)


def _hub_config(repo: str) -> dict | None:
    """config.json of a hub id (from the cache when offline); None where it cannot be had."""
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(repo, "config.json")).read_text())
    except Exception:  # noqa: BLE001 (not on the hub, offline, gated...: from_pretrained reports it in full)
        return None


def local_source(path: str, weights: bool = True) -> Path | None:
    """The local directory of `path` (a directory, or a hub id from the user's hub cache, offline too)
    when it is a remote-code GLM-4 checkpoint; None for anything else."""
    from lw.models.pretrained import load_pretrained

    local = Path(path).expanduser()
    if local.is_dir():
        return local if is_chatglm(_json_or_empty(local / "config.json")) else None
    if local.exists() or path.startswith((".", "/", "~")) or path.count("/") != 1:
        return None
    config = _hub_config(path)
    if config is None or not is_chatglm(config):
        return None
    from huggingface_hub import snapshot_download

    files = ["*.json", "tokenizer.model"] + (["*.safetensors", "pytorch_model*.bin"] if weights else [])
    return Path(load_pretrained(lambda: snapshot_download(path, allow_patterns=files), path))


def native_checkpoint(path: str, cache_dir: str | Path, weights: bool = True) -> str:
    """`path`, or for a remote-code GLM-4 checkpoint its native conversion in the cache (converted_dir)."""
    source = local_source(path, weights)
    return path if source is None else str(converted_dir(source, cache_dir, weights))


def convert(source: str, dest: Path) -> None:
    """`lw-convert-glm4`'s work: the native checkpoint of `source` written to the new directory `dest`."""
    if dest.exists():
        raise UserError(f"{dest} exists; name a new directory")
    local = local_source(source)
    if local is None:
        raise UserError(f"{source}: not a remote-code GLM-4 checkpoint (its config.json's model_type is not "
                        f"chatglm); it loads as it is")
    tmp = dest.with_name(dest.name + ".tmp")
    _clear(tmp)
    config = convert_tokenizer_and_configs(local, tmp)
    convert_weights(local, tmp, config)
    tmp.rename(dest)


def main(argv: list[str] | None = None) -> None:
    """lw-convert-glm4 SOURCE DEST: a remote-code GLM-4 checkpoint (hub id or directory) written as a
    native GLM checkpoint, for `vllm serve DEST` or `transformers serve` in an environment of their own."""
    import argparse

    from lw.errors import one_line_errors

    parser = argparse.ArgumentParser(prog="lw-convert-glm4", description=main.__doc__)
    parser.add_argument("source", help="hub id (e.g. THUDM/LongWriter-glm4-9b) or checkpoint directory")
    parser.add_argument("dest", type=Path, help="the native checkpoint directory to write (must not exist)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with one_line_errors(parser.prog):
        convert(args.source, args.dest)
        print(f"{parser.prog}: {args.dest}: transformers' GlmForCausalLM, its fast tokenizer and generation config")
