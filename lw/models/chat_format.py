"""Chat formats of the paper (docs/science.md section 4), as token-level segments with a loss mask.

A conversation is rendered as a list of segments; each is plain text or a special token id, and
is a training target or not. Tokenizing segment by segment keeps the boundary between prompt and
answer exact, so the loss mask is exact too. Generation renders the same format up to the start
of the assistant's answer, so training and inference never disagree about the template.

Training formats (loss on answers and the EOS that closes each one):
- glm4:     [gMASK]<sop><|user|>\\n{prompt}<|assistant|>\\n{answer}EOS, each piece encoded apart as
            THUDM's build_single_message does (the official training data's ids)
- llama3_1: BOS[INST]{prompt}[/INST]{answer}EOS   (the paper's format for the Llama-3.1 base)
- plain:    BOS{head} {body}EOS                    (the base stage's language modelling)

Inference only (they refuse to train, in one line):
- longwriter_glm4:     [gMASK]<sop><|user|>\\n{prompt}<|assistant|>, the model writes the newline: the
                       released LongWriter-glm4-9b's build_chat_input (vllm_inference.py line 24)
- longwriter_llama3_1: tokenizer("[INST]{prompt}[/INST]"), i.e. one BOS (evaluation/pred.py lines 34-35)
- native:              the tokenizer's own chat template (tokenizer.apply_chat_template)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from transformers import PreTrainedTokenizerBase

from lw.errors import UserError

BOS = object()  # the tokenizer's BOS token id
EOS = object()  # the tokenizer's EOS token id


@dataclass(frozen=True)
class Segment:
    content: str | object  # text, BOS or EOS
    target: bool = False
    # A message's text, encoded as text even where it spells a special token ("<|user|>"), as GLM-4's
    # build_single_message encodes messages (tiktoken's disallowed_special=(); tokenization_chatglm.py line 159).
    plain: bool = False


class ChatFormat:
    name: str
    trainable = True  # False: an inference format, which refuses to render training conversations
    # End-of-turn tokens a model prompted in this format may write; generation stops on those the
    # tokenizer has (lw.models.stops), beside its EOS and model.stop_tokens.
    stop_tokens: tuple[str, ...] = ()

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> list[Segment]:
        raise NotImplementedError

    def tokenize(self, tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict],
                 add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
        """input_ids and completion_mask (1 where the token is a training target)."""
        return self.tokenize_many(tokenizer, [messages], add_generation_prompt)[0]

    def tokenize_many(self, tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Sequence[dict]],
                      add_generation_prompt: bool = False) -> list[tuple[list[int], list[int]]]:
        """`tokenize` for many conversations, with one batched tokenizer call for all their texts."""
        if not add_generation_prompt:
            self.refuse_training()
        rendered = [self.render(messages, add_generation_prompt) for messages in conversations]
        texts = [s for segments in rendered for s in segments if isinstance(s.content, str)]
        encoded = {plain: iter(encode_texts(tokenizer, [s.content for s in texts if s.plain == plain], plain))
                   for plain in (False, True)}
        special = {id(BOS): tokenizer.bos_token_id, id(EOS): tokenizer.eos_token_id}
        results = []
        for segments in rendered:
            input_ids: list[int] = []
            mask: list[int] = []
            for segment in segments:
                if isinstance(segment.content, str):
                    ids = next(encoded[segment.plain])
                else:
                    token_id = special[id(segment.content)]
                    if token_id is None:
                        raise UserError(f"tokenizer {tokenizer.name_or_path!r} has no BOS/EOS token "
                                         f"needed by chat format {self.name!r}")
                    ids = [token_id]
                input_ids += ids
                mask += [int(segment.target)] * len(ids)
            results.append((input_ids, mask))
        return results

    def text(self, tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict],
             add_generation_prompt: bool = False) -> str:
        """The rendered conversation as one string, BOS and EOS written as the tokenizer's tokens."""
        special = {id(BOS): tokenizer.bos_token, id(EOS): tokenizer.eos_token}
        return "".join(s.content if isinstance(s.content, str) else special[id(s.content)]
                       for s in self.render(messages, add_generation_prompt))

    # The same format as a Jinja chat template, saved with every trained model so that a server
    # (`vllm serve`, `transformers serve`) renders prompts exactly as training did. None: no template.
    jinja: str | None = None

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
        ids, _ = self.tokenize(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
        return ids

    def prompt_text(self, tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
        """The generation prompt of one user turn as text, special tokens written out."""
        return self.text(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)

    def refuse_training(self) -> None:
        if not self.trainable:
            raise UserError(f"model.chat_format={self.name} is an inference format (evaluation only): it cannot "
                            f"render training answers; train with model.chat_format=glm4, llama3_1 or plain")


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str], plain: bool = False) -> list[list[int]]:
    """Token ids of each text (no special tokens added), as `tokenizer(texts)` gives them; `plain`:
    special tokens' spellings in the texts are encoded as text (split_special_tokens).

    A fast tokenizer's backend skips offsets with `encode_batch_fast` (2-3x faster on long answers);
    used only when the backend is in the state the tokenizer call would put it in.
    """
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    split = plain or bool(getattr(tokenizer, "split_special_tokens", False))
    if (backend is not None and hasattr(backend, "encode_batch_fast") and backend.truncation is None
            and backend.padding is None):
        saved = backend.encode_special_tokens
        backend.encode_special_tokens = split
        try:
            return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
        finally:
            backend.encode_special_tokens = saved
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=split)["input_ids"]


