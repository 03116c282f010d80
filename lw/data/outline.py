"""AgentWrite's outline and paragraphs as a model writes them (docs/science.md section 3): the outline
read into steps with word counts (`parse_outline`), a written paragraph cleaned of its step label
(`clean_paragraph`). Pure functions of text, used by task=agentwrite (lw/tasks/agentwrite.py)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass


@dataclass
class Step:
    text: str  # the outline line(s) as given, for the write prompt's $STEP$
    point: str  # the main point, labels and count removed
    words: int | None  # the word count (English words or Chinese characters); None when the line has none


_NUM = r"\d{1,3}(?:,\d{3})+|\d+"
_ZH_NUM = "0-9一二三四五六七八九十百零两"
_BULLET = r"(?:[-*•·●▪‣–—]+|#+)\s*"
# "Paragraph 1", "Para. 2", "Section 3", "Step 4", "Part 5", "第1段", "第三部分", "1.", "1)", "(1)", "1、", "1:"
_LABEL = re.compile(
    rf"^(?:{_BULLET})?(?:\*\*)?\s*(?:"
    rf"(?:paragraph|para\.?|section|step|part)\s*(?:{_NUM})\b"
    rf"|第\s*[{_ZH_NUM}]+\s*(?:段落?|部分|节|步)"
    rf"|\(\s*\d+\s*\)|（\s*\d+\s*）"
    rf"|\d+\s*(?:[.)、]|[:：](?!\d))"
    rf")\s*(?:\*\*)?\s*[-–—:：.、)|]*\s*", re.IGNORECASE)
_BULLET_ONLY = re.compile(r"^[-*•·●▪‣]+\s+")
_COUNT_UNIT = re.compile(
    rf"(?:约|大约|大概|左右)?\s*(?:about|around|approximately|approx\.?|roughly|~|≈)?\s*"
    rf"({_NUM})(?:\s*(?:-|–|~|～|to|到|至)\s*({_NUM}))?\s*-?\s*(?:words?\b|个?(?:汉)?字|词)", re.IGNORECASE)
_COUNT_FIELD = re.compile(rf"(?:word\s*count|length|字数|篇幅)\s*[:：]?\s*(?:约|大约|about|around|approximately|~)?\s*"
                          rf"({_NUM})(?:\s*(?:-|–|~|～|to|到|至)\s*({_NUM}))?", re.IGNORECASE)
_COUNT_TRAIL = re.compile(rf"\s*[-–—|,，;；(（\[]*\s*(?:(?:word\s*count|length|字数|篇幅)\s*[:：]?\s*)?"
                          rf"(?:约|大约|大概|about|around|approximately|approx\.?|roughly|~|≈)?\s*"
                          rf"(?:{_NUM})(?:\s*(?:-|–|~|～|to|到|至)\s*(?:{_NUM}))?\s*-?\s*(?:words?\b|个?(?:汉)?字|词)?"
                          rf"\s*(?:左右)?\s*[)）\]]*\s*[.。]?\s*$", re.IGNORECASE)
_POINT_FIELD = re.compile(r"^(?:main\s*point|point|content|主要内容|内容|要点)\s*[:：]\s*", re.IGNORECASE)
_CONTINUATION = re.compile(r"^(?:main\s*point|word\s*count|主要内容|字数)\s*[:：]", re.IGNORECASE)
_TOTAL = re.compile(r"^(?:\*\*)?\s*(?:total|in total|overall|总计|合计|总字数|全文)", re.IGNORECASE)


def _count(line: str) -> int | None:
    match = _COUNT_FIELD.search(line)
    matches = [match] if match else list(_COUNT_UNIT.finditer(line))
    if not matches:
        return None
    match = matches[-1]  # the count comes last ("... the 1990s ... - Word Count: 400 words")
    value = int((match.group(2) or match.group(1)).replace(",", ""))  # a range: its upper end
    return value or None


def _point(line: str) -> str:
    body = _LABEL.sub("", _BULLET_ONLY.sub("", line, count=1) if not _LABEL.match(line) else line, count=1)
    body = _COUNT_TRAIL.sub("", body) if _count(body) is not None else body
    body = re.sub(r"\s*[-–—|]*\s*(?:word\s*count|字数)\s*[:：]?\s*$", "", body, flags=re.IGNORECASE)
    body = _POINT_FIELD.sub("", body.strip(" -–—|*")).strip(" -–—|*")
    return body


def parse_outline(text: str, plain_lines: bool = False) -> list[Step]:
    """The steps of an outline: one per non-blank line that carries a label, a bullet or a count.

    Accepts "Paragraph 1 - Main Point: ... - Word Count: 400 words", "1. ... (400 words)",
    "第1段 - 主要内容：... - 字数：400字", bullets, "1)", "(1)", "Step 1:", counts written "1,200 words",
    "400字", "约400字" or "300-400 words" (the upper end), and a label on its own line followed by
    "Main Point:" / "Word Count:" lines. Blank lines never make steps; a "Total: ..." line is no step.
    In an outline with numbered or bulleted lines only those are steps (not a preamble such as "Here
    is the plan:" or a title "Plan (2000 words)"); without any, the lines that carry a count are. So a
    reply without any outline line (a refusal) gives []. A step without a count has words=None.
    With `plain_lines` (agentwrite.plain_lines), an outline without numbered lines or counts is taken
    line by line: for a model that writes its outline as plain sentences.
    """
    text = unicodedata.normalize("NFKC", text or "")
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n")]
    lines = [line.strip("*").strip() if line.startswith("**") and line.endswith("**") else line for line in lines]
    lines = [line for line in lines if line and not re.fullmatch(r"[-=*_#`~]+", line)]
    entries: list[tuple[str, bool]] = []  # (text, numbered or bulleted)
    for line in lines:
        labelled = bool(_LABEL.match(line) or _BULLET_ONLY.match(line))
        bare = _BULLET_ONLY.sub("", line)
        if entries and _CONTINUATION.match(bare):
            entries[-1] = (entries[-1][0] + " - " + bare, entries[-1][1])
            continue
        if _TOTAL.match(_LABEL.sub("", bare, count=1) if labelled else bare) and not _LABEL.match(line):
            continue
        entries.append((line, labelled))
    if any(labelled for _, labelled in entries):  # a numbered outline: a title with a count is no step
        entries = [(t, labelled) for t, labelled in entries if labelled]
    elif not (plain_lines and all(_count(t) is None for t, _ in entries)):
        # unnumbered lines are steps only when they carry a count
        entries = [(t, labelled) for t, labelled in entries if _count(t) is not None]
    steps = []
    for line, _ in entries:
        point = _point(line)
        steps.append(Step(text=line, point=point, words=_count(line)))
    return [s for s in steps if s.point or s.words is not None]


# --- the paragraphs ---------------------------------------------------------------------------------

_PARAGRAPH_LABEL = re.compile(
    rf"^\s*(?:#+\s*)?(?:\*\*)?\s*(?:(?:paragraph|para\.?)\s*\d+|第\s*[{_ZH_NUM}]+\s*段落?)"
    rf"\s*(?:\*\*)?\s*(?:[-–—:：.、)]\s*|\n|$)(?:\*\*)?\s*", re.IGNORECASE)
_ECHOED_OUTLINE = re.compile(r"^(?:main\s*point|word\s*count|主要内容|字数)\s*[:：]", re.IGNORECASE)


def clean_paragraph(text: str) -> str:
    """The paragraph without a leading step label ("Paragraph 3:", "Paragraph 3 -", "第三段", "第3段：")
    or an echoed outline line ("Main Point: ... - Word Count: ..." before the text)."""
    text = (text or "").strip()
    for _ in range(2):
        text = _PARAGRAPH_LABEL.sub("", text, count=1).strip()
        first, _, rest = text.partition("\n")
        if _ECHOED_OUTLINE.match(first.strip(" *-")) and rest.strip():
            text = rest.strip()
    return text
