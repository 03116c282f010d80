"""The benchmark's counter and S_l, on cases computed by hand from docs/science.md's definitions."""

import pytest

from lw.words import count_words, language_of, length_score


@pytest.mark.parametrize("text, expected", [
    ("", 0),
    ("Hello world", 2),
    ("Hello, world! How are you?", 5),
    ("don't stop", 3),  # the apostrophe splits: don, t, stop
    ("It's 5 o'clock", 4),  # It, s, o, clock; digits are no words
    ("abc123 def", 1),  # no \b between c and 1: abc is not a word
    ("GPT4o and GPT-4o", 2),  # "and", "GPT"; nothing in GPT4o, and 4o has no letters-only word
    ("snake_case word", 1),  # underscore is a word character
    ("中文写作", 4),
    ("我喜欢Python编程", 5),  # 5 CJK; Python touches CJK (word characters) so it is no English word
    ("我喜欢 Python 编程", 6),  # with spaces it is
    ("hello\u200bworld", 2),  # a zero-width space is no word character: two words
    ("hello\u200dworld", 2),  # nor is a zero-width joiner
    ("１２３ 全角", 2),  # full-width digits are not words; 全角 are two CJK characters
    ("e-mail", 2),
    ("Ω omega", 1),
])
def test_count_words(text, expected):
    assert count_words(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("\u4e00", 1), ("\u9fff", 1),  # both ends of the CJK Unified Ideographs block count
    ("\u4dff", 0), ("\ua000", 0),  # the characters just outside it (a hexagram, a Yi syllable) do not
    ("\u9fff\ua000\u9ffe", 2),
])
def test_count_words_cjk_range_ends(text, expected):
    assert count_words(text) == expected


def test_count_words_accented_letters_hide_words():
    # "naïve": n,a are letters but ï is a \w non-ASCII letter, so [a-zA-Z]+ "na" has no \b after it.
    assert count_words("naïve") == 0
    assert count_words("café") == 0


@pytest.mark.parametrize("required, produced, expected", [
    (1000, 1000, 100.0),
    (1000, 2000, 100 * (1 - 1 / 3)),  # twice as long: (2 - 1) / 3
    (1000, 4000, 0.0),  # four times as long: clipped at 0
    (1000, 500, 50.0),  # half as long: (2 - 1) / 2
    (1000, 250, 0.0),  # a quarter: (4 - 1) / 2 > 1, clipped
    (300, 200, 75.0),  # 1 - (1.5 - 1) / 2
    (100, 130, 90.0),  # 1 - 0.3 / 3
    (1000, 0, 0.0),  # an empty output scores 0
])
def test_length_score(required, produced, expected):
    assert length_score(required, produced) == pytest.approx(expected, abs=1e-9)


def test_length_score_rejects_nonpositive_requirement():
    with pytest.raises(ValueError, match="required length"):
        length_score(0, 10)


@pytest.mark.parametrize("text, expected", [
    ("Write a 500-word essay about rivers.", "en"),
    ("写一篇800字的文章", "zh"),
    ("写一篇关于Python的文章", "zh"),
    # Mixed prompts: any CJK character makes a prompt Chinese, however many Latin letters it has. The
    # rule of "more CJK characters than Latin letters" called these English.
    ("Write about the 长城", "zh"),
    ("请以“fall in love with tea culture”为题 写一篇300词的英语作文", "zh"),  # official: in the Chinese half
    ("Ω, café and 1234", "en"),  # no CJK character in the counter's range
    ("\u3400 is CJK extension A", "en"),  # outside the counter's range: not counted, not Chinese
    ("", "en"),
])
def test_language_of_mixed_scripts(text, expected):
    assert language_of(text) == expected


def test_language_of_reproduces_the_official_english_half(official_bench_dir):
    """The official English half (longbench_write_en.jsonl) against the whole benchmark: the rule agrees
    on 119 of 120 prompts; the exception is a Chinese instruction asking for an English answer."""
    import json

    rows = [json.loads(line) for line in (official_bench_dir / "longbench_write.jsonl").open(encoding="utf-8")]
    english = {json.loads(line)["prompt"] for line in (official_bench_dir / "longbench_write_en.jsonl").open(encoding="utf-8")}
    disagree = [r["prompt"] for r in rows if (language_of(r["prompt"]) == "en") != (r["prompt"] in english)]
    assert len(rows) == 120 and len(english) == 60
    assert len(disagree) == 1 and disagree[0].startswith("帮我用英文写")
