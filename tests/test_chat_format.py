"""Golden tests of the paper's chat formats (docs/science.md section 4): exact strings, exact loss masks."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lw.models.chat_format import get_chat_format
from lw.models.tiny import tiny_tokenizer

CONVERSATION = [
    {"role": "user", "content": "Write a 12-word note about rivers."},
    {"role": "assistant", "content": "the quiet river carries the bank ."},
    {"role": "user", "content": "Write about trains in 10 words."},
    {"role": "assistant", "content": "the old train meets the station ."},
]

GOLDEN_TEXT = {
    "glm4": "[gMASK]<sop><|user|>\nWrite a 12-word note about rivers.<|assistant|>\n"
            "the quiet river carries the bank .</s>"
            "<|user|>\nWrite about trains in 10 words.<|assistant|>\n"
            "the old train meets the station .</s>",
    "llama3_1": "<s>[INST]Write a 12-word note about rivers.[/INST]the quiet river carries the bank .</s>"
                "[INST]Write about trains in 10 words.[/INST]the old train meets the station .</s>",
}

# (token, is a training target) for the tiny word-level tokenizer: one token per word or symbol.
ANSWER_1 = [("the", 1), ("quiet", 1), ("river", 1), ("carries", 1), ("the", 1), ("bank", 1), (".", 1), ("</s>", 1)]
ANSWER_2 = [("the", 1), ("old", 1), ("train", 1), ("meets", 1), ("the", 1), ("station", 1), (".", 1), ("</s>", 1)]
PROMPT_1 = [("Write", 0), ("a", 0), ("12", 0), ("-", 0), ("word", 0), ("note", 0), ("about", 0), ("rivers", 0), (".", 0)]
PROMPT_2 = [("Write", 0), ("about", 0), ("trains", 0), ("in", 0), ("10", 0), ("words", 0), (".", 0)]
GOLDEN_TOKENS = {
    "glm4": [("[gMASK]", 0), ("<sop>", 0), ("<|user|>", 0), *PROMPT_1, ("<|assistant|>", 0), *ANSWER_1,
             ("<|user|>", 0), *PROMPT_2, ("<|assistant|>", 0), *ANSWER_2],
    "llama3_1": [("<s>", 0), ("[INST]", 0), *PROMPT_1, ("[/INST]", 0), *ANSWER_1,
                 ("[INST]", 0), *PROMPT_2, ("[/INST]", 0), *ANSWER_2],
}


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A byte-level BPE with the real models' special tokens, trained here: it decodes back to the exact text,
    and splits words into several tokens, so mask boundaries are tested inside words too."""
    special = ["<s>", "</s>", "<pad>", "[gMASK]", "<sop>", "<|user|>", "<|assistant|>", "[INST]", "[/INST]"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["Write about rivers and trains, the quiet old station."] * 5, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   additional_special_tokens=special[3:], clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("name", ["glm4", "llama3_1"])
def test_golden_string(name, word_tokenizer, bpe_tokenizer):
    chat_format = get_chat_format(name)
    assert chat_format.text(word_tokenizer, CONVERSATION) == GOLDEN_TEXT[name]
    assert chat_format.text(bpe_tokenizer, CONVERSATION) == GOLDEN_TEXT[name]


@pytest.mark.parametrize("name", ["glm4", "llama3_1"])
def test_golden_tokens_and_loss_mask(name, word_tokenizer):
    ids, mask = get_chat_format(name).tokenize(word_tokenizer, CONVERSATION)
    assert list(zip(word_tokenizer.convert_ids_to_tokens(ids), mask)) == GOLDEN_TOKENS[name]


@pytest.mark.parametrize("name", ["glm4", "llama3_1"])
def test_byte_level_tokens_decode_to_the_golden_string_and_mask_only_answers(name, bpe_tokenizer):
    ids, mask = get_chat_format(name).tokenize(bpe_tokenizer, CONVERSATION)
    assert bpe_tokenizer.decode(ids) == GOLDEN_TEXT[name]
    # The targets are exactly the two answers, each with its EOS, and nothing else.
    assert len(mask) == len(ids) and set(mask) == {0, 1}
    runs, current = [], []
    for token_id, target in zip(ids, mask):
        if target:
            current.append(token_id)
        elif current:
            runs.append(current)
            current = []
    runs.append(current)
    assert [bpe_tokenizer.decode(run) for run in runs if run] == [
        "the quiet river carries the bank .</s>", "the old train meets the station .</s>"]
    assert ids[-1] == bpe_tokenizer.eos_token_id and mask[-1] == 1


@pytest.mark.parametrize("name", ["glm4", "llama3_1"])
def test_generation_prompt_is_the_training_prefix(name, word_tokenizer):
    """Inference renders the same tokens as training, up to the first answer."""
    chat_format = get_chat_format(name)
    ids, mask = chat_format.tokenize(word_tokenizer, CONVERSATION)
    prompt = chat_format.prompt_ids(word_tokenizer, CONVERSATION[0]["content"])
    assert ids[:len(prompt)] == prompt and mask.index(1) == len(prompt)


def test_batched_tokenization_equals_one_by_one(word_tokenizer):
    chat_format = get_chat_format("glm4")
    conversations = [CONVERSATION, CONVERSATION[:2], CONVERSATION[2:]]
    assert chat_format.tokenize_many(word_tokenizer, conversations) == [
        chat_format.tokenize(word_tokenizer, c) for c in conversations]


def test_turns_must_alternate_from_a_user_turn(word_tokenizer):
    with pytest.raises(ValueError, match="alternate"):
        get_chat_format("llama3_1").tokenize(word_tokenizer, CONVERSATION[1:])


def test_fast_batch_encoding_equals_the_tokenizer_call(word_tokenizer, bpe_tokenizer):
    from lw.models.chat_format import encode_texts

    texts = [GOLDEN_TEXT["glm4"], "the quiet river", "Write about trains, 12 words."]
    for tokenizer in (word_tokenizer, bpe_tokenizer):
        assert encode_texts(tokenizer, texts) == tokenizer(texts, add_special_tokens=False)["input_ids"]


def test_plain_puts_one_space_between_a_documents_head_and_body(bpe_tokenizer):
    """The base stage's documents: BOS{head} {body}EOS, every token a target; the head alone is the probe's
    prompt, so a model continues it with the space first."""
    plain = get_chat_format("plain")
    document = [{"role": "user", "content": "Write about rivers"}, {"role": "assistant", "content": "the quiet river ."}]
    assert plain.text(bpe_tokenizer, document) == "<s>Write about rivers the quiet river .</s>"
    ids, mask = plain.tokenize(bpe_tokenizer, document)
    assert bpe_tokenizer.decode(ids) == "<s>Write about rivers the quiet river .</s>" and all(mask)
    prompt = plain.prompt_ids(bpe_tokenizer, "Write about rivers")
    assert ids[: len(prompt)] == prompt and bpe_tokenizer.decode(ids[len(prompt):]) == " the quiet river .</s>"


@pytest.mark.parametrize("name", ["glm4", "llama3_1"])
def test_the_saved_chat_template_renders_the_training_format(name, word_tokenizer, bpe_tokenizer):
    """A served checkpoint (vllm serve, transformers serve) renders prompts with the chat template
    saved beside it: it must equal the format the model was trained on, generation prompt included."""
    chat_format = get_chat_format(name)
    for tokenizer in (word_tokenizer, bpe_tokenizer):
        tokenizer.chat_template = chat_format.jinja
        assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == chat_format.text(tokenizer, CONVERSATION)
        prompt = CONVERSATION[:3]
        assert tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) == \
            chat_format.text(tokenizer, prompt, add_generation_prompt=True)
        assert tokenizer.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"] == \
            chat_format.tokenize(tokenizer, prompt, add_generation_prompt=True)[0]
