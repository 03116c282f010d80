"""A loopback OpenAI-compatible judge for the DPO miniature that scores what the toy's text really
varies in, by a fixed rule (docs/miniature.md, "The miniature judge"). It reads the request and the
answer back out of the judge prompt (experiments/dpo/judge.txt, which lw's HTTP judge client fills
in) and measures five things, each in [0, 1]:

- on_topic:    the share of the answer's topic nouns (lw/toy_words.py) that belong to the asked topic
- well_formed: the share of its sentences that are complete toy sentences
               ("the ADJ NOUN VERB the NOUN [ADV] [LINK the NOUN VERB ADV] .", as lw/data/toy.py writes them)
- fresh:       how little it repeats itself: (share of distinct word 5-grams - 0.5) / 0.5, within [0, 1];
               the toy language's own text keeps 0.93 or more of its 5-grams distinct up to 300 words
- clean_end:   1 if its last word is a sentence end ("."), 0 if it stops mid-sentence
- length_fit:  max(0, 1 - |ln(produced / asked words)| / ln 3): 1 at the asked length, 0 at 3x or a
               third of it; 1 when the request names no length

The six LongBench-Write scores are 1 + 4 x a feature, rounded half up to an integer 1-5:
Relevance = on_topic, Accuracy = well_formed, Coherence = fresh, Clarity = the mean of clean_end and
well_formed, Breadth and Depth = length_fit, Reading Experience = the mean of all five. The same text
always gets the same scores. An empty answer gets 1 on every dimension.

    python experiments/dpo/judge_server.py URL_FILE    # writes its base URL there, serves until killed
"""

from __future__ import annotations

import json
import math
import re
import signal
import statistics
import sys
import threading
from pathlib import Path

from lw.testing.openai_server import OpenAIServer, Reply, user_text
from lw.toy_words import ADJECTIVES, ADVERBS, LINKS, TOPIC_NOUNS, VERBS
from lw.train.rewards import log_ratio_reward
from lw.words import count_words

TEMPLATE = Path(__file__).with_name("judge.txt")
NGRAM = 5
# One letter per word class; a complete toy sentence is this pattern over its words.
_CLASS = {"the": "T", **{w: "A" for w in ADJECTIVES}, **{w: "V" for w in VERBS}, **{w: "D" for w in ADVERBS},
          **{w: "L" for w in LINKS}, **{w: "N" for nouns in TOPIC_NOUNS.values() for w in nouns}}
_SENTENCE = re.compile(r"TANVTN(D)?(LTNVD)?")
_TOPIC_OF = {w: topic for topic, nouns in TOPIC_NOUNS.items() for w in nouns}
_LENGTH = re.compile(r"(\d+)(?:-word| words)")


def prompt_pattern(template: str) -> re.Pattern:
    """The filled judge prompt as a pattern whose groups are the request and the answer."""
    parts = re.split(r"\$(INST|RESPONSE)\$", template)
    pattern = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p.lower()}>.*)" for i, p in enumerate(parts))
    return re.compile(pattern, re.DOTALL)


def asked_topic(request: str) -> str | None:
    return next((t for t in re.findall(r"[a-z]+", request.lower()) if t in TOPIC_NOUNS), None)


def on_topic(words: list[str], topic: str | None) -> float:
    topics = [_TOPIC_OF[w] for w in words if w in _TOPIC_OF]
    if not topics:
        return 0.0
    topic = topic or max(sorted(set(topics)), key=topics.count)  # no asked topic: the answer's own
    return topics.count(topic) / len(topics)


def well_formed(words: list[str]) -> float:
    """Complete sentences over all sentences; words after the last "." are an unfinished one."""
    sentences = " ".join(words).split(".")
    if sentences[-1].strip() == "":
        sentences = sentences[:-1]
    if not sentences:
        return 0.0
    complete = sum(bool(_SENTENCE.fullmatch("".join(_CLASS.get(w, "?") for w in s.split()))) for s in sentences)
    return complete / len(sentences)


def fresh(words: list[str]) -> float:
    grams = [tuple(words[i:i + NGRAM]) for i in range(len(words) - NGRAM + 1)]
    if not grams:
        return 1.0
    return min(1.0, max(0.0, (len(set(grams)) / len(grams) - 0.5) / 0.5))


def length_fit(request: str, answer: str) -> float:
    asked = _LENGTH.search(request)
    if asked is None:
        return 1.0
    return log_ratio_reward(int(asked.group(1)), count_words(answer))  # GRPO's symmetric length reward


def features(request: str, answer: str) -> dict[str, float]:
    words = answer.split()
    if not words:
        return {"on_topic": 0.0, "well_formed": 0.0, "fresh": 0.0, "clean_end": 0.0, "length_fit": 0.0}
    return {"on_topic": on_topic(words, asked_topic(request)), "well_formed": well_formed(words),
            "fresh": fresh(words), "clean_end": float(words[-1] == "."), "length_fit": length_fit(request, answer)}


def scores(request: str, answer: str) -> dict[str, int]:
    """The six LongBench-Write scores, 1-5, of `answer` to `request`."""
    f = features(request, answer)

    def score(x: float) -> int:
        return 1 + math.floor(4 * x + 0.5)

    return {"Relevance": score(f["on_topic"]), "Accuracy": score(f["well_formed"]), "Coherence": score(f["fresh"]),
            "Clarity": score((f["clean_end"] + f["well_formed"]) / 2), "Breadth and Depth": score(f["length_fit"]),
            "Reading Experience": score(statistics.fmean(f.values()))}


def judge_reply(pattern: re.Pattern, body: dict) -> Reply:
    """The judgement of one request, in judge.txt's JSON, with the features as its analysis."""
    found = pattern.fullmatch(user_text(body))
    if found is None:
        return Reply(status=400, body=json.dumps({"error": {"message": f"not a prompt of {TEMPLATE}"}}))
    request, answer = found.group("inst"), found.group("response")
    analysis = ", ".join(f"{k} {v:.2f}" for k, v in features(request, answer).items())
    return Reply(json.dumps({"Analysis": analysis, **scores(request, answer)}))


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    pattern = prompt_pattern(TEMPLATE.read_text())
    with OpenAIServer(lambda body, attempt: judge_reply(pattern, body)) as server:
        Path(sys.argv[1]).write_text(server.base_url + "\n")
        stop.wait()


if __name__ == "__main__":
    main()