def _check_turns(messages: Sequence[dict], add_generation_prompt: bool) -> None:
    roles = [m["role"] for m in messages]
    expected = ["user", "assistant"] * (len(roles) // 2 + 1)
    if roles != expected[: len(roles)]:
        raise ValueError(f"a conversation must alternate user/assistant turns from a user turn, got {roles}")
    if add_generation_prompt and roles[-1] != "user":
        raise ValueError("a generation prompt must end with a user turn")


class Glm4(ChatFormat):
    name = "glm4"
    stop_tokens = ("<|user|>", "<|observation|>")
    jinja = ("[gMASK]<sop>{% for m in messages %}{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}"
             "<|assistant|>\n{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")

    def render(self, messages, add_generation_prompt=False):
        _check_turns(messages, add_generation_prompt)
        # Each piece encoded on its own, as the official training data was (build_single_message per turn:
        # the role token, encode("\n"), encode(message); train/pre_tokenize_glm4.py in THUDM/LongWriter).
        segments = [Segment("[gMASK]<sop>")]
        for m in messages:
            if m["role"] == "user":
                segments += [Segment("<|user|>"), Segment("\n"), Segment(m["content"], plain=True),
                             Segment("<|assistant|>"), Segment("\n")]
            else:
                segments += [Segment(m["content"], target=True, plain=True), Segment(EOS, target=True)]
        return segments


class Llama31(ChatFormat):
    name = "llama3_1"
    jinja = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST]{{ m['content'] }}[/INST]"
             "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")

    def render(self, messages, add_generation_prompt=False):
        _check_turns(messages, add_generation_prompt)
        segments = [Segment(BOS)]
        for m in messages:
            if m["role"] == "user":
                segments.append(Segment(f"[INST]{m['content']}[/INST]"))
            else:
                segments += [Segment(m["content"], target=True), Segment(EOS, target=True)]
        return segments


class Plain(ChatFormat):
    """No template, loss on every token: BOS{head} {body}EOS. The base stage's language modelling,
    where a document's head (the "user" turn) is the generation prompt of its probe."""

    name = "plain"

    def render(self, messages, add_generation_prompt=False):
        _check_turns(messages, add_generation_prompt)
        segments = [Segment(BOS, target=True)]
        for m in messages:
            segments.append(Segment(m["content"] if m["role"] == "user" else " " + m["content"], target=True))
        if not add_generation_prompt:
            segments.append(Segment(EOS, target=True))
        return segments


class LongWriterGlm4(ChatFormat):
    """The released LongWriter-glm4-9b's inference prompt: its tokenizer's build_chat_input, which
    encodes the role token, "\\n" and the message separately, so the segments here are separate too."""

    name = "longwriter_glm4"
    trainable = False
    stop_tokens = ("<|user|>", "<|observation|>")

    def render(self, messages, add_generation_prompt=False):
        _check_turns(messages, add_generation_prompt)
        if not add_generation_prompt:
            self.refuse_training()
        segments = [Segment("[gMASK]<sop>")]
        for m in messages:
            if m["role"] == "user":
                segments += [Segment("<|user|>"), Segment("\n"), Segment(m["content"], plain=True),
                             Segment("<|assistant|>")]
            else:  # an earlier answer, as build_chat_input writes history: "\n" then the text
                segments += [Segment("\n"), Segment(m["content"], plain=True)]
        return segments


class LongWriterLlama31(ChatFormat):
    """The released LongWriter-llama3.1-8b's inference prompt: tokenizer("[INST]{prompt}[/INST]"), whose
    post-processor adds one BOS (training prepended a second by hand; inference does not)."""

    name = "longwriter_llama3_1"
    trainable = False

    def render(self, messages, add_generation_prompt=False):
        _check_turns(messages, add_generation_prompt)
        if not add_generation_prompt:
            self.refuse_training()
        segments = [Segment(BOS)]
        for m in messages:
            segments.append(Segment(f"[INST]{m['content']}[/INST]" if m["role"] == "user" else m["content"]))
        return segments


class Native(ChatFormat):
    """The tokenizer's own chat template (the baselines' chat models: GLM-4-9B-chat, Llama-3.1-8B-Instruct)."""

    name = "native"
    trainable = False

    def _template(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(f"model.chat_format=native: the tokenizer of {tokenizer.name_or_path or 'this model'!r} "
                            f"has no chat template (tokenizer_config.json chat_template or chat_template.jinja); "
                            f"pick a format: glm4, llama3_1, longwriter_glm4, longwriter_llama3_1 or plain")

    def tokenize_many(self, tokenizer, conversations, add_generation_prompt=False):
        if not add_generation_prompt:
            self.refuse_training()
        self._template(tokenizer)
        results = []
        for messages in conversations:
            ids = list(tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                                     return_dict=False))
            results.append((ids, [0] * len(ids)))
        return results

    def text(self, tokenizer, messages, add_generation_prompt=False):
        if not add_generation_prompt:
            self.refuse_training()
        self._template(tokenizer)
        return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)


CHAT_FORMATS: dict[str, ChatFormat] = {f.name: f for f in (Glm4(), Llama31(), Plain(), LongWriterGlm4(),
                                                           LongWriterLlama31(), Native())}


def get_chat_format(name: str) -> ChatFormat:
    try:
        return CHAT_FORMATS[name]
    except KeyError:
        raise UserError(f"model.chat_format={name}: unknown chat format; choose from {sorted(CHAT_FORMATS)}") from None
