"""GLM-4's tokenizer as a transformers fast tokenizer, built from its `tokenizer.model` without tiktoken.

THUDM's remote-code checkpoints (glm-4-9b, glm-4-9b-chat, LongWriter-glm4-9b) ship `ChatGLM4Tokenizer`,
which reads `tokenizer.model` (one "base64(token bytes) rank" per line) into tiktoken: a byte-level BPE
whose merge order is the rank of the merged token, split first by GLM-4's pattern below, with the
special tokens given the ids after the last rank, in the order listed below (facts from THUDM/LongWriter
train/patch/tokenization_chatglm.py lines 27-46; docs/models.md). transformers' `TikTokenConverter`
turns such ranks into a `tokenizers` BPE (vocabulary, merges, pattern, byte-level decoder); it only
needs tiktoken to read the file, which is done here instead.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

from lw.errors import UserError

PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL_TOKENS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                  "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
                  "<|begin_of_video|>", "<|end_of_video|>"]
EOS = "<|endoftext|>"

# GLM-4-9B-chat's conversation layout without its tool branches: after one [gMASK]<sop>, every turn is
# <|role|>\n{content}; the generation prompt is <|assistant|> alone (the model writes the newline). For a
# user turn it renders the text build_chat_input encodes (tokenization_chatglm.py lines 156-176).
GLM4_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}{% if m['content'] %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def read_ranks(path: Path) -> dict[bytes, int]:
    """{token bytes: rank} of a tiktoken-format file; a line that does not parse is the user's to fix."""
    ranks: dict[bytes, int] = {}
    try:
        lines = Path(path).read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a GLM-4 tokenizer.model (not text: a SentencePiece model, as ChatGLM2/3 "
                        f"ship, is not supported); lw reads GLM-4's \"base64 rank\" lines") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise UserError(f"{path} line {number}: expected \"<base64 token> <rank>\", got {line[:60]!r}; "
                            f"a GLM-4 tokenizer.model has one such line per token") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise UserError(f"{path}: its ranks are not 0..{len(ranks) - 1}, each once; not a GLM-4 tokenizer.model")
    return ranks


class _RankFileConverter(TikTokenConverter):
    def __init__(self, path: Path):
        super().__init__(vocab_file=str(path), pattern=PATTERN, extra_special_tokens=SPECIAL_TOKENS)

    @staticmethod
    def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
        return read_ranks(Path(tiktoken_url))


def glm4_tokenizer(path: Path, chat_template: str | None = GLM4_CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """The fast tokenizer of GLM-4's `tokenizer.model` at `path`: the same ids as ChatGLM4Tokenizer."""
    backend = _RankFileConverter(path).converted()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS, pad_token=EOS,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t != EOS], chat_template=chat_template,
        clean_up_tokenization_spaces=False, padding_side="left")
